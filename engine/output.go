package engine

import (
	"context"
	"strings"
	"time"
	"unicode/utf8"
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
	req      Request
	ctx      context.Context
	stopCtx  func() bool
	events   chan Event
	pending  Event // not yet delivered (the channel was full)
	hasPend  bool
	closed   bool
	key      uint32
	output   []int32
	decoder  StreamDecoder
	held     string // text held back because it may start a stop string
	maxStop  int
	eos      map[int32]bool
	metrics  RequestMetrics
	numCache int
	finished bool
}

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
}

// addToken appends a sampled token, detokenizes it, checks stops and queues an event. It
// returns a non-empty reason when the request is finished by this token.
func (r *reqState) addToken(tok int32, lp *PositionLogprobs, maxModelLenReached bool) tokenResult {
	p := &r.req.Params
	r.output = append(r.output, tok)
	if len(r.output) == 1 {
		r.metrics.FirstTokenTime = time.Now()
	}
	ev := Event{TokenIDs: []int32{tok}}
	if lp != nil {
		ev.Logprobs = []PositionLogprobs{*lp}
	}
	var res tokenResult
	n := len(r.output)
	stopToken := false
	if n >= p.MinTokens {
		switch {
		case !p.IgnoreEOS && r.eos[tok]:
			res.reason, stopToken = FinishStop, true
		case containsID(p.StopTokenIDs, tok):
			res.reason, res.stopReason, stopToken = FinishStop, int(tok), true
		}
	}
	if !stopToken {
		text, err := r.decoder.Add(tok)
		if err != nil {
			ev.Err = err
			r.appendEvent(ev)
			return tokenResult{reason: FinishAbort}
		}
		r.held += text
	}
	if res.reason == "" && (n >= p.MaxTokens || maxModelLenReached) {
		res.reason = FinishLength
	}
	if res.reason != "" {
		r.held += r.decoder.Flush()
	}
	// Stop strings: emit everything that cannot be the start of one.
	if idx, stop := r.findStop(); idx >= 0 {
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

// findStop returns the earliest stop string in the held text.
func (r *reqState) findStop() (int, string) {
	best, which := -1, ""
	for _, s := range r.req.Params.Stop {
		if s == "" {
			continue
		}
		if i := strings.Index(r.held, s); i >= 0 && (best < 0 || i < best) {
			best, which = i, s
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
		NumPromptTokens: len(r.req.PromptIDs), NumOutputTokens: len(r.output),
		NumCachedTokens: r.numCache, Metrics: r.metrics,
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
