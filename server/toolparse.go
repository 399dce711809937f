package server

import (
	"bytes"
	"encoding/json"
	"strings"

	"github.com/tpuserve/tpuserve/engine"
)

// parsedCall is one function call read from the model's answer; args is the arguments
// object with the whitespace outside strings removed (OpenAI's compact form).
type parsedCall struct {
	name string
	args string
}

// parseCalls reads a whole answer as tool calls: a JSON list of {"name", "arguments"}
// objects (or one such object), optionally in a ``` fence, every name a known tool and
// every arguments value an object ("parameters" is taken for "arguments", as Gemma's
// examples sometimes write it). ok is false for anything else: the answer is then content.
func (ts *toolSet) parseCalls(text string) (calls []parsedCall, ok bool) {
	t := strings.TrimSpace(text)
	if strings.HasPrefix(t, "```") {
		nl := strings.IndexByte(t, '\n')
		if nl < 0 || !strings.HasSuffix(t, "```") || len(t) < nl+4 {
			return nil, false
		}
		t = strings.TrimSpace(t[nl+1 : len(t)-3])
	}
	if t == "" {
		return nil, false
	}
	var elems []json.RawMessage
	switch t[0] {
	case '[':
		if json.Unmarshal([]byte(t), &elems) != nil {
			return nil, false
		}
	case '{':
		elems = []json.RawMessage{json.RawMessage(t)}
	default:
		return nil, false
	}
	if len(elems) == 0 {
		return nil, false
	}
	for _, el := range elems {
		var c struct {
			Name       *string         `json:"name"`
			Arguments  json.RawMessage `json:"arguments"`
			Parameters json.RawMessage `json:"parameters"`
		}
		dec := json.NewDecoder(bytes.NewReader(el))
		dec.DisallowUnknownFields()
		if dec.Decode(&c) != nil || c.Name == nil || !ts.names[*c.Name] {
			return nil, false
		}
		args := bytes.TrimSpace(c.Arguments)
		if len(args) == 0 {
			args = bytes.TrimSpace(c.Parameters)
		} else if len(bytes.TrimSpace(c.Parameters)) > 0 {
			return nil, false
		}
		if len(args) == 0 {
			args = []byte("{}")
		}
		if args[0] != '{' {
			return nil, false
		}
		calls = append(calls, parsedCall{name: *c.Name, args: compactJSON(args)})
	}
	if !ts.parallel {
		calls = calls[:1]
	}
	return calls, true
}

// compactJSON drops the whitespace outside strings. Applied to a prefix of a JSON text,
// it gives a prefix of the whole text's result, so streamed arguments add up to it.
func compactJSON(src []byte) string {
	var b strings.Builder
	b.Grow(len(src))
	inString, escaped := false, false
	for _, c := range src {
		if inString {
			switch {
			case escaped:
				escaped = false
			case c == '\\':
				escaped = true
			case c == '"':
				inString = false
			}
			b.WriteByte(c)
			continue
		}
		switch c {
		case ' ', '\t', '\n', '\r':
			continue
		case '"':
			inString = true
		}
		b.WriteByte(c)
	}
	return b.String()
}

func newToolCallID() string { return newRequestID("chatcmpl-tool-") }

// answer turns a finished choice's text into tool calls when it is one: content null,
// tool_calls filled, finish_reason "tool_calls". An answer cut by max_tokens stays
// content.
func (ts *toolSet) answer(ch *chatChoice, o *choiceAcc) {
	if o.finish != engine.FinishStop {
		return
	}
	calls, ok := ts.parseCalls(ch.Message.Content)
	if !ok {
		return
	}
	for _, c := range calls {
		ch.Message.ToolCalls = append(ch.Message.ToolCalls, toolCallOut{ID: newToolCallID(), Type: "function",
			Function: toolCallFunction{Name: c.name, Arguments: c.args}})
	}
	ch.Message.Content, ch.Message.nullContent = "", true
	ch.FinishReason = finishPtr(finishToolCalls)
}

// finishToolCalls is OpenAI's finish_reason for an answer that is tool calls.
const finishToolCalls engine.FinishReason = "tool_calls"

