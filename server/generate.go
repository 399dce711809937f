package server

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/tpuserve/tpuserve/engine"
)

// A run is the set of engine requests that serve one API request (prompts × n choices),
// with their event streams merged. One goroutine (the handler) calls next until it
// returns false; cancel aborts every engine request, and the handler keeps calling next to
// drain the final events.
type run struct {
	s      *Server
	ctx    context.Context
	cancel context.CancelFunc
	subs   []*sub
	// merged carries the events of every sub when there is more than one; with a single
	// sub, next reads its channel directly (no extra goroutine on the common path).
	merged chan tagged
	open   int // subs whose channel is not closed yet
	// n is the choices per prompt; groups track each prompt's choices for vLLM's
	// vllm:request_max_num_generation_tokens (the most tokens any of its n generated).
	n      int
	groups []promptGroup
}

type promptGroup struct {
	left      int // choices not finished yet
	maxTokens int
}

type sub struct {
	choice int
	req    engine.Request
	ch     <-chan engine.Event
	final  bool // the final event was seen
	closed bool
	m      requestMetrics
}

type tagged struct {
	sub    int
	ev     engine.Event
	closed bool
}

// startRun submits the plan's engine requests (one per choice, in choice order) under a
// context derived from parent. If a Submit fails, the requests already submitted are
// aborted and drained, and the error is returned.
func (s *Server) startRun(parent context.Context, plan *genPlan) (*run, error) {
	eng := s.engine()
	if eng == nil {
		return nil, errEngineLoading
	}
	reqs := plan.engineRequests()
	ctx, cancel := context.WithCancel(parent)
	r := &run{s: s, ctx: ctx, cancel: cancel, subs: make([]*sub, len(reqs)), n: max(plan.n, 1)}
	now := time.Now()
	for i, req := range reqs {
		if req.ArrivalTime.IsZero() {
			req.ArrivalTime = now
		}
		ch, err := eng.Submit(ctx, req)
		if err != nil {
			cancel()
			for _, prev := range r.subs[:i] {
				for range prev.ch { //nolint:revive // drain the aborted request
				}
			}
			return nil, fmt.Errorf("submit %s: %w", req.ID, err)
		}
		r.subs[i] = &sub{choice: i, req: req, ch: ch, m: requestMetrics{arrival: req.ArrivalTime, promptLen: len(req.PromptIDs),
			maxTokens: req.Params.MaxTokens}}
	}
	r.open = len(reqs)
	r.groups = make([]promptGroup, (len(reqs)+r.n-1)/r.n)
	for i := range r.groups {
		r.groups[i].left = min(r.n, len(reqs)-i*r.n)
		s.metrics.paramsN.Observe(float64(r.groups[i].left))
	}
	if len(reqs) > 1 {
		r.merged = make(chan tagged, 4*len(reqs))
		for i, sb := range r.subs {
			go func(i int, ch <-chan engine.Event) {
				for ev := range ch {
					r.merged <- tagged{sub: i, ev: ev}
				}
				r.merged <- tagged{sub: i, closed: true}
			}(i, sb.ch)
		}
	}
	return r, nil
}

// errNoFinal is reported when an engine closes a stream without a final event.
var errNoFinal = errors.New("engine closed the event stream without a final event")

// next returns the next event and the choice it belongs to. It returns ok=false once every
// stream is closed. A stream that closes without a final event yields a synthetic final
// event with Err set.
func (r *run) next() (choice int, ev engine.Event, ok bool) {
	for r.open > 0 {
		var t tagged
		if r.merged != nil {
			t = <-r.merged
		} else {
			e, more := <-r.subs[0].ch
			t = tagged{ev: e, closed: !more}
		}
		sb := r.subs[t.sub]
		if t.closed {
			sb.closed = true
			r.open--
			if !sb.final {
				sb.final = true
				ev := engine.Event{Err: errNoFinal}
				r.s.metrics.observe(&sb.m, &ev)
				r.finishChoice(sb.choice, &ev)
				return sb.choice, ev, true
			}
			continue
		}
		if sb.final {
			continue // events after the final one are a contract violation; drop them
		}
		r.s.metrics.observe(&sb.m, &t.ev)
		if t.ev.Finished || t.ev.Err != nil {
			sb.final = true
			r.finishChoice(sb.choice, &t.ev)
		}
		return sb.choice, t.ev, true
	}
	r.cancel()
	return 0, engine.Event{}, false
}

// finishChoice counts a choice's final event in its prompt's group; the group's largest
// generation is observed once all its choices are done (errors count as done, not as a
// generation).
func (r *run) finishChoice(choice int, ev *engine.Event) {
	g := &r.groups[choice/r.n]
	if ev.Err == nil {
		g.maxTokens = max(g.maxTokens, ev.NumOutputTokens)
	}
	if g.left--; g.left == 0 {
		r.s.metrics.maxGenTokens.Observe(float64(g.maxTokens))
	}
}

// ready reports whether next would return without blocking; the streaming writers use it
// to put several chunks in one flush under load.
func (r *run) ready() bool {
	if r.open == 0 {
		return false
	}
	if r.merged != nil {
		return len(r.merged) > 0
	}
	return len(r.subs[0].ch) > 0
}

// abort cancels every engine request of the run; the caller still drains with next.
func (r *run) abort() { r.cancel() }

// drain aborts what is still running and consumes the remaining events, so that no engine
// stream or forwarding goroutine is left behind. Handlers defer it.
func (r *run) drain() {
	if r.open == 0 {
		r.cancel()
		return
	}
	r.cancel()
	for {
		if _, _, ok := r.next(); !ok {
			return
		}
	}
}

// deriveSeed gives choice i of a request its own seed: choice 0 keeps the request's seed
// (so n=1 and the first of n agree), the others get a SplitMix64 mix of (seed, i).
func deriveSeed(seed int64, i int) int64 {
	if i == 0 {
		return seed
	}
	z := uint64(seed) + uint64(i)*0x9E3779B97F4A7C15
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
	z = (z ^ (z >> 27)) * 0x94D049BB133111EB
	return int64(z ^ (z >> 31))
}

// newRequestID returns prefix plus 32 random hex digits.
func newRequestID(prefix string) string {
	b := make([]byte, 0, len(prefix)+32)
	b = append(b, prefix...)
	for range 2 {
		v := rand.Uint64()
		s := strconv.FormatUint(v, 16)
		for range 16 - len(s) {
			b = append(b, '0')
		}
		b = append(b, s...)
	}
	return string(b)
}

// engineRequests expands a plan into one engine request per choice: for each prompt, n
// choices with derived seeds. Choice index = prompt index × n + sample index, as vLLM.
func (p *genPlan) engineRequests() []engine.Request {
	reqs := make([]engine.Request, 0, len(p.prompts)*p.n)
	for pi, pr := range p.prompts {
		for k := range p.n {
			params := p.params
			params.MaxTokens = pr.maxTokens
			params.Stop = append([]string(nil), p.params.Stop...)
			params.StopTokenIDs = append([]int32(nil), p.params.StopTokenIDs...)
			if p.params.Seed != nil {
				sd := deriveSeed(*p.params.Seed, k)
				params.Seed = &sd
			}
			if p.params.Logprobs != nil {
				lp := *p.params.Logprobs
				params.Logprobs = &lp
			}
			idx := pi*p.n + k
			reqs = append(reqs, engine.Request{
				ID:          p.id + "-" + strconv.Itoa(idx),
				PromptIDs:   pr.ids,
				Params:      params,
				Priority:    p.priority,
				ArrivalTime: p.arrival,
				Images:      p.images,
			})
		}
	}
	return reqs
}
