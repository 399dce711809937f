package engine

import (
	"context"
	"errors"
	"fmt"
	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/tpuserve/tpuserve/internal/backendtest"
	"github.com/tpuserve/tpuserve/model"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// randomWorkload submits n requests with random prompts (1 to maxLen tokens, some sharing
// prefixes), random sampler features and stops, at most conc at a time, and waits for them.
// It returns every result and fails the test on any error.
func randomWorkload(t *testing.T, e *Engine, rng *rand.Rand, n, conc, maxLen int) []result {
	t.Helper()
	shared := make([]int32, maxLen)
	for i := range shared {
		shared[i] = int32(4 + rng.IntN(500))
	}
	results := make([]result, n)
	sem := make(chan struct{}, conc)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		plen := 1 + rng.IntN(maxLen)
		if rng.IntN(4) == 0 {
			plen = maxLen - rng.IntN(3) // at (or next to) the length limit
		}
		prompt := make([]int32, plen)
		copy(prompt, shared[:rng.IntN(plen+1)]) // a shared prefix: prefix-cache hits
		for j := range prompt {
			if prompt[j] == 0 {
				prompt[j] = int32(4 + rng.IntN(500))
			}
		}
		p := DefaultSamplingParams()
		p.MaxTokens = 1 + rng.IntN(24)
		p.IgnoreEOS = rng.IntN(2) == 0
		switch rng.IntN(8) {
		case 0: // greedy
			p.Temperature = 0
		case 1: // temperature + seed
			seed := rng.Int64()
			p.Seed, p.Temperature = &seed, 0.5+rng.Float32()
		case 2:
			p.TopK, p.TopP, p.MinP = 1+rng.IntN(50), 0.5+rng.Float32()/2, rng.Float32()/10
		case 3:
			p.PresencePenalty, p.FrequencyPenalty, p.RepetitionPenalty = 0.5, 0.3, 1.2
		case 4:
			lp := rng.IntN(6)
			p.Logprobs = &lp
		case 5:
			p.LogitBias = map[int32]float32{int32(4 + rng.IntN(500)): 5, int32(4 + rng.IntN(500)): -100}
		case 6:
			plp := rng.IntN(3)
			p.PromptLogprobs = &plp
			p.MaxTokens = rng.IntN(3) // 0: prompt scoring only
		case 7:
			p.MinTokens = min(p.MaxTokens, 3)
			p.StopTokenIDs = []int32{int32(4 + rng.IntN(500))}
		}
		if rng.IntN(3) == 0 {
			p.Stop = []string{fmt.Sprintf("<%d>", 4+rng.IntN(500)), "<7><"}
		}
		n := 1
		if rng.IntN(5) == 0 {
			n = 2 + rng.IntN(2) // n > 1: the same prompt several times
		}
		for k := 0; k < n && i < len(results); k++ {
			sem <- struct{}{}
			wg.Add(1)
			idx := i
			ch := submit(t, e, fmt.Sprintf("w%d", idx), prompt, p)
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				results[idx] = collect(t, ch)
			}()
			if k < n-1 {
				i++
			}
		}
	}
	wg.Wait()
	for i, r := range results {
		if r.final.Err != nil {
			t.Errorf("request %d: %v", i, r.final.Err)
		}
	}
	return results
}

// TestNoCompilationWhileServing drives the real engine with randomized workloads under three
// serving configurations — every sampler feature, n > 1, prompts up to max-model-len, stop
// strings, prefix hits, and a KV cache small enough to force preemption — and asserts that
// no program compiled after start-up (a count, not a timing). The ablation: without the
// start-up compilation the same workload does compile while serving, so the count can fail.
func TestNoCompilationWhileServing(t *testing.T) {
	for _, tc := range []struct {
		name                 string
		seqs, batched, maxLn int
		page                 int
		kvBytes              int64
		spec                 *SpeculativeConfig
		draft                bool
	}{
		{"small steps, preemption", 4, 32, 96, 8, 320 << 10, nil, false},
		{"serve-like", 16, 128, 256, 16, 0, nil, false},
		{"long prompts, few sequences", 2, 64, 200, 4, 0, nil, false},
		{"speculative n-gram, preemption", 4, 32, 96, 8, 320 << 10, ngramConfig(3), false},
		{"speculative draft model, preemption", 4, 32, 96, 8, 720 << 10, draftConfig(2), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(uint64(len(tc.name)), 7))
			e := newTestEngine(t, func(c *Config) {
				c.Scheduler = SchedulerConfig{MaxNumSeqs: tc.seqs, MaxNumBatchedTokens: tc.batched, MaxModelLen: tc.maxLn}
				c.PageSize = tc.page
				c.Precompile = PrecompileAll
				if tc.kvBytes > 0 {
					c.KVCacheBytes = tc.kvBytes
				}
				c.Speculative = tc.spec
				if tc.draft {
					c.DraftModel = c.Model // the target as its own draft
				}
			})
			compiled := e.Stats().StepPrograms
			randomWorkload(t, e, rng, 40, tc.seqs+2, tc.maxLn)
			st := e.Stats()
			if st.ServingCompilations != 0 || st.StepPrograms != compiled {
				t.Errorf("%d programs compiled while serving (%d at start-up, %d now)", st.ServingCompilations, compiled, st.StepPrograms)
			}
			if tc.kvBytes > 0 && st.NumPreemptions == 0 {
				t.Errorf("the small cache forced no preemption")
			}
			if st.PrefixCacheHits == 0 {
				t.Errorf("no prefix-cache hit")
			}
			if tc.spec != nil && st.Spec.NumAcceptedTokens == 0 {
				t.Errorf("speculation on, nothing accepted: %+v", st.Spec)
			}
		})
	}
	t.Run("tp2 virtual mesh, small steps", func(t *testing.T) {
		// The per-chip programs and the vocabulary-split samplers precompile as one set too.
		sm, err := model.LoadShardedModel(backendtest.Backend(t), model.LoadOptions{Model: fixtureDir, DType: dtypes.Float32, Progress: func(model.LoadProgress) {}}, 2)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(sm.Close)
		e := newTestEngine(t, onSharded(sm, func(c *Config) {
			c.Scheduler = SchedulerConfig{MaxNumSeqs: 4, MaxNumBatchedTokens: 32, MaxModelLen: 96}
			c.PageSize, c.Precompile = 8, PrecompileAll
		}))
		compiled := e.Stats().StepPrograms
		randomWorkload(t, e, rand.New(rand.NewPCG(3, 7)), 20, 6, 96)
		if st := e.Stats(); st.ServingCompilations != 0 || st.StepPrograms != compiled {
			t.Errorf("%d programs compiled while serving at TP=2 (%d at start-up, %d now)", st.ServingCompilations, compiled, st.StepPrograms)
		}
	})
	t.Run("ablation: compiled on first use", func(t *testing.T) {
		e := newTestEngine(t, func(c *Config) {
			c.Scheduler = SchedulerConfig{MaxNumSeqs: 4, MaxNumBatchedTokens: 32, MaxModelLen: 96}
		})
		randomWorkload(t, e, rand.New(rand.NewPCG(1, 2)), 6, 4, 96)
		if st := e.Stats(); st.ServingCompilations == 0 {
			t.Errorf("without start-up compilation nothing compiled while serving: the counter cannot fail")
		}
	})
}

