package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/tpuserve/tpuserve/engine"
	"github.com/tpuserve/tpuserve/engine/grammar"
)

// genPlan is a validated generation request, ready to become engine requests.
type genPlan struct {
	id      string
	created int64
	model   string
	prompts []promptIn
	n       int
	// params is shared by every choice; MaxTokens is per prompt (promptIn.maxTokens) and
	// Seed is derived per choice.
	params engine.SamplingParams
	// logprobs is how many top alternatives to report per token; -1 = no logprobs.
	logprobs int
	// promptLogprobs is vLLM's prompt_logprobs (top alternatives per prompt position); nil
	// = not asked.
	promptLogprobs  *int
	returnTokenIDs  bool
	stream          bool
	includeUsage    bool
	continuousUsage bool
	echo            bool
	priority        int
	// arrival is when the request reached the server (zero: when it is submitted).
	arrival time.Time
	// tools: a chat request that may answer with tool calls (nil: it may not).
	tools *toolSet
	// images go with every prompt's requests (a chat's image parts, preprocessed).
	images []engine.Image
}

// promptIn is one prompt: its token ids, the text echo prepends, and the max_tokens it
// gets after the length checks.
type promptIn struct {
	ids       []int32
	echoText  string
	maxTokens int
}

// decodeJSON decodes a request body into v; malformed JSON and wrong types are 400s that
// name the field.
func decodeJSON(body []byte, v any) *APIError {
	if len(bytes.TrimSpace(body)) == 0 {
		return &APIError{Status: http.StatusBadRequest, Type: typeInvalidRequest, Code: codeInvalidJSON,
			Message: "the request body is empty; expected a JSON object"}
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(v); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			field := jsonFieldPath(te.Field)
			return &APIError{Status: http.StatusBadRequest, Type: typeInvalidRequest, Code: codeInvalidType, Param: field,
				Message: fmt.Sprintf("invalid type for '%s': expected %s, got %s", field, describeGoType(te.Type.String()), te.Value)}
		}
		if te != nil {
			return &APIError{Status: http.StatusBadRequest, Type: typeInvalidRequest, Code: codeInvalidJSON,
				Message: fmt.Sprintf("the request body must be a JSON object, got %s", te.Value)}
		}
		return &APIError{Status: http.StatusBadRequest, Type: typeInvalidRequest, Code: codeInvalidJSON,
			Message: "malformed JSON in the request body: " + strings.TrimPrefix(err.Error(), "json: ")}
	}
	if _, err := dec.Token(); err != io.EOF {
		return &APIError{Status: http.StatusBadRequest, Type: typeInvalidRequest, Code: codeInvalidJSON,
			Message: "malformed JSON in the request body: unexpected data after the top-level object"}
	}
	return nil
}

// jsonFieldPath drops the Go name of the embedded struct from a json error's field path.
func jsonFieldPath(f string) string {
	return strings.ReplaceAll(f, "samplingFields.", "")
}

func describeGoType(t string) string {
	t = strings.TrimLeft(t, "*")
	switch {
	case strings.HasPrefix(t, "int"), strings.HasPrefix(t, "uint"):
		return "an integer"
	case strings.HasPrefix(t, "float"):
		return "a number"
	case t == "bool":
		return "a boolean"
	case t == "string":
		return "a string"
	case strings.HasPrefix(t, "[]"):
		return "an array"
	default:
		return "an object"
	}
}

func finiteIn(name string, v *float64, lo, hi float64, loOpen bool, into *float32) *APIError {
	if v == nil {
		return nil
	}
	x := *v
	// Check the float32 the engine will get too: 1e-100 rounds to 0.
	x32 := float64(float32(x))
	if math.IsNaN(x) || math.IsInf(x32, 0) || x > hi || x < lo || x32 > hi || x32 < lo || (loOpen && (x == lo || x32 == lo)) {
		lb := "["
		if loOpen {
			lb = "("
		}
		return badParam(name, "%s must be in %s%g, %g], got %g", name, lb, lo, hi, x)
	}
	*into = float32(x)
	return nil
}

