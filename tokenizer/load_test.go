package tokenizer

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestMalformedTokenizerJSON(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(f *tinyFile)
		raw    func(b []byte) []byte
		want   string // substring of the error
	}{
		{name: "empty file", raw: func([]byte) []byte { return nil }, want: "top level: offset 0: unexpected end of input"},
		{name: "not JSON", raw: func([]byte) []byte { return []byte("hello") }, want: "top level"},
		{name: "top level is an array", raw: func([]byte) []byte { return []byte("[]") }, want: "expected '{'"},
		{name: "truncated early", raw: func(b []byte) []byte { return b[:len(b)/10] }, want: "unexpected end of input (truncated file?)"},
		{name: "truncated in the vocab", raw: func(b []byte) []byte { return b[:strings.Index(string(b), `"<0x41>"`)] }, want: "model.vocab"},
		{name: "truncated in the merges", raw: func(b []byte) []byte { return b[:strings.LastIndex(string(b), `"▁wor"`)] }, want: "model.merges"},
		{name: "truncated at the end", raw: func(b []byte) []byte { b = bytes.TrimSpace(b); return b[:len(b)-1] }, want: "unexpected end of input"},
		{name: "data after the end", raw: func(b []byte) []byte { return append(b, " {}"...) }, want: "unexpected data after the top-level value"},
		{name: "bad escape", raw: func(b []byte) []byte { return []byte(strings.Replace(string(b), `"<pad>"`, `"<p\qad>"`, 1)) }, want: `bad escape \q`},
		{name: "no model", mutate: func(f *tinyFile) {}, raw: func(b []byte) []byte {
			return []byte(strings.Replace(string(b), `"model":`, `"other":`, 1))
		}, want: `no "model" section`},
		{name: "model type", mutate: func(f *tinyFile) { f.Model.Type = "WordPiece" }, want: `model.type: "WordPiece" is not supported`},
		{name: "vocab not an object", raw: func(b []byte) []byte {
			return []byte(strings.Replace(string(b), `"vocab": {`, `"vocab": [{`, 1))
		}, want: "model.vocab: offset"},
		{name: "negative id", raw: func(b []byte) []byte {
			return []byte(strings.Replace(string(b), `"<mask>": 8`, `"<mask>": -8`, 1))
		}, want: "expected a non-negative integer"},
		{name: "fractional id", raw: func(b []byte) []byte {
			return []byte(strings.Replace(string(b), `"<mask>": 8`, `"<mask>": 8.5`, 1))
		}, want: "expected an integer"},
		{name: "duplicate id", raw: func(b []byte) []byte {
			return []byte(strings.Replace(string(b), `"<mask>": 8`, `"<mask>": 7`, 1))
		}, want: "is given to both"},
		{name: "merge part not in vocab", mutate: func(f *tinyFile) {
			f.Model.Merges = [][]string{{"h", "e"}, {"zz", "e"}}
		}, want: `model.merges: merge 1: "zz" is not in the vocab`},
		{name: "merged piece not in vocab", mutate: func(f *tinyFile) {
			f.Model.Merges = [][]string{{"a", "d"}}
		}, want: `the merged piece "ad" is not in the vocab`},
		{name: "merge with three parts", mutate: func(f *tinyFile) {
			f.Model.Merges = [][]string{{"h", "e", "l"}}
		}, want: "merge 0: a merge pair has exactly two strings"},
		{name: "merge string without a space", mutate: func(f *tinyFile) {
			f.Model.Merges = []string{"he"}
		}, want: `merge 0: "he" is not "left right"`},
		{name: "unk token missing", mutate: func(f *tinyFile) { f.Model.UnkToken = "<nope>" }, want: `model.unk_token: "<nope>" is not in the vocab`},
		{name: "dropout", mutate: func(f *tinyFile) { f.Model.Dropout = 0.1 }, want: "model.dropout: 0.1 is not supported"},
		{name: "added token without content", mutate: func(f *tinyFile) {
			f.AddedTokens[0].Content = ""
		}, want: "added_tokens: entry 0 (id 0): empty content"},
		{name: "added token lstrip", mutate: func(f *tinyFile) { f.AddedTokens[1].LStrip = true }, want: `added_tokens: entry 1 ("<eos>"): normalized, lstrip, rstrip and single_word are not supported`},
		{name: "added tokens not a list", raw: func(b []byte) []byte {
			return []byte(strings.Replace(string(b), `"added_tokens": [`, `"added_tokens": {"x": [`, 1))
		}, want: "added_tokens"},
		{name: "normalizer type", mutate: func(f *tinyFile) { f.Normalizer = map[string]any{"type": "NFC"} }, want: `normalizer: type "NFC" is not supported`},
		{name: "normalizer regex", mutate: func(f *tinyFile) {
			f.Normalizer = map[string]any{"type": "Replace", "pattern": map[string]any{"Regex": " +"}, "content": "▁"}
		}, want: `normalizer: Replace: regex pattern " +" is not supported`},
		{name: "pre-tokenizer type", mutate: func(f *tinyFile) { f.PreTokenizer = map[string]any{"type": "Metaspace"} }, want: `pre_tokenizer: type "Metaspace" is not supported`},
		{name: "pre-tokenizer behavior", mutate: func(f *tinyFile) {
			f.PreTokenizer = map[string]any{"type": "Split", "pattern": map[string]any{"String": " "}, "behavior": "Isolated"}
		}, want: `pre_tokenizer: Split: behavior "Isolated"`},
		{name: "decoder type", mutate: func(f *tinyFile) {
			f.Decoder = map[string]any{"type": "Sequence", "decoders": []any{map[string]any{"type": "Strip"}}}
		}, want: `decoder: decoders[0]: type "Strip" is not supported`},
		{name: "decoder null", mutate: func(f *tinyFile) { f.Decoder = nil }, want: "decoder: null is not supported"},
		{name: "post-processor token", mutate: func(f *tinyFile) {
			f.PostProcessor.(map[string]any)["special_tokens"] = map[string]any{}
		}, want: `post_processor: single[0]: special token "<bos>" is not in special_tokens`},
		{name: "truncation", mutate: func(f *tinyFile) { f.Truncation = map[string]any{"max_length": 8} }, want: "truncation: only null is supported"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newTinyFile()
			if tt.mutate != nil {
				tt.mutate(f)
			}
			data := f.bytes(t)
			if tt.raw != nil {
				data = tt.raw(data)
			}
			tok, err := Parse(data)
			if err == nil {
				t.Fatalf("no error (vocab size %d); want %q", tok.VocabSize(), tt.want)
			}
			if !errors.Is(err, ErrInvalidTokenizer) {
				t.Errorf("error %q does not wrap ErrInvalidTokenizer", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q; want it to contain %q", err, tt.want)
			}
		})
	}
}

