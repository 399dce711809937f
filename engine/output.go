package engine

import (
	"context"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/tpuserve/tpuserve/engine/grammar"
)

// StreamDecoder turns token ids into text incrementally, never splitting a UTF-8
// character (tokenizer.StreamDecoder satisfies it).
type StreamDecoder interface {
	Add(id int32) (string, error)
	Flush() string
}

// NewDecoderFunc makes a StreamDecoder for one request.
type NewDecoderFunc func(skipSpecialTokens bool) StreamDecoder

// reqState is the engine's record of one live request: its parameters, what it generated,
// its detokenizer and stop-string hold-back, and its event stream. Owned by the step loop
// (under Engine.mu).
type reqState struct {
	req     Request
	ctx     context.Context
	stopCtx func() bool
	events  chan Event
	pending Event // not yet delivered (the channel was full)
	hasPend bool
	closed  bool
	key     uint32
	// seq is the scheduler's record of the request: its tokens (prompt, then every output
	// token, appended by UpdateFromOutput), how many the prefix cache served, its status.
	// The engine reads them there; it keeps no copy.
	seq     *seqState
	decoder StreamDecoder
	held    string // text held back because it may start a stop string
	maxStop int
	eos     map[int32]bool
	metrics RequestMetrics
	// finished: the final event is queued (the stream's state; the scheduler's status says
	// whether the request still runs).
	finished bool
	bias     logitBias
	// matcher follows the request's grammar (nil without one); mask is its bitmask buffer.
	matcher *grammar.Matcher
	mask    []uint32
	maskErr error // the last FillMask's error
	// promptLP are the scored prompt positions so far (prompt_logprobs); promptSent once
	// they went out on an event.
	promptLP   []PositionLogprobs
	promptSent bool
}

// promptDone is called when the whole prompt has been computed: the prompt logprobs, if
// requested, go out on the next event.
func (r *reqState) promptDone() {
	if r.req.Params.PromptLogprobs == nil || r.promptSent {
		return
	}
	r.promptSent = true
	r.appendEvent(Event{PromptLogprobs: r.promptLP})
}

// output are the tokens generated so far (the scheduler's, after the prompt).
func (r *reqState) output() []int32 { return r.seq.tokens[r.seq.numPrompt:] }

// numCached is how many prompt tokens the prefix cache served at the first admission.
func (r *reqState) numCached() int { return max(r.seq.numCached, 0) }

// appendEvent merges ev into the request's undelivered event.
func (r *reqState) appendEvent(ev Event) {
	if !r.hasPend {
		r.pending, r.hasPend = ev, true
		return
	}
	p := &r.pending
	p.TokenIDs = append(p.TokenIDs, ev.TokenIDs...)
	p.Text += ev.Text
	p.Logprobs = append(p.Logprobs, ev.Logprobs...)
	p.TokenTimes = append(p.TokenTimes, ev.TokenTimes...)
	p.PromptLogprobs = append(p.PromptLogprobs, ev.PromptLogprobs...)
	if ev.Finished || ev.Err != nil {
		p.Finished, p.FinishReason, p.StopReason, p.Err = ev.Finished, ev.FinishReason, ev.StopReason, ev.Err
		p.NumPromptTokens, p.NumOutputTokens, p.NumCachedTokens, p.Metrics = ev.NumPromptTokens, ev.NumOutputTokens, ev.NumCachedTokens, ev.Metrics
	}
}

// deliver tries to hand the pending event to the consumer without blocking; after the
// final event it closes the stream. It reports whether something is still pending.
func (r *reqState) deliver() bool {
	if r.closed {
		return false
	}
	if r.hasPend {
		select {
		case r.events <- r.pending:
			final := r.pending.Finished || r.pending.Err != nil
			r.pending, r.hasPend = Event{}, false
			if final {
				close(r.events)
				r.closed = true
			}
		default:
			if r.ctx.Err() != nil && r.finished {
				// Nobody is reading any more: drop what is left.
				close(r.events)
				r.closed = true
				return false
			}
		}
	}
	return r.hasPend
}

// tokenResult says what one new token did to a request.
type tokenResult struct {
	reason     FinishReason
	stopReason any
	err        error // the request ends with this error (a detokenizer failure)
}

