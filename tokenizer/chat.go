package tokenizer

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
)

// ContentPart is one part of a message's content in the OpenAI style: {"type": "text",
// "text": ...} or {"type": "image"}.
type ContentPart struct {
	Type string `json:"type"`
	Text string `json:"text,omitempty"`
}

// Message is one chat message. Parts == nil means the content is the string Content;
// otherwise the content is the list Parts (possibly empty) and Content is ignored.
type Message struct {
	Role    string
	Content string
	Parts   []ContentPart
	// ToolCalls are an assistant message's function calls (ApplyToolChatTemplate).
	ToolCalls []ToolCall
}

// gemma3TemplateSHA256 is the sha256 of the chat_template that Gemma 3's
// tokenizer_config.json ships (all sizes, instruction tuned). renderGemma3 reproduces
// exactly what Hugging Face's Jinja engine renders from it.
const gemma3TemplateSHA256 = "7de1c58e208eda46e9c7f86397df37ec49883aeece39fb961e0a6b24088dd3c4"

type chatTemplate struct {
	sha256 string
	render func(bos string, msgs []Message, addGenerationPrompt bool) (string, error)
}

func newChatTemplate(src string) *chatTemplate {
	sum := sha256.Sum256([]byte(src))
	c := &chatTemplate{sha256: hex.EncodeToString(sum[:])}
	if c.sha256 == gemma3TemplateSHA256 {
		c.render = renderGemma3
	}
	return c
}

// ApplyChatTemplate renders msgs with the model's chat template, as HF's
// apply_chat_template(tokenize=False) does. The text starts with the BOS token's text
// ("<bos>"), so encode it with Encode(text, false): one BOS, never two. Only Gemma 3's
// template is supported (it is recognised by its exact text); another template, or none
// (LoadFile), is an error wrapping ErrChatTemplate, as are the template's own errors such
// as "Conversation roles must alternate user/assistant/user/assistant/...".
func (t *Tokenizer) ApplyChatTemplate(msgs []Message, addGenerationPrompt bool) (string, error) {
	bos, err := t.chatBOS()
	if err != nil {
		return "", err
	}
	return t.chat.render(bos, msgs, addGenerationPrompt)
}

// chatBOS checks that the Gemma 3 chat template is loaded and returns the BOS text its
// renderings start with.
func (t *Tokenizer) chatBOS() (string, error) {
	switch {
	case t.chat == nil:
		return "", fmt.Errorf("%w: none loaded (load a directory with tokenizer_config.json)", ErrChatTemplate)
	case t.chat.render == nil:
		return "", fmt.Errorf("%w: unsupported chat_template (sha256 %s): only Gemma 3's template is rendered", ErrChatTemplate, t.chat.sha256)
	}
	bos := t.bosText
	if bos == "" && t.bos >= 0 {
		bos = t.pieces[t.bos]
	}
	return bos, nil
}

// renderGemma3 is Gemma 3's chat template written out in Go:
//
//	{{ bos_token }}, then an optional leading system message whose text (the string, or
//	the first part's text, untrimmed) plus "\n\n" prefixes the first turn; every other
//	message must alternate user (even index) / anything else (odd index); "assistant" is
//	written "model"; string content and text parts are trimmed (JavaScript's trim, as in
//	HF's Jinja engine); image parts become <start_of_image>; each turn is
//	"<start_of_turn>{role}\n...<end_of_turn>\n"; add_generation_prompt adds
//	"<start_of_turn>model\n".
//
// The error texts are those of HF's Jinja engine (@huggingface/jinja) for the same input.
func renderGemma3(bos string, msgs []Message, addGenerationPrompt bool) (string, error) {
	var b strings.Builder
	b.WriteString(bos)
	prefix, loop, err := systemPrefix(msgs)
	if err != nil {
		return "", err
	}
	for i, m := range loop {
		if (m.Role == "user") != (i%2 == 0) {
			return "", fmt.Errorf("%w: Conversation roles must alternate user/assistant/user/assistant/...", ErrChatTemplate)
		}
		role := m.Role
		if role == "assistant" {
			role = "model"
		}
		b.WriteString("<start_of_turn>")
		b.WriteString(role)
		b.WriteString("\n")
		if i == 0 {
			b.WriteString(prefix)
		}
		if m.Parts == nil {
			b.WriteString(jsTrim(m.Content))
		} else {
			for _, p := range m.Parts {
				switch p.Type {
				case "image":
					b.WriteString("<start_of_image>")
				case "text":
					b.WriteString(jsTrim(p.Text))
				}
			}
		}
		b.WriteString("<end_of_turn>\n")
	}
	if addGenerationPrompt {
		b.WriteString("<start_of_turn>model\n")
	}
	return b.String(), nil
}

// jsTrim is JavaScript's String.prototype.trim, which HF's Jinja engine uses for the trim
// filter: it strips WhiteSpace and LineTerminator code points (a different set from Go's
// unicode.IsSpace and Python's str.strip: U+FEFF yes, U+0085 and U+001C-U+001F no).
func jsTrim(s string) string {
	return strings.TrimFunc(s, isJSSpace)
}

func isJSSpace(r rune) bool {
	switch r {
	case '\t', '\n', '\v', '\f', '\r', ' ', 0xA0, 0x1680, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000, 0xFEFF:
		return true
	}
	return r >= 0x2000 && r <= 0x200A
}

// systemPrefix splits a leading system message off msgs: Gemma 3's template folds its text
// (and "\n\n") into the first user turn. It returns that prefix and the other messages.
func systemPrefix(msgs []Message) (string, []Message, error) {
	if len(msgs) == 0 || msgs[0].Role != "system" {
		return "", msgs, nil
	}
	sys := msgs[0]
	if sys.Parts == nil {
		return sys.Content + "\n\n", msgs[1:], nil
	}
	// messages[0]['content'][0]['text'] + '\n\n': undefined without a first part or (for a
	// part that is not text) without its text.
	if len(sys.Parts) == 0 || (sys.Parts[0].Type != "text" && sys.Parts[0].Text == "") {
		return "", nil, fmt.Errorf("%w: Cannot perform operation + on undefined values (system message content has no text in its first part)", ErrChatTemplate)
	}
	return sys.Parts[0].Text + "\n\n", msgs[1:], nil
}
