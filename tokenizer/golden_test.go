package tokenizer

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// These tests compare against golden data made by Hugging Face's own implementations
// (scripts/tokenizer-golden/golden.mjs: the tokenizers@0.23.2 Node binding and
// @huggingface/jinja@0.5.11) from the real Gemma 3 tokenizer. The tokenizer itself is
// Google's file and is not committed: `make tokenizer` (scripts/fetch-tokenizer.sh) puts it
// in the directory that TPUSERVE_TOKENIZER_DIR names. Without it these tests skip, except
// under CI=true, where they fail.

var real struct {
	once sync.Once
	tok  *Tokenizer
	err  error
	dir  string
}

func realDir() string {
	if d := os.Getenv("TPUSERVE_TOKENIZER_DIR"); d != "" {
		return d
	}
	return filepath.Join("..", ".cache", "tokenizer")
}

// realTokenizer returns the real Gemma 3 tokenizer, loaded once for all tests.
func realTokenizer(t testing.TB) *Tokenizer {
	t.Helper()
	dir := realDir()
	if _, err := os.Stat(filepath.Join(dir, "tokenizer.json")); err != nil {
		msg := "the Gemma 3 tokenizer is not in " + dir + " (run `make tokenizer`, or set TPUSERVE_TOKENIZER_DIR)"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	real.once.Do(func() {
		real.dir = dir
		real.tok, real.err = LoadDir(dir)
	})
	if real.err != nil {
		t.Fatal(real.err)
	}
	return real.tok
}

// roundTrip is what decoding gives back for valid text: '▁' (U+2581) comes back as ' '.
func roundTrip(s string) string { return strings.ReplaceAll(s, "▁", " ") }

// streamDecode decodes ids one at a time and returns the concatenated pieces, checking
// that no piece ends inside a UTF-8 character.
func streamDecode(t testing.TB, tok *Tokenizer, ids []int32, skip bool) string {
	t.Helper()
	d := tok.NewStreamDecoder(skip)
	var b strings.Builder
	for _, id := range ids {
		piece, err := d.Add(id)
		if err != nil {
			t.Fatal(err)
		}
		if !validPiece(piece) {
			t.Fatalf("stream piece %q is not whole UTF-8", piece)
		}
		b.WriteString(piece)
	}
	b.WriteString(d.Flush())
	return b.String()
}

func validPiece(s string) bool { return s == "" || ToValidUTF8(s) == s }

func firstDiff(a, b []int32) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

func checkIDs(t testing.TB, what string, got, want []int32) {
	t.Helper()
	if !slices.Equal(got, want) {
		i := firstDiff(got, want)
		t.Errorf("%s: ids differ from HF at index %d (len %d vs %d):\n got  %v\n want %v",
			what, i, len(got), len(want), got[max(0, i-3):min(len(got), i+8)], want[max(0, i-3):min(len(want), i+8)])
	}
}

func TestGoldenTokenizerFile(t *testing.T) {
	realTokenizer(t)
	var meta struct {
		TokenizerSHA256 string `json:"tokenizer_json_sha256"`
	}
	readJSON(t, "corpus.json", &meta)
	data, err := os.ReadFile(filepath.Join(real.dir, "tokenizer.json"))
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	if got := hex.EncodeToString(sum[:]); got != meta.TokenizerSHA256 {
		t.Fatalf("%s/tokenizer.json has sha256 %s; the golden data was made from %s", real.dir, got, meta.TokenizerSHA256)
	}
}

func TestGoldenCases(t *testing.T) {
	tok := realTokenizer(t)
	var cases []goldenCase
	readJSON(t, "cases.json", &cases)
	var golden []struct {
		Name        string  `json:"name"`
		IDs         []int32 `json:"ids"`
		IDsBOS      []int32 `json:"ids_bos"`
		IDsLiteral  []int32 `json:"ids_literal"`
		Decoded     string  `json:"decoded"`
		DecodedSkip string  `json:"decoded_skip"`
	}
	readJSON(t, "cases_golden.json", &golden)
	if len(golden) != len(cases) {
		t.Fatalf("%d golden records for %d cases: regenerate with scripts/tokenizer-golden/golden.mjs", len(golden), len(cases))
	}
	for i, c := range cases {
		g := golden[i]
		t.Run(c.Name, func(t *testing.T) {
			if g.Name != c.Name {
				t.Fatalf("golden record %d is %q, case is %q", i, g.Name, c.Name)
			}
			var text string
			if c.B64 != nil {
				raw, err := base64.StdEncoding.DecodeString(*c.B64)
				if err != nil {
					t.Fatal(err)
				}
				text = string(raw)
			} else {
				text = *c.Text
			}
			checkIDs(t, "Encode", tok.Encode(text, false), g.IDs)
			checkIDs(t, "Encode with special tokens", tok.Encode(text, true), g.IDsBOS)
			checkIDs(t, "EncodeLiteral", tok.EncodeLiteral(text, false), g.IDsLiteral)
			for _, skip := range []bool{false, true} {
				want := g.Decoded
				if skip {
					want = g.DecodedSkip
				}
				got, err := tok.Decode(g.IDs, skip)
				if err != nil {
					t.Fatal(err)
				}
				if got != want {
					t.Errorf("Decode(skip=%v) = %q, HF %q", skip, got, want)
				}
				if s := streamDecode(t, tok, g.IDs, skip); s != want {
					t.Errorf("stream decode (skip=%v) = %q, HF %q", skip, s, want)
				}
			}
			if c.B64 == nil && g.Decoded != roundTrip(text) {
				t.Errorf("decode(encode(x)) = %q, want %q", g.Decoded, roundTrip(text))
			}
			if lit, err := tok.Decode(tok.EncodeLiteral(text, false), false); err != nil || lit != ToValidUTF8(roundTrip(text)) {
				t.Errorf("decode(EncodeLiteral(x)) = %q, %v; want %q", lit, err, ToValidUTF8(roundTrip(text)))
			}
		})
	}
}

func TestGoldenDecode(t *testing.T) {
	tok := realTokenizer(t)
	var golden []struct {
		Name     string  `json:"name"`
		IDs      []int32 `json:"ids"`
		Text     string  `json:"text"`
		TextSkip string  `json:"text_skip"`
	}
	readJSON(t, "decode_golden.json", &golden)
	for _, g := range golden {
		t.Run(g.Name, func(t *testing.T) {
			for _, skip := range []bool{false, true} {
				want := g.Text
				if skip {
					want = g.TextSkip
				}
				got, err := tok.Decode(g.IDs, skip)
				if err != nil {
					t.Fatal(err)
				}
				if got != want {
					t.Errorf("Decode(%v, skip=%v) = %q, HF %q", g.IDs, skip, got, want)
				}
				if s := streamDecode(t, tok, g.IDs, skip); s != want {
					t.Errorf("stream decode (skip=%v) = %q, HF %q", skip, s, want)
				}
			}
		})
	}
}

type chatMessageJSON struct {
	Role    string          `json:"role"`
	Content json.RawMessage `json:"content"`
}

// toMessage maps the JSON conversation (content: a string or a list of parts) to Message.
func toMessage(t testing.TB, m chatMessageJSON) Message {
	var s string
	if err := json.Unmarshal(m.Content, &s); err == nil {
		return Message{Role: m.Role, Content: s}
	}
	parts := []ContentPart{}
	if err := json.Unmarshal(m.Content, &parts); err != nil {
		t.Fatalf("content %s: %v", m.Content, err)
	}
	return Message{Role: m.Role, Parts: parts}
}

func TestGoldenChatTemplate(t *testing.T) {
	tok := realTokenizer(t)
	var chats []struct {
		Name     string            `json:"name"`
		Messages []chatMessageJSON `json:"messages"`
		AddGen   bool              `json:"add_generation_prompt"`
	}
	readJSON(t, "chats.json", &chats)
	var golden []struct {
		Name  string  `json:"name"`
		Text  *string `json:"text"`
		IDs   []int32 `json:"ids"`
		Error string  `json:"error"`
	}
	readJSON(t, "chats_golden.json", &golden)
	if len(golden) != len(chats) {
		t.Fatalf("%d golden records for %d chats: regenerate", len(golden), len(chats))
	}
	for i, c := range chats {
		g := golden[i]
		t.Run(c.Name, func(t *testing.T) {
			msgs := make([]Message, len(c.Messages))
			for j, m := range c.Messages {
				msgs[j] = toMessage(t, m)
			}
			text, err := tok.ApplyChatTemplate(msgs, c.AddGen)
			if g.Text == nil {
				if err == nil {
					t.Fatalf("rendered %q; HF's Jinja engine fails with %q", text, g.Error)
				}
				if !errors.Is(err, ErrChatTemplate) || !strings.Contains(err.Error(), g.Error) {
					t.Fatalf("error %q; want one wrapping ErrChatTemplate with HF's message %q", err, g.Error)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if text != *g.Text {
				t.Fatalf("rendered\n%q\nHF's Jinja engine\n%q", text, *g.Text)
			}
			ids := tok.Encode(text, false)
			checkIDs(t, "Encode(rendered, false)", ids, g.IDs)
			if ids[0] != tok.BOS() || (len(ids) > 1 && ids[1] == tok.BOS()) {
				t.Errorf("want exactly one leading BOS, got ids %v", ids[:min(3, len(ids))])
			}
		})
	}
}

// readCorpusIDs reads corpus_ids.bin.gz: per document its id count then its ids, then
// the same for the whole corpus.
func readCorpusIDs(t testing.TB, docs int) (perDoc [][]int32, whole []int32) {
	f, err := os.Open(filepath.Join("testdata", "golden", "corpus_ids.bin.gz"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	r := bytes.NewReader(raw)
	readSeq := func() []int32 {
		var n uint32
		if err := binary.Read(r, binary.LittleEndian, &n); err != nil {
			t.Fatalf("corpus_ids.bin.gz: %v", err)
		}
		ids := make([]int32, n)
		if err := binary.Read(r, binary.LittleEndian, ids); err != nil {
			t.Fatalf("corpus_ids.bin.gz: %v", err)
		}
		return ids
	}
	for range docs {
		perDoc = append(perDoc, readSeq())
	}
	whole = readSeq()
	if r.Len() != 0 {
		t.Fatalf("corpus_ids.bin.gz: %d bytes left over", r.Len())
	}
	return perDoc, whole
}

type corpusMeta struct {
	Docs   int    `json:"docs"`
	Bytes  int    `json:"bytes"`
	SHA256 string `json:"sha256"`
}

func checkedCorpus(t testing.TB) []string {
	var meta corpusMeta
	readJSON(t, "corpus.json", &meta)
	docs := corpusDocs(t)
	all := strings.Join(docs, "")
	sum := sha256.Sum256([]byte(all))
	if len(docs) != meta.Docs || len(all) != meta.Bytes || hex.EncodeToString(sum[:]) != meta.SHA256 {
		t.Fatalf("the Go corpus generator (%d docs, %d bytes) disagrees with corpus.mjs (%d docs, %d bytes, sha256 %s)",
			len(docs), len(all), meta.Docs, meta.Bytes, meta.SHA256)
	}
	return docs
}

func TestGoldenCorpus(t *testing.T) {
	tok := realTokenizer(t)
	docs := checkedCorpus(t)
	perDoc, whole := readCorpusIDs(t, len(docs))
	var all []int32
	for i, doc := range docs {
		ids := tok.Encode(doc, false)
		checkIDs(t, "document "+strconv.Itoa(i), ids, perDoc[i])
		all = append(all, ids...)
		if t.Failed() {
			t.Fatalf("document %d: %q", i, doc)
		}
		got, err := tok.Decode(ids, false)
		if err != nil || got != roundTrip(doc) {
			t.Fatalf("document %d: decode(encode(x)) != x (%v)", i, err)
		}
	}
	text := strings.Join(docs, "")
	wholeIDs := tok.Encode(text, false)
	checkIDs(t, "whole corpus", wholeIDs, whole)
	got, err := tok.Decode(wholeIDs, false)
	if err != nil || got != roundTrip(text) {
		t.Fatalf("whole corpus: decode(encode(x)) != x (%v)", err)
	}
	if s := streamDecode(t, tok, wholeIDs, false); s != got {
		t.Fatal("whole corpus: streamed pieces do not concatenate to the full decode")
	}
	skipped, err := tok.Decode(wholeIDs, true)
	if err != nil {
		t.Fatal(err)
	}
	if s := streamDecode(t, tok, wholeIDs, true); s != skipped {
		t.Fatal("whole corpus (skip special): streamed pieces do not concatenate to the full decode")
	}
	t.Logf("%d documents, %d bytes, %d tokens (%d encoded one by one)", len(docs), len(text), len(wholeIDs), len(all))
}

// TestCorpusGenerator needs no tokenizer: the Go and JavaScript generators must agree.
func TestCorpusGenerator(t *testing.T) {
	checkedCorpus(t)
}
