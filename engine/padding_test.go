package engine

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/tpuserve/tpuserve/internal/plan"
	"github.com/tpuserve/tpuserve/kvcache"
	"github.com/tpuserve/tpuserve/model"
)

// workMeter is a device that runs no model: it maps each step to its program exactly as
// the runner does and adds up the work the padded program does against what the step
// needs — matmul rows (tokens) and attention (query slots × key positions, global and
// sliding layers apart).
type workMeter struct {
	cfg    *model.Config
	layout model.KVLayout
	set    *plan.StepSet

	mu                      sync.Mutex
	steps                   int
	realTokens, padTokens   int64
	realGlobal, padGlobal   int64
	realSliding, padSliding int64
	compiledShapes          map[model.BatchShape]bool
	// What a ragged (flat page-list) attention would pay, with the program's Q per row and
	// with exactly one query slot per decode row.
	flatQ, flatExact    int64
	mixedPad, mixedReal int64
}

func (d *workMeter) run(in *stepInput) (*stepOutput, error) {
	tokens := 0
	for _, c := range in.chunks {
		tokens += len(c.Tokens)
	}
	shape, ok := d.set.StepFor(func(q int) model.BatchShape { return model.NeededShape(d.cfg, d.layout, in.chunks, q) })
	if !ok {
		return nil, fmt.Errorf("step of %d tokens is outside the set", tokens)
	}
	if _, err := model.BuildBatch(d.cfg, d.layout, in.chunks, shape); err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.steps++
	d.compiledShapes[shape] = true
	d.realTokens += int64(tokens)
	d.padTokens += int64(shape.T)
	for _, c := range in.chunks {
		for q := range c.Tokens {
			pos := int64(c.StartPos + q)
			d.realGlobal += pos + 1
			d.realSliding += min(pos+1, int64(d.cfg.SlidingWindow))
		}
	}
	ps := int64(d.layout.PageSize)
	var realStep int64
	for _, c := range in.chunks {
		for q := 0; q < len(c.Tokens); q += shape.Q {
			n := min(shape.Q, len(c.Tokens)-q)
			pages := int64((c.StartPos + q + n + d.layout.PageSize - 1) / d.layout.PageSize)
			d.flatQ += int64(shape.Q) * pages * ps
			d.flatExact += int64(n) * pages * ps
		}
		for q := range c.Tokens {
			realStep += int64(c.StartPos+q) + 1
		}
	}
	if shape.Q > 1 {
		d.mixedPad += int64(shape.Q) * int64(shape.EG) * ps * model.PagesPerEntry
		d.mixedReal += realStep
	}
	keys := ps * model.PagesPerEntry // per entry
	d.padGlobal += int64(shape.Q) * int64(shape.EG) * keys
	d.padSliding += int64(shape.Q) * int64(shape.ES) * keys
	out := &stepOutput{tokens: make([]int32, len(in.chunks))}
	for i := range out.tokens {
		out.tokens[i] = 100 + int32(i%300)
	}
	return out, nil
}
func (d *workMeter) resetPools() error      { return nil }
func (d *workMeter) counts() (int64, int64) { return 0, 0 }
func (d *workMeter) close()                 {}