// samplingParams validates the sampling parameters of every generation request, HTTP
// (completions, chat, responses) and gRPC alike: ranges, the server's generation defaults
// for what the request leaves out, n and priority. The explicit max_tokens (nil when
// absent) is resolved against the prompt later, by resolveLengths.
func (s *Server) samplingParams(f *samplingFields) (p engine.SamplingParams, n int, apiErr *APIError) {
	p = engine.DefaultSamplingParams()
	f.applyDefaults(&s.cfg.Defaults)
	if e := finiteIn("temperature", f.Temperature, 0, 2, false, &p.Temperature); e != nil {
		return p, 0, e
	}
	if e := finiteIn("top_p", f.TopP, 0, 1, true, &p.TopP); e != nil {
		return p, 0, e
	}
	if e := finiteIn("min_p", f.MinP, 0, 1, false, &p.MinP); e != nil {
		return p, 0, e
	}
	if e := finiteIn("presence_penalty", f.PresencePenalty, -2, 2, false, &p.PresencePenalty); e != nil {
		return p, 0, e
	}
	if e := finiteIn("frequency_penalty", f.FrequencyPenalty, -2, 2, false, &p.FrequencyPenalty); e != nil {
		return p, 0, e
	}
	if e := finiteIn("repetition_penalty", f.RepetitionPenalty, 0, math.MaxFloat32, true, &p.RepetitionPenalty); e != nil {
		return p, 0, e
	}
	if f.TopK != nil {
		k := *f.TopK
		if k < -1 || k > s.cfg.VocabSize {
			return p, 0, badParam("top_k", "top_k must be -1 or 0 (off) or in [1, %d], got %d", s.cfg.VocabSize, k)
		}
		p.TopK = k
	}
	n = 1
	if f.N != nil {
		n = *f.N
		if n < 1 || n > maxN {
			return p, 0, badParam("n", "n must be in [1, %d], got %d", maxN, n)
		}
	}
	if f.BestOf != nil && *f.BestOf != n {
		return p, 0, unsupported("best_of", "best_of is not supported (it must be absent or equal to n=%d), got %d", n, *f.BestOf)
	}
	// max_tokens 0 (prompt scoring) is allowed with echo only: completionPlan checks it.
	if f.MaxTokens != nil && *f.MaxTokens < 0 {
		return p, 0, badParam("max_tokens", "max_tokens must be at least 1, got %d", *f.MaxTokens)
	}
	if f.MinTokens != nil {
		if *f.MinTokens < 0 {
			return p, 0, badParam("min_tokens", "min_tokens must be at least 0, got %d", *f.MinTokens)
		}
		p.MinTokens = *f.MinTokens
	}
	if f.Seed != nil {
		sd := *f.Seed
		p.Seed = &sd
	}
	stops, e := parseStop(f.Stop)
	if e != nil {
		return p, 0, e
	}
	p.Stop = stops
	for i, id := range f.StopTokenIDs {
		if id < 0 || id >= int64(s.cfg.VocabSize) {
			return p, 0, badParam(fmt.Sprintf("stop_token_ids[%d]", i), "stop_token_ids[%d] = %d is outside the vocabulary [0, %d)", i, id, s.cfg.VocabSize)
		}
		p.StopTokenIDs = append(p.StopTokenIDs, int32(id))
	}
	p.IgnoreEOS = f.IgnoreEOS
	p.IncludeStopStrInOutput = f.IncludeStopStrInOutput
	if f.SkipSpecialTokens != nil {
		p.SkipSpecialTokens = *f.SkipSpecialTokens
	}
	if len(f.LogitBias) > 0 {
		if len(f.LogitBias) > engine.MaxLogitBias {
			return p, 0, badParam("logit_bias", "logit_bias has %d entries, at most %d are allowed", len(f.LogitBias), engine.MaxLogitBias)
		}
		p.LogitBias = make(map[int32]float32, len(f.LogitBias))
		for k, v := range f.LogitBias {
			id, err := strconv.ParseInt(k, 10, 32)
			if err != nil || id < 0 || id >= int64(s.cfg.VocabSize) {
				return p, 0, badParam("logit_bias", "logit_bias key %q is not a token id in [0, %d)", truncate(k, 40), s.cfg.VocabSize)
			}
			b, ok := v.(float64)
			if !ok || !(b >= -100 && b <= 100) {
				return p, 0, badParam("logit_bias", "logit_bias[%s] = %v must be a number in [-100, 100]", k, v)
			}
			p.LogitBias[int32(id)] = float32(b)
		}
	}
	if g, e := s.structuredGrammar(f); e != nil {
		return p, 0, e
	} else if g != nil {
		p.Grammar = g
	}
	if f.PromptLogprobs != nil {
		k := *f.PromptLogprobs
		if k < 0 || k > s.cfg.MaxLogprobs {
			return p, 0, badParam("prompt_logprobs", "prompt_logprobs must be in [0, %d], got %d", s.cfg.MaxLogprobs, k)
		}
		p.PromptLogprobs = &k
	}
	if f.StreamOptions != nil && !f.Stream {
		return p, 0, badParam("stream_options", "stream_options can only be set when stream is true")
	}
	if f.TruncatePromptTokens != nil {
		if t := *f.TruncatePromptTokens; t != -1 && (t < 1 || t > s.cfg.MaxModelLen) {
			return p, 0, badParam("truncate_prompt_tokens", "truncate_prompt_tokens must be -1 or in [1, %d], got %d", s.cfg.MaxModelLen, t)
		}
	}
	if f.Priority != 0 && !s.cfg.PriorityScheduling {
		return p, 0, badParam("priority", "Got priority %d but priority scheduling is not enabled (start the server with --scheduling-policy priority)", f.Priority)
	}
	return p, n, nil
}

