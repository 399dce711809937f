package server

import (
	"encoding/json"
	"strconv"
	"strings"

	"github.com/tpuserve/tpuserve/engine"
)

// stopKind says what ended a choice that finished with "stop".
type stopKind uint8

const (
	stopNone    stopKind = iota // EOS, length or not finished: stop_reason null
	stopString                  // a stop string
	stopTokenID                 // a stop token id
)

// stopReason is vLLM's stop_reason: null, the matched stop string or the stop token id.
// It replaces engine.Event.StopReason's any inside the server (converted once, by
// stopReasonOf, where events arrive).
type stopReason struct {
	kind    stopKind
	str     string
	tokenID int32
}

// stopReasonOf converts the engine's StopReason (nil, a string or an integer id).
func stopReasonOf(v any) stopReason {
	switch x := v.(type) {
	case string:
		return stopReason{kind: stopString, str: x}
	case int32:
		return stopReason{kind: stopTokenID, tokenID: x}
	case int:
		return stopReason{kind: stopTokenID, tokenID: int32(x)}
	case int64:
		return stopReason{kind: stopTokenID, tokenID: int32(x)}
	case uint32:
		return stopReason{kind: stopTokenID, tokenID: int32(x)}
	}
	return stopReason{}
}

func (r stopReason) appendJSON(b []byte) []byte {
	switch r.kind {
	case stopString:
		return appendJSONString(b, r.str)
	case stopTokenID:
		return strconv.AppendInt(b, int64(r.tokenID), 10)
	}
	return append(b, "null"...)
}

func (r stopReason) MarshalJSON() ([]byte, error) { return r.appendJSON(nil), nil }

// UnmarshalJSON lets tests decode responses into the server's own types.
func (r *stopReason) UnmarshalJSON(b []byte) error {
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	switch x := v.(type) {
	case string:
		*r = stopReason{kind: stopString, str: x}
	case float64:
		*r = stopReason{kind: stopTokenID, tokenID: int32(x)}
	default:
		*r = stopReason{}
	}
	return nil
}

// choiceAcc accumulates one choice's output: the non-streaming responses, the SSE
// streams (usage, Responses' final text) and gRPC's Complete message all read it, so the
// three paths count tokens, text, logprobs and the finish the same way.
type choiceAcc struct {
	text      strings.Builder
	tokenIDs  []int32 // kept only when keepIDs (gRPC's output_ids)
	positions []engine.PositionLogprobs
	// promptLP are the prompt's logprobs (prompt_logprobs / echo with logprobs): entry i
	// is prompt position i+1.
	promptLP []engine.PositionLogprobs
	tokens   int // generated tokens so far (the engine's count once finished)
	finished bool
	finish   engine.FinishReason
	stop     stopReason
	cached   int
	prompt   int
	// The last event's additions, for the streaming writers.
	lastText      string
	lastPositions []engine.PositionLogprobs
}

// add folds in one event (not an error event) and remembers its increment.
func (a *choiceAcc) add(ev *engine.Event, keepLogprobs, keepIDs bool) {
	a.text.WriteString(ev.Text)
	a.lastText = ev.Text
	a.tokens += len(ev.TokenIDs)
	if keepIDs {
		a.tokenIDs = append(a.tokenIDs, ev.TokenIDs...)
	}
	a.lastPositions = nil
	a.promptLP = append(a.promptLP, ev.PromptLogprobs...)
	if keepLogprobs {
		a.lastPositions = eventLogprobs(ev)
		a.positions = append(a.positions, a.lastPositions...)
	}
	if ev.Finished {
		a.finished = true
		a.finish, a.stop, a.cached = ev.FinishReason, stopReasonOf(ev.StopReason), ev.NumCachedTokens
		if ev.NumOutputTokens > 0 {
			a.tokens = ev.NumOutputTokens
		}
		if ev.NumPromptTokens > 0 {
			a.prompt = ev.NumPromptTokens
		}
	}
}

// aborted reports whether the choice ended without an answer (aborted or cut off).
func (a *choiceAcc) aborted() bool {
	return !a.finished || a.finish == engine.FinishAbort || a.finish == engine.FinishNone
}

// sumAccs adds the choices' generated tokens and, once per prompt (every n-th choice),
// the cached prompt tokens.
func sumAccs(accs []choiceAcc, n int) (tokens, cached int) {
	for i := range accs {
		tokens += accs[i].tokens
		if i%n == 0 {
			cached += accs[i].cached
		}
	}
	return tokens, cached
}
