package tokenizer

import (
	"bytes"
	"encoding/json"
	"fmt"
	"testing"
)

// A tiny tokenizer.json in Gemma 3's shape, built in the test so that each unit test (and
// each malformed-file case) can change one thing. Hand-made: expected ids below follow
// from its merges by hand.

type tinyAdded struct {
	ID         int32  `json:"id"`
	Content    string `json:"content"`
	SingleWord bool   `json:"single_word"`
	LStrip     bool   `json:"lstrip"`
	RStrip     bool   `json:"rstrip"`
	Normalized bool   `json:"normalized"`
	Special    bool   `json:"special"`
}

// orderedVocab marshals as a JSON object in id order, as HF writes it.
type orderedVocab []string

func (v orderedVocab) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	for id, p := range v {
		if id > 0 {
			b.WriteByte(',')
		}
		k, err := marshalPlain(p, "")
		if err != nil {
			return nil, err
		}
		fmt.Fprintf(&b, "%s:%d", bytes.TrimSpace(k), id)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

type tinyModel struct {
	Type         string       `json:"type"`
	Dropout      any          `json:"dropout"`
	UnkToken     any          `json:"unk_token"`
	FuseUnk      bool         `json:"fuse_unk"`
	ByteFallback bool         `json:"byte_fallback"`
	IgnoreMerges bool         `json:"ignore_merges"`
	Vocab        orderedVocab `json:"vocab"`
	Merges       any          `json:"merges"`
}

type tinyFile struct {
	Version       string      `json:"version"`
	Truncation    any         `json:"truncation"`
	Padding       any         `json:"padding"`
	AddedTokens   []tinyAdded `json:"added_tokens"`
	Normalizer    any         `json:"normalizer"`
	PreTokenizer  any         `json:"pre_tokenizer"`
	PostProcessor any         `json:"post_processor"`
	Decoder       any         `json:"decoder"`
	Model         tinyModel   `json:"model"`
}

var tinyMerges = [][2]string{
	{"h", "e"}, {"l", "l"}, {"he", "ll"}, {"hell", "o"}, {"▁", "hello"},
	{"▁", "w"}, {"▁w", "o"}, {"▁wo", "r"}, {"▁wor", "l"}, {"▁worl", "d"},
	{"a", "a"}, {">", "▁"}, {">▁", "<"}, {"▁", "▁"},
	{"b", "c"}, {"a", "b"}, {"a", "bc"}, {"ab", "c"},
}

// tinyExtraID is an added token beyond the model vocab, like Gemma's <image_soft_token>.
const tinyExtra = "<extra>"

func newTinyFile() *tinyFile {
	vocab := []string{"<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", "\n", "\n\n", "<mask>"}
	for b := range 256 {
		vocab = append(vocab, fmt.Sprintf("<0x%02X>", b))
	}
	for _, c := range []string{"▁", "a", "b", "c", "d", "e", "h", "l", "o", "r", "w", ">", "<", "/", "x", "é"} {
		vocab = append(vocab, c)
	}
	merges := make([][]string, 0, len(tinyMerges))
	seen := map[string]bool{}
	for _, p := range vocab {
		seen[p] = true
	}
	for _, m := range tinyMerges {
		merges = append(merges, []string{m[0], m[1]})
		if !seen[m[0]+m[1]] {
			vocab = append(vocab, m[0]+m[1])
			seen[m[0]+m[1]] = true
		}
	}
	added := []tinyAdded{}
	for id, p := range vocab[:9] {
		special := p != "\n" && p != "\n\n" && p != "<mask>"
		added = append(added, tinyAdded{ID: int32(id), Content: p, Special: special})
	}
	added = append(added, tinyAdded{ID: int32(len(vocab)), Content: tinyExtra, Special: true})
	return &tinyFile{
		Version:      "1.0",
		AddedTokens:  added,
		Normalizer:   map[string]any{"type": "Replace", "pattern": map[string]any{"String": " "}, "content": "▁"},
		PreTokenizer: map[string]any{"type": "Split", "pattern": map[string]any{"String": " "}, "behavior": "MergedWithPrevious", "invert": false},
		PostProcessor: map[string]any{
			"type":           "TemplateProcessing",
			"single":         []any{map[string]any{"SpecialToken": map[string]any{"id": "<bos>", "type_id": 0}}, map[string]any{"Sequence": map[string]any{"id": "A", "type_id": 0}}},
			"pair":           []any{},
			"special_tokens": map[string]any{"<bos>": map[string]any{"id": "<bos>", "ids": []int{2}, "tokens": []string{"<bos>"}}},
		},
		Decoder: map[string]any{"type": "Sequence", "decoders": []any{
			map[string]any{"type": "Replace", "pattern": map[string]any{"String": "▁"}, "content": " "},
			map[string]any{"type": "ByteFallback"},
			map[string]any{"type": "Fuse"},
		}},
		Model: tinyModel{Type: "BPE", UnkToken: "<unk>", FuseUnk: true, ByteFallback: true, Vocab: vocab, Merges: merges},
	}
}

// marshalPlain is json.Marshal without HTML escaping ("<" stays "<", as HF writes it).
func marshalPlain(v any, indent string) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", indent)
	err := enc.Encode(v)
	return b.Bytes(), err
}

func (f *tinyFile) bytes(t testing.TB) []byte {
	t.Helper()
	b, err := marshalPlain(f, "  ")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (f *tinyFile) tokenizer(t testing.TB) *Tokenizer {
	t.Helper()
	tok, err := Parse(f.bytes(t))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// tinyIDs maps pieces to the tiny tokenizer's ids.
func tinyIDs(t testing.TB, tok *Tokenizer, pieces ...string) []int32 {
	t.Helper()
	ids := make([]int32, len(pieces))
	for i, p := range pieces {
		id, ok := tok.TokenID(p)
		if !ok {
			t.Fatalf("no piece %q in the tiny vocab", p)
		}
		ids[i] = id
	}
	return ids
}

func jsonRoundTrip(data []byte, v any) error { return json.Unmarshal(data, v) }

// marshalSorted writes maps with sorted keys (encoding/json's order).
func marshalSorted(v any) ([]byte, error) { return json.Marshal(v) }
