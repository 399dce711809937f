package engine

import (
	"math/bits"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	. "github.com/gomlx/gomlx/pkg/core/graph" //nolint:revive // the graph DSL reads best unqualified
	"github.com/gomlx/gomlx/pkg/core/shapes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
)

// samplerFeatures selects the parts of the on-device sampler a program holds. The engine
// builds two: the plain sampler (greedy and temperature) that every sampling row runs, and
// the full one (every feature) that only the rows asking for a feature run, so a batch of
// greedy requests never pays for another request's top-p search or top-20 logprobs.
type samplerFeatures struct {
	Penalties bool // presence/frequency/repetition penalties and banned tokens (min_tokens)
	Filters   bool // top-k, top-p, min-p
	Logprobs  bool // chosen-token logprob and the top maxTopLogprobs alternatives
	Bias      bool // logit_bias: per-row (token id, bias) pairs added before everything else
	Mask      bool // a per-row token bitmask (structured outputs): tokens outside it are never sampled
}

// fullFeatures is the full sampler's feature set; scoredFeatures the same without the
// top-k/top-p/min-p threshold search (the costliest part), for rows that need no filter.
var (
	fullFeatures   = samplerFeatures{Penalties: true, Filters: true, Logprobs: true, Bias: true, Mask: true}
	scoredFeatures = samplerFeatures{Penalties: true, Logprobs: true, Bias: true, Mask: true}
)

// maxTopLogprobs is the most alternatives a request may ask for (OpenAI's limit).
const maxTopLogprobs = 20

// samplingEps: temperatures below it mean greedy (vLLM's _SAMPLING_EPS).
const samplingEps = 1e-5

// numSamplerInputs is the number of extra program inputs for a feature set.
func (f samplerFeatures) numInputs() int {
	n := 3 // temperature, rng key, rng counter
	if f.Penalties {
		n += 6
	}
	if f.Filters {
		n += 3
	}
	if f.Bias {
		n += 2
	}
	if f.Mask {
		n++
	}
	return n
}

// samplerRows is the host side of one step's sampling: one row per sequence that samples.
type samplerRows struct {
	Temperature []float32
	RNGKey      []uint32
	RNGCounter  []uint32
	TopK        []int32
	TopP        []float32
	MinP        []float32
	Presence    []float32
	Frequency   []float32
	Repetition  []float32
	// OutputTokens [N·L] and PromptTokens [N·Lp]: the tokens the penalties count, padded
	// with the vocabulary size (a column that is dropped).
	OutputTokens, PromptTokens []int32
	L, Lp                      int
	// Banned [N·Lb] are tokens that must not be sampled (EOS and stop tokens before
	// min_tokens), padded with the vocabulary size.
	Banned []int32
	Lb     int
	// BiasIDs and BiasValues [N·Lg] are logit_bias entries (padding id = vocabulary size).
	BiasIDs    []int32
	BiasValues []float32
	Lg         int
	// MaskWords [N·W] is each row's token bitmask (bit v%32 of word v/32 set: token v may be
	// sampled); rows without a grammar allow everything.
	MaskWords []uint32
	W         int
	// The unpadded per-row lists that pad lays out into the arrays above.
	outLists, promptLists, bannedLists [][]int32
	biasLists                          []logitBias
	masks                              [][]uint32 // nil: no constraint
}

// logitBias is one row's logit_bias entries.
type logitBias struct {
	ids    []int32
	values []float32
}