// applyDefaults fills the sampling parameters the request left out from the server's
// generation defaults (vLLM's --generation-config auto).
func (f *samplingFields) applyDefaults(d *GenerationDefaults) {
	if f.Temperature == nil && d.Temperature != nil {
		f.Temperature = ptr(*d.Temperature)
	}
	if f.TopP == nil && d.TopP != nil {
		f.TopP = ptr(*d.TopP)
	}
	if f.TopK == nil && d.TopK != nil {
		f.TopK = ptr(*d.TopK)
	}
	if f.MinP == nil && d.MinP != nil {
		f.MinP = ptr(*d.MinP)
	}
	if f.RepetitionPenalty == nil && d.RepetitionPenalty != nil {
		f.RepetitionPenalty = ptr(*d.RepetitionPenalty)
	}
}

// checkChoices bounds prompts × n: by maxChoices, and by the engine's capacity (running
// plus waiting sequences), since a request with more choices than that can never be
// admitted; 429 would make a retrying client loop forever, so it is a 400.
func (s *Server) checkChoices(prompts, n int) *APIError {
	total := prompts * n
	if total > maxChoices {
		return badParam("n", "prompts × n must be at most %d, got %d × %d", maxChoices, prompts, n)
	}
	if c := s.cfg.QueueCapacity; c > 0 && total > c {
		return badParam("n", "prompts × n = %d × %d = %d sequences can never be admitted: the server holds at most %d (max-num-seqs + max-queue-len)", prompts, n, total, c)
	}
	return nil
}

// parseStop accepts null, a string or an array of strings; empty strings are refused.
func parseStop(raw json.RawMessage) ([]string, *APIError) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	var one string
	if err := json.Unmarshal(raw, &one); err == nil {
		if one == "" {
			return nil, badParam("stop", "stop must not be an empty string")
		}
		return []string{one}, nil
	}
	var many []string
	if err := json.Unmarshal(raw, &many); err != nil {
		return nil, &APIError{Status: http.StatusBadRequest, Type: typeInvalidRequest, Code: codeInvalidType, Param: "stop",
			Message: "stop must be a string or an array of strings"}
	}
	for i, st := range many {
		if st == "" {
			return nil, badParam(fmt.Sprintf("stop[%d]", i), "stop[%d] must not be an empty string", i)
		}
	}
	return many, nil
}

