package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"github.com/tpuserve/tpuserve/engine/grammar"
)

// Tool calling on chat completions: tools, tool_choice (none, auto, required, a named
// function) and parallel_tool_calls.
//
// Gemma 3 has no tool tokens, so the call format is plain text the prompt asks for
// (tokenizer.ToolCallPreamble, in the first user turn as vLLM's Gemma 3 template puts
// it). vLLM's template asks for Python calls, [get_weather(city="Paris")]; tpuserve asks
// for a JSON list, [{"name": "get_weather", "arguments": {"city": "Paris"}}], because
//   - OpenAI's arguments are JSON: a JSON call needs no translation, while Python literals
//     (True, None, single quotes) have to be mapped back and lose what JSON Schema says
//     about them (integers vs floats, string escapes);
//   - tool_choice "required" and named tools are enforced by the grammar engine, and a
//     JSON list of {"name": const, "arguments": <the tool's parameters schema>} is a JSON
//     Schema the engine already compiles exactly: every guaranteed call validates against
//     its tool's parameters, which a pythonic grammar could only approximate;
//   - Gemma 3's own function-calling guide shows both formats; JSON is what the
//     instruction-tuned model writes when asked for structured output.
//
// "auto" leaves sampling unconstrained and parses the answer: when the whole answer (an
// optional ```json fence aside) is such a list (or one such object) naming known tools,
// it becomes message.tool_calls with finish_reason "tool_calls"; anything else is
// content. "none" neither describes the tools nor parses. parallel_tool_calls false caps
// the list at one call (maxItems 1 under a constraint; the first call under auto).

// toolMode is tool_choice.
type toolMode uint8

const (
	toolAuto toolMode = iota
	toolRequired
	toolNamed
)

// toolSet is a chat request's validated tools.
type toolSet struct {
	mode     toolMode
	named    string // toolNamed: the function
	parallel bool
	names    map[string]bool
	// raw are the tool objects as sent, for the prompt.
	raw [][]byte
	// grammar constrains the answer to calls (required, named).
	grammar *grammar.Grammar
}

type toolIn struct {
	Type     string          `json:"type"`
	Function *toolFunctionIn `json:"function"`
}

type toolFunctionIn struct {
	Name        string          `json:"name"`
	Description json.RawMessage `json:"description"`
	Parameters  json.RawMessage `json:"parameters"`
	Strict      *bool           `json:"strict"`
}

type toolCallOut struct {
	ID       string           `json:"id"`
	Type     string           `json:"type"`
	Function toolCallFunction `json:"function"`
}

type toolCallFunction struct {
	Name      string `json:"name,omitempty"`
	Arguments string `json:"arguments"`
}

// toolCallDelta is one entry of a streamed delta's tool_calls, as OpenAI sends them: the
// first for a call has its index, id, type and name (arguments ""), the next ones more of
// its arguments.
type toolCallDelta struct {
	Index    int              `json:"index"`
	ID       string           `json:"id,omitempty"`
	Type     string           `json:"type,omitempty"`
	Function toolCallFunction `json:"function"`
}

// toolNameRE is OpenAI's rule for function names.
var toolNameRE = regexp.MustCompile(`^[a-zA-Z0-9_-]{1,64}$`)

// toolCallSeparators are the separators of the call grammar: json.dumps's, as the
// prompt's example and the rendered history write them.
var toolCallSeparators = grammar.WithSeparators(", ", ": ")

