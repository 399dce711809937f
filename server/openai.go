package server

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/gin-gonic/gin"

	"github.com/tpuserve/tpuserve/engine"
)

// errAborted is the cause of a 503 for a non-streaming request that the server aborted.
var errAborted = errors.New("request aborted")

func (s *Server) handleCompletions(c *gin.Context) {
	plan, e := s.completionPlan(requestBody(c))
	if e != nil {
		s.writeError(c, e)
		return
	}
	s.generate(c, plan, false)
}

func (s *Server) handleChat(c *gin.Context) {
	plan, e := s.chatPlan(requestBody(c))
	if e != nil {
		s.writeError(c, e)
		return
	}
	s.generate(c, plan, true)
}

// generate submits the plan's engine requests and answers in the plan's mode.
func (s *Server) generate(c *gin.Context, plan *genPlan, chat bool) {
	ctx := c.Request.Context()
	plan.created = time.Now().Unix()
	plan.arrival = c.GetTime(arrivalKey)
	r, err := s.startRun(ctx, plan.engineRequests())
	if err != nil {
		s.writeError(c, s.classifyEngineError(plan.id, err))
		return
	}
	defer r.drain()
	c.Header("X-Request-Id", plan.id)
	switch {
	case plan.stream && chat:
		s.streamChat(c, plan, r)
	case plan.stream:
		s.streamCompletion(c, plan, r)
	default:
		outs, e := s.collect(r, plan)
		if ctx.Err() != nil && s.hardCtx.Err() == nil {
			return // the client is gone: nobody to answer
		}
		if e != nil {
			s.writeError(c, e)
			return
		}
		if chat {
			s.writeJSON(c, http.StatusOK, s.chatResponse(plan, outs))
		} else {
			s.writeJSON(c, http.StatusOK, s.completionResponse(plan, outs))
		}
	}
}

// choiceOut accumulates one choice of a non-streaming request.
type choiceOut struct {
	text      strings.Builder
	positions []engine.PositionLogprobs
	tokens    int
	finish    engine.FinishReason
	stop      any
	cached    int
}

// collect drains the run into per-choice outputs. An engine error aborts the other choices
// and is returned; so is an abort (the server is shutting down).
func (s *Server) collect(r *run, plan *genPlan) ([]choiceOut, *APIError) {
	outs := make([]choiceOut, len(r.subs))
	var firstErr error
	for {
		i, ev, ok := r.next()
		if !ok {
			break
		}
		if ev.Err != nil {
			if firstErr == nil {
				firstErr = ev.Err
				r.abort()
			}
			continue
		}
		o := &outs[i]
		o.text.WriteString(ev.Text)
		o.tokens += len(ev.TokenIDs)
		if plan.logprobs >= 0 {
			o.positions = append(o.positions, eventLogprobs(&ev)...)
		}
		if ev.Finished {
			o.finish, o.stop, o.cached = ev.FinishReason, ev.StopReason, ev.NumCachedTokens
			if ev.NumOutputTokens > 0 {
				o.tokens = ev.NumOutputTokens
			}
		}
	}
	if firstErr != nil {
		return nil, s.classifyEngineError(plan.id, firstErr)
	}
	for i := range outs {
		if outs[i].finish == engine.FinishAbort || outs[i].finish == engine.FinishNone {
			cause := errAborted
			if err := context.Cause(r.ctx); err != nil {
				cause = err
			}
			return nil, s.classifyEngineError(plan.id, errors.Join(ErrShuttingDown, cause))
		}
	}
	return outs, nil
}

func finishPtr(f engine.FinishReason) *string {
	s := string(f)
	return &s
}

// usage sums prompt tokens once per prompt (not per choice), as vLLM does.
func (p *genPlan) usage(completionTokens int, cached int) *usageInfo {
	prompt := 0
	for _, pr := range p.prompts {
		prompt += len(pr.ids)
	}
	u := &usageInfo{PromptTokens: prompt, CompletionTokens: completionTokens, TotalTokens: prompt + completionTokens}
	if cached > 0 {
		u.PromptTokensDetails = &promptTokensDetail{CachedTokens: cached}
	}
	return u
}

func (p *genPlan) promptOf(choice int) *promptIn { return &p.prompts[choice/p.n] }