// parseTokenIDs decodes an array of token ids, each an integer in [0, vocab).
func (s *Server) parseTokenIDs(param string, raw json.RawMessage) ([]int32, *APIError) {
	var elems []json.RawMessage
	if err := json.Unmarshal(raw, &elems); err != nil {
		return nil, &APIError{Status: http.StatusBadRequest, Type: typeInvalidRequest, Code: codeInvalidType, Param: param,
			Message: param + " must be an array of token ids"}
	}
	ids := make([]int32, len(elems))
	for i, el := range elems {
		v, err := strconv.ParseInt(string(bytes.TrimSpace(el)), 10, 64)
		if err != nil {
			return nil, &APIError{Status: http.StatusBadRequest, Type: typeInvalidRequest, Code: codeInvalidType,
				Param: fmt.Sprintf("%s[%d]", param, i), Message: fmt.Sprintf("%s[%d] must be an integer token id, got %s", param, i, truncate(string(el), 40))}
		}
		if v < 0 || v >= int64(s.cfg.VocabSize) {
			return nil, badParam(fmt.Sprintf("%s[%d]", param, i), "token id %d in %s[%d] is outside the vocabulary [0, %d)", v, param, i, s.cfg.VocabSize)
		}
		ids[i] = int32(v)
	}
	return ids, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// parsePrompt decodes /v1/completions' prompt: a string, [string], [int] or [[int]].
func (s *Server) parsePrompt(raw json.RawMessage, addSpecial bool) ([]promptIn, *APIError) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return nil, &APIError{Status: http.StatusBadRequest, Type: typeInvalidRequest, Code: codeMissing, Param: "prompt", Message: "prompt is required"}
	}
	wrongType := &APIError{Status: http.StatusBadRequest, Type: typeInvalidRequest, Code: codeInvalidType, Param: "prompt",
		Message: "prompt must be a string, an array of strings, an array of token ids or an array of arrays of token ids"}
	encode := func(param, text string) (promptIn, *APIError) {
		ids := s.tok.Encode(text, addSpecial)
		if len(ids) == 0 {
			return promptIn{}, badParam(param, "%s must not be empty", param)
		}
		return promptIn{ids: ids, echoText: text}, nil
	}
	fromIDs := func(param string, raw json.RawMessage) (promptIn, *APIError) {
		ids, e := s.parseTokenIDs(param, raw)
		if e != nil {
			return promptIn{}, e
		}
		if len(ids) == 0 {
			return promptIn{}, badParam(param, "%s must not be empty", param)
		}
		text, err := s.tok.Decode(ids, false)
		if err != nil {
			return promptIn{}, badParam(param, "%s cannot be decoded: %v", param, err)
		}
		return promptIn{ids: ids, echoText: text}, nil
	}
	switch raw[0] {
	case '"':
		var text string
		if err := json.Unmarshal(raw, &text); err != nil {
			return nil, wrongType
		}
		p, e := encode("prompt", text)
		if e != nil {
			return nil, e
		}
		return []promptIn{p}, nil
	case '[':
		var elems []json.RawMessage
		if err := json.Unmarshal(raw, &elems); err != nil {
			return nil, wrongType
		}
		if len(elems) == 0 {
			return nil, badParam("prompt", "prompt must not be empty")
		}
		switch first := bytes.TrimSpace(elems[0]); {
		case len(first) > 0 && (first[0] == '-' || (first[0] >= '0' && first[0] <= '9')):
			p, e := fromIDs("prompt", raw)
			if e != nil {
				return nil, e
			}
			return []promptIn{p}, nil
		case len(first) > 0 && first[0] == '"':
			if len(elems) > maxChoices {
				return nil, badParam("prompt", "at most %d prompts per request, got %d", maxChoices, len(elems))
			}
			out := make([]promptIn, len(elems))
			for i, el := range elems {
				param := fmt.Sprintf("prompt[%d]", i)
				var text string
				if err := json.Unmarshal(el, &text); err != nil {
					return nil, &APIError{Status: http.StatusBadRequest, Type: typeInvalidRequest, Code: codeInvalidType, Param: param,
						Message: param + " must be a string like the other prompts"}
				}
				p, e := encode(param, text)
				if e != nil {
					return nil, e
				}
				out[i] = p
			}
			return out, nil
		case len(first) > 0 && first[0] == '[':
			if len(elems) > maxChoices {
				return nil, badParam("prompt", "at most %d prompts per request, got %d", maxChoices, len(elems))
			}
			out := make([]promptIn, len(elems))
			for i, el := range elems {
				p, e := fromIDs(fmt.Sprintf("prompt[%d]", i), el)
				if e != nil {
					return nil, e
				}
				out[i] = p
			}
			return out, nil
		}
	}
	return nil, wrongType
}