// addToken takes the sampled token (already appended to the request's tokens by the
// scheduler's UpdateFromOutput), detokenizes it and decides whether the request stops
// — the one place that does (vLLM's check_stop): EOS and stop token ids (not before
// min_tokens), stop strings (matches ending in text produced at or after min_tokens),
// max_tokens and max_model_len. It queues an event and returns a non-empty reason when the
// token finishes the request. at is when the step that produced tok ended.
func (r *reqState) addToken(tok int32, lp *PositionLogprobs, maxModelLenReached bool, at time.Time) tokenResult {
	return r.addTokenAt(tok, len(r.output()), lp, maxModelLenReached, at)
}

// addTokenAt is addToken for the n-th output token (1-based) when a speculative step
// appended several at once.
func (r *reqState) addTokenAt(tok int32, n int, lp *PositionLogprobs, maxModelLenReached bool, at time.Time) tokenResult {
	p := &r.req.Params
	if n == 1 {
		r.metrics.FirstTokenTime = at
	}
	ev := Event{TokenIDs: []int32{tok}, TokenTimes: []time.Time{at}}
	if lp != nil {
		ev.Logprobs = []PositionLogprobs{*lp}
	}
	var res tokenResult
	stopToken := false
	if n >= p.MinTokens {
		switch {
		case !p.IgnoreEOS && r.eos[tok]:
			res.reason, stopToken = FinishStop, true
		case containsID(p.StopTokenIDs, tok):
			res.reason, res.stopReason, stopToken = FinishStop, int(tok), true
		}
	}
	heldBefore := len(r.held)
	if !stopToken {
		text, err := r.decoder.Add(tok)
		if err != nil {
			r.appendEvent(ev)
			return tokenResult{reason: FinishAbort, err: fmt.Errorf("engine: detokenizing token %d: %w", tok, err)}
		}
		r.held += text
	}
	if res.reason == "" && (n >= p.MaxTokens || maxModelLenReached) {
		res.reason = FinishLength
	}
	if res.reason != "" {
		r.held += r.decoder.Flush()
	}
	// Stop strings: emit everything that cannot be the start of one. Before min_tokens no
	// stop string counts; after, only matches that end in this token's text (an earlier
	// match would have been found earlier, or lies before min_tokens).
	idx, stop := -1, ""
	if n >= p.MinTokens {
		idx, stop = r.findStop(heldBefore)
	}
	if idx >= 0 {
		text := r.held[:idx]
		if p.IncludeStopStrInOutput {
			text += stop
		}
		ev.Text, r.held = text, ""
		res = tokenResult{reason: FinishStop, stopReason: stop}
	} else if res.reason != "" {
		ev.Text, r.held = r.held, ""
	} else {
		cut := len(r.held) - (r.maxStop - 1)
		if r.maxStop == 0 {
			cut = len(r.held)
		}
		for cut > 0 && cut < len(r.held) && !utf8.RuneStart(r.held[cut]) {
			cut--
		}
		if cut > 0 {
			ev.Text, r.held = r.held[:cut], r.held[cut:]
		}
	}
	r.appendEvent(ev)
	return res
}

// findStop returns the earliest stop string in the held text that ends after byte from.
func (r *reqState) findStop(from int) (int, string) {
	best, which := -1, ""
	for _, s := range r.req.Params.Stop {
		if s == "" {
			continue
		}
		start := max(0, from-len(s)+1)
		if i := strings.Index(r.held[start:], s); i >= 0 && (best < 0 || start+i < best) {
			best, which = start+i, s
		}
	}
	return best, which
}

// finish queues the final event.
func (r *reqState) finish(reason FinishReason, stopReason any, err error) {
	if r.finished {
		return
	}
	r.finished = true
	r.metrics.FinishedTime = time.Now()
	r.appendEvent(Event{
		Finished: err == nil, FinishReason: reason, StopReason: stopReason, Err: err,
		NumPromptTokens: len(r.req.PromptIDs), NumOutputTokens: len(r.output()),
		NumCachedTokens: r.numCached(), Metrics: r.metrics,
	})
	if r.stopCtx != nil {
		r.stopCtx()
	}
}

func containsID(ids []int32, id int32) bool {
	for _, x := range ids {
		if x == id {
			return true
		}
	}
	return false
}