// MarshalJSON writes content as null for a message that is only tool calls.
func (m chatMessageOut) MarshalJSON() ([]byte, error) {
	var content any = m.Content
	if m.nullContent {
		content = nil
	}
	return json.Marshal(struct {
		Role      string        `json:"role"`
		Content   any           `json:"content"`
		Refusal   *string       `json:"refusal"`
		ToolCalls []toolCallOut `json:"tool_calls"`
	}{m.Role, content, m.Refusal, m.ToolCalls})
}

// toolStream turns one streamed choice's text into deltas. Under a constraint (required,
// named) the answer is calls by construction, so each call's header (id, name) goes out
// once its name is complete and its arguments as they grow. Under auto, text that cannot
// start a call list streams as content at once; text that can is held to the end and then
// sent as calls if it parses, as content otherwise.
type toolStream struct {
	ts   *toolSet
	buf  []byte
	mode toolStreamMode
	// calls sent so far (constrained mode): their ids and how much of the arguments.
	sent []sentCall
	// called: at least one call went out (finish_reason "tool_calls").
	called bool
}

type toolStreamMode uint8

const (
	streamUndecided toolStreamMode = iota // auto: only whitespace so far
	streamContent                         // auto: plain content
	streamHeld                            // auto: may be calls, held to the end
	streamCalls                           // constrained: calls as they come
)

type sentCall struct {
	id       string
	argsSent int
}

func newToolStream(ts *toolSet) *toolStream {
	st := &toolStream{ts: ts}
	if ts.mode != toolAuto {
		st.mode = streamCalls
	}
	return st
}

// feed adds text and returns the content to send now and the tool-call deltas;
// finished says the choice ended (stopped: with "stop", not cut by max_tokens).
func (st *toolStream) feed(text string, finished, stopped bool) (content string, deltas []toolCallDelta) {
	st.buf = append(st.buf, text...)
	switch st.mode {
	case streamContent:
		return text, nil
	case streamCalls:
		return "", st.diff(scanCallList(st.buf))
	}
	if st.mode == streamUndecided {
		t := bytes.TrimLeft(st.buf, " \t\r\n")
		switch {
		case len(t) == 0 && !finished:
			return "", nil
		case len(t) > 0 && (t[0] == '[' || t[0] == '{' || t[0] == '`'):
			st.mode = streamHeld
		default:
			st.mode = streamContent
			return string(st.buf), nil
		}
	}
	if !finished {
		return "", nil
	}
	if calls, ok := st.ts.parseCalls(string(st.buf)); ok && stopped {
		for i, c := range calls {
			deltas = append(deltas, toolCallDelta{Index: i, ID: newToolCallID(), Type: "function", Function: toolCallFunction{Name: c.name}},
				toolCallDelta{Index: i, Function: toolCallFunction{Arguments: c.args}})
		}
		st.called = true
		return "", deltas
	}
	return string(st.buf), nil
}

// diff returns the deltas that bring what was sent up to the scanned calls.
func (st *toolStream) diff(calls []scannedCall) []toolCallDelta {
	var out []toolCallDelta
	for i, c := range calls {
		if i >= len(st.sent) {
			if !c.nameDone {
				break
			}
			st.sent = append(st.sent, sentCall{id: newToolCallID()})
			out = append(out, toolCallDelta{Index: i, ID: st.sent[i].id, Type: "function", Function: toolCallFunction{Name: c.name}})
			st.called = true
		}
		if s := &st.sent[i]; len(c.args) > s.argsSent {
			out = append(out, toolCallDelta{Index: i, Function: toolCallFunction{Arguments: c.args[s.argsSent:]}})
			s.argsSent = len(c.args)
		}
	}
	return out
}

// scannedCall is what a prefix of a call list says about one call so far.
type scannedCall struct {
	name     string
	nameDone bool
	args     string // compacted prefix of the arguments value
}

