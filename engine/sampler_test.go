package engine

import (
	"math"
	"math/rand/v2"
	"slices"
	"sort"
	"testing"

	"github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/tpuserve/tpuserve/internal/backendtest"
	"github.com/tpuserve/tpuserve/model"
)

// runSampler runs the sampler alone on logits [N, V] (row-major) with rows' parameters.
func runSampler(t *testing.T, f samplerFeatures, textVocab int, logits []float32, N, V int, rows *samplerRows) []*tensors.Tensor {
	t.Helper()
	return runShardedSampler(t, f, textVocab, logits, N, V, rows, 1)
}

// splitVocab splits logits [N, V] on the vocabulary over a virtual mesh of tp chips, as
// the tensor-parallel head programs hold them.
func splitVocab(logits *graph.Node, tp int) *model.VocabShards {
	g := logits.Graph()
	V := logits.Shape().Dimensions[1]
	w := V / tp
	lg := &model.VocabShards{Mesh: model.VirtualMesh(tp), Width: w, Vocab: V}
	for c := 0; c < tp; c++ {
		lg.Parts = append(lg.Parts, graph.Slice(logits, graph.AxisRange(), graph.AxisRange(c*w, (c+1)*w)))
		lg.Offsets = append(lg.Offsets, graph.Const(g, int32(c*w)))
		lg.Index = append(lg.Index, graph.Const(g, int32(c)))
	}
	return lg
}