// resolveLengths truncates prompts (truncate_prompt_tokens), checks them against
// max_model_len and settles each prompt's max_tokens: an explicit max_tokens that does not
// fit is an error with the counts; the default is defaultMax (0 = all the room left),
// capped by the room left.
func (s *Server) resolveLengths(prompts []promptIn, truncateTo *int, explicit *int, maxParam string, defaultMax int, minTokens int, promptParam string) *APIError {
	maxLen := s.cfg.MaxModelLen
	if d := s.cfg.Defaults.MaxTokens; d != nil && (defaultMax == 0 || *d < defaultMax) {
		defaultMax = *d
	}
	for i := range prompts {
		pr := &prompts[i]
		// Text can encode to special tokens beyond the model's rows (Gemma 3's
		// <image_soft_token> in a text-only checkpoint): the model has no row for them.
		for j, id := range pr.ids {
			if id < 0 || int(id) >= s.cfg.VocabSize {
				return badParam(promptParam, "token id %d at prompt position %d is outside the model's vocabulary [0, %d)", id, j, s.cfg.VocabSize)
			}
		}
		if truncateTo != nil {
			k := *truncateTo
			if k == -1 {
				k = maxLen
			}
			if len(pr.ids) > k {
				pr.ids = pr.ids[len(pr.ids)-k:]
			}
		}
		n := len(pr.ids)
		if n >= maxLen {
			return &APIError{Status: http.StatusBadRequest, Type: typeInvalidRequest, Code: codeContextLength, Param: promptParam,
				Message: fmt.Sprintf("This model's maximum context length is %d tokens. However, your request has %d input tokens. Please reduce the length of the input.", maxLen, n)}
		}
		room := maxLen - n
		if explicit != nil {
			if *explicit > room {
				return &APIError{Status: http.StatusBadRequest, Type: typeInvalidRequest, Code: codeContextLength, Param: maxParam,
					Message: fmt.Sprintf("This model's maximum context length is %d tokens. However, you requested %d tokens (%d in the input, %d in the completion). Please reduce the length of the input or completion.", maxLen, n+*explicit, n, *explicit)}
			}
			pr.maxTokens = *explicit
		} else {
			pr.maxTokens = room
			if defaultMax > 0 && defaultMax < room {
				pr.maxTokens = defaultMax
			}
		}
		if minTokens > pr.maxTokens {
			return badParam("min_tokens", "min_tokens (%d) must not exceed max_tokens (%d)", minTokens, pr.maxTokens)
		}
	}
	return nil
}

// checkModel answers 404 for a model this server does not serve; "" means the default.
func (s *Server) checkModel(name string) (string, *APIError) {
	if name == "" {
		return s.modelName, nil
	}
	for _, n := range s.cfg.ServedModelNames {
		if n == name {
			return name, nil
		}
	}
	return "", &APIError{Status: http.StatusNotFound, Type: typeNotFound, Code: codeModelNotFound, Param: "model",
		Message: fmt.Sprintf("The model `%s` does not exist.", truncate(name, 200))}
}

// completionPlan validates a /v1/completions body.
func (s *Server) completionPlan(body []byte) (*genPlan, *APIError) {
	var req completionRequest
	if e := decodeJSON(body, &req); e != nil {
		return nil, e
	}
	model, e := s.checkModel(req.Model)
	if e != nil {
		return nil, e
	}
	params, n, e := s.samplingParams(&req.samplingFields)
	if e != nil {
		return nil, e
	}
	if req.Suffix != nil && *req.Suffix != "" {
		return nil, unsupported("suffix", "suffix is not supported")
	}
	plan := &genPlan{model: model, n: n, logprobs: -1, stream: req.Stream, echo: req.Echo,
		returnTokenIDs: req.ReturnTokensAsTokenIDs, priority: req.Priority, promptLogprobs: req.PromptLogprobs}
	if req.Logprobs != nil {
		k := *req.Logprobs
		if k < 0 || k > s.cfg.MaxLogprobs {
			return nil, badParam("logprobs", "logprobs must be in [0, %d], got %d", s.cfg.MaxLogprobs, k)
		}
		if req.Echo {
			if req.Stream {
				return nil, unsupported("echo", "echo with logprobs is not supported when streaming")
			}
			// The echoed prompt's logprobs are the prompt logprobs (at least k alternatives).
			if params.PromptLogprobs == nil || *params.PromptLogprobs < k {
				pk := k
				params.PromptLogprobs = &pk
			}
		}
		plan.logprobs = k
		params.Logprobs = &k
	}
	if req.MaxTokens != nil && *req.MaxTokens == 0 {
		if !req.Echo {
			return nil, badParam("max_tokens", "max_tokens 0 is only allowed with echo (prompt scoring)")
		}
		params.Logprobs = nil // nothing is generated
	}
	if req.StreamOptions != nil {
		plan.includeUsage = req.StreamOptions.IncludeUsage
		plan.continuousUsage = req.StreamOptions.ContinuousUsageStats
	}
	addSpecial := true
	if req.AddSpecialTokens != nil {
		addSpecial = *req.AddSpecialTokens
	}
	prompts, e := s.parsePrompt(req.Prompt, addSpecial)
	if e != nil {
		return nil, e
	}
	if e := s.checkChoices(len(prompts), n); e != nil {
		return nil, e
	}
	// OpenAI's and vLLM's default max_tokens for completions is 16.
	if e := s.resolveLengths(prompts, req.TruncatePromptTokens, req.MaxTokens, "max_tokens", 16, params.MinTokens, "prompt"); e != nil {
		return nil, e
	}
	plan.prompts = prompts
	plan.params = params
	plan.id = newRequestID("cmpl-")
	return plan, nil
}

