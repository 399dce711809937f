package server

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/tpuserve/tpuserve/engine"
)

// The OpenAI Responses API (POST /v1/responses) for text, as vLLM serves it without its
// response store: every response is answered with store false (a store: true request is
// served all the same, as vLLM does unless VLLM_ENABLE_RESPONSES_API_STORE is set), and
// what needs stored state (previous_response_id, GET /v1/responses/{id}, background) is a
// 400. The prompt is the chat template's rendering of instructions (as a system message)
// plus the input messages, so the text equals /v1/chat/completions' for the same messages.

type responsesRequest struct {
	Model              string            `json:"model"`
	Input              json.RawMessage   `json:"input"`
	Instructions       *string           `json:"instructions"`
	MaxOutputTokens    *int              `json:"max_output_tokens"`
	Temperature        *float64          `json:"temperature"`
	TopP               *float64          `json:"top_p"`
	TopLogprobs        *int              `json:"top_logprobs"`
	Include            []string          `json:"include"`
	Stream             bool              `json:"stream"`
	Store              *bool             `json:"store"`
	Background         bool              `json:"background"`
	PreviousResponseID *string           `json:"previous_response_id"`
	Conversation       json.RawMessage   `json:"conversation"`
	Prompt             json.RawMessage   `json:"prompt"`
	Tools              json.RawMessage   `json:"tools"`
	ToolChoice         json.RawMessage   `json:"tool_choice"`
	Text               *responsesText    `json:"text"`
	Reasoning          *responsesReason  `json:"reasoning"`
	Truncation         *string           `json:"truncation"`
	Metadata           map[string]string `json:"metadata"`
	User               *string           `json:"user"`
	ParallelToolCalls  *bool             `json:"parallel_tool_calls"`

	// vLLM's extras.
	TopK              *int     `json:"top_k"`
	MinP              *float64 `json:"min_p"`
	RepetitionPenalty *float64 `json:"repetition_penalty"`
	Seed              *int64   `json:"seed"`
	Priority          int      `json:"priority"`
}

type responsesText struct {
	Format *struct {
		Type string `json:"type"`
	} `json:"format"`
}

type responsesReason struct {
	Effort  *string `json:"effort"`
	Summary *string `json:"summary"`
}

// responsesItemIn is one input item: a message (type "message", or no type with a role).
type responsesItemIn struct {
	Type    string          `json:"type"`
	Role    string          `json:"role"`
	Content json.RawMessage `json:"content"`
}

type responsesPartIn struct {
	Type string  `json:"type"`
	Text *string `json:"text"`
}

// Response bodies.

type responseObject struct {
	ID                 string               `json:"id"`
	Object             string               `json:"object"`
	CreatedAt          int64                `json:"created_at"`
	Status             string               `json:"status"`
	Background         bool                 `json:"background"`
	Error              *responseError       `json:"error"`
	IncompleteDetails  *incompleteDetails   `json:"incomplete_details"`
	Instructions       *string              `json:"instructions"`
	MaxOutputTokens    *int                 `json:"max_output_tokens"`
	Model              string               `json:"model"`
	Output             []responseOutputItem `json:"output"`
	ParallelToolCalls  bool                 `json:"parallel_tool_calls"`
	PreviousResponseID *string              `json:"previous_response_id"`
	Reasoning          responsesReason      `json:"reasoning"`
	Store              bool                 `json:"store"`
	Temperature        float64              `json:"temperature"`
	Text               responseTextOut      `json:"text"`
	ToolChoice         string               `json:"tool_choice"`
	Tools              []any                `json:"tools"`
	TopP               float64              `json:"top_p"`
	Truncation         string               `json:"truncation"`
	Usage              *responseUsage       `json:"usage"`
	User               *string              `json:"user"`
	Metadata           map[string]string    `json:"metadata"`
}

type responseError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

type incompleteDetails struct {
	Reason string `json:"reason"`
}

type responseTextOut struct {
	Format struct {
		Type string `json:"type"`
	} `json:"format"`
}

type responseOutputItem struct {
	Type    string            `json:"type"`
	ID      string            `json:"id"`
	Status  string            `json:"status"`
	Role    string            `json:"role"`
	Content []responseContent `json:"content"`
}

type responseContent struct {
	Type        string             `json:"type"`
	Text        string             `json:"text"`
	Annotations []any              `json:"annotations"`
	Logprobs    []chatTokenLogprob `json:"logprobs"`
}