// inputs returns the program's extra inputs for rows, in the order buildSampler reads them.
func (r *samplerRows) inputs(f samplerFeatures) []any {
	n := len(r.Temperature)
	in := []any{
		tensors.FromFlatDataAndDimensions(r.Temperature, n),
		tensors.FromFlatDataAndDimensions(r.RNGKey, n),
		tensors.FromFlatDataAndDimensions(r.RNGCounter, n),
	}
	if f.Penalties {
		in = append(in,
			tensors.FromFlatDataAndDimensions(r.Presence, n),
			tensors.FromFlatDataAndDimensions(r.Frequency, n),
			tensors.FromFlatDataAndDimensions(r.Repetition, n),
			tensors.FromFlatDataAndDimensions(r.OutputTokens, n, r.L),
			tensors.FromFlatDataAndDimensions(r.PromptTokens, n, r.Lp),
			tensors.FromFlatDataAndDimensions(r.Banned, n, r.Lb),
		)
	}
	if f.Filters {
		in = append(in,
			tensors.FromFlatDataAndDimensions(r.TopK, n),
			tensors.FromFlatDataAndDimensions(r.TopP, n),
			tensors.FromFlatDataAndDimensions(r.MinP, n),
		)
	}
	if f.Bias {
		in = append(in,
			tensors.FromFlatDataAndDimensions(r.BiasIDs, n, r.Lg),
			tensors.FromFlatDataAndDimensions(r.BiasValues, n, r.Lg),
		)
	}
	if f.Mask {
		in = append(in, tensors.FromFlatDataAndDimensions(r.MaskWords, n, r.W))
	}
	return in
}

// maskWords is the number of bitmask words covering a vocabulary of v rows.
func maskWords(v int) int { return (v + 31) / 32 }

// allowedByMask expands bitmask words [N, W] uint32 into [N, V] booleans: token v is
// allowed when bit v%32 of word v/32 is set.
func allowedByMask(words *Node, V int) *Node {
	g := words.Graph()
	N, W := words.Shape().Dimensions[0], words.Shape().Dimensions[1]
	pow := make([]uint32, 32)
	for b := range pow {
		pow[b] = 1 << b
	}
	// A bitwise and with each bit's value (the pure-Go backend has no shifts).
	bits := BitwiseAnd(BroadcastToDims(InsertAxes(words, -1), N, W, 32), BroadcastToDims(Reshape(Const(g, pow), 1, 1, 32), N, W, 32))
	bits = Slice(Reshape(bits, N, W*32), AxisRange(), AxisRange(0, V))
	return NotEqual(bits, ZerosLike(bits))
}

// buildSampler returns the program tail that turns logits [N, V] into sampled token ids
// [N] int32 (and, with Logprobs, the chosen token's logprob [N], and the top
// maxTopLogprobs ids [N, 20] int32 and logprobs [N, 20]). logits rows must already be the
// sampling rows; vocabulary rows at or beyond textVocab are never sampled nor reported. Order as vLLM: penalties, temperature, min-p, top-k, top-p, then a
// Gumbel-max draw from a counter-based RNG keyed per request, so a request's draws do not
// depend on what else is in the batch.
func buildSampler(f samplerFeatures, textVocab int) func(logits *Node, extra []*Node) []*Node {
	return func(logits *Node, extra []*Node) []*Node {
		N, V := logits.Shape().Dimensions[0], logits.Shape().Dimensions[1]
		sl := shapeLogits(f, textVocab, logits, samplerParamsFrom(f, extra, N, V))
		gumbel := gumbelNoise(sl.key, sl.counter, N, V)
		// Tokens ruled out by their logit (banned, a grammar's mask) stay at −∞: the noise is
		// always finite (see gumbelNoise).
		perturbed := Where(sl.keep, Add(sl.z, gumbel), BroadcastToDims(Infinity(logits.Graph(), dtypes.Float32, -1), N, V))
		sampledTokens := ArgMax(perturbed, -1, dtypes.Int32)
		tokens := Where(sl.isGreedy, sl.greedy, sampledTokens)
		if !f.Logprobs {
			return []*Node{tokens}
		}
		return append([]*Node{tokens}, logprobOutputs(sl.raw, tokens, textVocab)...)
	}
}