// parseTools validates tools, tool_choice and parallel_tool_calls. It returns nil when
// the request does not use tools (none given, or tool_choice "none"). With "required" or
// a named tool, the returned set's grammar constrains the answer; another structured
// output constraint on the same request is then a 400.
func (s *Server) parseTools(req *chatRequest, constrained bool) (*toolSet, *APIError) {
	switch {
	case present(req.Functions):
		return nil, unsupported("functions", "functions (the legacy form of tools) is not supported; use tools")
	case present(req.FunctionCall):
		return nil, unsupported("function_call", "function_call (the legacy form of tool_choice) is not supported; use tool_choice")
	}
	mode, named, e := parseToolChoice(req.ToolChoice)
	if e != nil {
		return nil, e
	}
	if !hasElements(req.Tools) {
		if present(req.ToolChoice) && !isJSONString(req.ToolChoice, "none") {
			return nil, badParam("tool_choice", "tool_choice needs tools: it is only allowed when tools is set")
		}
		return nil, nil
	}
	var raws []json.RawMessage
	if err := json.Unmarshal(req.Tools, &raws); err != nil {
		return nil, &APIError{Status: 400, Type: typeInvalidRequest, Code: codeInvalidType, Param: "tools", Message: "tools must be an array of tool objects"}
	}
	if isJSONString(req.ToolChoice, "none") {
		return nil, nil // the tools are neither described nor called
	}
	if _, ok := s.tok.(ToolTemplater); !ok {
		return nil, unsupported("tools", "tool calling is not available: the tokenizer cannot render tools into the prompt")
	}
	ts := &toolSet{mode: mode, named: named, parallel: req.ParallelToolCalls == nil || *req.ParallelToolCalls, names: map[string]bool{}}
	params := make([]json.RawMessage, len(raws))
	for i, raw := range raws {
		param := fmt.Sprintf("tools[%d]", i)
		var t toolIn
		if err := json.Unmarshal(raw, &t); err != nil {
			return nil, &APIError{Status: 400, Type: typeInvalidRequest, Code: codeInvalidType, Param: param,
				Message: fmt.Sprintf("%s must be an object {\"type\": \"function\", \"function\": {\"name\", \"description\", \"parameters\"}}: %v", param, err)}
		}
		if t.Type != "function" {
			return nil, badParam(param+".type", "%s.type must be \"function\", got %q", param, truncate(t.Type, 40))
		}
		if t.Function == nil {
			return nil, &APIError{Status: 400, Type: typeInvalidRequest, Code: codeMissing, Param: param + ".function", Message: param + ".function is required"}
		}
		name := t.Function.Name
		if !toolNameRE.MatchString(name) {
			return nil, badParam(param+".function.name", "%s.function.name must be 1 to 64 letters, digits, '_' or '-', got %q", param, truncate(name, 70))
		}
		if ts.names[name] {
			return nil, badParam(param+".function.name", "%s.function.name %q is given twice", param, name)
		}
		ts.names[name] = true
		p := bytes.TrimSpace(t.Function.Parameters)
		if len(p) == 0 || string(p) == "null" {
			p = []byte(`{"type":"object","properties":{},"additionalProperties":false}`)
		} else if p[0] != '{' {
			return nil, badParam(param+".function.parameters", "%s.function.parameters must be a JSON Schema object, got %s", param, truncate(string(p), 40))
		}
		params[i] = p
		ts.raw = append(ts.raw, raw)
	}
	if mode == toolNamed && !ts.names[named] {
		return nil, badParam("tool_choice", "tool_choice names the function %q, which is not in tools", truncate(named, 70))
	}
	enforced := func(i int) bool {
		var t toolIn
		_ = json.Unmarshal(raws[i], &t)
		return mode == toolRequired || (mode == toolNamed && t.Function.Name == named)
	}
	if mode != toolAuto {
		switch {
		case constrained:
			return nil, badParam("tool_choice", "tool_choice %q constrains the answer to tool calls; it cannot be combined with another structured-output constraint", toolChoiceName(mode, named))
		case s.cfg.Grammars == nil:
			return nil, unsupported("tool_choice", "tool_choice %q needs structured outputs, which are not available on this server", toolChoiceName(mode, named))
		}
	}
	// Every tool's parameters must be a schema; those a constraint enforces must also use
	// only keywords the engine enforces.
	if s.cfg.Grammars != nil {
		for i, p := range params {
			if _, err := s.cfg.Grammars.JSONSchema(p); err != nil {
				param := fmt.Sprintf("tools[%d].function.parameters", i)
				var ue *grammar.UnsupportedError
				switch {
				case errors.As(err, &ue) && enforced(i):
					return nil, unsupported(param, "%s: the keyword %q (at %q) cannot be enforced for tool_choice %q", param, ue.Keyword, ue.Path, toolChoiceName(mode, named))
				case errors.Is(err, grammar.ErrInvalidSchema):
					return nil, badParam(param, "%s is not a valid JSON Schema: %v", param, err)
				case enforced(i):
					return nil, badParam(param, "%s: %v", param, err)
				}
			}
		}
	}
	if mode == toolAuto {
		return ts, nil
	}
	schema, err := callListSchema(raws, params, mode, named, ts.parallel)
	if err != nil {
		return nil, badParam("tools", "tools: %v", err)
	}
	g, err := s.cfg.Grammars.JSONSchema(schema, toolCallSeparators)
	if err != nil {
		var ue *grammar.UnsupportedError
		if errors.As(err, &ue) {
			return nil, unsupported("tools", "tools: the keyword %q (at %q of the call schema) cannot be enforced", ue.Keyword, ue.Path)
		}
		return nil, badParam("tools", "tools: the call grammar does not compile: %v", err)
	}
	ts.grammar = g
	return ts, nil
}