type responseUsage struct {
	InputTokens        int `json:"input_tokens"`
	InputTokensDetails struct {
		CachedTokens int `json:"cached_tokens"`
	} `json:"input_tokens_details"`
	OutputTokens        int `json:"output_tokens"`
	OutputTokensDetails struct {
		ReasoningTokens int `json:"reasoning_tokens"`
	} `json:"output_tokens_details"`
	TotalTokens int `json:"total_tokens"`
}

// responsesPlan is a validated Responses request: the generation plan plus what the
// response object echoes.
type responsesPlan struct {
	*genPlan
	req    responsesRequest
	itemID string
}

// includeLogprobs is the include value that asks for output logprobs; the other include
// values name content this server never produces (images, tool outputs, reasoning), so
// asking for them is vacuously satisfied.
const includeLogprobs = "message.output_text.logprobs"

var knownIncludes = []string{includeLogprobs, "reasoning.encrypted_content", "message.input_image.image_url",
	"computer_call_output.output.image_url", "file_search_call.results", "web_search_call.results",
	"web_search_call.action.sources", "code_interpreter_call.outputs"}

func (s *Server) responsesPlan(body []byte) (*responsesPlan, *APIError) {
	var req responsesRequest
	if e := decodeJSON(body, &req); e != nil {
		return nil, e
	}
	model, e := s.checkModel(req.Model)
	if e != nil {
		return nil, e
	}
	switch {
	case req.PreviousResponseID != nil:
		return nil, unsupported("previous_response_id", "previous_response_id %q cannot be used: this server stores no responses (store is always false); send the whole conversation in input",
			truncate(*req.PreviousResponseID, 100))
	case req.Background:
		return nil, unsupported("background", "background mode needs stored responses, which this server does not keep")
	case present(req.Conversation):
		return nil, unsupported("conversation", "conversation needs stored state, which this server does not keep")
	case present(req.Prompt):
		return nil, unsupported("prompt", "prompt templates are not supported; send input")
	case req.Text != nil && req.Text.Format != nil && req.Text.Format.Type != "" && req.Text.Format.Type != "text":
		return nil, unsupported("text.format", "text.format type %q is not supported; only \"text\" is", truncate(req.Text.Format.Type, 40))
	case req.Reasoning != nil && req.Reasoning.Effort != nil:
		return nil, unsupported("reasoning", "reasoning is not supported by this model")
	case req.Truncation != nil && *req.Truncation != "disabled":
		return nil, unsupported("truncation", "truncation %q is not supported; only \"disabled\" is", truncate(*req.Truncation, 40))
	case req.MaxOutputTokens != nil && *req.MaxOutputTokens < 1:
		return nil, badParam("max_output_tokens", "max_output_tokens must be at least 1, got %d", *req.MaxOutputTokens)
	}
	if e := checkTools(req.Tools, req.ToolChoice, nil, nil); e != nil {
		return nil, e
	}
	logprobs := -1
	for i, inc := range req.Include {
		if !slices.Contains(knownIncludes, inc) {
			return nil, badParam(fmt.Sprintf("include[%d]", i), "include[%d] = %q is not a known include value", i, truncate(inc, 60))
		}
		if inc == includeLogprobs {
			logprobs = 0
		}
	}
	if req.TopLogprobs != nil {
		k := *req.TopLogprobs
		if k < 0 || k > s.cfg.MaxLogprobs {
			return nil, badParam("top_logprobs", "top_logprobs must be in [0, %d], got %d", s.cfg.MaxLogprobs, k)
		}
		if logprobs < 0 && k > 0 {
			return nil, badParam("top_logprobs", "top_logprobs needs include [%q]", includeLogprobs)
		}
		if logprobs >= 0 {
			logprobs = k
		}
	}
	f := samplingFields{Model: model, Temperature: req.Temperature, TopP: req.TopP, TopK: req.TopK, MinP: req.MinP,
		RepetitionPenalty: req.RepetitionPenalty, Seed: req.Seed, Priority: req.Priority, Stream: req.Stream}
	params, n, e := s.samplingParams(&f)
	if e != nil {
		return nil, e
	}
	msgs, e := responsesMessages(req.Instructions, req.Input)
	if e != nil {
		return nil, e
	}
	if e := s.checkChoices(1, n); e != nil {
		return nil, e
	}
	rendered, err := s.tok.ApplyChatTemplate(msgs, true)
	if err != nil {
		return nil, badParam("input", "input cannot be rendered with the chat template: %v", err)
	}
	ids := s.tok.Encode(rendered, false)
	if len(ids) == 0 {
		return nil, badParam("input", "input renders to an empty prompt")
	}
	prompts := []promptIn{{ids: ids}}
	if e := s.resolveLengths(prompts, nil, req.MaxOutputTokens, "max_output_tokens", 0, 0, "input"); e != nil {
		return nil, e
	}
	plan := &genPlan{id: newRequestID("resp_"), model: model, n: 1, logprobs: logprobs, stream: req.Stream,
		priority: req.Priority, prompts: prompts, params: params}
	if logprobs >= 0 {
		params.Logprobs = &logprobs
		plan.params = params
	}
	return &responsesPlan{genPlan: plan, req: req, itemID: newRequestID("msg_")}, nil
}