// samplerParams are the sampler's per-row inputs as graph values: [N] per row, [N, V] for
// the token counts, biases and masks (nil where the features leave them out).
type samplerParams struct {
	temperature, key, counter           *Node
	presence, frequency, repetition     *Node
	outCounts, promptCounts, bannedMask *Node // counts [N, V]; bannedMask bool
	topK, topP, minP                    *Node
	bias                                *Node // [N, V] summed logit_bias
	allowed                             *Node // [N, V] bool (structured outputs)
}

// samplerParamsFrom reads buildSampler's extra inputs (samplerRows.inputs order).
func samplerParamsFrom(f samplerFeatures, extra []*Node, N, V int) samplerParams {
	p := samplerParams{temperature: extra[0], key: extra[1], counter: extra[2]}
	next := 3
	if f.Penalties {
		p.presence, p.frequency, p.repetition = extra[next], extra[next+1], extra[next+2]
		p.outCounts = tokenCounts(extra[next+3], N, V)
		p.promptCounts = tokenCounts(extra[next+4], N, V)
		banned := tokenCounts(extra[next+5], N, V)
		p.bannedMask = GreaterThan(banned, ZerosLike(banned))
		next += 6
	}
	if f.Filters {
		p.topK, p.topP, p.minP = extra[next], extra[next+1], extra[next+2]
		next += 3
	}
	if f.Bias {
		p.bias = tokenSums(extra[next], extra[next+1], N, V)
		next += 2
	}
	if f.Mask {
		p.allowed = allowedByMask(extra[next], V)
	}
	return p
}

// shapedLogits are the sampler's view of logits after every transformation but the draw:
// raw (the model's, for logprobs), z (penalised, biased, masked, over the temperature),
// keep (what top-k/top-p/min-p leave), the greedy choice and which rows are greedy, and
// the rows' RNG key and counter.
type shapedLogits struct {
	raw, z, keep, greedy, isGreedy, key, counter *Node
}

