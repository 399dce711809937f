package grammar

import (
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/tpuserve/tpuserve/tokenizer"
)

var real struct {
	once  sync.Once
	tok   *tokenizer.Tokenizer
	vocab *Vocabulary
	err   error
}

func realTokenizerDir() string {
	if d := os.Getenv("TPUSERVE_TOKENIZER_DIR"); d != "" {
		return d
	}
	return filepath.Join("..", ".cache", "tokenizer")
}

// realVocab returns the Gemma 3 vocabulary, loaded once; it skips the test without the
// tokenizer (fails in CI, where it must be present).
func realVocab(t testing.TB) (*tokenizer.Tokenizer, *Vocabulary) {
	t.Helper()
	dir := realTokenizerDir()
	if _, err := os.Stat(filepath.Join(dir, "tokenizer.json")); err != nil {
		msg := "the Gemma 3 tokenizer is not in " + dir + " (run `make tokenizer`, or set TPUSERVE_TOKENIZER_DIR)"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	real.once.Do(func() {
		real.tok, real.err = tokenizer.LoadDir(dir)
		if real.err == nil {
			real.vocab, real.err = VocabularyFromTokenizer(real.tok)
		}
	})
	if real.err != nil {
		t.Fatal(real.err)
	}
	return real.tok, real.vocab
}

const typicalSchema = `{"type":"object","properties":{"name":{"type":"string"},"age":{"type":"integer","minimum":0},
"email":{"type":"string","format":"email"},"tags":{"type":"array","items":{"type":"string"},"maxItems":5},
"address":{"type":"object","properties":{"street":{"type":"string"},"zip":{"type":"string","pattern":"^[0-9]{5}$"}},"required":["street"]}},
"required":["name","age"],"additionalProperties":false}`

const typicalText = `{"name": "Ada Lovelace", "age": 36, "email": "ada@example.org", "tags": ["math", "poetry"], "address": {"street": "12 St James's Square", "zip": "10001"}}`

func TestRealVocabularyTrie(t *testing.T) {
	_, v := realVocab(t)
	t.Logf("vocab %d tokens, %d trie nodes, max depth %d", v.Size(), len(v.nodeByte), v.maxDepth)
}

// BenchmarkMaskTypical: time per token (mask + advance) along typicalText, after the
// cache is warm (the first pass fills it); compact separators, and flexible whitespace.
func BenchmarkMaskTypical(b *testing.B) {
	b.Run("compact", func(b *testing.B) { benchmarkMask(b, WithSeparators(", ", ": ")) })
	b.Run("flexible", func(b *testing.B) { benchmarkMask(b) })
}

func benchmarkMask(b *testing.B, opts ...Option) {
	tok, v := realVocab(b)
	g, err := CompileJSONSchema(v, []byte(typicalSchema), opts...)
	if err != nil {
		b.Fatal(err)
	}
	ids := tok.EncodeLiteral(typicalText, false)
	m := g.NewMatcher()
	mask := make([]uint32, v.MaskWords())
	run := func() {
		m.Reset()
		for _, id := range ids {
			if err := m.FillMask(mask); err != nil {
				b.Fatal(err)
			}
			if mask[id>>5]&(1<<(id&31)) == 0 {
				b.Fatalf("token %d not allowed", id)
			}
			if err := m.Advance(id); err != nil {
				b.Fatal(err)
			}
		}
	}
	run()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		run()
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(ids))/1000, "µs/token")
}

// BenchmarkFirstMaskTypical: compile plus first mask with a cold cache (TTFM).
func BenchmarkFirstMaskTypical(b *testing.B) {
	_, v := realVocab(b)
	mask := make([]uint32, v.MaskWords())
	for i := 0; i < b.N; i++ {
		g, err := CompileJSONSchema(v, []byte(typicalSchema), WithSeparators(", ", ": "))
		if err != nil {
			b.Fatal(err)
		}
		if err := g.NewMatcher().FillMask(mask); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkEntry: one cold cache-entry computation (a whole-trie walk) for the states
// after a prefix: inside a string, and at the start of any JSON value.
func BenchmarkEntry(b *testing.B) {
	_, v := realVocab(b)
	for _, tc := range []struct{ name, schema, prefix string }{
		{"string", `{"type":"string"}`, `"`},
		{"any", `{}`, ``},
		{"object", typicalSchema, `{"name": "x", `},
	} {
		b.Run(tc.name, func(b *testing.B) {
			g, err := CompileJSONSchema(v, []byte(tc.schema), WithSeparators(", ", ": "))
			if err != nil {
				b.Fatal(err)
			}
			m := g.NewMatcher()
			if err := m.AdvanceBytes([]byte(tc.prefix)); err != nil {
				b.Fatal(err)
			}
			f := m.w.arena[m.stacks[0]]
			for i := 0; i < b.N; i++ {
				g.computeEntry(&m.w, f.rule, f.state)
			}
		})
	}
}