// responsesMessages turns instructions and input into chat messages.
func responsesMessages(instructions *string, input json.RawMessage) ([]ChatMessage, *APIError) {
	var msgs []ChatMessage
	if instructions != nil && *instructions != "" {
		msgs = append(msgs, ChatMessage{Role: "system", Content: *instructions})
	}
	input = bytes.TrimSpace(input)
	if len(input) == 0 || string(input) == "null" {
		return nil, &APIError{Status: http.StatusBadRequest, Type: typeInvalidRequest, Code: codeMissing, Param: "input",
			Message: "input is required"}
	}
	if input[0] == '"' {
		var text string
		if err := json.Unmarshal(input, &text); err != nil {
			return nil, badParam("input", "input is not a valid string")
		}
		return append(msgs, ChatMessage{Role: "user", Content: text}), nil
	}
	var items []responsesItemIn
	if err := json.Unmarshal(input, &items); err != nil {
		return nil, &APIError{Status: http.StatusBadRequest, Type: typeInvalidRequest, Code: codeInvalidType, Param: "input",
			Message: "input must be a string or an array of message items"}
	}
	if len(items) == 0 {
		return nil, badParam("input", "input must not be empty")
	}
	for i, it := range items {
		param := fmt.Sprintf("input[%d]", i)
		if it.Type != "" && it.Type != "message" {
			return nil, unsupported(param+".type", "%s.type %q is not supported; only message items are (no tool calls or reasoning items)", param, truncate(it.Type, 40))
		}
		msg := ChatMessage{Role: it.Role}
		switch it.Role {
		case "user", "system", "assistant":
		case "developer":
			msg.Role = "system"
		case "":
			return nil, &APIError{Status: http.StatusBadRequest, Type: typeInvalidRequest, Code: codeMissing, Param: param + ".role",
				Message: param + ".role is required"}
		default:
			return nil, badParam(param+".role", "%s.role must be one of user, system, developer, assistant; got %q", param, truncate(it.Role, 40))
		}
		content := bytes.TrimSpace(it.Content)
		switch {
		case len(content) == 0 || string(content) == "null":
			return nil, &APIError{Status: http.StatusBadRequest, Type: typeInvalidRequest, Code: codeMissing, Param: param + ".content",
				Message: param + ".content is required"}
		case content[0] == '"':
			if err := json.Unmarshal(content, &msg.Content); err != nil {
				return nil, badParam(param+".content", "%s.content is not a valid string", param)
			}
		case content[0] == '[':
			var parts []responsesPartIn
			if err := json.Unmarshal(content, &parts); err != nil {
				return nil, &APIError{Status: http.StatusBadRequest, Type: typeInvalidRequest, Code: codeInvalidType, Param: param + ".content",
					Message: param + ".content must be a string or an array of content parts"}
			}
			msg.Parts = make([]ContentPart, 0, len(parts))
			for j, p := range parts {
				pp := fmt.Sprintf("%s.content[%d]", param, j)
				if p.Type != "input_text" && p.Type != "output_text" && p.Type != "text" {
					return nil, unsupported(pp+".type", "%s.type %q is not supported; only text parts (input_text, output_text) are", pp, truncate(p.Type, 40))
				}
				if p.Text == nil {
					return nil, &APIError{Status: http.StatusBadRequest, Type: typeInvalidRequest, Code: codeMissing, Param: pp + ".text",
						Message: pp + ".text is required"}
				}
				msg.Parts = append(msg.Parts, ContentPart{Type: "text", Text: *p.Text})
			}
		default:
			return nil, &APIError{Status: http.StatusBadRequest, Type: typeInvalidRequest, Code: codeInvalidType, Param: param + ".content",
				Message: param + ".content must be a string or an array of content parts"}
		}
		msgs = append(msgs, msg)
	}
	return msgs, nil
}