// runShardedSampler runs the sampler with the logits split on the vocabulary over a
// virtual mesh of tp chips, as the tensor-parallel head programs hold them.
func runShardedSampler(t *testing.T, f samplerFeatures, textVocab int, logits []float32, N, V int, rows *samplerRows, tp int) []*tensors.Tensor {
	t.Helper()
	sampler := buildSampler(f, textVocab)
	exec, err := graph.NewExec(backendtest.Backend(t), func(in []*graph.Node) []*graph.Node {
		return sampler(splitVocab(in[0], tp), in[1:])
	})
	if err != nil {
		t.Fatal(err)
	}
	defer exec.Finalize()
	args := append([]any{tensors.FromFlatDataAndDimensions(logits, N, V)}, rows.inputs(f)...)
	out, err := exec.Exec(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestShardedSamplerMatchesTP1 runs the full sampler (penalties, bias, a grammar mask,
// top-k/top-p/min-p, seeded draws, logprobs) on the same logits with the vocabulary split
// over 2, 4 and 8 chips: the tokens and the top-logprob ids must be exactly the one-chip
// ones, the logprobs equal within float32 rounding of the reductions.
func TestShardedSamplerMatchesTP1(t *testing.T) {
	const V, textVocab, N = 256, 250, 48
	rng := rand.New(rand.NewPCG(21, 22))
	logits := make([]float32, N*V)
	for i := range logits {
		logits[i] = float32(rng.NormFloat64() * 2)
	}
	rows := &samplerRows{}
	for i := 0; i < N; i++ {
		p := &SamplingParams{Temperature: []float32{0, 0.7, 1, 1.5}[i%4], TopK: []int{0, 5, 40}[i%3], TopP: []float32{1, 0.9, 0.5}[i%3],
			MinP: []float32{0, 0.05}[i%2], PresencePenalty: 0.3 * float32(i%2), FrequencyPenalty: 0.2, RepetitionPenalty: []float32{1, 1.3}[i%2]}
		out := []int32{int32(rng.IntN(V)), int32(rng.IntN(V)), int32(i % V)}
		prompt := []int32{int32(rng.IntN(V)), int32(rng.IntN(V))}
		banned := []int32{int32((i * 7) % V)}
		bias := logitBias{ids: []int32{int32(rng.IntN(V)), int32(rng.IntN(V))}, values: []float32{3, -2}}
		var mask []uint32
		if i%5 == 0 { // a grammar allowing every third token
			mask = make([]uint32, maskWords(V))
			for v := 0; v < V; v += 3 {
				mask[v/32] |= 1 << (v % 32)
			}
		}
		rows.addRow(p, uint32(1000+i), uint32(i*3), out, prompt, banned, bias, mask)
	}
	rows.padFixed(N, V, listWidths{out: 4, prompt: 4, banned: 2, bias: 3}, fullFeatures)
	want := runShardedSampler(t, fullFeatures, textVocab, logits, N, V, rows, 1)
	wantTok, wantIDs := tensors.MustCopyFlatData[int32](want[0]), tensors.MustCopyFlatData[int32](want[2])
	wantLP, wantTop := tensors.MustCopyFlatData[float32](want[1]), tensors.MustCopyFlatData[float32](want[3])
	sampled := 0
	for i, tok := range wantTok {
		if rows.Temperature[i] > 0 && tok != wantTok[(i+1)%N] {
			sampled++
		}
	}
	if sampled == 0 {
		t.Fatal("no row sampled a token: the test would not see the draws")
	}
	for _, tp := range []int{2, 4, 8} {
		got := runShardedSampler(t, fullFeatures, textVocab, logits, N, V, rows, tp)
		if tok := tensors.MustCopyFlatData[int32](got[0]); !slices.Equal(tok, wantTok) {
			t.Errorf("TP=%d tokens %v,\nTP=1 tokens %v", tp, tok, wantTok)
		}
		if ids := tensors.MustCopyFlatData[int32](got[2]); !slices.Equal(ids, wantIDs) {
			t.Errorf("TP=%d top-logprob ids differ from TP=1's", tp)
		}
		for _, pair := range [][2][]float32{{tensors.MustCopyFlatData[float32](got[1]), wantLP}, {tensors.MustCopyFlatData[float32](got[3]), wantTop}} {
			for i := range pair[1] {
				if d := math.Abs(float64(pair[0][i] - pair[1][i])); d > 1e-5 {
					t.Errorf("TP=%d logprob %d: %v, TP=1 %v", tp, i, pair[0][i], pair[1][i])
					break
				}
			}
		}
	}
}

func uniformRows(N int, temp float32, key uint32) *samplerRows {
	r := &samplerRows{}
	for i := 0; i < N; i++ {
		r.Temperature = append(r.Temperature, temp)
		r.RNGKey = append(r.RNGKey, key)
		r.RNGCounter = append(r.RNGCounter, uint32(i))
		r.TopK = append(r.TopK, 0)
		r.TopP = append(r.TopP, 1)
		r.MinP = append(r.MinP, 0)
		r.Presence = append(r.Presence, 0)
		r.Frequency = append(r.Frequency, 0)
		r.Repetition = append(r.Repetition, 1)
	}
	r.L, r.Lp, r.Lb = 1, 1, 1
	r.OutputTokens = make([]int32, N)
	r.PromptTokens = make([]int32, N)
	r.Banned = make([]int32, N)
	return r
}

// exactDistribution is the host reference: penalised logits / T, then min-p, top-k and
// top-p (over the renormalised survivors), exactly as vLLM's sampler defines them.
func exactDistribution(z []float64, temp float64, topK int, topP, minP float64) []float64 {
	V := len(z)
	s := make([]float64, V)
	zmax := math.Inf(-1)
	for i := range z {
		s[i] = z[i] / temp
		zmax = math.Max(zmax, s[i])
	}
	p := make([]float64, V)
	sum := 0.0
	for i := range s {
		p[i] = math.Exp(s[i] - zmax)
		sum += p[i]
	}
	for i := range p {
		p[i] /= sum
	}
	order := make([]int, V)
	for i := range order {
		order[i] = i
	}
	sort.Slice(order, func(a, b int) bool { return p[order[a]] > p[order[b]] })
	keep := make([]bool, V)
	for rank, i := range order {
		keep[i] = (minP <= 0 || p[i] >= minP*p[order[0]]) && (topK <= 0 || rank < topK)
	}
	if topP < 1 {
		mass := 0.0
		for _, i := range order {
			if keep[i] {
				mass += p[i]
			}
		}
		cum := 0.0
		for _, i := range order {
			if !keep[i] {
				continue
			}
			if cum >= topP*mass {
				keep[i] = false
			}
			cum += p[i]
		}
	}
	out := make([]float64, V)
	total := 0.0
	for i := range p {
		if keep[i] {
			out[i] = p[i]
			total += p[i]
		}
	}
	for i := range out {
		out[i] /= total
	}
	return out
}

// TestSamplerDistributions draws 20,000 samples per setting and checks every token's
// frequency against the exact distribution within 5 standard errors (plus a 1e-3 floor),
// and that filtered-out tokens are never drawn. A wrong threshold or temperature moves some
// token by far more than that.
func TestSamplerDistributions(t *testing.T) {
	const V, N = 40, 20000
	rng := rand.New(rand.NewPCG(5, 6))
	base := make([]float64, V)
	for i := range base {
		base[i] = rng.NormFloat64() * 1.5
	}
	cases := []struct {
		name  string
		temp  float64
		topK  int
		topP  float64
		minP  float64
		f     samplerFeatures
		vocab int
	}{
		{"temperature 1", 1, 0, 1, 0, samplerFeatures{}, V},
		{"temperature 0.5", 0.5, 0, 1, 0, samplerFeatures{}, V},
		{"temperature 2 with padding rows", 2, 0, 1, 0, samplerFeatures{}, V - 5},
		{"top-k 5", 1, 5, 1, 0, samplerFeatures{Filters: true}, V},
		{"top-p 0.6", 1, 0, 0.6, 0, samplerFeatures{Filters: true}, V},
		{"min-p 0.1", 1, 0, 1, 0.1, samplerFeatures{Filters: true}, V},
		{"top-k 10 + top-p 0.8 + T 0.7", 0.7, 10, 0.8, 0, samplerFeatures{Filters: true}, V},
		{"all filters, T 1.3", 1.3, 12, 0.9, 0.05, samplerFeatures{Filters: true}, V},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			logits := make([]float32, N*V)
			for r := 0; r < N; r++ {
				for v := 0; v < V; v++ {
					logits[r*V+v] = float32(base[v])
				}
			}
			rows := uniformRows(N, float32(tc.temp), 1234)
			for i := range rows.TopK {
				rows.TopK[i], rows.TopP[i], rows.MinP[i] = int32(tc.topK), float32(tc.topP), float32(tc.minP)
			}
			out := runSampler(t, tc.f, tc.vocab, logits, N, V, rows)
			toks := tensors.MustCopyFlatData[int32](out[0])
			counts := make([]float64, V)
			for _, tok := range toks {
				counts[tok]++
			}
			z := append([]float64{}, base[:tc.vocab]...)
			want := exactDistribution(z, tc.temp, tc.topK, tc.topP, tc.minP)
			for v := 0; v < V; v++ {
				p := 0.0
				if v < tc.vocab {
					p = want[v]
				}
				got := counts[v] / N
				if p == 0 {
					if counts[v] > 0 {
						t.Errorf("token %d drawn %d times, but the exact distribution excludes it", v, int(counts[v]))
					}
					continue
				}
				se := math.Sqrt(p * (1 - p) / N)
				if math.Abs(got-p) > 5*se+1e-3 {
					t.Errorf("token %d: frequency %.4f, exact %.4f (5σ = %.4f)", v, got, p, 5*se)
				}
			}
		})
	}
}

func TestSamplerSeedsAndGreedy(t *testing.T) {
	const V = 64
	rng := rand.New(rand.NewPCG(8, 9))
	row := make([]float32, V)
	for i := range row {
		row[i] = float32(rng.NormFloat64())
	}
	mk := func(keys []uint32, counters []uint32, temps []float32) []int32 {
		N := len(keys)
		logits := make([]float32, 0, N*V)
		for range keys {
			logits = append(logits, row...)
		}
		rows := uniformRows(N, 1, 0)
		copy(rows.RNGKey, keys)
		copy(rows.RNGCounter, counters)
		copy(rows.Temperature, temps)
		return tensors.MustCopyFlatData[int32](runSampler(t, samplerFeatures{}, V, logits, N, V, rows)[0])
	}
	// The same (key, counter) draws the same token whatever the batch around it.
	alone := mk([]uint32{77}, []uint32{3}, []float32{1})[0]
	for _, batch := range [][]uint32{{1, 77, 2}, {77, 5, 6, 7, 8}} {
		keys := batch
		counters := make([]uint32, len(keys))
		temps := make([]float32, len(keys))
		pos := -1
		for i, k := range keys {
			counters[i], temps[i] = uint32(i), 1
			if k == 77 {
				counters[i], pos = 3, i
			}
		}
		if got := mk(keys, counters, temps)[pos]; got != alone {
			t.Errorf("key 77 counter 3 drew %d in batch %v, %d alone", got, batch, alone)
		}
	}
	// Different keys give different streams.
	N := 200
	keysA, keysB, counters, temps := make([]uint32, N), make([]uint32, N), make([]uint32, N), make([]float32, N)
	for i := range keysA {
		keysA[i], keysB[i], counters[i], temps[i] = 1, 2, uint32(i), 1
	}
	a, b := mk(keysA, counters, temps), mk(keysB, counters, temps)
	same := 0
	for i := range a {
		if a[i] == b[i] {
			same++
		}
	}
	if same > N/2 {
		t.Errorf("seeds 1 and 2 agree on %d of %d draws", same, N)
	}
	// Temperature 0 is argmax.
	best := 0
	for i := range row {
		if row[i] > row[best] {
			best = i
		}
	}
	if got := mk([]uint32{9}, []uint32{0}, []float32{0})[0]; got != int32(best) {
		t.Errorf("greedy picked %d, argmax is %d", got, best)
	}
}

func TestSamplerPenaltiesAndLogprobs(t *testing.T) {
	const V = 16
	logits := []float32{2, 1.9, -1, 0.5, 1.95, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3}
	rows := uniformRows(1, 0, 0) // greedy: the argmax after penalties
	rows.Repetition[0], rows.Frequency[0], rows.Presence[0] = 1.5, 0.2, 0.1
	// Output so far: token 0 twice; prompt: token 4. Token 15 is beyond the text vocabulary.
	rows.OutputTokens, rows.L = []int32{0, 0, V, V}, 4
	rows.PromptTokens, rows.Lp = []int32{4, V}, 2
	rows.Banned, rows.Lb = []int32{V}, 1
	f := samplerFeatures{Penalties: true, Logprobs: true}
	out := runSampler(t, f, 15, logits, 1, V, rows)
	// Host reference: token 0: 2/1.5 − 0.2·2 − 0.1 = 0.8333; token 4: 1.95/1.5 = 1.3; token 1: 1.9.
	if got := tensors.MustCopyFlatData[int32](out[0])[0]; got != 1 {
		t.Errorf("greedy with penalties picked %d, want 1", got)
	}
	// Banning token 1 (as min_tokens bans EOS) leaves token 4 the best.
	rows.Banned = []int32{1}
	if got := tensors.MustCopyFlatData[int32](runSampler(t, f, 15, logits, 1, V, rows)[0])[0]; got != 4 {
		t.Errorf("greedy with token 1 banned picked %d, want 4", got)
	}
	// Logprobs are the raw model's (before penalties), over the text vocabulary.
	var sum float64
	for _, v := range logits[:15] {
		sum += math.Exp(float64(v))
	}
	wantLP := func(v int) float64 { return float64(logits[v]) - math.Log(sum) }
	if got := tensors.MustCopyFlatData[float32](out[1])[0]; math.Abs(float64(got)-wantLP(1)) > 1e-5 {
		t.Errorf("chosen logprob %v, want %v", got, wantLP(1))
	}
	ids := tensors.MustCopyFlatData[int32](out[2])
	vals := tensors.MustCopyFlatData[float32](out[3])
	wantOrder := []int32{0, 4, 1, 3}
	for i, id := range wantOrder {
		if ids[i] != id || math.Abs(float64(vals[i])-wantLP(int(id))) > 1e-5 {
			t.Errorf("top %d: (%d, %v), want (%d, %v)", i, ids[i], vals[i], id, wantLP(int(id)))
		}
	}
	for _, id := range ids {
		if id == 15 {
			t.Errorf("padding vocabulary row 15 reported in top logprobs")
		}
	}
}