func toolChoiceName(mode toolMode, named string) string {
	switch mode {
	case toolRequired:
		return "required"
	case toolNamed:
		return named
	}
	return "auto"
}

// parseToolChoice reads tool_choice: absent, "none", "auto", "required" or
// {"type": "function", "function": {"name": ...}}.
func parseToolChoice(raw json.RawMessage) (toolMode, string, *APIError) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return toolAuto, "", nil
	}
	var str string
	if json.Unmarshal(raw, &str) == nil {
		switch str {
		case "none", "auto":
			return toolAuto, "", nil
		case "required":
			return toolRequired, "", nil
		}
		return 0, "", badParam("tool_choice", "tool_choice must be \"none\", \"auto\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": ...}}, got %q", truncate(str, 40))
	}
	var obj struct {
		Type     string `json:"type"`
		Function *struct {
			Name string `json:"name"`
		} `json:"function"`
	}
	if err := json.Unmarshal(raw, &obj); err != nil || obj.Type != "function" || obj.Function == nil || obj.Function.Name == "" {
		return 0, "", badParam("tool_choice", "tool_choice must be \"none\", \"auto\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": ...}}")
	}
	return toolNamed, obj.Function.Name, nil
}

// callListSchema is the JSON Schema of the answer under a constraint: a list of one or
// more calls (exactly one for a named tool or without parallel calls), each
// {"name": const, "arguments": the tool's parameters}. It is built as text so that every
// schema keeps its key order (the grammar writes properties in definition order); the
// parameters live under $defs, their own "#..." references rewritten to point there.
func callListSchema(raws, params []json.RawMessage, mode toolMode, named string, parallel bool) ([]byte, error) {
	var alts, defs []string
	for i, raw := range raws {
		var t toolIn
		if err := json.Unmarshal(raw, &t); err != nil {
			return nil, err
		}
		if mode == toolNamed && t.Function.Name != named {
			continue
		}
		def := "tool" + strconv.Itoa(i)
		p, err := rebaseRefs(params[i], "#/$defs/"+def)
		if err != nil {
			return nil, fmt.Errorf("tools[%d].function.parameters: %w", i, err)
		}
		name, _ := json.Marshal(t.Function.Name)
		defs = append(defs, `"`+def+`":`+string(p))
		alts = append(alts, `{"type":"object","properties":{"name":{"const":`+string(name)+`},"arguments":{"$ref":"#/$defs/`+def+`"}},`+
			`"required":["name","arguments"],"additionalProperties":false}`)
	}
	items := alts[0]
	if len(alts) > 1 {
		items = `{"anyOf":[` + strings.Join(alts, ",") + `]}`
	}
	maxItems := ""
	if mode == toolNamed || !parallel {
		maxItems = `,"maxItems":1`
	}
	return []byte(`{"type":"array","minItems":1` + maxItems + `,"items":` + items + `,"$defs":{` + strings.Join(defs, ",") + `}}`), nil
}