// shapeLogits applies the sampler's transformations to logits [N, V]. Order as vLLM:
// logit bias, grammar mask, penalties, temperature, min-p, top-k, top-p.
func shapeLogits(f samplerFeatures, textVocab int, logits *Node, p samplerParams) shapedLogits {
	g := logits.Graph()
	N, V := logits.Shape().Dimensions[0], logits.Shape().Dimensions[1]
	temperature := p.temperature
	vocabIota := Iota(g, shapes.Make(dtypes.Int32, N, V), 1)
	negInf := Infinity(g, dtypes.Float32, -1)

	// Padding rows of the vocabulary are never sampled, nor reported.
	valid := LessThan(vocabIota, Scalar(g, dtypes.Int32, textVocab))
	logits = Where(valid, logits, BroadcastToDims(negInf, N, V))
	raw := logits
	if f.Bias {
		// logit_bias is added before penalties and sampling, as vLLM's logits
		// processors do; logprobs stay the raw model's.
		logits = Add(logits, p.bias)
	}
	if f.Mask {
		// A grammar's bitmask: tokens it rules out are never sampled (as vLLM applies
		// structured-output bitmasks); logprobs stay the raw model's.
		logits = Where(p.allowed, logits, BroadcastToDims(negInf, N, V))
	}

	if f.Penalties {
		outCounts, promptCounts := p.outCounts, p.promptCounts
		seen := GreaterThan(Add(outCounts, promptCounts), ZerosLike(outCounts))
		rp := InsertAxes(p.repetition, -1)
		penalized := Where(GreaterThan(logits, ZerosLike(logits)), Div(logits, rp), Mul(logits, rp))
		logits = Where(seen, penalized, logits)
		logits = Sub(logits, Mul(InsertAxes(p.frequency, -1), outCounts))
		logits = Sub(logits, Mul(InsertAxes(p.presence, -1), ConvertDType(GreaterThan(outCounts, ZerosLike(outCounts)), dtypes.Float32)))
		logits = Where(p.bannedMask, BroadcastToDims(negInf, N, V), logits)
	}
	greedyTokens := ArgMax(logits, -1, dtypes.Int32)

	isGreedy := LessThan(temperature, Scalar(g, dtypes.Float32, samplingEps))
	safeT := Where(isGreedy, OnesLike(temperature), temperature)
	z := Div(logits, InsertAxes(safeT, -1)) // [N, V]
	zmax := ReduceAndKeep(z, ReduceMax, -1) // [N, 1]
	keep := valid
	if f.Filters {
		topK, topP, minP := p.topK, p.topP, p.minP
		// min-p: p ≥ minP·pmax ⟺ z ≥ zmax + ln(minP).
		tau := Add(zmax, InsertAxes(Log(Max(minP, Scalar(g, dtypes.Float32, 1e-30))), -1))
		tau = Where(InsertAxes(GreaterThan(minP, ZerosLike(minP)), -1), tau, BroadcastToDims(negInf, N, 1))
		minPKeep := GreaterOrEqual(z, tau)
		// Top-k and top-p select on a 30-bit key of z's distance below the row's maximum
		// (bins of 80/2³⁰ in log-probability, far below float32 rounding of real logits),
		// found by a few histograms over its digits instead of a 32-step bisection: about a
		// third of the passes over the vocabulary.
		key, inRange := selectionKey(z, zmax, valid)
		digits := newKeyDigits(key)
		// top-k: the smallest key whose tokens at or above it number at least k.
		k := ConvertDType(InsertAxes(topK, -1), dtypes.Float32)
		kKey := digits.selectKey(ConvertDType(inRange, dtypes.Float32), k)
		kOn := InsertAxes(And(GreaterThan(topK, ZerosLike(topK)), LessThan(topK, Scalar(g, dtypes.Int32, V))), -1)
		kKeep := Or(LogicalNot(kOn), LessOrEqual(key, kKey))
		// top-p over the distribution renormalised after min-p and top-k.
		survive := And(And(inRange, minPKeep), kKeep)
		mass := Where(survive, Exp(Sub(z, zmax)), ZerosLike(z))
		target := Mul(ReduceAndKeep(mass, ReduceSum, -1), InsertAxes(topP, -1))
		pKey := digits.selectKey(mass, target)
		pOn := InsertAxes(LessThan(topP, OnesLike(topP)), -1)
		pKeep := Or(LogicalNot(pOn), LessOrEqual(key, pKey))
		keep = And(keep, And(And(minPKeep, kKeep), pKeep))
		keep = And(keep, Or(inRange, LogicalNot(Or(kOn, pOn))))
	}
	return shapedLogits{raw: raw, z: z, keep: keep, greedy: greedyTokens, isGreedy: isGreedy, key: p.key, counter: p.counter}
}

// logprobOutputs are, for raw logits [N, V] and chosen ids [N], the chosen ids' logprobs
// [N] and the top maxTopLogprobs ids [N, 20] int32 and logprobs [N, 20], over the text
// vocabulary (rows at or beyond textVocab are never reported).
func logprobOutputs(raw, chosenIDs *Node, textVocab int) []*Node {
	g := raw.Graph()
	N, V := raw.Shape().Dimensions[0], raw.Shape().Dimensions[1]
	vocabIota := Iota(g, shapes.Make(dtypes.Int32, N, V), 1)
	negInf := Infinity(g, dtypes.Float32, -1)
	valid := LessThan(vocabIota, Scalar(g, dtypes.Int32, textVocab))
	lp := LogSoftmax(Where(valid, raw, BroadcastToDims(negInf, N, V)), -1)
	chosen := ReduceSum(Where(Equal(vocabIota, InsertAxes(chosenIDs, -1)), lp, ZerosLike(lp)), -1)
	ids, vals := topK(lp, maxTopLogprobs)
	return []*Node{chosen, ids, vals}
}

// topBlock is the block size of topK's first pass.
const topBlock = 512