// scanCallList reads as much of a (possibly incomplete) JSON call list as is there. It
// stops at the end of the text or at anything that is not the call format.
func scanCallList(b []byte) []scannedCall {
	var calls []scannedCall
	i := skipWS(b, 0)
	if i >= len(b) || b[i] != '[' {
		return nil
	}
	i++
	for {
		i = skipWS(b, i)
		if i >= len(b) || b[i] != '{' {
			return calls
		}
		i++
		calls = append(calls, scannedCall{})
		c := &calls[len(calls)-1]
		for {
			i = skipWS(b, i)
			if i >= len(b) {
				return calls
			}
			if b[i] == '}' {
				i++
				break
			}
			if b[i] == ',' {
				i = skipWS(b, i+1)
			}
			end, done := scanValue(b, i)
			if !done || b[i] != '"' {
				return calls
			}
			var key string
			if json.Unmarshal(b[i:end], &key) != nil {
				return calls
			}
			i = skipWS(b, end)
			if i >= len(b) || b[i] != ':' {
				return calls
			}
			i = skipWS(b, i+1)
			if i >= len(b) {
				return calls
			}
			end, done = scanValue(b, i)
			switch key {
			case "name":
				if done && json.Unmarshal(b[i:end], &c.name) == nil {
					c.nameDone = true
				}
			case "arguments":
				c.args = compactJSON(b[i:end])
			}
			if !done {
				return calls
			}
			i = end
		}
		i = skipWS(b, i)
		if i >= len(b) || b[i] != ',' {
			return calls
		}
		i++
	}
}

func skipWS(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// scanValue finds the end of the JSON value starting at b[i]; done is false when the
// text ends first (end is then len(b)).
func scanValue(b []byte, i int) (end int, done bool) {
	depth := 0
	inString, escaped := false, false
	for j := i; j < len(b); j++ {
		c := b[j]
		if inString {
			switch {
			case escaped:
				escaped = false
			case c == '\\':
				escaped = true
			case c == '"':
				inString = false
				if depth == 0 {
					return j + 1, true
				}
			}
			continue
		}
		switch c {
		case '"':
			inString = true
		case '{', '[':
			depth++
		case '}', ']':
			depth--
			if depth == 0 {
				return j + 1, true
			}
			if depth < 0 { // a scalar ended by its container
				return j, true
			}
		case ',', ' ', '\t', '\n', '\r', ':':
			if depth == 0 {
				return j, true
			}
		}
	}
	return len(b), false
}

// streamToolEvent writes one event of a streamed choice that may answer with tool calls:
// tool-call deltas (one per chunk, as OpenAI sends them), then the content, logprobs and
// finish of the event.
func (s *Server) streamToolEvent(w *sseWriter, plan *genPlan, chunk func(chatChoice) chatResponse, i int, a *choiceAcc, ev *engine.Event, st *toolStream) {
	content, deltas := st.feed(a.lastText, ev.Finished, a.finish == engine.FinishStop)
	for _, d := range deltas {
		w.data(chunk(chatChoice{Index: i, Delta: &chatDelta{ToolCalls: []toolCallDelta{d}}}))
	}
	var lp *chatLogprobs
	if plan.logprobs >= 0 && len(a.lastPositions) > 0 {
		lp = &chatLogprobs{Content: []chatTokenLogprob{}}
		s.appendChatLogprobs(lp, a.lastPositions, plan.logprobs, plan.returnTokenIDs)
	}
	if content == "" && lp == nil && !ev.Finished {
		return
	}
	delta := &chatDelta{}
	if content != "" {
		delta.Content = &content
	}
	ch := chatChoice{Index: i, Delta: delta, Logprobs: lp}
	if ev.Finished {
		reason := a.finish
		if st.called && reason == engine.FinishStop {
			reason = finishToolCalls
		}
		ch.FinishReason, ch.StopReason = finishPtr(reason), a.stop
	}
	resp := chunk(ch)
	if plan.includeUsage && plan.continuousUsage {
		n := len(plan.promptOf(i).ids)
		resp.Usage = &usageInfo{PromptTokens: n, CompletionTokens: a.tokens, TotalTokens: n + a.tokens}
	}
	w.data(resp)
}
