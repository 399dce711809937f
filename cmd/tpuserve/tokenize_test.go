package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// writeTestTokenizer writes a small tokenizer.json in Gemma 3's shape: byte fallback, a
// few merges, <bos>/<eos>/<start_of_turn> special tokens, BOS added by the post-processor.
func writeTestTokenizer(t *testing.T) string {
	t.Helper()
	vocab := map[string]int{}
	pieces := []string{"<pad>", "<eos>", "<bos>", "<start_of_turn>"}
	for b := range 256 {
		pieces = append(pieces, fmt.Sprintf("<0x%02X>", b))
	}
	pieces = append(pieces, "▁", "h", "i", "hi", "▁hi")
	for id, p := range pieces {
		vocab[p] = id
	}
	var added []map[string]any
	for id, p := range pieces[:4] {
		added = append(added, map[string]any{"id": id, "content": p, "special": true,
			"single_word": false, "lstrip": false, "rstrip": false, "normalized": false})
	}
	spec := map[string]any{
		"version": "1.0", "truncation": nil, "padding": nil, "added_tokens": added,
		"normalizer":    map[string]any{"type": "Replace", "pattern": map[string]any{"String": " "}, "content": "▁"},
		"pre_tokenizer": nil,
		"post_processor": map[string]any{"type": "TemplateProcessing",
			"single":         []any{map[string]any{"SpecialToken": map[string]any{"id": "<bos>"}}, map[string]any{"Sequence": map[string]any{"id": "A"}}},
			"special_tokens": map[string]any{"<bos>": map[string]any{"id": "<bos>", "ids": []int{2}}}},
		"decoder": map[string]any{"type": "Sequence", "decoders": []any{
			map[string]any{"type": "Replace", "pattern": map[string]any{"String": "▁"}, "content": " "},
			map[string]any{"type": "ByteFallback"}, map[string]any{"type": "Fuse"}}},
		"model": map[string]any{"type": "BPE", "unk_token": nil, "fuse_unk": true, "byte_fallback": true,
			"vocab": vocab, "merges": [][]string{{"h", "i"}, {"▁", "hi"}}},
	}
	data, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "tokenizer.json")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestTokenizeCommands(t *testing.T) {
	path := writeTestTokenizer(t)
	// ids: <bos>=2, <start_of_turn>=3, bytes: 0xNN → 4+NN, "▁"=260, "hi"=263, "▁hi"=264.
	tests := []struct {
		name  string
		args  []string
		stdin string
		want  string
		err   string
	}{
		{"tokenize", []string{"tokenize"}, "hi hi", "[263,264]\n", ""},
		{"tokenize with BOS", []string{"tokenize", "--add-special-tokens"}, "hi", "[2,263]\n", ""},
		{"tokenize all of stdin is one text", []string{"tokenize"}, "hi\nhi", "[263,14,263]\n", ""},
		{"tokenize special token", []string{"tokenize"}, "<start_of_turn>hi", "[3,263]\n", ""},
		{"tokenize literal", []string{"tokenize", "--literal"}, "<bos>", "[64,102,115,119,66]\n", ""},
		{"tokenize jsonl", []string{"tokenize", "--jsonl"}, "\"hi\"\n\n\" hi\"\n", "[263]\n[264]\n", ""},
		{"tokenize jsonl bad line", []string{"tokenize", "--jsonl"}, "\"hi\"\nhi\n", "", "line 2: want a JSON string"},
		{"detokenize", []string{"detokenize"}, "[2, 263, 264, 14]", "<bos>hi hi\n", ""},
		{"detokenize skip special", []string{"detokenize", "--skip-special-tokens"}, "[2,263]", "hi", ""},
		{"detokenize jsonl", []string{"detokenize", "--jsonl"}, "[263]\n[264,14]\n", "\"hi\"\n\" hi\\n\"\n", ""},
		{"detokenize out of range", []string{"detokenize"}, "[2, 9999]", "", "token id out of range: id 9999"},
		{"detokenize not ids", []string{"detokenize"}, "[1.5]", "", "id 0: 1.5 is not a token id"},
		{"detokenize not an array", []string{"detokenize"}, "hello", "", "want a JSON array of token ids"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append(append([]string{}, tt.args...), "--tokenizer", path)
			var out, errb bytes.Buffer
			code := run(args, strings.NewReader(tt.stdin), &out, &errb)
			if tt.err != "" {
				if code == 0 || !strings.Contains(errb.String(), tt.err) {
					t.Fatalf("exit %d, stderr %q; want failure with %q", code, errb.String(), tt.err)
				}
				return
			}
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errb.String())
			}
			if out.String() != tt.want {
				t.Fatalf("stdout %q, want %q", out.String(), tt.want)
			}
		})
	}
}

func TestTokenizeNeedsTokenizer(t *testing.T) {
	t.Setenv("TPUSERVE_TOKENIZER_DIR", "")
	var out, errb bytes.Buffer
	if code := run([]string{"tokenize"}, strings.NewReader("x"), &out, &errb); code == 0 || !strings.Contains(errb.String(), "--tokenizer is required") {
		t.Fatalf("exit %d, stderr %q", code, errb.String())
	}
	bad := filepath.Join(t.TempDir(), "tokenizer.json")
	if err := os.WriteFile(bad, []byte(`{"model": {`), 0o644); err != nil {
		t.Fatal(err)
	}
	errb.Reset()
	if code := run([]string{"tokenize", "--tokenizer", bad}, strings.NewReader("x"), &out, &errb); code == 0 || !strings.Contains(errb.String(), "truncated") {
		t.Fatalf("exit %d, stderr %q", code, errb.String())
	}
}