// chatPlan validates a /v1/chat/completions body; echoText of its one prompt is the text
// that echo prepends (the last message's content when it is the assistant's).
func (s *Server) chatPlan(body []byte) (*genPlan, *APIError) {
	var req chatRequest
	if e := decodeJSON(body, &req); e != nil {
		return nil, e
	}
	model, e := s.checkModel(req.Model)
	if e != nil {
		return nil, e
	}
	if req.MaxCompletionTokens != nil {
		if *req.MaxCompletionTokens < 1 {
			return nil, badParam("max_completion_tokens", "max_completion_tokens must be at least 1, got %d", *req.MaxCompletionTokens)
		}
	}
	params, n, e := s.samplingParams(&req.samplingFields)
	if e != nil {
		return nil, e
	}
	if req.MaxTokens != nil && *req.MaxTokens == 0 {
		return nil, badParam("max_tokens", "max_tokens must be at least 1, got 0")
	}
	plan := &genPlan{model: model, n: n, logprobs: -1, stream: req.Stream,
		returnTokenIDs: req.ReturnTokensAsTokenIDs, priority: req.Priority, promptLogprobs: req.PromptLogprobs}
	if req.TopLogprobs != nil {
		k := *req.TopLogprobs
		if k < 0 || k > s.cfg.MaxLogprobs {
			return nil, badParam("top_logprobs", "top_logprobs must be in [0, %d], got %d", s.cfg.MaxLogprobs, k)
		}
		if k > 0 && !req.Logprobs {
			return nil, badParam("top_logprobs", "top_logprobs needs logprobs set to true")
		}
	}
	if req.Logprobs {
		k := 0
		if req.TopLogprobs != nil {
			k = *req.TopLogprobs
		}
		plan.logprobs = k
		params.Logprobs = &k
	}
	if req.StreamOptions != nil {
		plan.includeUsage = req.StreamOptions.IncludeUsage
		plan.continuousUsage = req.StreamOptions.ContinuousUsageStats
	}
	if req.ChatTemplate != nil {
		return nil, unsupported("chat_template", "a custom chat_template is not supported; the model's template is used")
	}
	if req.ContinueFinalMessage {
		return nil, unsupported("continue_final_message", "continue_final_message is not supported")
	}
	tools, e := s.parseTools(&req, params.Grammar != nil)
	if e != nil {
		return nil, e
	}
	if tools != nil && tools.grammar != nil {
		params.Grammar = tools.grammar
	}
	plan.tools = tools
	msgs, e := convertMessages(req.Messages)
	if e != nil {
		return nil, e
	}
	if e := s.checkChoices(1, n); e != nil {
		return nil, e
	}
	addGen := true
	if req.AddGenerationPrompt != nil {
		addGen = *req.AddGenerationPrompt
	}
	images, crops, e := s.loadImages(msgs)
	if e != nil {
		return nil, e
	}
	var toolsRaw [][]byte
	if tools != nil {
		toolsRaw = tools.raw
	}
	rendered, e := s.renderChat(msgs, toolsRaw, addGen)
	if e != nil {
		return nil, e
	}
	if len(images) > 0 {
		var err error
		if rendered, err = s.cfg.Images.ExpandPrompt(rendered, crops); err != nil {
			return nil, badParam("messages", "messages with images cannot be prompted: %v", err)
		}
	}
	ids := s.tok.Encode(rendered, req.AddSpecialTokens)
	if len(ids) == 0 {
		return nil, badParam("messages", "messages render to an empty prompt")
	}
	pr := promptIn{ids: ids}
	if req.Echo {
		if last := msgs[len(msgs)-1]; last.Role == "assistant" {
			pr.echoText = messageText(last)
		}
	}
	prompts := []promptIn{pr}
	explicit, maxParam := req.MaxTokens, "max_tokens"
	if req.MaxCompletionTokens != nil {
		explicit, maxParam = req.MaxCompletionTokens, "max_completion_tokens"
	}
	if e := s.resolveLengths(prompts, req.TruncatePromptTokens, explicit, maxParam, 0, params.MinTokens, "messages"); e != nil {
		return nil, e
	}
	plan.echo = req.Echo
	plan.prompts = prompts
	plan.params = params
	plan.images = images
	plan.id = newRequestID("chatcmpl-")
	return plan, nil
}