// rebaseRefs rewrites the document-local references ("#", "#/...") of a schema moved to
// base, re-emitting the JSON token by token so that key order and number spelling stay.
func rebaseRefs(src []byte, base string) ([]byte, error) {
	dec := json.NewDecoder(bytes.NewReader(src))
	dec.UseNumber()
	var out bytes.Buffer
	if err := rebaseValue(dec, &out, base, false); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

func rebaseValue(dec *json.Decoder, out *bytes.Buffer, base string, isRef bool) error {
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	switch x := tok.(type) {
	case json.Delim:
		switch x {
		case '{':
			out.WriteByte('{')
			for first := true; dec.More(); first = false {
				k, err := dec.Token()
				if err != nil {
					return err
				}
				key, _ := k.(string)
				if !first {
					out.WriteByte(',')
				}
				kb, _ := json.Marshal(key)
				out.Write(kb)
				out.WriteByte(':')
				if err := rebaseValue(dec, out, base, key == "$ref"); err != nil {
					return err
				}
			}
			out.WriteByte('}')
		case '[':
			out.WriteByte('[')
			for first := true; dec.More(); first = false {
				if !first {
					out.WriteByte(',')
				}
				if err := rebaseValue(dec, out, base, false); err != nil {
					return err
				}
			}
			out.WriteByte(']')
		}
		_, err := dec.Token() // the closing delimiter
		return err
	case string:
		if isRef && strings.HasPrefix(x, "#") {
			x = base + strings.TrimPrefix(x, "#")
		}
		b, _ := json.Marshal(x)
		out.Write(b)
	case json.Number:
		out.WriteString(x.String())
	case bool:
		out.WriteString(strconv.FormatBool(x))
	case nil:
		out.WriteString("null")
	}
	return nil
}

// convertToolCalls reads an assistant message's tool_calls: [{id, type: "function",
// function: {name, arguments}}], the arguments a string holding a JSON object (or, as
// vLLM also takes, the object itself).
func convertToolCalls(param string, raw json.RawMessage) ([]ToolCall, *APIError) {
	var in []struct {
		ID       string `json:"id"`
		Type     string `json:"type"`
		Function *struct {
			Name      string          `json:"name"`
			Arguments json.RawMessage `json:"arguments"`
		} `json:"function"`
	}
	if err := json.Unmarshal(raw, &in); err != nil {
		return nil, &APIError{Status: 400, Type: typeInvalidRequest, Code: codeInvalidType, Param: param,
			Message: param + " must be an array of {\"id\", \"type\": \"function\", \"function\": {\"name\", \"arguments\"}}"}
	}
	out := make([]ToolCall, len(in))
	for j, c := range in {
		p := fmt.Sprintf("%s[%d]", param, j)
		if c.Type != "" && c.Type != "function" {
			return nil, badParam(p+".type", "%s.type must be \"function\", got %q", p, truncate(c.Type, 40))
		}
		if c.Function == nil || c.Function.Name == "" {
			return nil, &APIError{Status: 400, Type: typeInvalidRequest, Code: codeMissing, Param: p + ".function.name", Message: p + ".function.name is required"}
		}
		args := bytes.TrimSpace(c.Function.Arguments)
		if len(args) > 0 && args[0] == '"' {
			var text string
			if json.Unmarshal(args, &text) != nil {
				return nil, badParam(p+".function.arguments", "%s.function.arguments is not a valid string", p)
			}
			args = bytes.TrimSpace([]byte(text))
		}
		if len(args) == 0 || string(args) == "null" {
			args = []byte("{}")
		}
		if args[0] != '{' || !json.Valid(args) {
			return nil, badParam(p+".function.arguments", "%s.function.arguments must be a JSON object, got %s", p, truncate(string(args), 60))
		}
		out[j] = ToolCall{Name: c.Function.Name, Arguments: string(args)}
	}
	return out, nil
}

// renderChat renders a chat with the model's template; tools, tool calls and tool
// messages go through the tokenizer's ToolTemplater.
func (s *Server) renderChat(msgs []ChatMessage, tools [][]byte, addGen bool) (string, *APIError) {
	usesTools := len(tools) > 0
	for _, m := range msgs {
		usesTools = usesTools || m.Role == "tool" || len(m.ToolCalls) > 0
	}
	var rendered string
	var err error
	if usesTools {
		tt, ok := s.tok.(ToolTemplater)
		if !ok {
			return "", unsupported("messages", "messages with tool calls or tool results cannot be rendered: the tokenizer has no tool template")
		}
		rendered, err = tt.ApplyToolChatTemplate(msgs, tools, addGen)
	} else {
		rendered, err = s.tok.ApplyChatTemplate(msgs, addGen)
	}
	if err != nil {
		return "", badParam("messages", "messages cannot be rendered with the chat template: %v", err)
	}
	return rendered, nil
}

// checkTools refuses tools on the Responses API, which has no tool calling yet (tools
// unless tool_choice is "none", a tool_choice without tools, the legacy functions).
func checkTools(tools, toolChoice, functions, functionCall json.RawMessage) *APIError {
	switch {
	case present(functions):
		return unsupported("functions", "functions (the legacy form of tools) is not supported")
	case present(functionCall):
		return unsupported("function_call", "function_call (the legacy form of tool_choice) is not supported")
	case hasElements(tools) && !isJSONString(toolChoice, "none"):
		return unsupported("tools", "tool calling is not supported on /v1/responses; use /v1/chat/completions")
	case !hasElements(tools) && present(toolChoice) && !isJSONString(toolChoice, "none"):
		return badParam("tool_choice", "tool_choice needs tools: it is only allowed when tools is set")
	}
	return nil
}