// topK returns the k largest values of x [N, V] per row and their indices ([N, k] int32 and
// [N, k]), largest first. The k largest lie in the k blocks (of topBlock) with the largest
// maxima — a block ranked below k of them holds no value above k others — so k argmax
// passes run over those k blocks only, not over V: about two passes over the row in all.
func topK(x *Node, k int) (ids, vals *Node) {
	g := x.Graph()
	N, V := x.Shape().Dimensions[0], x.Shape().Dimensions[1]
	negInf := Infinity(g, dtypes.Float32, -1)
	bs := min(topBlock, V)
	nb := (V + bs - 1) / bs
	if pad := nb*bs - V; pad > 0 {
		x = Concatenate([]*Node{x, BroadcastToDims(negInf, N, pad)}, -1)
	}
	blocks := Reshape(x, N, nb, bs)
	bmax := ReduceMax(blocks, -1) // [N, nb]
	kb := min(k, nb)
	blockIota := Iota(g, shapes.Make(dtypes.Int32, N, nb), 1)
	sel := make([]*Node, kb)
	for i := range sel {
		b := ArgMax(bmax, -1, dtypes.Int32)
		sel[i] = InsertAxes(b, -1)
		bmax = Where(Equal(blockIota, InsertAxes(b, -1)), BroadcastToDims(negInf, N, nb), bmax)
	}
	chosenBlocks := Concatenate(sel, -1) // [N, kb]
	rows := Iota(g, shapes.Make(dtypes.Int32, N, kb), 0)
	idx := Concatenate([]*Node{InsertAxes(rows, -1), InsertAxes(chosenBlocks, -1)}, -1) // [N, kb, 2]
	cand := Reshape(Gather(blocks, idx), N, kb*bs)
	candID := Reshape(Add(MulScalar(InsertAxes(chosenBlocks, -1), bs), Iota(g, shapes.Make(dtypes.Int32, N, kb, bs), 2)), N, kb*bs)
	candIota := Iota(g, shapes.Make(dtypes.Int32, N, kb*bs), 1)
	outIDs := make([]*Node, k)
	outVals := make([]*Node, k)
	for i := 0; i < k; i++ {
		pos := InsertAxes(ArgMax(cand, -1, dtypes.Int32), -1)
		at := Equal(candIota, pos)
		outIDs[i] = ReduceAndKeep(Where(at, candID, ZerosLike(candID)), ReduceSum, -1)
		outVals[i] = ReduceAndKeep(cand, ReduceMax, -1)
		cand = Where(at, BroadcastToDims(negInf, N, kb*bs), cand)
	}
	return Concatenate(outIDs, -1), Concatenate(outVals, -1)
}

// Selection keys: z within selectionRange of the row's maximum maps to
// floor((zmax−z)/selectionRange·2³⁰), an int32 in [0, 2³⁰); anything further below (or
// outside the text vocabulary) is out of range and never kept by top-k or top-p.
const (
	selectionRange = 80
	selectionBits  = 30
)

func selectionKey(z, zmax, valid *Node) (key, inRange *Node) {
	g := z.Graph()
	u := MulScalar(Sub(zmax, z), float64(int64(1)<<selectionBits)/selectionRange)
	limit := Scalar(g, dtypes.Float32, float32(int64(1)<<selectionBits))
	inRange = And(valid, LessThan(u, limit))
	key = ConvertDType(Floor(Where(inRange, u, ZerosLike(u))), dtypes.Int32)
	key = Where(inRange, key, BroadcastToDims(Scalar(g, dtypes.Int32, int32(1)<<selectionBits), key.Shape().Dimensions...))
	return key, inRange
}

// histogramDigits is the bits per histogram level for a vocabulary of v tokens: about
// log2(v), between 4 and 10, so each level's histogram is no wider than the row.
func histogramDigits(v int) int {
	b := bits.Len(uint(max(v, 2) - 1))
	return min(10, max(4, b))
}