func (s *Server) completionResponse(plan *genPlan, outs []choiceOut) completionResponse {
	resp := completionResponse{ID: plan.id, Object: "text_completion", Created: plan.created, Model: plan.model,
		Choices: make([]completionChoice, len(outs))}
	total, cached := 0, 0
	for i := range outs {
		o := &outs[i]
		text := o.text.String()
		if plan.echo {
			text = plan.promptOf(i).echoText + text
		}
		ch := completionChoice{Index: i, Text: text, FinishReason: finishPtr(o.finish), StopReason: o.stop}
		if plan.logprobs >= 0 {
			lp := &completionLogprobs{TextOffset: []int{}, TokenLogprobs: []float64{}, Tokens: []string{}, TopLogprobs: []map[string]float64{}}
			s.appendCompletionLogprobs(lp, o.positions, plan.logprobs, plan.returnTokenIDs, 0)
			ch.Logprobs = lp
		}
		resp.Choices[i] = ch
		total += o.tokens
		if i%plan.n == 0 {
			cached += o.cached
		}
	}
	resp.Usage = plan.usage(total, cached)
	return resp
}

func (s *Server) chatResponse(plan *genPlan, outs []choiceOut) chatResponse {
	resp := chatResponse{ID: plan.id, Object: "chat.completion", Created: plan.created, Model: plan.model,
		Choices: make([]chatChoice, len(outs))}
	total, cached := 0, 0
	for i := range outs {
		o := &outs[i]
		text := o.text.String()
		if plan.echo {
			text = plan.promptOf(i).echoText + text
		}
		ch := chatChoice{Index: i, Message: &chatMessageOut{Role: "assistant", Content: text, ToolCalls: []any{}},
			FinishReason: finishPtr(o.finish), StopReason: o.stop}
		if plan.logprobs >= 0 {
			lp := &chatLogprobs{Content: []chatTokenLogprob{}}
			s.appendChatLogprobs(lp, o.positions, plan.logprobs, plan.returnTokenIDs)
			ch.Logprobs = lp
		}
		resp.Choices[i] = ch
		total += o.tokens
		if i%plan.n == 0 {
			cached += o.cached
		}
	}
	resp.Usage = plan.usage(total, cached)
	return resp
}

// streamState is one choice's progress in a stream.
type streamState struct {
	started bool // echo sent (completions) / role sent (chat)
	offset  int  // completions logprobs text_offset
	tokens  int
	cached  int
}

func (s *Server) streamCompletion(c *gin.Context, plan *genPlan, r *run) {
	w := startSSE(c)
	states := make([]streamState, len(r.subs))
	prefix := chunkPrefix(plan, "text_completion")
	failed := false
	for {
		i, ev, ok := r.next()
		if !ok {
			break
		}
		if failed {
			continue
		}
		if ev.Err != nil {
			failed = true
			r.abort()
			w.data(s.classifyEngineError(plan.id, ev.Err).body())
			w.flush()
			continue
		}
		st := &states[i]
		st.tokens += len(ev.TokenIDs)
		text := ev.Text
		if plan.echo && !st.started {
			echo := plan.promptOf(i).echoText
			text = echo + text
			st.offset = utf8.RuneCountInString(echo)
		}
		st.started = true
		positions := eventLogprobs(&ev)
		if ev.Finished {
			st.cached = ev.NumCachedTokens
			if ev.NumOutputTokens > 0 {
				st.tokens = ev.NumOutputTokens
			}
		}
		if text == "" && !ev.Finished && (plan.logprobs < 0 || len(positions) == 0) {
			continue
		}
		fast := plan.logprobs < 0 && !(plan.includeUsage && plan.continuousUsage)
		if fast {
			var ok bool
			if w.scratch, ok = appendCompletionChunk(w.scratch[:0], prefix, i, text, ev.Finished, ev.FinishReason, ev.StopReason); ok {
				w.raw(w.scratch)
				if !r.ready() {
					w.flush()
				}
				continue
			}
		}
		ch := completionChoice{Index: i, Text: text}
		if plan.logprobs >= 0 {
			lp := &completionLogprobs{TextOffset: []int{}, TokenLogprobs: []float64{}, Tokens: []string{}, TopLogprobs: []map[string]float64{}}
			st.offset = s.appendCompletionLogprobs(lp, positions, plan.logprobs, plan.returnTokenIDs, st.offset)
			ch.Logprobs = lp
		}
		if ev.Finished {
			ch.FinishReason, ch.StopReason = finishPtr(ev.FinishReason), ev.StopReason
		}
		chunk := completionResponse{ID: plan.id, Object: "text_completion", Created: plan.created, Model: plan.model,
			Choices: []completionChoice{ch}}
		if plan.includeUsage && plan.continuousUsage {
			chunk.Usage = &usageInfo{PromptTokens: len(plan.promptOf(i).ids), CompletionTokens: st.tokens, TotalTokens: len(plan.promptOf(i).ids) + st.tokens}
		}
		w.data(chunk)
		if !r.ready() {
			w.flush()
		}
	}
	if plan.includeUsage && !failed {
		total, cached := sumStates(states, plan.n)
		w.data(completionResponse{ID: plan.id, Object: "text_completion", Created: plan.created, Model: plan.model,
			Choices: []completionChoice{}, Usage: plan.usage(total, cached)})
	}
	w.done()
	w.flush()
}

