package engine

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/tpuserve/tpuserve/internal/backendtest"
	"github.com/tpuserve/tpuserve/internal/plan"
	"github.com/tpuserve/tpuserve/kvcache"
	"github.com/tpuserve/tpuserve/model"
)

// fakeDevice does everything a step does on the host (bucketing, building the padded
// model inputs and sampler rows) and answers with a fixed token instead of running the
// program, so the engine's host overhead can be measured on its own.
type fakeDevice struct {
	cfg    *model.Config
	layout model.KVLayout
	set    *plan.StepSet
	steps  atomic.Int64
}

func (d *fakeDevice) run(in *stepInput) (*stepOutput, error) {
	tokens := 0
	for _, c := range in.chunks {
		tokens += len(c.Tokens)
	}
	shape, ok := d.set.StepFor(func(q int) model.BatchShape { return model.NeededShape(d.cfg, d.layout, in.chunks, q) })
	if !ok {
		return nil, fmt.Errorf("step of %d tokens outside the set", tokens)
	}
	if _, err := model.BuildBatch(d.cfg, d.layout, in.chunks, shape); err != nil {
		return nil, err
	}
	for _, rows := range []struct {
		r *samplerRows
		n int
		f samplerFeatures
	}{{in.base, len(in.baseChunk), samplerFeatures{}}, {in.full, len(in.fullChunk), fullFeatures}} {
		if rows.n > 0 {
			b, _ := d.set.RowsFor(plan.KindSample, rows.n)
			rows.r.padFixed(b, d.cfg.VocabSize, listWidths{out: 1 << 20, prompt: 1 << 20, banned: maxBannedTokens, bias: MaxLogitBias}, rows.f)
			_ = rows.r.inputs(rows.f)
		}
	}
	out := &stepOutput{tokens: make([]int32, len(in.chunks))}
	for i := range out.tokens {
		out.tokens[i] = 100 + int32(i%300)
	}
	d.steps.Add(1)
	return out, nil
}
func (d *fakeDevice) resetPools() error      { return nil }
func (d *fakeDevice) counts() (int64, int64) { return 0, 0 }
func (d *fakeDevice) close()                 {}

// BenchmarkHostOverheadPerStep: plan + input assembly + output processing per decode step
// with 1, 64 and 256 running sequences (the device replaced by fakeDevice).
func BenchmarkHostOverheadPerStep(b *testing.B) {
	cfg, err := model.Preset("gemma3-1b")
	if err != nil {
		b.Fatal(err)
	}
	for _, n := range []int{1, 64, 256} {
		b.Run(fmt.Sprintf("seqs=%d", n), func(b *testing.B) {
			kvCfg := kvcache.Config{PageSize: 16, NumGlobalBlocks: 64 * n, NumSlidingBlocks: 64 * n, SlidingWindow: cfg.SlidingWindow, EnablePrefixCaching: true}
			kv, err := kvcache.NewManager(kvCfg)
			if err != nil {
				b.Fatal(err)
			}
			sc := SchedulerConfig{MaxNumSeqs: n, MaxNumBatchedTokens: max(2048, n), MaxModelLen: 1 << 20}
			if err := sc.setDefaults(); err != nil {
				b.Fatal(err)
			}
			sched, err := NewScheduler(sc, kv)
			if err != nil {
				b.Fatal(err)
			}
			set, err := plan.NewStepSet(&cfg, plan.StepOptions{MaxNumSeqs: n, MaxNumBatchedTokens: sc.MaxNumBatchedTokens, MaxModelLen: 1 << 20, PageSize: 16})
			if err != nil {
				b.Fatal(err)
			}
			dev := &fakeDevice{cfg: &cfg, layout: model.KVLayout{PageSize: 16, NumGlobalPages: kvCfg.NumGlobalBlocks, NumSlidingPages: kvCfg.NumSlidingBlocks}, set: set}
			e := start(Config{NewDecoder: func(skip bool) StreamDecoder { return &textDecoder{skip: skip} },
				Scheduler: sc, MaxQueueLen: -1, Logger: discardLogger()}, &cfg, sched, dev)
			defer e.Close()
			ctx, cancel := context.WithCancel(context.Background())
			var wg sync.WaitGroup
			for i := 0; i < n; i++ {
				p := greedyParams(1000)
				p.Logprobs = nil
				ch, err := e.Submit(ctx, Request{ID: fmt.Sprint(i), PromptIDs: []int32{2, int32(10 + i%100), 7, 8}, Params: p})
				if err != nil {
					b.Fatal(err)
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					for range ch {
					}
				}()
			}
			// Let every sequence reach decoding before timing.
			for e.Stats().NumRunning < n || dev.steps.Load() < 3 {
				time.Sleep(time.Millisecond)
			}
			start := dev.steps.Load()
			// Requests end after 1000 tokens: time at most 800 steps whatever b.N is.
			want := int64(min(b.N, 800))
			b.ResetTimer()
			t0 := time.Now()
			for dev.steps.Load() < start+want {
				time.Sleep(50 * time.Microsecond)
			}
			el := time.Since(t0)
			b.StopTimer()
			steps := dev.steps.Load() - start
			b.ReportMetric(float64(el.Microseconds())/float64(steps)/1000, "ms/step")
			cancel()
			wg.Wait()
		})
	}
}