// TestTruncatedEverywhere cuts the file at many offsets: always an error, never a panic.
func TestTruncatedEverywhere(t *testing.T) {
	data := newTinyFile().bytes(t)
	for n := 0; n < len(data)-1; n += 1 + n/50 {
		if _, err := Parse(data[:n]); err == nil || !errors.Is(err, ErrInvalidTokenizer) {
			t.Fatalf("cut at %d of %d: err %v", n, len(data), err)
		}
	}
}

func TestLoadFileErrors(t *testing.T) {
	if _, err := LoadFile(filepath.Join(t.TempDir(), "missing.json")); err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: err %v, want one wrapping os.ErrNotExist", err)
	}
	path := filepath.Join(t.TempDir(), "tokenizer.json")
	if err := os.WriteFile(path, []byte(`{"model": `), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := LoadFile(path)
	if !errors.Is(err, ErrInvalidTokenizer) || !strings.Contains(err.Error(), path) {
		t.Fatalf("truncated file: err %v, want ErrInvalidTokenizer naming %s", err, path)
	}
}

func writeDir(t *testing.T, config string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "tokenizer.json"), newTinyFile().bytes(t), 0o644); err != nil {
		t.Fatal(err)
	}
	if config != "" {
		if err := os.WriteFile(filepath.Join(dir, "tokenizer_config.json"), []byte(config), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestLoadDirConfig(t *testing.T) {
	t.Run("no config", func(t *testing.T) {
		tok, err := LoadDir(writeDir(t, ""))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tok.ApplyChatTemplate([]Message{{Role: "user", Content: "hi"}}, true); !errors.Is(err, ErrChatTemplate) {
			t.Fatalf("ApplyChatTemplate without a template: err %v", err)
		}
	})
	t.Run("eos and another template", func(t *testing.T) {
		tok, err := LoadDir(writeDir(t, `{"bos_token": {"content": "<bos>"}, "eos_token": "<end_of_turn>", "chat_template": "{{ messages }}"}`))
		if err != nil {
			t.Fatal(err)
		}
		if got := tok.StopIDs(); len(got) != 2 || got[0] != 1 || got[1] != 5 {
			t.Errorf("StopIDs = %v, want [1 5] (<eos>, <end_of_turn>)", got)
		}
		_, err = tok.ApplyChatTemplate([]Message{{Role: "user", Content: "hi"}}, true)
		if !errors.Is(err, ErrChatTemplate) || !strings.Contains(err.Error(), "unsupported chat_template") {
			t.Fatalf("another template: err %v, want an unsupported-template error", err)
		}
	})
	t.Run("named templates", func(t *testing.T) {
		tok, err := LoadDir(writeDir(t, `{"chat_template": [{"name": "tool_use", "template": "x"}, {"name": "default", "template": "y"}]}`))
		if err != nil {
			t.Fatal(err)
		}
		if tok.chat == nil || tok.chat.render != nil {
			t.Fatal("want the default template loaded (and unsupported)")
		}
	})
	for name, cfg := range map[string]string{
		"bos not in vocab": `{"bos_token": "<s>"}`,
		"eos wrong type":   `{"eos_token": 5}`,
		"template no name": `{"chat_template": [{"name": "x", "template": "y"}]}`,
		"not JSON":         `{"bos_token": `,
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := LoadDir(writeDir(t, cfg)); !errors.Is(err, ErrInvalidTokenizer) || !strings.Contains(err.Error(), "tokenizer_config.json") {
				t.Fatalf("err %v, want ErrInvalidTokenizer naming tokenizer_config.json", err)
			}
		})
	}
}

