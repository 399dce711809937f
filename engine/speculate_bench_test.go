package engine

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"sync"
	"testing"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/tpuserve/tpuserve/internal/backendtest"
	"github.com/tpuserve/tpuserve/model"
)

// randomModel is preset name (mutated) with seeded random weights, in float32.
func randomModel(b *testing.B, name string, seed uint64, mutate func(*model.Config)) *model.Model {
	b.Helper()
	cfg, err := model.Preset(name)
	if err != nil {
		b.Fatal(err)
	}
	if mutate != nil {
		mutate(&cfg)
	}
	w, err := model.RandomWeights(&cfg, dtypes.Float32, seed)
	if err != nil {
		b.Fatal(err)
	}
	m, err := model.New(backendtest.Backend(b), cfg, w)
	if err != nil {
		b.Fatal(err)
	}
	return m
}

// BenchmarkSpeculative: greedy decoding without speculation, with n-gram prompt lookup
// (K = 4) on repetitive prompts (a phrase of 8 tokens repeated) and on random ones, and
// with a draft model (K = 4), at batch 1 (16 new tokens) and 8 (8 new tokens each), on
// 32-token prompts (plain decoding costs the same on either kind of prompt: one baseline). The target is TPUSERVE_SPEC_BENCH_TARGET: "tiny" (default: the tiny
// preset, drafted by its own shape cut to one layer) or "1b" (gemma3-1b's shapes, drafted by
// the tiny preset's layers with 1B's vocabulary), random weights. It reports generated
// tokens/s, target forward passes per generated token per request (steps × batch /
// tokens, prefill steps included) and the acceptance rate. Run with -benchtime=1x: on the
// pure-Go backend a 1B-shaped step takes seconds.
func BenchmarkSpeculative(b *testing.B) {
	var target, draft *model.Model
	switch name := os.Getenv("TPUSERVE_SPEC_BENCH_TARGET"); name {
	case "", "tiny":
		target = randomModel(b, "tiny", 1, nil)
		draft = randomModel(b, "tiny", 2, func(c *model.Config) {
			c.NumHiddenLayers, c.LayerTypes = 1, c.LayerTypes[:1]
		})
	case "1b":
		target = randomModel(b, "gemma3-1b", 1, nil)
		draft = randomModel(b, "tiny", 2, func(c *model.Config) {
			c.VocabSize, c.TextVocabSize = target.Config.VocabSize, target.Config.TextVocabSize
			c.SlidingWindow = min(c.SlidingWindow, target.Config.SlidingWindow)
		})
	default:
		b.Fatalf("TPUSERVE_SPEC_BENCH_TARGET=%q: want tiny or 1b", name)
	}
	defer target.Close()
	defer draft.Close()
	// TPUSERVE_SPEC_BENCH_BATCHES=1 runs batch 1 only (a 1B-shaped batch of 8 takes many
	// minutes on two cores).
	batches := []int{1, 8}
	if os.Getenv("TPUSERVE_SPEC_BENCH_BATCHES") == "1" {
		batches = []int{1}
	}
	prompts := func(repetitive bool, batch, round int) [][]int32 {
		rng := rand.New(rand.NewPCG(uint64(round), uint64(batch)))
		var out [][]int32
		for i := 0; i < batch; i++ {
			p := []int32{2}
			phrase := make([]int32, 8)
			for j := range phrase {
				phrase[j] = int32(3 + rng.IntN(200000))
			}
			for len(p) < 32 {
				if repetitive {
					p = append(p, phrase[(len(p)-1)%8])
				} else {
					p = append(p, int32(3+rng.IntN(200000)))
				}
			}
			out = append(out, p)
		}
		return out
	}
	for _, mode := range []struct {
		name       string
		spec       *SpeculativeConfig
		draft      *model.Model
		repetitive bool
	}{
		{"plain", nil, nil, false},
		{"ngram/repetitive", &SpeculativeConfig{Method: SpecMethodNgram, NumSpeculativeTokens: 4, PromptLookupMax: 4, PromptLookupMin: 2}, nil, true},
		{"ngram/random", &SpeculativeConfig{Method: SpecMethodNgram, NumSpeculativeTokens: 4, PromptLookupMax: 4, PromptLookupMin: 2}, nil, false},
		{"draft/random", &SpeculativeConfig{Method: SpecMethodDraftModel, Model: "tiny-shaped", NumSpeculativeTokens: 4}, draft, false},
		// The target as its own draft: every proposal accepted, the bound on passes per token.
		{"self-draft/random", &SpeculativeConfig{Method: SpecMethodDraftModel, Model: "target", NumSpeculativeTokens: 4}, target, false},
	} {
		if mode.draft == target && os.Getenv("TPUSERVE_SPEC_BENCH_TARGET") == "1b" {
			continue // twice the 1B's cost per step: too slow here
		}
		for _, batch := range batches {
			newTokens := 16
			if batch == 8 {
				newTokens = 8
			}
			b.Run(fmt.Sprintf("%s/batch=%d", mode.name, batch), func(b *testing.B) {
				e, err := New(Config{Model: target, NewDecoder: func(skip bool) StreamDecoder { return &textDecoder{skip: skip, vocab: int32(target.Config.VocabSize)} },
					Scheduler:  SchedulerConfig{MaxNumSeqs: 8, MaxNumBatchedTokens: 128, MaxModelLen: 128},
					Precompile: PrecompileNone, KVCacheBytes: 160 << 20, Logger: discardLogger(),
					Speculative: mode.spec, DraftModel: mode.draft})
				if err != nil {
					b.Fatal(err)
				}
				defer e.Close()
				var steps int
				e.SetStepObserver(func(int) { steps++ })
				run := func(round, newTokens int) int {
					var wg sync.WaitGroup
					var mu sync.Mutex
					total := 0
					for i, prompt := range prompts(mode.repetitive, batch, round) {
						p := greedyParams(newTokens)
						p.Logprobs = nil
						ch, err := e.Submit(context.Background(), Request{ID: fmt.Sprint(round, "-", i), PromptIDs: prompt, Params: p})
						if err != nil {
							b.Fatal(err)
						}
						wg.Add(1)
						go func() {
							defer wg.Done()
							for ev := range ch {
								mu.Lock()
								total += len(ev.TokenIDs)
								mu.Unlock()
							}
						}()
					}
					wg.Wait()
					return total
				}
				run(-1, 2) // compile the programs this workload uses
				e.mu.Lock()
				steps, before := 0, e.spec.clone()
				e.mu.Unlock()
				b.ResetTimer()
				tokens := 0
				for i := 0; i < b.N; i++ {
					tokens += run(i, newTokens)
				}
				b.StopTimer()
				e.mu.Lock()
				st, n := e.spec.clone(), steps
				e.mu.Unlock()
				b.ReportMetric(float64(tokens)/b.Elapsed().Seconds(), "tokens/s")
				b.ReportMetric(float64(n*batch)/float64(tokens), "passes/token")
				if d := st.NumDraftTokens - before.NumDraftTokens; d > 0 {
					b.ReportMetric(float64(st.NumAcceptedTokens-before.NumAcceptedTokens)/float64(d), "accept_rate")
				}
			})
		}
	}
}

// BenchmarkNgramPropose: the host cost of one prompt-lookup proposal (lookup 2..4, K = 4)
// per speculating sequence and step, on a 2,048-token context: with no earlier occurrence
// of the suffix (the worst case: every start is tried for each n) and in a loop.
func BenchmarkNgramPropose(b *testing.B) {
	propose := ngramProposer(2, 4)
	rng := rand.New(rand.NewPCG(1, 1))
	random := make([]int32, 2048)
	for i := range random {
		random[i] = int32(rng.IntN(200000))
	}
	loop := make([]int32, 2048)
	for i := range loop {
		loop[i] = int32(i % 7)
	}
	for _, tc := range []struct {
		name   string
		tokens []int32
	}{{"no match", random}, {"loop", loop}} {
		b.Run(tc.name, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				propose(tc.tokens, 4)
			}
		})
	}
}