func sumStates(states []streamState, n int) (tokens, cached int) {
	for i, st := range states {
		tokens += st.tokens
		if i%n == 0 {
			cached += st.cached
		}
	}
	return tokens, cached
}

func (s *Server) streamChat(c *gin.Context, plan *genPlan, r *run) {
	w := startSSE(c)
	states := make([]streamState, len(r.subs))
	chunk := func(ch chatChoice) chatResponse {
		return chatResponse{ID: plan.id, Object: "chat.completion.chunk", Created: plan.created, Model: plan.model,
			Choices: []chatChoice{ch}}
	}
	// Every choice opens with the assistant role (and the echoed message), as vLLM does.
	empty := ""
	for i := range states {
		w.data(chunk(chatChoice{Index: i, Delta: &chatDelta{Role: "assistant", Content: &empty}}))
		if echo := plan.promptOf(i).echoText; plan.echo && echo != "" {
			w.data(chunk(chatChoice{Index: i, Delta: &chatDelta{Content: &echo}}))
		}
	}
	w.flush()
	prefix := chunkPrefix(plan, "chat.completion.chunk")
	failed := false
	for {
		i, ev, ok := r.next()
		if !ok {
			break
		}
		if failed {
			continue
		}
		if ev.Err != nil {
			failed = true
			r.abort()
			w.data(s.classifyEngineError(plan.id, ev.Err).body())
			w.flush()
			continue
		}
		st := &states[i]
		st.tokens += len(ev.TokenIDs)
		positions := eventLogprobs(&ev)
		if ev.Finished {
			st.cached = ev.NumCachedTokens
			if ev.NumOutputTokens > 0 {
				st.tokens = ev.NumOutputTokens
			}
		}
		if ev.Text == "" && !ev.Finished && (plan.logprobs < 0 || len(positions) == 0) {
			continue
		}
		if plan.logprobs < 0 && !(plan.includeUsage && plan.continuousUsage) {
			var ok bool
			if w.scratch, ok = appendChatChunk(w.scratch[:0], prefix, i, ev.Text, ev.Finished, ev.FinishReason, ev.StopReason); ok {
				w.raw(w.scratch)
				if !r.ready() {
					w.flush()
				}
				continue
			}
		}
		delta := &chatDelta{}
		if ev.Text != "" {
			text := ev.Text
			delta.Content = &text
		}
		ch := chatChoice{Index: i, Delta: delta}
		if plan.logprobs >= 0 {
			lp := &chatLogprobs{Content: []chatTokenLogprob{}}
			s.appendChatLogprobs(lp, positions, plan.logprobs, plan.returnTokenIDs)
			ch.Logprobs = lp
		}
		if ev.Finished {
			ch.FinishReason, ch.StopReason = finishPtr(ev.FinishReason), ev.StopReason
		}
		resp := chunk(ch)
		if plan.includeUsage && plan.continuousUsage {
			n := len(plan.promptOf(i).ids)
			resp.Usage = &usageInfo{PromptTokens: n, CompletionTokens: st.tokens, TotalTokens: n + st.tokens}
		}
		w.data(resp)
		if !r.ready() {
			w.flush()
		}
	}
	if plan.includeUsage && !failed {
		total, cached := sumStates(states, plan.n)
		w.data(chatResponse{ID: plan.id, Object: "chat.completion.chunk", Created: plan.created, Model: plan.model,
			Choices: []chatChoice{}, Usage: plan.usage(total, cached)})
	}
	w.done()
	w.flush()
}