// keyDigits are a selection key's b-bit digits, most significant first, with the scatter
// indices of each digit's histogram, computed once for every selection over the same keys.
type keyDigits struct {
	digits []*Node // [N, V] int32 each
	idx    []*Node // [N, V, 2]: (row, digit)
	bins   int
	// Prefix sums over the bins as two small products: within blocks of lo bins, then over
	// the blocks' totals (a [bins, bins] product costs more than the histograms).
	lo, hi             int
	triLo, triHiStrict *Node
}

// triangle is the [n, n] matrix with ones where i ≤ j (strict: i < j).
func triangle(g *Graph, n int, strict bool) *Node {
	tri := make([][]float32, n)
	for i := range tri {
		tri[i] = make([]float32, n)
		for j := i; j < n; j++ {
			if j > i || !strict {
				tri[i][j] = 1
			}
		}
	}
	return Const(g, tri)
}

// prefix returns the inclusive prefix sums of hist [N, bins] along the bins.
func (d *keyDigits) prefix(hist *Node) *Node {
	N := hist.Shape().Dimensions[0]
	h := Reshape(hist, N, d.hi, d.lo)
	inner := Einsum("nij,jk->nik", h, d.triLo)
	before := Einsum("ni,ij->nj", ReduceSum(h, -1), d.triHiStrict) // totals of the blocks before
	return Reshape(Add(inner, InsertAxes(before, -1)), N, d.bins)
}

func newKeyDigits(key *Node) *keyDigits {
	g := key.Graph()
	N, V := key.Shape().Dimensions[0], key.Shape().Dimensions[1]
	b := histogramDigits(V)
	d := &keyDigits{bins: 1 << b, lo: 1 << (b - b/2), hi: 1 << (b / 2)}
	d.triLo, d.triHiStrict = triangle(g, d.lo, false), triangle(g, d.hi, true)
	rows := InsertAxes(Iota(g, shapes.Make(dtypes.Int32, N, V), 0), -1)
	binsN := Scalar(g, dtypes.Int32, int32(d.bins))
	for level := (selectionBits+b-1)/b - 1; level >= 0; level-- {
		digit := Div(key, Scalar(g, dtypes.Int32, int32(1)<<(b*level)))
		digit = Sub(digit, Mul(Div(digit, binsN), binsN)) // out-of-range keys land in some bin with weight 0
		d.digits = append(d.digits, digit)
		d.idx = append(d.idx, Concatenate([]*Node{rows, InsertAxes(digit, -1)}, -1))
	}
	return d
}

// selectKey returns, per row, the smallest key K [N, 1] such that the weights [N, V] of
// the tokens with key ≤ K sum to at least target [N, 1] (the largest key reached when none
// does): one histogram per digit, each restricted to the bin the previous digit chose.
func (d *keyDigits) selectKey(weight, target *Node) *Node {
	g := weight.Graph()
	N := weight.Shape().Dimensions[0]
	binIota := Iota(g, shapes.Make(dtypes.Int32, N, d.bins), 1)
	binsN := Scalar(g, dtypes.Int32, int32(d.bins))
	prefix := ZerosLike(target)                         // weight of the bins before the chosen ones
	chosen := Zeros(g, shapes.Make(dtypes.Int32, N, 1)) // the key's digits so far
	w := weight                                         // the weights of the tokens still in the chosen bins
	for i, digit := range d.digits {
		hist := ScatterSum(Zeros(g, shapes.Make(dtypes.Float32, N, d.bins)), d.idx[i], w, false, false)
		cum := Add(d.prefix(hist), prefix) // weight up to and including each bin
		first := ReduceAndKeep(ConvertDType(LessThan(cum, target), dtypes.Int32), ReduceSum, -1)
		first = Min(first, Scalar(g, dtypes.Int32, int32(d.bins-1)))
		atFirst := Equal(binIota, first)
		prefix = Sub(ReduceAndKeep(Where(atFirst, cum, ZerosLike(cum)), ReduceSum, -1), ReduceAndKeep(Where(atFirst, hist, ZerosLike(hist)), ReduceSum, -1))
		chosen = Add(Mul(chosen, binsN), first)
		if i < len(d.digits)-1 {
			w = Where(Equal(digit, first), w, ZerosLike(w))
		}
	}
	return chosen
}