// TestPaddingRatio runs bench-like workloads through the real scheduler and the program
// set (the 27B shape: 62 layers, 52 sliding with a 1024 window, as served on a v5e-8) and
// measures the padding: padded work ÷ the work the real batch needs, for the matmuls
// (tokens) and for attention (query slots × attended positions, the global layers' and the
// sliding layers' weighted by their count). The goal is 2× on typical mixes; the figures go
// to docs/performance.md. A count, not a timing.
func TestPaddingRatio(t *testing.T) {
	cfg, err := model.Preset("gemma3-27b")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name          string
		in, out       int
		ratio         float64
		conc, prompts int
	}{
		{"random 1024 in / 128 out, concurrency 32 (vllm bench serve's default)", 1024, 128, 0, 32, 96},
		{"random 1024±50% / 128±50%, concurrency 32", 1024, 128, 0.5, 32, 96},
		{"chat-like 200±90% / 200±90%, concurrency 64", 200, 200, 0.9, 64, 160},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sc := SchedulerConfig{MaxNumSeqs: 128, MaxNumBatchedTokens: 2048, MaxModelLen: 8192}
			if err := sc.setDefaults(); err != nil {
				t.Fatal(err)
			}
			set, err := plan.NewStepSet(&cfg, plan.StepOptions{MaxNumSeqs: sc.MaxNumSeqs, MaxNumBatchedTokens: sc.MaxNumBatchedTokens, MaxModelLen: sc.MaxModelLen, PageSize: 16, MinTokens: 32})
			if err != nil {
				t.Fatal(err)
			}
			kvCfg := kvcache.Config{PageSize: 16, NumGlobalBlocks: 1 << 16, NumSlidingBlocks: 1 << 15, SlidingWindow: cfg.SlidingWindow, EnablePrefixCaching: true}
			kv, err := kvcache.NewManager(kvCfg)
			if err != nil {
				t.Fatal(err)
			}
			sched, err := NewScheduler(sc, kv)
			if err != nil {
				t.Fatal(err)
			}
			dev := &workMeter{cfg: &cfg, layout: model.KVLayout{PageSize: 16, NumGlobalPages: kvCfg.NumGlobalBlocks, NumSlidingPages: kvCfg.NumSlidingBlocks}, set: set, compiledShapes: map[model.BatchShape]bool{}}
			e := start(Config{NewDecoder: func(skip bool) StreamDecoder { return &textDecoder{skip: skip, vocab: int32(cfg.VocabSize)} },
				Scheduler: sc, MaxQueueLen: -1, Logger: discardLogger()}, &cfg, sched, dev)
			defer e.Close()
			rng := rand.New(rand.NewPCG(3, uint64(tc.in)))
			draw := func(mean int) int {
				lo, hi := float64(mean)*(1-tc.ratio), float64(mean)*(1+tc.ratio)
				return max(1, int(lo+rng.Float64()*(hi-lo)))
			}
			sem := make(chan struct{}, tc.conc)
			var wg sync.WaitGroup
			for i := 0; i < tc.prompts; i++ {
				sem <- struct{}{}
				prompt := make([]int32, draw(tc.in))
				for j := range prompt {
					prompt[j] = int32(1000 + rng.IntN(100000))
				}
				p := greedyParams(draw(tc.out))
				p.Logprobs = nil
				ch, err := e.Submit(context.Background(), Request{ID: fmt.Sprint(i), PromptIDs: prompt, Params: p})
				if err != nil {
					t.Fatal(err)
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					defer func() { <-sem }()
					for range ch {
					}
				}()
			}
			wg.Wait()
			g, s := float64(cfg.NumGlobalLayers()), float64(cfg.NumSlidingLayers())
			matmul := float64(dev.padTokens) / float64(dev.realTokens)
			global := float64(dev.padGlobal) / float64(dev.realGlobal)
			sliding := float64(dev.padSliding) / float64(dev.realSliding)
			attention := (g*float64(dev.padGlobal) + s*float64(dev.padSliding)) / (g*float64(dev.realGlobal) + s*float64(dev.realSliding))
			t.Logf("%d steps over %d distinct programs: matmul tokens %.2f×, attention %.2f× (global layers %.2f×, sliding %.2f×)",
				dev.steps, len(dev.compiledShapes), matmul, attention, global, sliding)
			t.Logf("global layers: steps with rows of 16: %.2f× (%.0f%% of the padded work); a flat page list would pay %.2f× (rows of the program's Q) or %.2f× (one slot per decode row)",
				float64(dev.mixedPad)/float64(max(dev.mixedReal, 1)), 100*float64(dev.mixedPad)/float64(dev.padGlobal), float64(dev.flatQ)/float64(dev.realGlobal), float64(dev.flatExact)/float64(dev.realGlobal))
			if matmul > 2 {
				t.Errorf("matmul padding %.2f× exceeds 2×", matmul)
			}
		})
	}
}