// present reports whether a field was sent with a non-null value.
func present(raw json.RawMessage) bool {
	raw = bytes.TrimSpace(raw)
	return len(raw) > 0 && string(raw) != "null"
}

func hasElements(raw json.RawMessage) bool {
	raw = bytes.TrimSpace(raw)
	return len(raw) > 0 && string(raw) != "null" && string(raw) != "[]"
}

func isJSONString(raw json.RawMessage, want string) bool {
	var s string
	return json.Unmarshal(raw, &s) == nil && s == want
}

func messageText(m ChatMessage) string {
	if m.Parts == nil {
		return m.Content
	}
	var b strings.Builder
	for _, p := range m.Parts {
		b.WriteString(p.Text)
	}
	return b.String()
}

// imagePart checks an image_url content part at pp.
func imagePart(pp string, p contentPartIn) (ContentPart, *APIError) {
	if p.ImageURL == nil || p.ImageURL.URL == "" {
		return ContentPart{}, &APIError{Status: http.StatusBadRequest, Type: typeInvalidRequest, Code: codeMissing, Param: pp + ".image_url.url",
			Message: pp + ".image_url.url is required"}
	}
	switch p.ImageURL.Detail {
	case "", "auto", "low", "high":
	default:
		return ContentPart{}, badParam(pp+".image_url.detail", "%s.image_url.detail must be auto, low or high; got %q", pp, truncate(p.ImageURL.Detail, 40))
	}
	return ContentPart{Type: "image", ImageURL: p.ImageURL.URL, Param: pp}, nil
}

