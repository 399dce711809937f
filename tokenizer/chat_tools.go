package tokenizer

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
)

// ToolCall is one function call of an assistant message: the function's name and its
// arguments as the text of a JSON object.
type ToolCall struct {
	Name      string
	Arguments string
}

// ToolCallPreamble is what ApplyToolChatTemplate writes at the start of the first user
// turn (after the system text) when tools are given, followed by the tools as an indented
// JSON list. It is vLLM's Gemma 3 tool prompt (examples/tool_chat_template_gemma3_pythonic.jinja)
// with the call format changed from Python calls to a JSON list: the server constrains
// and parses that format (see server/tools.go for why JSON).
const ToolCallPreamble = "Tools (functions) are available. If you decide to invoke one or more of the tools, you must respond with a JSON list of the function calls.\n" +
	`Example Format: [{"name": "func_name1", "arguments": {"params_name1": params_value1, "params_name2": params_value2}}, {"name": "func_name2", "arguments": {}}]` + "\n" +
	"Do not use variables. DO NOT USE MARKDOWN SYNTAX. You SHOULD NOT include any other text in the response if you call a function. If none of the functions can be used, point it out. If you lack the parameters required by the function, also point it out.\n" +
	"Here is a list of functions in JSON format that you can invoke.\n"

// ApplyToolChatTemplate renders a chat that uses tools: tools (each the JSON text of one
// OpenAI tool object, {"type": "function", "function": {...}}), assistant messages with
// ToolCalls, and messages of role "tool" (a function's result). It is Gemma 3's layout
// (see renderGemma3) extended the way vLLM's Gemma 3 tool template extends it:
//
//   - the tools are described in the first user turn, after the system text:
//     ToolCallPreamble, then the tools as a JSON list indented by 4 (Jinja's
//     tojson(indent=4)), then "\n\n";
//   - an assistant's tool calls follow its (trimmed) content, after "\n" when there is
//     content, as the JSON list [{"name": ..., "arguments": {...}}] written with
//     json.dumps's separators — the form the server's call grammar makes the model write;
//   - a tool message is "<tool_response>\n{content}</tool_response>" in a user turn.
//     Unlike vLLM's template, a run of tool messages (and a user message right after
//     them) shares one user turn, so that turns still alternate as Gemma was trained.
//
// With no tools and no tool messages or calls, the text is exactly ApplyChatTemplate's.
// Errors wrap ErrChatTemplate.
func (t *Tokenizer) ApplyToolChatTemplate(msgs []Message, tools [][]byte, addGenerationPrompt bool) (string, error) {
	bos, err := t.chatBOS()
	if err != nil {
		return "", err
	}
	return renderGemma3Tools(bos, msgs, tools, addGenerationPrompt)
}

func renderGemma3Tools(bos string, msgs []Message, tools [][]byte, addGenerationPrompt bool) (string, error) {
	var b strings.Builder
	b.WriteString(bos)
	prefix, loop, err := systemPrefix(msgs)
	if err != nil {
		return "", err
	}
	if len(tools) > 0 {
		list, err := indentTools(tools)
		if err != nil {
			return "", err
		}
		prefix += ToolCallPreamble + list + "\n\n"
	}
	turn := -1
	for i, m := range loop {
		userSide := m.Role == "user" || m.Role == "tool"
		// A tool result joins the user turn before it, and a user message joins the tool
		// results before it.
		joins := i > 0 && userSide && (m.Role == "tool" || loop[i-1].Role == "tool") &&
			(loop[i-1].Role == "user" || loop[i-1].Role == "tool")
		if joins {
			b.WriteString("\n")
		} else {
			if turn >= 0 {
				b.WriteString("<end_of_turn>\n")
			}
			turn++
			if userSide != (turn%2 == 0) {
				return "", fmt.Errorf("%w: Conversation roles must alternate user/assistant/user/assistant/...", ErrChatTemplate)
			}
			role := m.Role
			switch role {
			case "assistant":
				role = "model"
			case "tool":
				role = "user"
			}
			b.WriteString("<start_of_turn>" + role + "\n")
			if turn == 0 {
				b.WriteString(prefix)
			}
		}
		if m.Role == "tool" {
			b.WriteString("<tool_response>\n")
		}
		content := messageContent(m)
		b.WriteString(content)
		if m.Role == "tool" {
			b.WriteString("</tool_response>")
		}
		if len(m.ToolCalls) > 0 {
			if content != "" {
				b.WriteString("\n")
			}
			if err := writeToolCalls(&b, m.ToolCalls); err != nil {
				return "", err
			}
		}
	}
	if turn >= 0 {
		b.WriteString("<end_of_turn>\n")
	}
	if addGenerationPrompt {
		b.WriteString("<start_of_turn>model\n")
	}
	return b.String(), nil
}

// messageContent is a message's content as Gemma 3's template writes it.
func messageContent(m Message) string {
	if m.Parts == nil {
		return jsTrim(m.Content)
	}
	var b strings.Builder
	for _, p := range m.Parts {
		switch p.Type {
		case "image":
			b.WriteString("<start_of_image>")
		case "text":
			b.WriteString(jsTrim(p.Text))
		}
	}
	return b.String()
}

func indentTools(tools [][]byte) (string, error) {
	var raw bytes.Buffer
	raw.WriteByte('[')
	for i, t := range tools {
		if i > 0 {
			raw.WriteByte(',')
		}
		raw.Write(t)
	}
	raw.WriteByte(']')
	var out bytes.Buffer
	if err := json.Indent(&out, raw.Bytes(), "", "    "); err != nil {
		return "", fmt.Errorf("%w: the tools are not valid JSON: %w", ErrChatTemplate, err)
	}
	return out.String(), nil
}

func writeToolCalls(b *strings.Builder, calls []ToolCall) error {
	b.WriteByte('[')
	for i, c := range calls {
		if i > 0 {
			b.WriteString(", ")
		}
		name, _ := json.Marshal(c.Name)
		args := strings.TrimSpace(c.Arguments)
		if args == "" {
			args = "{}"
		}
		dumped, err := DumpsJSON([]byte(args))
		if err != nil {
			return fmt.Errorf("%w: tool call %d (%s): the arguments are not JSON: %w", ErrChatTemplate, i, c.Name, err)
		}
		b.WriteString(`{"name": `)
		b.Write(name)
		b.WriteString(`, "arguments": `)
		b.WriteString(dumped)
		b.WriteByte('}')
	}
	b.WriteByte(']')
	return nil
}

// DumpsJSON rewrites a JSON value with Python json.dumps's default separators (", " and
// ": ") and no other whitespace, keeping key order, number spelling and string escapes
// as written.
func DumpsJSON(src []byte) (string, error) {
	if !json.Valid(src) {
		return "", fmt.Errorf("invalid JSON %q", truncateText(string(src), 60))
	}
	var b strings.Builder
	inString, escaped := false, false
	for _, c := range src {
		if inString {
			b.WriteByte(c)
			switch {
			case escaped:
				escaped = false
			case c == '\\':
				escaped = true
			case c == '"':
				inString = false
			}
			continue
		}
		switch c {
		case ' ', '\t', '\n', '\r':
		case '"':
			inString = true
			b.WriteByte(c)
		case ',':
			b.WriteString(", ")
		case ':':
			b.WriteString(": ")
		default:
			b.WriteByte(c)
		}
	}
	return b.String(), nil
}

func truncateText(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
