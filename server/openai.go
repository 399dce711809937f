package server

import (
	"context"
	"errors"
	"net/http"
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
	r, err := s.startRun(ctx, plan)
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

// collect drains the run into per-choice outputs. An engine error aborts the other choices
// and is returned; so is an abort (the server is shutting down).
func (s *Server) collect(r *run, plan *genPlan) ([]choiceAcc, *APIError) {
	outs := make([]choiceAcc, len(r.subs))
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
		outs[i].add(&ev, plan.logprobs >= 0, false)
	}
	if firstErr != nil {
		return nil, s.classifyEngineError(plan.id, firstErr)
	}
	for i := range outs {
		if outs[i].aborted() {
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

func (s *Server) completionResponse(plan *genPlan, outs []choiceAcc) completionResponse {
	resp := completionResponse{ID: plan.id, Object: "text_completion", Created: plan.created, Model: plan.model,
		Choices: make([]completionChoice, len(outs))}
	for i := range outs {
		o := &outs[i]
		text := o.text.String()
		if plan.echo {
			text = plan.promptOf(i).echoText + text
		}
		ch := completionChoice{Index: i, Text: text, FinishReason: finishPtr(o.finish), StopReason: o.stop}
		if plan.logprobs >= 0 {
			lp := &completionLogprobs{TextOffset: []int{}, TokenLogprobs: []*float64{}, Tokens: []string{}, TopLogprobs: []map[string]float64{}}
			offset := 0
			if plan.echo {
				offset = s.appendEchoLogprobs(lp, plan.promptOf(i).ids, o.promptLP, plan.logprobs, plan.returnTokenIDs)
			}
			s.appendCompletionLogprobs(lp, o.positions, plan.logprobs, plan.returnTokenIDs, offset)
			ch.Logprobs = lp
		}
		if plan.promptLogprobs != nil {
			ch.PromptLogprobs = s.promptLogprobsJSON(o.promptLP, *plan.promptLogprobs)
		}
		resp.Choices[i] = ch
	}
	resp.Usage = plan.usage(sumAccs(outs, plan.n))
	return resp
}

func (s *Server) chatResponse(plan *genPlan, outs []choiceAcc) chatResponse {
	resp := chatResponse{ID: plan.id, Object: "chat.completion", Created: plan.created, Model: plan.model,
		SystemFingerprint: s.fingerprint, Choices: make([]chatChoice, len(outs))}
	if plan.promptLogprobs != nil && len(outs) > 0 {
		resp.PromptLogprobs = s.promptLogprobsJSON(outs[0].promptLP, *plan.promptLogprobs)
	}
	for i := range outs {
		o := &outs[i]
		text := o.text.String()
		if plan.echo {
			text = plan.promptOf(i).echoText + text
		}
		ch := chatChoice{Index: i, Message: &chatMessageOut{Role: "assistant", Content: text, ToolCalls: []toolCallOut{}},
			FinishReason: finishPtr(o.finish), StopReason: o.stop}
		if plan.tools != nil {
			plan.tools.answer(&ch, o)
		}
		if plan.logprobs >= 0 {
			lp := &chatLogprobs{Content: []chatTokenLogprob{}}
			s.appendChatLogprobs(lp, o.positions, plan.logprobs, plan.returnTokenIDs)
			ch.Logprobs = lp
		}
		resp.Choices[i] = ch
	}
	resp.Usage = plan.usage(sumAccs(outs, plan.n))
	return resp
}

func (s *Server) streamCompletion(c *gin.Context, plan *genPlan, r *run) {
	w := startSSE(c, r.abort)
	accs := make([]choiceAcc, len(r.subs))
	started := make([]bool, len(r.subs)) // echo sent
	offsets := make([]int, len(r.subs))  // logprobs text_offset
	prefix := chunkPrefix(plan, "text_completion", "")
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
		a := &accs[i]
		a.add(&ev, plan.logprobs >= 0, false)
		text := a.lastText
		if plan.echo && !started[i] {
			echo := plan.promptOf(i).echoText
			text = echo + text
			offsets[i] = utf8.RuneCountInString(echo)
		}
		started[i] = true
		positions := a.lastPositions
		if text == "" && !ev.Finished && len(positions) == 0 {
			continue
		}
		if plan.logprobs < 0 && !(plan.includeUsage && plan.continuousUsage) {
			w.scratch = appendCompletionChunk(w.scratch[:0], prefix, i, text, ev.Finished, a.finish, a.stop)
			w.raw(w.scratch)
			if !r.ready() {
				w.flush()
			}
			continue
		}
		ch := completionChoice{Index: i, Text: text}
		if plan.logprobs >= 0 {
			lp := &completionLogprobs{TextOffset: []int{}, TokenLogprobs: []*float64{}, Tokens: []string{}, TopLogprobs: []map[string]float64{}}
			offsets[i] = s.appendCompletionLogprobs(lp, positions, plan.logprobs, plan.returnTokenIDs, offsets[i])
			ch.Logprobs = lp
		}
		if ev.Finished {
			ch.FinishReason, ch.StopReason = finishPtr(a.finish), a.stop
		}
		chunk := completionResponse{ID: plan.id, Object: "text_completion", Created: plan.created, Model: plan.model,
			Choices: []completionChoice{ch}}
		if plan.includeUsage && plan.continuousUsage {
			n := len(plan.promptOf(i).ids)
			chunk.Usage = &usageInfo{PromptTokens: n, CompletionTokens: a.tokens, TotalTokens: n + a.tokens}
		}
		w.data(chunk)
		if !r.ready() {
			w.flush()
		}
	}
	if plan.includeUsage && !failed {
		w.data(completionResponse{ID: plan.id, Object: "text_completion", Created: plan.created, Model: plan.model,
			Choices: []completionChoice{}, Usage: plan.usage(sumAccs(accs, plan.n))})
	}
	w.done()
	w.flush()
}

func (s *Server) streamChat(c *gin.Context, plan *genPlan, r *run) {
	w := startSSE(c, r.abort)
	accs := make([]choiceAcc, len(r.subs))
	chunk := func(ch chatChoice) chatResponse {
		return chatResponse{ID: plan.id, Object: "chat.completion.chunk", Created: plan.created, Model: plan.model,
			SystemFingerprint: s.fingerprint, Choices: []chatChoice{ch}}
	}
	// Every choice opens with the assistant role (and the echoed message), as vLLM does.
	empty := ""
	for i := range accs {
		w.data(chunk(chatChoice{Index: i, Delta: &chatDelta{Role: "assistant", Content: &empty, Refusal: jsonNull}}))
		if echo := plan.promptOf(i).echoText; plan.echo && echo != "" {
			w.data(chunk(chatChoice{Index: i, Delta: &chatDelta{Content: &echo}}))
		}
	}
	w.flush()
	prefix := chunkPrefix(plan, "chat.completion.chunk", s.fingerprint)
	toolStreams := make([]*toolStream, len(accs))
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
		a := &accs[i]
		a.add(&ev, plan.logprobs >= 0, false)
		if plan.tools != nil {
			if toolStreams[i] == nil {
				toolStreams[i] = newToolStream(plan.tools)
			}
			s.streamToolEvent(w, plan, chunk, i, a, &ev, toolStreams[i])
			if !r.ready() {
				w.flush()
			}
			continue
		}
		positions := a.lastPositions
		if a.lastText == "" && !ev.Finished && len(positions) == 0 {
			continue
		}
		if plan.logprobs < 0 && !(plan.includeUsage && plan.continuousUsage) {
			w.scratch = appendChatChunk(w.scratch[:0], prefix, i, a.lastText, ev.Finished, a.finish, a.stop)
			w.raw(w.scratch)
			if !r.ready() {
				w.flush()
			}
			continue
		}
		delta := &chatDelta{}
		if a.lastText != "" {
			text := a.lastText
			delta.Content = &text
		}
		ch := chatChoice{Index: i, Delta: delta}
		if plan.logprobs >= 0 {
			lp := &chatLogprobs{Content: []chatTokenLogprob{}}
			s.appendChatLogprobs(lp, positions, plan.logprobs, plan.returnTokenIDs)
			ch.Logprobs = lp
		}
		if ev.Finished {
			ch.FinishReason, ch.StopReason = finishPtr(a.finish), a.stop
		}
		resp := chunk(ch)
		if plan.includeUsage && plan.continuousUsage {
			n := len(plan.promptOf(i).ids)
			resp.Usage = &usageInfo{PromptTokens: n, CompletionTokens: a.tokens, TotalTokens: n + a.tokens}
		}
		w.data(resp)
		if !r.ready() {
			w.flush()
		}
	}
	if plan.includeUsage && !failed {
		w.data(chatResponse{ID: plan.id, Object: "chat.completion.chunk", Created: plan.created, Model: plan.model,
			SystemFingerprint: s.fingerprint, Choices: []chatChoice{}, Usage: plan.usage(sumAccs(accs, plan.n))})
	}
	w.done()
	w.flush()
}
