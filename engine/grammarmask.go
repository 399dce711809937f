package engine

import (
	"runtime"
	"sync"
	"sync/atomic"
)

// fillGrammarMasks computes the bitmasks of the step's constrained sampling rows before
// the step's inputs are assembled. A row's mask depends only on its own matcher (the
// compiled grammar's mask cache is shared and safe for concurrent use), so the rows are
// spread over up to GOMAXPROCS goroutines: at batch 128 the host's mask time is the
// slowest row's share, not the sum. Called with e.mu held.
//
// The masks cannot overlap this step's device run: each needs the token the previous
// step sampled, and the forward pass and the sampler run as one device call here (see
// docs/performance.md, structured outputs).
func (e *Engine) fillGrammarMasks(plan *StepPlan) {
	var rows []*reqState
	for i := range plan.Seqs {
		ps := &plan.Seqs[i]
		if r := e.reqs[ps.RequestID]; r != nil && r.matcher != nil && ps.Sample && r.req.Params.MaxTokens > 0 {
			rows = append(rows, r)
		}
	}
	fillMasks(rows, runtime.GOMAXPROCS(0))
}

// fillMasks fills each row's mask with up to workers goroutines.
func fillMasks(rows []*reqState, workers int) {
	fill := func(r *reqState) {
		clear(r.mask)
		r.maskErr = r.matcher.FillMask(r.mask)
	}
	workers = min(workers, len(rows))
	if workers <= 1 {
		for _, r := range rows {
			fill(r)
		}
		return
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= len(rows) {
					return
				}
				fill(rows[i])
			}
		}()
	}
	wg.Wait()
}
