package engine

import (
	"math/bits"
	"slices"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/pkg/core/dtypes"
	. "github.com/gomlx/gomlx/pkg/core/graph" //nolint:revive // the graph DSL reads best unqualified
	"github.com/gomlx/gomlx/pkg/core/shapes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/tpuserve/tpuserve/model"
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

// allowedByMask expands bitmask words [N, W] uint32 into chip c's [N, Width] booleans:
// token v is allowed when bit v%32 of word v/32 is set.
func allowedByMask(words *Node, lg *model.VocabShards, c int) *Node {
	g := words.Graph()
	N, W := words.Shape().Dimensions[0], words.Shape().Dimensions[1]
	pow := make([]uint32, 32)
	for b := range pow {
		pow[b] = 1 << b
	}
	if lg.Mesh.Chips() == 1 {
		// A bitwise and with each bit's value (the pure-Go backend has no shifts).
		bits := BitwiseAnd(BroadcastToDims(InsertAxes(words, -1), N, W, 32), BroadcastToDims(Reshape(Const(g, pow), 1, 1, 32), N, W, 32))
		bits = Slice(Reshape(bits, N, W*32), AxisRange(), AxisRange(0, lg.Width))
		return NotEqual(bits, ZerosLike(bits))
	}
	// A vocabulary slice need not start on a word: gather each column's word and bit value
	// (as rows: gathering scalars from a rank-1 operand fails on SimpleGo).
	ids := Add(Iota(g, shapes.Make(dtypes.Int32, lg.Width), 0), lg.Offsets[c])
	word := Div(ids, Scalar(g, dtypes.Int32, 32))
	bit := Sub(ids, MulScalar(word, 32))
	colWords := Transpose(Gather(Transpose(words, 0, 1), InsertAxes(word, -1)), 0, 1) // [N, Width]
	powCol := make([][]uint32, 32)
	for b := range powCol {
		powCol[b] = []uint32{pow[b]}
	}
	colBit := Reshape(Gather(Const(g, powCol), InsertAxes(bit, -1)), 1, lg.Width)
	bits := BitwiseAnd(colWords, BroadcastToDims(colBit, N, lg.Width))
	return NotEqual(bits, ZerosLike(bits))
}

// buildSampler returns the program tail that turns the logits [N, V] — split on the
// vocabulary across the chips of lg's mesh — into sampled token ids [N] int32 (and, with
// Logprobs, the chosen token's logprob [N], and the top maxTopLogprobs ids [N, 20] int32
// and logprobs [N, 20]). logits rows must already be the sampling rows; vocabulary rows at
// or beyond textVocab are never sampled nor reported. Order as vLLM: penalties,
// temperature, min-p, top-k, top-p, then a Gumbel-max draw from a counter-based RNG keyed
// per request and by the global vocabulary id, so a request's draws depend neither on what
// else is in the batch nor on how many chips share the vocabulary. Every chip works on its
// columns; what crosses chips are per-row scalars (maxima, argmaxes, sums), the top-k/top-p
// histograms and the top-20 logprob candidates, never the [N, V] logits.
func buildSampler(f samplerFeatures, textVocab int) func(lg *model.VocabShards, extra []*Node) []*Node {
	return func(lg *model.VocabShards, extra []*Node) []*Node {
		sl := shapeLogits(f, textVocab, lg, extra)
		sampledTokens := sl.draw(lg, sl.key, sl.counter)
		tokens := Where(sl.isGreedy, sl.greedy, sampledTokens)
		if !f.Logprobs {
			return []*Node{tokens}
		}
		return append([]*Node{tokens}, logprobOutputs(sl.raw, tokens, textVocab)...)
	}
}

// shapedLogits are the sampler's view of the logits after every transformation but the
// draw, per chip: raw (the model's, padding masked, for logprobs), z (biased, masked,
// penalised, over the temperature), keep (what top-k/top-p/min-p leave) and the global ids;
// then the greedy choice [N], which rows are greedy [N], and the rows' RNG key and counter.
type shapedLogits struct {
	raw              *model.VocabShards
	z, keep, ids     []*Node
	greedy, isGreedy *Node
	key, counter     *Node
}

// shapeLogits applies the sampler's transformations to lg, reading extra in
// samplerRows.inputs order. Order as vLLM: logit bias, grammar mask, penalties,
// temperature, min-p, top-k, top-p. The plain sampler and the speculative verifier share
// it, so a verified position's distribution is exactly the one plain sampling draws from.
func shapeLogits(f samplerFeatures, textVocab int, lg *model.VocabShards, extra []*Node) shapedLogits {
	g := lg.Parts[0].Graph()
	N, W, V := lg.Parts[0].Shape().Dimensions[0], lg.Width, lg.Vocab
	temperature, key, counter := extra[0], extra[1], extra[2]
	next := 3
	negInf := BroadcastToDims(Infinity(g, dtypes.Float32, -1), N, W)
	ids := lg.Each(lg.GlobalIDs)
	// Each chip's first vocabulary id, for its token lists (nil on one chip: no remapping).
	offset := func(c int) *Node {
		if lg.Mesh.Chips() == 1 {
			return nil
		}
		return lg.Offsets[c]
	}

	// Padding rows of the vocabulary are never sampled, nor reported.
	valid := lg.Each(func(c int) *Node { return LessThan(ids[c], Scalar(g, dtypes.Int32, textVocab)) })
	logits := lg.Each(func(c int) *Node { return Where(valid[c], lg.Parts[c], negInf) })
	raw := &model.VocabShards{Mesh: lg.Mesh, Parts: slices.Clone(logits), Offsets: lg.Offsets, Index: lg.Index, Width: W, Vocab: V}
	if f.Bias {
		// logit_bias is added before penalties and sampling, as vLLM's logits
		// processors do; logprobs stay the raw model's. Its inputs come last.
		at := 3 + 6*boolInt(f.Penalties) + 3*boolInt(f.Filters)
		logits = lg.Each(func(c int) *Node { return Add(logits[c], tokenSums(extra[at], extra[at+1], offset(c), N, W)) })
	}
	if f.Mask {
		// A grammar's bitmask: tokens it rules out are never sampled (as vLLM applies
		// structured-output bitmasks); logprobs stay the raw model's.
		at := 3 + 6*boolInt(f.Penalties) + 3*boolInt(f.Filters) + 2*boolInt(f.Bias)
		logits = lg.Each(func(c int) *Node { return Where(allowedByMask(extra[at], lg, c), logits[c], negInf) })
	}

	if f.Penalties {
		presence, frequency, repetition := extra[next], extra[next+1], extra[next+2]
		outTok, promptTok, banned := extra[next+3], extra[next+4], extra[next+5]
		next += 6
		rp := InsertAxes(repetition, -1)
		logits = lg.Each(func(c int) *Node {
			x := logits[c]
			outCounts := tokenCounts(outTok, offset(c), N, W)
			promptCounts := tokenCounts(promptTok, offset(c), N, W)
			seen := GreaterThan(Add(outCounts, promptCounts), ZerosLike(outCounts))
			penalized := Where(GreaterThan(x, ZerosLike(x)), Div(x, rp), Mul(x, rp))
			x = Where(seen, penalized, x)
			x = Sub(x, Mul(InsertAxes(frequency, -1), outCounts))
			x = Sub(x, Mul(InsertAxes(presence, -1), ConvertDType(GreaterThan(outCounts, ZerosLike(outCounts)), dtypes.Float32)))
			isBanned := GreaterThan(tokenCounts(banned, offset(c), N, W), ZerosLike(outCounts))
			return Where(isBanned, negInf, x)
		})
	}
	greedyTokens := lg.ArgMax(logits)[0]

	isGreedy := LessThan(temperature, Scalar(g, dtypes.Float32, samplingEps))
	safeT := InsertAxes(Where(isGreedy, OnesLike(temperature), temperature), -1)
	z := lg.Each(func(c int) *Node { return Div(logits[c], safeT) }) // [N, W] per chip
	keep := valid
	if f.Filters {
		zmax := lg.Reduce(z, backends.ReduceOpMax)[0] // [N, 1]
		topK, topP, minP := extra[next], extra[next+1], extra[next+2]
		// min-p: p ≥ minP·pmax ⟺ z ≥ zmax + ln(minP).
		tau := Add(zmax, InsertAxes(Log(Max(minP, Scalar(g, dtypes.Float32, 1e-30))), -1))
		tau = Where(InsertAxes(GreaterThan(minP, ZerosLike(minP)), -1), tau, BroadcastToDims(Infinity(g, dtypes.Float32, -1), N, 1))
		minPKeep := lg.Each(func(c int) *Node { return GreaterOrEqual(z[c], tau) })
		// Top-k and top-p select on a 30-bit key of z's distance below the row's maximum
		// (bins of 80/2³⁰ in log-probability, far below float32 rounding of real logits),
		// found by a few histograms over its digits instead of a 32-step bisection: about a
		// third of the passes over the vocabulary. The histograms are summed across chips.
		keys, inRange := make([]*Node, len(z)), make([]*Node, len(z))
		for c := range z {
			keys[c], inRange[c] = selectionKey(z[c], zmax, valid[c])
		}
		digits := newKeyDigits(lg, keys)
		// top-k: the smallest key whose tokens at or above it number at least k.
		k := ConvertDType(InsertAxes(topK, -1), dtypes.Float32)
		kKey := digits.selectKey(lg.Each(func(c int) *Node { return ConvertDType(inRange[c], dtypes.Float32) }), k)
		kOn := InsertAxes(And(GreaterThan(topK, ZerosLike(topK)), LessThan(topK, Scalar(g, dtypes.Int32, V))), -1)
		kKeep := lg.Each(func(c int) *Node { return Or(LogicalNot(kOn), LessOrEqual(keys[c], kKey)) })
		// top-p over the distribution renormalised after min-p and top-k.
		mass := lg.Each(func(c int) *Node {
			survive := And(And(inRange[c], minPKeep[c]), kKeep[c])
			return Where(survive, Exp(Sub(z[c], zmax)), ZerosLike(z[c]))
		})
		target := Mul(lg.Reduce(mass, backends.ReduceOpSum)[0], InsertAxes(topP, -1))
		pKey := digits.selectKey(mass, target)
		pOn := InsertAxes(LessThan(topP, OnesLike(topP)), -1)
		keep = lg.Each(func(c int) *Node {
			pKeep := Or(LogicalNot(pOn), LessOrEqual(keys[c], pKey))
			kept := And(valid[c], And(And(minPKeep[c], kKeep[c]), pKeep))
			return And(kept, Or(inRange[c], LogicalNot(Or(kOn, pOn))))
		})
	}
	return shapedLogits{raw: raw, z: z, keep: keep, ids: ids, greedy: greedyTokens, isGreedy: isGreedy, key: key, counter: counter}
}

// draw is the Gumbel-max draw over what the filters keep, with the noise keyed by
// (key, counter) [N] and the global vocabulary id.
func (sl shapedLogits) draw(lg *model.VocabShards, key, counter *Node) *Node {
	return sl.drawFrom(lg, sl.z, sl.keep, key, counter)
}

// drawFrom is the Gumbel-max draw over logits z where keep holds (per chip), the noise
// keyed by (key, counter) [N] and the global vocabulary id.
func (sl shapedLogits) drawFrom(lg *model.VocabShards, z, keep []*Node, key, counter *Node) *Node {
	g := lg.Parts[0].Graph()
	N, W := lg.Parts[0].Shape().Dimensions[0], lg.Width
	negInf := BroadcastToDims(Infinity(g, dtypes.Float32, -1), N, W)
	// Tokens ruled out by their logit (banned, a grammar's mask) stay at −∞: the noise is
	// always finite (see gumbelNoise).
	perturbed := lg.Each(func(c int) *Node {
		uids := Iota(g, shapes.Make(dtypes.Uint32, N, W), 1) // one chip: the ids are the columns
		if lg.Mesh.Chips() > 1 {
			uids = ConvertDType(sl.ids[c], dtypes.Uint32)
		}
		return Where(keep[c], Add(z[c], gumbelNoise(key, counter, uids)), negInf)
	})
	return lg.ArgMax(perturbed)[0]
}

// logprobOutputs are, for raw logits [N, V] (split on the vocabulary) and chosen ids [N],
// the chosen ids' logprobs [N] and the top maxTopLogprobs ids [N, 20] int32 and logprobs
// [N, 20], over the text vocabulary (rows at or beyond textVocab are never reported): the
// softmax normaliser from the chips' maxima and sums, each chip's top 20, then the best 20
// of the chips' candidates.
func logprobOutputs(raw *model.VocabShards, chosenIDs *Node, textVocab int) []*Node {
	g := raw.Parts[0].Graph()
	N, W := raw.Parts[0].Shape().Dimensions[0], raw.Width
	negInf := BroadcastToDims(Infinity(g, dtypes.Float32, -1), N, W)
	ids := raw.Each(raw.GlobalIDs)
	x := raw.Each(func(c int) *Node {
		return Where(LessThan(ids[c], Scalar(g, dtypes.Int32, textVocab)), raw.Parts[c], negInf)
	})
	xmax := raw.Reduce(x, backends.ReduceOpMax)
	shifted := raw.Each(func(c int) *Node { return Sub(x[c], xmax[c]) })
	sums := raw.Reduce(raw.Each(func(c int) *Node { return Exp(shifted[c]) }), backends.ReduceOpSum)
	lp := raw.Each(func(c int) *Node { return Sub(shifted[c], Log(sums[c])) })
	chosen := raw.Mesh.AllReduce(raw.Each(func(c int) *Node {
		return ReduceSum(Where(Equal(ids[c], InsertAxes(chosenIDs, -1)), lp[c], ZerosLike(lp[c])), -1)
	}), backends.ReduceOpSum)[0]
	topIDs, topVals := make([]*Node, len(lp)), make([]*Node, len(lp))
	for c := range lp {
		local, vals := topK(lp[c], maxTopLogprobs)
		topIDs[c], topVals[c] = Add(local, raw.Offsets[c]), vals
	}
	if raw.Mesh.Chips() == 1 {
		return []*Node{chosen, topIDs[0], topVals[0]}
	}
	candIDs, candVals := raw.Gather(topIDs)[0], raw.Gather(topVals)[0] // [N, chips·20]
	return append([]*Node{chosen}, bestOf(candIDs, candVals, maxTopLogprobs)...)
}

// bestOf picks the k largest of candidates vals [N, C] with their ids [N, C], largest
// first (k argmax passes over the few candidates).
func bestOf(ids, vals *Node, k int) []*Node {
	g := vals.Graph()
	N, C := vals.Shape().Dimensions[0], vals.Shape().Dimensions[1]
	negInf := BroadcastToDims(Infinity(g, dtypes.Float32, -1), N, C)
	candIota := Iota(g, shapes.Make(dtypes.Int32, N, C), 1)
	outIDs, outVals := make([]*Node, k), make([]*Node, k)
	for i := 0; i < k; i++ {
		at := Equal(candIota, InsertAxes(ArgMax(vals, -1, dtypes.Int32), -1))
		outIDs[i] = ReduceAndKeep(Where(at, ids, ZerosLike(ids)), ReduceSum, -1)
		outVals[i] = ReduceAndKeep(vals, ReduceMax, -1)
		vals = Where(at, negInf, vals)
	}
	return []*Node{Concatenate(outIDs, -1), Concatenate(outVals, -1)}
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
	return bestOfIDs(candID, cand, k)
}

// bestOfIDs is bestOf returning (ids, vals).
func bestOfIDs(ids, vals *Node, k int) (*Node, *Node) {
	r := bestOf(ids, vals, k)
	return r[0], r[1]
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
// indices of each digit's histogram, computed once for every selection over the same keys:
// digits[level][c] and idx[level][c] are chip c's.
type keyDigits struct {
	lg     *model.VocabShards
	digits [][]*Node // [N, Width] int32 each
	idx    [][]*Node // [N, Width, 2]: (row, digit)
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

// newKeyDigits splits every chip's keys [N, Width] into digits sized for the whole
// vocabulary (so the histograms, summed across chips, are those of one chip).
func newKeyDigits(lg *model.VocabShards, keys []*Node) *keyDigits {
	g := keys[0].Graph()
	N, W := keys[0].Shape().Dimensions[0], keys[0].Shape().Dimensions[1]
	b := histogramDigits(lg.Vocab)
	d := &keyDigits{lg: lg, bins: 1 << b, lo: 1 << (b - b/2), hi: 1 << (b / 2)}
	d.triLo, d.triHiStrict = triangle(g, d.lo, false), triangle(g, d.hi, true)
	rows := InsertAxes(Iota(g, shapes.Make(dtypes.Int32, N, W), 0), -1)
	binsN := Scalar(g, dtypes.Int32, int32(d.bins))
	for level := (selectionBits+b-1)/b - 1; level >= 0; level-- {
		digits, idx := make([]*Node, len(keys)), make([]*Node, len(keys))
		for c, key := range keys {
			digit := Div(key, Scalar(g, dtypes.Int32, int32(1)<<(b*level)))
			digits[c] = Sub(digit, Mul(Div(digit, binsN), binsN)) // out-of-range keys land in some bin with weight 0
			idx[c] = Concatenate([]*Node{rows, InsertAxes(digits[c], -1)}, -1)
		}
		d.digits = append(d.digits, digits)
		d.idx = append(d.idx, idx)
	}
	return d
}

// selectKey returns, per row, the smallest key K [N, 1] such that the weights (one
// [N, Width] per chip) of the tokens with key ≤ K sum to at least target [N, 1] (the
// largest key reached when none does): one histogram per digit, each chip's summed across
// the chips and restricted to the bin the previous digit chose.
func (d *keyDigits) selectKey(weight []*Node, target *Node) *Node {
	g := target.Graph()
	N := target.Shape().Dimensions[0]
	binIota := Iota(g, shapes.Make(dtypes.Int32, N, d.bins), 1)
	binsN := Scalar(g, dtypes.Int32, int32(d.bins))
	prefix := ZerosLike(target)                         // weight of the bins before the chosen ones
	chosen := Zeros(g, shapes.Make(dtypes.Int32, N, 1)) // the key's digits so far
	w := slices.Clone(weight)                           // the weights of the tokens still in the chosen bins
	for i, digits := range d.digits {
		hist := d.lg.Mesh.AllReduce(d.lg.Each(func(c int) *Node {
			return ScatterSum(Zeros(g, shapes.Make(dtypes.Float32, N, d.bins)), d.idx[i][c], w[c], false, false)
		}), backends.ReduceOpSum)[0]
		cum := Add(d.prefix(hist), prefix) // weight up to and including each bin
		first := ReduceAndKeep(ConvertDType(LessThan(cum, target), dtypes.Int32), ReduceSum, -1)
		first = Min(first, Scalar(g, dtypes.Int32, int32(d.bins-1)))
		atFirst := Equal(binIota, first)
		prefix = Sub(ReduceAndKeep(Where(atFirst, cum, ZerosLike(cum)), ReduceSum, -1), ReduceAndKeep(Where(atFirst, hist, ZerosLike(hist)), ReduceSum, -1))
		chosen = Add(Mul(chosen, binsN), first)
		if i < len(d.digits)-1 {
			for c := range w {
				w[c] = Where(Equal(digits[c], first), w[c], ZerosLike(w[c]))
			}
		}
	}
	return chosen
}

// localTokens maps token ids [N, L] (padding = V) to a chip's columns: id − offset where
// it falls in [0, width), else width (a column that is dropped), and returns their scatter
// indices [N, L, 2] (row, column).
func localTokens(ids, offset *Node, width int) *Node {
	g := ids.Graph()
	N, L := ids.Shape().Dimensions[0], ids.Shape().Dimensions[1]
	local := ids // offset nil: one chip holds the whole vocabulary and padding is already V
	if offset != nil {
		local = Sub(ids, offset)
		mine := And(GreaterOrEqual(local, ZerosLike(local)), LessThan(local, Scalar(g, dtypes.Int32, width)))
		local = Where(mine, local, BroadcastToDims(Scalar(g, dtypes.Int32, width), N, L))
	}
	rows := Iota(g, shapes.Make(dtypes.Int32, N, L), 0)
	return Concatenate([]*Node{InsertAxes(rows, -1), InsertAxes(local, -1)}, -1)
}

// tokenSums adds values [N, L] at token ids [N, L] (padding = V) into a chip's columns
// [N, width] float32 (columns offset… offset+width−1).
func tokenSums(ids, values, offset *Node, N, width int) *Node {
	g := ids.Graph()
	sums := ScatterSum(Zeros(g, shapes.Make(dtypes.Float32, N, width+1)), localTokens(ids, offset, width), values, false, false)
	return Slice(sums, AxisRange(), AxisRange(0, width))
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// tokenCounts counts token ids [N, L] (padding = V) into a chip's columns [N, width] float32.
func tokenCounts(ids, offset *Node, N, width int) *Node {
	g := ids.Graph()
	L := ids.Shape().Dimensions[1]
	return tokenSums(ids, Ones(g, shapes.Make(dtypes.Float32, N, L)), offset, N, width)
}

// gumbelNoise is −log(−log(U)) with U uniform in (0, 1) from a counter-based hash of
// (request key, step counter, vocabulary id) for the ids [N, W] uint32 of a chip's columns:
// reproducible per request and position, whichever chip holds the column.
func gumbelNoise(key, counter, ids *Node) *Node {
	g := key.Graph()
	N, V := ids.Shape().Dimensions[0], ids.Shape().Dimensions[1]
	row := hash32(Add(hash32(key), MulScalar(counter, 0x9E3779B9)))             // [N]
	col := MulScalar(ids, 0x85EBCA6B)                                           // [N, V]
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