// tokenSums adds values [N, L] at token ids [N, L] (padding = V) into [N, V] float32.
func tokenSums(ids, values *Node, N, V int) *Node {
	g := ids.Graph()
	L := ids.Shape().Dimensions[1]
	rows := Iota(g, shapes.Make(dtypes.Int32, N, L), 0)
	idx := Concatenate([]*Node{InsertAxes(rows, -1), InsertAxes(ids, -1)}, -1) // [N, L, 2]
	sums := ScatterSum(Zeros(g, shapes.Make(dtypes.Float32, N, V+1)), idx, values, false, false)
	return Slice(sums, AxisRange(), AxisRange(0, V))
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// tokenCounts counts token ids [N, L] (padding = V) into [N, V] float32.
func tokenCounts(ids *Node, N, V int) *Node {
	g := ids.Graph()
	L := ids.Shape().Dimensions[1]
	rows := Iota(g, shapes.Make(dtypes.Int32, N, L), 0)
	idx := Concatenate([]*Node{InsertAxes(rows, -1), InsertAxes(ids, -1)}, -1) // [N, L, 2]
	counts := ScatterSum(Zeros(g, shapes.Make(dtypes.Float32, N, V+1)), idx, Ones(g, shapes.Make(dtypes.Float32, N, L)), false, false)
	return Slice(counts, AxisRange(), AxisRange(0, V))
}

// gumbelNoise is −log(−log(U)) with U uniform in (0, 1) from a counter-based hash of
// (request key, step counter, vocabulary index): reproducible per request and position.
func gumbelNoise(key, counter *Node, N, V int) *Node {
	g := key.Graph()
	row := hash32(Add(hash32(key), MulScalar(counter, 0x9E3779B9)))             // [N]
	col := MulScalar(Iota(g, shapes.Make(dtypes.Uint32, N, V), 1), 0x85EBCA6B)  // [N, V]
	bits := hash32(BitwiseXor(col, BroadcastToDims(InsertAxes(row, -1), N, V))) // [N, V]
	// 23 random bits: (k+0.5)/2²³ stays below 1 in float32 (with 24 bits the largest value
	// rounds to 1, whose Gumbel noise is +∞, and −∞ + ∞ is NaN for a masked token).
	u := ConvertDType(Div(bits, Scalar(g, dtypes.Uint32, 512)), dtypes.Float32)
	u = MulScalar(AddScalar(u, 0.5), 1.0/(1<<23)) // (0, 1)
	return Neg(Log(Neg(Log(u))))
}

// hash32 is Chris Wellons' lowbias32 integer hash, with shifts written as divisions (the
// pure-Go backend has no shift ops; uint32 arithmetic wraps as the hash needs).
func hash32(x *Node) *Node {
	g := x.Graph()
	shr := func(v *Node, n int) *Node { return Div(v, Scalar(g, dtypes.Uint32, uint32(1)<<n)) }
	x = BitwiseXor(x, shr(x, 16))
	x = MulScalar(x, 0x7feb352d)
	x = BitwiseXor(x, shr(x, 15))
	x = MulScalar(x, 0x846ca68b)
	return BitwiseXor(x, shr(x, 16))
}

// seedKey folds a 64-bit request seed into the sampler's 32-bit key.
func seedKey(seed int64) uint32 {
	s := uint64(seed)
	return hash32Host(uint32(s) ^ hash32Host(uint32(s>>32)^0x5bd1e995))
}

// hash32Host is hash32 on the host.
func hash32Host(x uint32) uint32 {
	x ^= x >> 16
	x *= 0x7feb352d
	x ^= x >> 15
	x *= 0x846ca68b
	x ^= x >> 16
	return x
}

// listWidths are the fixed widths of the full sampler's per-row lists.
type listWidths struct{ out, prompt, banned, bias int }

// padFixed extends every per-row array to n rows with inert rows (greedy, no penalties)
// and lays the token lists out at the widths w (padding entries are the vocabulary size:
// counted nowhere). Lists a program with features f does not read get width 1.
func (rows *samplerRows) padFixed(n, vocab int, w listWidths, f samplerFeatures) {
	for len(rows.Temperature) < n {
		rows.Temperature = append(rows.Temperature, 0)
		rows.RNGKey = append(rows.RNGKey, 0)
		rows.RNGCounter = append(rows.RNGCounter, 0)
		rows.TopK = append(rows.TopK, 0)
		rows.TopP = append(rows.TopP, 1)
		rows.MinP = append(rows.MinP, 0)
		rows.Presence = append(rows.Presence, 0)
		rows.Frequency = append(rows.Frequency, 0)
		rows.Repetition = append(rows.Repetition, 1)
	}
	if !f.Penalties {
		w.out, w.prompt, w.banned = 1, 1, 1
	}
	if !f.Bias {
		w.bias = 1
	}
	rows.OutputTokens, rows.L = padLists(rows.outLists, n, w.out, vocab)
	rows.PromptTokens, rows.Lp = padLists(rows.promptLists, n, w.prompt, vocab)
	rows.Banned, rows.Lb = padLists(rows.bannedLists, n, w.banned, vocab)
	rows.BiasIDs = make([]int32, n*w.bias)
	rows.BiasValues = make([]float32, n*w.bias)
	rows.Lg = w.bias
	for i := range rows.BiasIDs {
		rows.BiasIDs[i] = int32(vocab)
	}
	for i, b := range rows.biasLists {
		copy(rows.BiasIDs[i*w.bias:(i+1)*w.bias], b.ids)
		copy(rows.BiasValues[i*w.bias:(i+1)*w.bias], b.values)
	}
	rows.W = 1
	if f.Mask {
		rows.W = maskWords(vocab)
	}
	rows.MaskWords = make([]uint32, n*rows.W)
	for i := 0; i < n; i++ {
		row := rows.MaskWords[i*rows.W : (i+1)*rows.W]
		if i < len(rows.masks) && rows.masks[i] != nil {
			copy(row, rows.masks[i]) // words past the grammar's vocabulary stay 0: never sampled
			continue
		}
		for j := range row {
			row[j] = ^uint32(0)
		}
	}
}

// padLists lays out per-row token lists as [n, width] (each list at most width long).
func padLists(lists [][]int32, n, width, vocab int) ([]int32, int) {
	out := make([]int32, n*width)
	for i := range out {
		out[i] = int32(vocab)
	}
	for i, l := range lists {
		copy(out[i*width:(i+1)*width], l)
	}
	return out, width
}

// addRow appends one row's parameters (lists unpadded) to rows.
func (rows *samplerRows) addRow(p *SamplingParams, key, counter uint32, out, prompt, banned []int32, bias logitBias, mask []uint32) {
	rows.Temperature = append(rows.Temperature, p.Temperature)
	rows.RNGKey = append(rows.RNGKey, key)
	rows.RNGCounter = append(rows.RNGCounter, counter)
	rows.TopK = append(rows.TopK, int32(p.TopK))
	rows.TopP = append(rows.TopP, p.TopP)
	rows.MinP = append(rows.MinP, p.MinP)
	rows.Presence = append(rows.Presence, p.PresencePenalty)
	rows.Frequency = append(rows.Frequency, p.FrequencyPenalty)
	rows.Repetition = append(rows.Repetition, p.RepetitionPenalty)
	rows.outLists = append(rows.outLists, out)
	rows.promptLists = append(rows.promptLists, prompt)
	rows.bannedLists = append(rows.bannedLists, banned)
	rows.biasLists = append(rows.biasLists, bias)
	rows.masks = append(rows.masks, mask)
}