// convertMessages validates chat messages: known roles, text and image_url parts (the
// images are fetched later, by loadImages, for the endpoints that take them).
func convertMessages(in []chatMessageIn) ([]ChatMessage, *APIError) {
	if len(in) == 0 {
		return nil, &APIError{Status: http.StatusBadRequest, Type: typeInvalidRequest, Code: codeMissing, Param: "messages",
			Message: "messages must be a non-empty array"}
	}
	out := make([]ChatMessage, len(in))
	for i, m := range in {
		param := fmt.Sprintf("messages[%d]", i)
		role := m.Role
		switch role {
		case "system", "user", "assistant":
		case "developer":
			role = "system"
		case "":
			return nil, &APIError{Status: http.StatusBadRequest, Type: typeInvalidRequest, Code: codeMissing, Param: param + ".role",
				Message: param + ".role is required"}
		case "tool":
		case "function":
			return nil, unsupported(param+".role", "%s.role \"function\" (the legacy form of \"tool\") is not supported; use \"tool\"", param)
		default:
			return nil, badParam(param+".role", "%s.role must be one of system, developer, user, assistant, tool; got %q", param, truncate(role, 40))
		}
		msg := ChatMessage{Role: role}
		if hasElements(m.ToolCalls) {
			if role != "assistant" {
				return nil, badParam(param+".tool_calls", "%s.tool_calls is only allowed on assistant messages", param)
			}
			calls, e := convertToolCalls(param+".tool_calls", m.ToolCalls)
			if e != nil {
				return nil, e
			}
			msg.ToolCalls = calls
		}
		content := bytes.TrimSpace(m.Content)
		switch {
		case len(content) == 0 || string(content) == "null":
			if role != "assistant" {
				return nil, &APIError{Status: http.StatusBadRequest, Type: typeInvalidRequest, Code: codeMissing, Param: param + ".content",
					Message: param + ".content is required"}
			}
		case content[0] == '"':
			if err := json.Unmarshal(content, &msg.Content); err != nil {
				return nil, badParam(param+".content", "%s.content is not a valid string", param)
			}
		case content[0] == '[':
			var parts []contentPartIn
			if err := json.Unmarshal(content, &parts); err != nil {
				return nil, &APIError{Status: http.StatusBadRequest, Type: typeInvalidRequest, Code: codeInvalidType, Param: param + ".content",
					Message: param + ".content must be a string or an array of content parts"}
			}
			msg.Parts = make([]ContentPart, 0, len(parts))
			for j, p := range parts {
				pp := fmt.Sprintf("%s.content[%d]", param, j)
				if p.Type == "image_url" {
					part, e := imagePart(pp, p)
					if e != nil {
						return nil, e
					}
					msg.Parts = append(msg.Parts, part)
					continue
				}
				if p.Type != "text" {
					return nil, unsupported(pp+".type", "%s.type %q is not supported; only \"text\" and \"image_url\" parts are", pp, truncate(p.Type, 40))
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
		out[i] = msg
	}
	return out, nil
}

// structuredGrammar compiles the request's structured-output constraint, if any:
// response_format json_object / json_schema, vLLM's structured_outputs {json, regex,
// choice, grammar} or the older guided_json / guided_regex / guided_choice / guided_grammar.
// At most one may be given; a schema, regex or grammar that does not compile, or uses a
// keyword the engine cannot enforce, is a 400 naming the field (and the keyword).
func (s *Server) structuredGrammar(f *samplingFields) (*grammar.Grammar, *APIError) {
	type constraint struct {
		param   string
		compile func(GrammarCompiler) (*grammar.Grammar, error)
	}
	var cs []constraint
	jsonSchema := func(param string, schema json.RawMessage) {
		cs = append(cs, constraint{param, func(c GrammarCompiler) (*grammar.Grammar, error) { return c.JSONSchema(schema) }})
	}
	if rf := f.ResponseFormat; rf != nil {
		switch rf.Type {
		case "", "text":
		case "json_object":
			jsonSchema("response_format", json.RawMessage(`{}`))
		case "json_schema":
			if rf.JSONSchema == nil || len(rf.JSONSchema.Schema) == 0 {
				return nil, badParam("response_format.json_schema", "response_format of type json_schema needs json_schema.schema")
			}
			jsonSchema("response_format.json_schema.schema", rf.JSONSchema.Schema)
		default:
			return nil, badParam("response_format", "response_format type %q is not one of text, json_object, json_schema", truncate(rf.Type, 40))
		}
	}
	if so := f.StructuredOutputs; so != nil {
		if len(so.JSON) > 0 {
			jsonSchema("structured_outputs.json", so.JSON)
		}
		if so.Regex != nil {
			re := *so.Regex
			cs = append(cs, constraint{"structured_outputs.regex", func(c GrammarCompiler) (*grammar.Grammar, error) { return c.Regex(re) }})
		}
		if so.Choice != nil {
			ch := so.Choice
			cs = append(cs, constraint{"structured_outputs.choice", func(c GrammarCompiler) (*grammar.Grammar, error) { return c.Choice(ch) }})
		}
		if so.Grammar != nil {
			gr := *so.Grammar
			cs = append(cs, constraint{"structured_outputs.grammar", func(c GrammarCompiler) (*grammar.Grammar, error) { return c.GBNF(gr) }})
		}
	}
	if len(f.GuidedJSON) > 0 {
		schema := f.GuidedJSON
		if schema[0] == '"' { // vLLM also takes the schema as a JSON string
			var text string
			if err := json.Unmarshal(schema, &text); err == nil {
				schema = json.RawMessage(text)
			}
		}
		jsonSchema("guided_json", schema)
	}
	if f.GuidedRegex != nil {
		re := *f.GuidedRegex
		cs = append(cs, constraint{"guided_regex", func(c GrammarCompiler) (*grammar.Grammar, error) { return c.Regex(re) }})
	}
	if f.GuidedChoice != nil {
		ch := f.GuidedChoice
		cs = append(cs, constraint{"guided_choice", func(c GrammarCompiler) (*grammar.Grammar, error) { return c.Choice(ch) }})
	}
	if f.GuidedGrammar != nil {
		gr := *f.GuidedGrammar
		cs = append(cs, constraint{"guided_grammar", func(c GrammarCompiler) (*grammar.Grammar, error) { return c.GBNF(gr) }})
	}
	switch {
	case len(cs) == 0:
		return nil, nil
	case len(cs) > 1:
		return nil, badParam(cs[1].param, "only one structured-output constraint may be given (%s and %s)", cs[0].param, cs[1].param)
	case s.cfg.Grammars == nil:
		return nil, unsupported(cs[0].param, "structured outputs are not available on this server")
	}
	g, err := cs[0].compile(s.cfg.Grammars)
	if err != nil {
		var ue *grammar.UnsupportedError
		if errors.As(err, &ue) {
			return nil, unsupported(cs[0].param, "%s: the keyword %q (at %q) cannot be enforced", cs[0].param, ue.Keyword, ue.Path)
		}
		return nil, badParam(cs[0].param, "%s: %v", cs[0].param, err)
	}
	return g, nil
}
