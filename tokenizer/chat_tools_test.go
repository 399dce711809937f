package tokenizer

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

// TestToolTemplateWithoutToolsIsGemma3: on every golden chat without a tool message, the
// tool renderer writes exactly what renderGemma3 (checked against HF's Jinja engine)
// writes, and fails where it fails.
func TestToolTemplateWithoutToolsIsGemma3(t *testing.T) {
	var chats []struct {
		Name     string            `json:"name"`
		Messages []chatMessageJSON `json:"messages"`
		AddGen   bool              `json:"add_generation_prompt"`
	}
	readJSON(t, "chats.json", &chats)
	compared := 0
	for _, c := range chats {
		if slices.ContainsFunc(c.Messages, func(m chatMessageJSON) bool { return m.Role == "tool" }) {
			continue
		}
		msgs := make([]Message, len(c.Messages))
		for j, m := range c.Messages {
			msgs[j] = toMessage(t, m)
		}
		want, wantErr := renderGemma3("<bos>", msgs, c.AddGen)
		got, err := renderGemma3Tools("<bos>", msgs, nil, c.AddGen)
		if (err != nil) != (wantErr != nil) || got != want {
			t.Errorf("%s: tool renderer %q (err %v), Gemma 3's %q (err %v)", c.Name, got, err, want, wantErr)
		}
		compared++
	}
	if compared < 10 {
		t.Fatalf("only %d golden chats compared", compared)
	}
}

func TestToolTemplate(t *testing.T) {
	tools := [][]byte{[]byte(`{"type":"function","function":{"name":"get_weather","parameters":{"type":"object","properties":{"city":{"type":"string"}}}}}`)}
	toolsText := "[\n    {\n        \"type\": \"function\",\n        \"function\": {\n            \"name\": \"get_weather\",\n            \"parameters\": {\n" +
		"                \"type\": \"object\",\n                \"properties\": {\n                    \"city\": {\n                        \"type\": \"string\"\n" +
		"                    }\n                }\n            }\n        }\n    }\n]"
	call := []ToolCall{{Name: "get_weather", Arguments: `{"city":"Paris", "days" :[1,2]}`}}
	tests := []struct {
		name    string
		msgs    []Message
		tools   [][]byte
		want    string
		wantErr string
	}{
		{
			name:  "tools in the first user turn after the system text",
			msgs:  []Message{{Role: "system", Content: "Be brief."}, {Role: "user", Content: " Weather in Paris? "}},
			tools: tools,
			want:  "<bos><start_of_turn>user\nBe brief.\n\n" + ToolCallPreamble + toolsText + "\n\nWeather in Paris?<end_of_turn>\n<start_of_turn>model\n",
		},
		{
			name: "a call, its result and a follow-up share the user turn",
			msgs: []Message{{Role: "user", Content: "Weather?"}, {Role: "assistant", ToolCalls: call},
				{Role: "tool", Content: " 21 C "}, {Role: "tool", Parts: []ContentPart{{Type: "text", Text: "sunny"}}}, {Role: "user", Content: "Thanks"}},
			want: "<bos><start_of_turn>user\nWeather?<end_of_turn>\n<start_of_turn>model\n" +
				`[{"name": "get_weather", "arguments": {"city": "Paris", "days": [1, 2]}}]` + "<end_of_turn>\n" +
				"<start_of_turn>user\n<tool_response>\n21 C</tool_response>\n<tool_response>\nsunny</tool_response>\nThanks<end_of_turn>\n<start_of_turn>model\n",
		},
		{
			name: "content before the calls",
			msgs: []Message{{Role: "user", Content: "Weather?"}, {Role: "assistant", Content: "Checking.", ToolCalls: append(call, ToolCall{Name: "now"})}},
			want: "<bos><start_of_turn>user\nWeather?<end_of_turn>\n<start_of_turn>model\nChecking.\n" +
				`[{"name": "get_weather", "arguments": {"city": "Paris", "days": [1, 2]}}, {"name": "now", "arguments": {}}]` + "<end_of_turn>\n<start_of_turn>model\n",
		},
		{
			name:    "two user messages still do not alternate",
			msgs:    []Message{{Role: "user", Content: "a"}, {Role: "user", Content: "b"}},
			wantErr: "alternate",
		},
		{
			name:    "two model turns in a row",
			msgs:    []Message{{Role: "user", Content: "a"}, {Role: "assistant", Content: "b"}, {Role: "assistant", Content: "c"}},
			wantErr: "alternate",
		},
		{
			name:    "arguments that are not JSON",
			msgs:    []Message{{Role: "user", Content: "a"}, {Role: "assistant", ToolCalls: []ToolCall{{Name: "f", Arguments: "{city:"}}}},
			wantErr: "tool call 0 (f)",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := renderGemma3Tools("<bos>", tc.msgs, tc.tools, true)
			if tc.wantErr != "" {
				if !errors.Is(err, ErrChatTemplate) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want one wrapping ErrChatTemplate containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("rendered\n%q\nwant\n%q", got, tc.want)
			}
		})
	}
}

func TestDumpsJSON(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{`{"a":1,"b":[true, null ,"x, y: z"]}`, `{"a": 1, "b": [true, null, "x, y: z"]}`},
		{` "esc \" , :" `, `"esc \" , :"`},
		{`{ }`, `{}`},
	} {
		if got, err := DumpsJSON([]byte(tc.in)); err != nil || got != tc.want {
			t.Errorf("DumpsJSON(%s) = %s, %v; want %s", tc.in, got, err, tc.want)
		}
	}
	if _, err := DumpsJSON([]byte(`{"a":`)); err == nil {
		t.Error("DumpsJSON accepted truncated JSON")
	}
}
