package tokenizer

import (
	"errors"
	"strings"
	"testing"
)

// Unit tests of the native Gemma 3 renderer; TestGoldenChatTemplate compares it with HF's
// Jinja engine on the real template.

func TestRenderGemma3(t *testing.T) {
	const roles = "Conversation roles must alternate user/assistant/user/assistant/..."
	tests := []struct {
		name   string
		msgs   []Message
		addGen bool
		want   string
		err    string
	}{
		{"user", []Message{{Role: "user", Content: " hi\n"}}, true,
			"<bos><start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n", ""},
		{"system folded untrimmed", []Message{{Role: "system", Content: " S "}, {Role: "user", Content: "u"}}, false,
			"<bos><start_of_turn>user\n S \n\nu<end_of_turn>\n", ""},
		{"assistant is model", []Message{{Role: "user", Content: "a"}, {Role: "assistant", Content: "b"}}, false,
			"<bos><start_of_turn>user\na<end_of_turn>\n<start_of_turn>model\nb<end_of_turn>\n", ""},
		{"parts", []Message{{Role: "user", Parts: []ContentPart{{Type: "text", Text: " x "}, {Type: "image"}, {Type: "video", Text: "no"}}}}, false,
			"<bos><start_of_turn>user\nx<start_of_image><end_of_turn>\n", ""},
		{"system parts", []Message{{Role: "system", Parts: []ContentPart{{Type: "text", Text: "S"}, {Type: "text", Text: "T"}}}, {Role: "user", Content: "u"}}, false,
			"<bos><start_of_turn>user\nS\n\nu<end_of_turn>\n", ""},
		{"empty", nil, true, "<bos><start_of_turn>model\n", ""},
		{"system only", []Message{{Role: "system", Content: "S"}}, false, "<bos>", ""},
		{"assistant first", []Message{{Role: "assistant", Content: "a"}}, true, "", roles},
		{"user twice", []Message{{Role: "user", Content: "a"}, {Role: "user", Content: "b"}}, true, "", roles},
		{"system parts empty", []Message{{Role: "system", Parts: []ContentPart{}}, {Role: "user", Content: "u"}}, true, "", "Cannot perform operation + on undefined values"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := renderGemma3("<bos>", tt.msgs, tt.addGen)
			if tt.err != "" {
				if !errors.Is(err, ErrChatTemplate) || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err %v, want ErrChatTemplate with %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestJSTrim(t *testing.T) {
	tests := []struct{ in, want string }{
		{"  a  ", "a"},
		{"\t\n\v\f\r a \u00a0\ufeff", "a"},
		{"\u2028\u2029\u3000\u1680\u2000\u200a\u202f\u205f a", "a"},
		{"\u0085a\u0085", "\u0085a\u0085"}, // NEL is not JavaScript white space
		{"\u001fa\u001c", "\u001fa\u001c"}, // nor are the information separators
		{"\u200ba\u200b", "\u200ba\u200b"}, // nor zero-width space
		{"", ""},
	}
	for _, tt := range tests {
		if got := jsTrim(tt.in); got != tt.want {
			t.Errorf("jsTrim(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
