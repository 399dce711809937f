package tokenizer

import (
	"path/filepath"
	"strings"
	"testing"
)

// Benchmarks on the real Gemma 3 tokenizer and the 1.1 MB golden corpus (they skip
// without the tokenizer, like the golden tests). scripts/tokenizer-golden/bench.mjs runs
// them next to HF's Rust tokenizer on the same text; figures in docs/perf-tokenizer.md.

func BenchmarkLoad(b *testing.B) {
	realTokenizer(b)
	path := filepath.Join(real.dir, "tokenizer.json")
	for b.Loop() {
		if _, err := LoadFile(path); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkEncode(b *testing.B) {
	tok := realTokenizer(b)
	docs := checkedCorpus(b)
	whole := strings.Join(docs, "")
	b.Run("docs", func(b *testing.B) {
		b.SetBytes(int64(len(whole)))
		for b.Loop() {
			for _, d := range docs {
				tok.Encode(d, false)
			}
		}
	})
	b.Run("whole", func(b *testing.B) {
		b.SetBytes(int64(len(whole)))
		for b.Loop() {
			tok.Encode(whole, false)
		}
	})
}

func BenchmarkDecode(b *testing.B) {
	tok := realTokenizer(b)
	whole := strings.Join(checkedCorpus(b), "")
	ids := tok.Encode(whole, false)
	b.Run("full", func(b *testing.B) {
		b.SetBytes(int64(len(whole)))
		for b.Loop() {
			if _, err := tok.Decode(ids, false); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("stream", func(b *testing.B) {
		b.SetBytes(int64(len(whole)))
		for b.Loop() {
			d := tok.NewStreamDecoder(false)
			for _, id := range ids {
				if _, err := d.Add(id); err != nil {
					b.Fatal(err)
				}
			}
			d.Flush()
		}
	})
}