// faultyDevice fails the failAt-th step after running it (the pools were donated and the
// K/V of the step written, but nothing may be committed).
type faultyDevice struct {
	stepDevice
	steps, failAt atomic.Int64
}

var errInjected = errors.New("injected device failure")

func (d *faultyDevice) run(in *stepInput) (*stepOutput, error) {
	out, err := d.stepDevice.run(in)
	if d.steps.Add(1) == d.failAt.Load() {
		return nil, errInjected
	}
	return out, err
}

// TestFailedStepCommitsNothing: the device fails one step while requests run. The requests
// of that step end with an error; requests sent afterwards that share their prefixes produce
// exactly what a fresh engine produces; no block leaks; health recovers.
func TestFailedStepCommitsNothing(t *testing.T) {
	prompts := [][]int32{vocabPrompt(1, 40), vocabPrompt(2, 33), vocabPrompt(3, 17)}
	run := func(e *Engine, tag string) []result {
		var out []result
		for i, pr := range prompts {
			out = append(out, collect(t, submit(t, e, fmt.Sprintf("%s%d", tag, i), pr, greedyParams(12))))
		}
		return out
	}
	fresh := run(newTestEngine(t, nil), "fresh")

	e := newTestEngine(t, nil)
	dev := &faultyDevice{stepDevice: e.dev}
	e.mu.Lock()
	e.dev = dev // the loop is idle: no request yet
	e.mu.Unlock()
	dev.failAt.Store(6) // mid-way: after the prefills, during decoding
	var chans []<-chan Event
	for i, pr := range prompts {
		chans = append(chans, submit(t, e, fmt.Sprintf("doomed%d", i), pr, greedyParams(12)))
	}
	failed := 0
	for _, ch := range chans {
		if r := collect(t, ch); r.final.Err != nil {
			if !errors.Is(r.final.Err, errInjected) {
				t.Errorf("failed with %v, want the injected error", r.final.Err)
			}
			failed++
		}
	}
	if failed == 0 {
		t.Fatalf("no request saw the injected failure")
	}
	if err := e.CheckAllFree(); err != nil {
		t.Errorf("after the failure: %v", err)
	}
	after := run(e, "again")
	for i := range fresh {
		if ok, why := sameResult(fresh[i], after[i]); !ok {
			t.Errorf("prompt %d after the failure differs from a fresh engine: %s", i, why)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for e.Health() != nil && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if err := e.Health(); err != nil {
		t.Errorf("health did not recover: %v", err)
	}
}

// brokenPools fails every step and every pool reallocation: the engine must report itself
// unhealthy and refuse work instead of looping.
type brokenPools struct{ stepDevice }

func (brokenPools) run(*stepInput) (*stepOutput, error) { return nil, errInjected }
func (brokenPools) resetPools() error                   { return errors.New("no device memory") }

func TestUnrecoverableDeviceIsUnhealthy(t *testing.T) {
	e := newTestEngine(t, nil)
	e.mu.Lock()
	e.dev = brokenPools{e.dev}
	e.mu.Unlock()
	r := collect(t, submit(t, e, "x", vocabPrompt(1, 5), greedyParams(3)))
	if r.final.Err == nil {
		t.Fatalf("the request did not fail")
	}
	if err := e.Health(); err == nil {
		t.Errorf("healthy after the pools could not be reallocated")
	}
	if _, err := e.Submit(context.Background(), Request{ID: "y", PromptIDs: vocabPrompt(1, 5), Params: greedyParams(3)}); !errors.Is(err, ErrClosed) {
		t.Errorf("Submit on a broken engine: %v, want ErrClosed", err)
	}
}

// vocabPrompt is a deterministic prompt of n ids inside the fixture's 512-token vocabulary.
func vocabPrompt(salt, n int) []int32 {
	out := make([]int32, n)
	for i := range out {
		out[i] = int32((salt*7919+i*31)%500 + 4)
	}
	return out
}