// TestEscapedStrings reads a file whose strings use \u escapes (encoding/json's HTML
// escaping writes "<" as \u003c) and surrogate pairs: same tokenizer.
func TestEscapedStrings(t *testing.T) {
	f := newTinyFile()
	f.Model.Vocab = append(f.Model.Vocab, "😀")
	plain := f.bytes(t)
	escaped, err := json.Marshal(f)
	if err != nil {
		t.Fatal(err)
	}
	escaped = []byte(strings.Replace(string(escaped), "😀", `\ud83d\ude00`, 1))
	if !strings.Contains(string(escaped), `\u003c`) {
		t.Fatal("want escapes in the test file")
	}
	a, err := Parse(plain)
	if err != nil {
		t.Fatal(err)
	}
	b, err := Parse(escaped)
	if err != nil {
		t.Fatal(err)
	}
	text := "x<eos>hello world 😀\n\n<start_of_turn>"
	if x, y := a.Encode(text, true), b.Encode(text, true); !slices.Equal(x, y) || len(x) < 5 {
		t.Fatalf("plain %v, escaped %v", x, y)
	}
	if id, ok := b.TokenID("😀"); !ok || id != int32(len(f.Model.Vocab)-1) {
		t.Fatalf("surrogate pair piece: id %d, %v", id, ok)
	}
}