func (s *Server) handleResponses(c *gin.Context) {
	rp, e := s.responsesPlan(requestBody(c))
	if e != nil {
		s.writeError(c, e)
		return
	}
	ctx := c.Request.Context()
	rp.created = time.Now().Unix()
	rp.arrival = c.GetTime(arrivalKey)
	r, err := s.startRun(ctx, rp.genPlan)
	if err != nil {
		s.writeError(c, s.classifyEngineError(rp.id, err))
		return
	}
	defer r.drain()
	c.Header("X-Request-Id", rp.id)
	if rp.stream {
		s.streamResponse(c, rp, r)
		return
	}
	outs, e := s.collect(r, rp.genPlan)
	if ctx.Err() != nil && s.hardCtx.Err() == nil {
		return // the client is gone
	}
	if e != nil {
		s.writeError(c, e)
		return
	}
	s.writeJSON(c, http.StatusOK, s.responseBody(rp, &outs[0]))
}

// handleResponseNotStored answers the routes that read stored responses.
func (s *Server) handleResponseNotStored(c *gin.Context) {
	s.writeError(c, unsupported("response_id", "response %q cannot be retrieved: this server stores no responses (store is always false)",
		truncate(c.Param("id"), 100)))
}

// responseBody is the response object: in progress while a is nil, else finished.
func (s *Server) responseBody(rp *responsesPlan, a *choiceAcc) responseObject {
	resp := responseObject{ID: rp.id, Object: "response", CreatedAt: rp.created, Status: "in_progress",
		Instructions: rp.req.Instructions, MaxOutputTokens: rp.req.MaxOutputTokens, Model: rp.model,
		Output: []responseOutputItem{}, ParallelToolCalls: rp.req.ParallelToolCalls == nil || *rp.req.ParallelToolCalls,
		Temperature: float64(rp.params.Temperature), ToolChoice: "auto", Tools: []any{}, TopP: float64(rp.params.TopP),
		Truncation: "disabled", User: rp.req.User, Metadata: rp.req.Metadata}
	if hasElements(rp.req.Tools) || isJSONString(rp.req.ToolChoice, "none") {
		resp.ToolChoice = "none"
	}
	if resp.Metadata == nil {
		resp.Metadata = map[string]string{}
	}
	resp.Text.Format.Type = "text"
	if a == nil {
		return resp
	}
	item := s.outputItem(rp, a)
	resp.Output = []responseOutputItem{item}
	resp.Status = item.Status
	if a.finish == engine.FinishLength {
		resp.IncompleteDetails = &incompleteDetails{Reason: "max_output_tokens"}
	}
	resp.Usage = s.responseUsage(rp, a)
	return resp
}

func (s *Server) outputItem(rp *responsesPlan, a *choiceAcc) responseOutputItem {
	status := "completed"
	if a.finish == engine.FinishLength {
		status = "incomplete"
	}
	return responseOutputItem{Type: "message", ID: rp.itemID, Status: status, Role: "assistant",
		Content: []responseContent{s.outputText(rp, a.text.String(), a.positions)}}
}

func (s *Server) outputText(rp *responsesPlan, text string, pos []engine.PositionLogprobs) responseContent {
	part := responseContent{Type: "output_text", Text: text, Annotations: []any{}, Logprobs: []chatTokenLogprob{}}
	if rp.logprobs >= 0 && len(pos) > 0 {
		lp := &chatLogprobs{Content: part.Logprobs}
		s.appendChatLogprobs(lp, pos, rp.logprobs, false)
		part.Logprobs = lp.Content
	}
	return part
}

func (s *Server) responseUsage(rp *responsesPlan, a *choiceAcc) *responseUsage {
	u := &responseUsage{InputTokens: len(rp.prompts[0].ids), OutputTokens: a.tokens}
	u.InputTokensDetails.CachedTokens = a.cached
	u.TotalTokens = u.InputTokens + u.OutputTokens
	return u
}