// BenchmarkGenerateTiny: end-to-end generated tokens/s of the built-in tiny model on the CPU
// with `batch` concurrent requests (16-token prompts, 32 new tokens each).
func BenchmarkGenerateTiny(b *testing.B) {
	cfg, m := tinyPreset(b)
	defer m.Close()
	for _, batch := range []int{1, 8, 32} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			e, err := New(Config{Model: m, NewDecoder: func(skip bool) StreamDecoder { return &textDecoder{skip: skip, vocab: int32(cfg.VocabSize)} },
				Scheduler:  SchedulerConfig{MaxNumSeqs: 32, MaxNumBatchedTokens: 512, MaxModelLen: 256},
				Precompile: PrecompileNone, KVCacheBytes: 32 << 20, Logger: discardLogger()})
			if err != nil {
				b.Fatal(err)
			}
			defer e.Close()
			run := func(round int) int {
				var wg sync.WaitGroup
				var total atomic.Int64
				for i := 0; i < batch; i++ {
					prompt := make([]int32, 16)
					for j := range prompt {
						prompt[j] = int32(2 + ((round+1)*977+i*131+j*7)%100000)
					}
					p := greedyParams(32)
					p.Logprobs = nil
					ch, err := e.Submit(context.Background(), Request{ID: fmt.Sprint(round, "-", i), PromptIDs: prompt, Params: p})
					if err != nil {
						b.Fatal(err)
					}
					wg.Add(1)
					go func() {
						defer wg.Done()
						for ev := range ch {
							total.Add(int64(len(ev.TokenIDs)))
						}
					}()
				}
				wg.Wait()
				return int(total.Load())
			}
			run(-1) // compile the buckets
			b.ResetTimer()
			tokens := 0
			for i := 0; i < b.N; i++ {
				tokens += run(i)
			}
			b.ReportMetric(float64(tokens)/b.Elapsed().Seconds(), "tokens/s")
		})
	}
}

// BenchmarkSamplerIsolation: 16 greedy requests decoding together on the tiny model (the
// real 262k vocabulary), alone and with one of them asking for top-p or logprobs: the
// others' time per token (ms/token of the greedy requests) must not follow the feature —
// only the row that asks runs the full sampler. Compare the sub-benchmarks' ms/token.
func BenchmarkSamplerIsolation(b *testing.B) {
	cfg, m := tinyPreset(b)
	defer m.Close()
	e, err := New(Config{Model: m, NewDecoder: func(skip bool) StreamDecoder { return &textDecoder{skip: skip, vocab: int32(cfg.VocabSize)} },
		Scheduler:  SchedulerConfig{MaxNumSeqs: 16, MaxNumBatchedTokens: 256, MaxModelLen: 128},
		Precompile: PrecompileAll, KVCacheBytes: 32 << 20, Logger: discardLogger()})
	if err != nil {
		b.Fatal(err)
	}
	defer e.Close()
	const batch, tokens = 16, 24
	for _, tc := range []struct {
		name  string
		first func(p *SamplingParams)
	}{
		{"all greedy", func(*SamplingParams) {}},
		{"one top-p 0.9", func(p *SamplingParams) { p.Temperature, p.TopP = 1, 0.9 }},
		{"one logprobs 1", func(p *SamplingParams) { lp := 1; p.Logprobs = &lp }},
	} {
		b.Run(tc.name, func(b *testing.B) {
			var greedyTime time.Duration
			for round := 0; round < b.N; round++ {
				var wg sync.WaitGroup
				var mu sync.Mutex
				var last time.Time
				t0 := time.Now()
				for i := 0; i < batch; i++ {
					prompt := make([]int32, 8)
					for j := range prompt {
						prompt[j] = int32(2 + ((round+1)*977+i*131+j*7)%100000)
					}
					p := greedyParams(tokens)
					p.Logprobs = nil
					if i == 0 {
						tc.first(&p)
					}
					ch, err := e.Submit(context.Background(), Request{ID: fmt.Sprint(tc.name, round, "-", i), PromptIDs: prompt, Params: p})
					if err != nil {
						b.Fatal(err)
					}
					wg.Add(1)
					go func(greedy bool) {
						defer wg.Done()
						for range ch {
						}
						if greedy {
							now := time.Now()
							mu.Lock()
							if now.After(last) {
								last = now
							}
							mu.Unlock()
						}
					}(i > 0)
				}
				wg.Wait()
				greedyTime += last.Sub(t0)
			}
			b.ReportMetric(float64(greedyTime.Microseconds())/1000/float64(b.N*tokens), "ms/token")
		})
	}
}

// BenchmarkStartupCompile: engine start-up with the whole program set compiled before
// serving, for the built-in tiny model at serve's CPU defaults (32 sequences, 512-token
// steps, 2048 max model length); reports the programs and the seconds it took.
func BenchmarkStartupCompile(b *testing.B) {
	cfg, m := tinyPreset(b)
	defer m.Close()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		e, err := New(Config{Model: m, NewDecoder: func(skip bool) StreamDecoder { return &textDecoder{skip: skip, vocab: int32(cfg.VocabSize)} },
			Scheduler:  SchedulerConfig{MaxNumSeqs: 32, MaxNumBatchedTokens: 512, MaxModelLen: 2048},
			Precompile: PrecompileAll, KVCacheBytes: 64 << 20, Logger: discardLogger()})
		if err != nil {
			b.Fatal(err)
		}
		el := time.Since(t0)
		st := e.Stats()
		e.Close()
		b.ReportMetric(float64(st.StepPrograms), "programs")
		b.ReportMetric(el.Seconds(), "s/startup")
	}
}

// tinyPreset is the built-in tiny model (random weights, the real 262k vocabulary) in f32.
func tinyPreset(b *testing.B) (model.Config, *model.Model) {
	cfg, err := model.Preset("tiny")
	if err != nil {
		b.Fatal(err)
	}
	w, err := model.RandomWeights(&cfg, dtypes.Float32, 0)
	if err != nil {
		b.Fatal(err)
	}
	m, err := model.New(backendtest.Backend(b), cfg, w)
	if err != nil {
		b.Fatal(err)
	}
	return cfg, m
}