// Streaming events, as OpenAI's: "event: <type>" then "data: <json>" with the same type
// and a sequence number.

type responseEvent struct {
	Type           string              `json:"type"`
	SequenceNumber int                 `json:"sequence_number"`
	Response       *responseObject     `json:"response,omitempty"`
	OutputIndex    *int                `json:"output_index,omitempty"`
	Item           *responseOutputItem `json:"item,omitempty"`
	ItemID         string              `json:"item_id,omitempty"`
	ContentIndex   *int                `json:"content_index,omitempty"`
	Part           *responseContent    `json:"part,omitempty"`
	Delta          *string             `json:"delta,omitempty"`
	Text           *string             `json:"text,omitempty"`
	Logprobs       *[]chatTokenLogprob `json:"logprobs,omitempty"`
	// The error event's fields.
	Code    string  `json:"code,omitempty"`
	Message string  `json:"message,omitempty"`
	Param   *string `json:"param,omitempty"`
}

func (s *Server) streamResponse(c *gin.Context, rp *responsesPlan, r *run) {
	w := startSSE(c, r.abort)
	seq := 0
	zero := 0
	emit := func(ev responseEvent) {
		ev.SequenceNumber = seq
		seq++
		w.event(ev.Type, ev)
	}
	inProgress := s.responseBody(rp, nil)
	emit(responseEvent{Type: "response.created", Response: &inProgress})
	emit(responseEvent{Type: "response.in_progress", Response: &inProgress})
	item := responseOutputItem{Type: "message", ID: rp.itemID, Status: "in_progress", Role: "assistant", Content: []responseContent{}}
	emit(responseEvent{Type: "response.output_item.added", OutputIndex: &zero, Item: &item})
	empty := s.outputText(rp, "", nil)
	emit(responseEvent{Type: "response.content_part.added", ItemID: rp.itemID, OutputIndex: &zero, ContentIndex: &zero, Part: &empty})
	w.flush()
	var a choiceAcc
	for {
		_, ev, ok := r.next()
		if !ok {
			break
		}
		if ev.Err != nil {
			r.abort()
			ae := s.classifyEngineError(rp.id, ev.Err)
			var param *string
			if ae.Param != "" {
				param = &ae.Param
			}
			emit(responseEvent{Type: "error", Code: ae.Code, Message: ae.Message, Param: param})
			w.flush()
			for _, _, more := r.next(); more; _, _, more = r.next() { //nolint:revive // drain
			}
			return
		}
		a.add(&ev, rp.logprobs >= 0, false)
		if a.lastText != "" || len(a.lastPositions) > 0 {
			delta := a.lastText
			lps := s.outputText(rp, "", a.lastPositions).Logprobs
			emit(responseEvent{Type: "response.output_text.delta", ItemID: rp.itemID, OutputIndex: &zero, ContentIndex: &zero,
				Delta: &delta, Logprobs: nonNil(lps)})
		}
		if !r.ready() {
			w.flush()
		}
	}
	if a.aborted() {
		// Aborted (the client left, or the server is stopping): say so, as a failed response.
		failed := s.responseBody(rp, nil)
		failed.Status = "failed"
		failed.Error = &responseError{Code: codeUnavailable, Message: "the request was aborted"}
		emit(responseEvent{Type: "response.failed", Response: &failed})
		w.flush()
		return
	}
	final := s.responseBody(rp, &a)
	text := a.text.String()
	part := final.Output[0].Content[0]
	emit(responseEvent{Type: "response.output_text.done", ItemID: rp.itemID, OutputIndex: &zero, ContentIndex: &zero,
		Text: &text, Logprobs: nonNil(part.Logprobs)})
	emit(responseEvent{Type: "response.content_part.done", ItemID: rp.itemID, OutputIndex: &zero, ContentIndex: &zero, Part: &part})
	emit(responseEvent{Type: "response.output_item.done", OutputIndex: &zero, Item: &final.Output[0]})
	done := "response.completed"
	if final.Status == "incomplete" {
		done = "response.incomplete"
	}
	emit(responseEvent{Type: done, Response: &final})
	w.flush()
}

// nonNil gives the text events their "logprobs" ([] when none); the other events have
// no such field (nil pointer, omitted).
func nonNil(l []chatTokenLogprob) *[]chatTokenLogprob {
	if l == nil {
		l = []chatTokenLogprob{}
	}
	return &l
}
