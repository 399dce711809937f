package kvcache

import (
	"fmt"
	"testing"
)

// BenchmarkDecodeToken measures the bookkeeping of one decoded token of one sequence
// (Allocate + Commit, a new block every PageSize tokens, sliding blocks freed as they leave
// the window), with and without prefix caching.
func BenchmarkDecodeToken(b *testing.B) {
	for _, caching := range []bool{false, true} {
		b.Run(fmt.Sprintf("prefix_cache=%v", caching), func(b *testing.B) {
			m, err := NewManager(Config{PageSize: 16, NumGlobalBlocks: 1 << 16, NumSlidingBlocks: 1 << 12,
				SlidingWindow: 1024, EnablePrefixCaching: caching})
			if err != nil {
				b.Fatal(err)
			}
			tokens := seqTokens(1, 1<<20)
			var s Seq
			pos := 0
			b.ReportAllocs()
			for b.Loop() {
				if pos == 60000 { // stay within the global pool
					m.Free(&s)
					s = Seq{}
					pos = 0
				}
				if err := m.Allocate(&s, nil, pos, 1); err != nil {
					b.Fatal(err)
				}
				pos++
				if err := m.Commit(&s, tokens, pos); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkLookupHit measures admitting a 1024-token prompt whose first 1008 tokens are
// cached (Lookup + Allocate + Free), hashes included.
func BenchmarkLookupHit(b *testing.B) {
	m, err := NewManager(Config{PageSize: 16, NumGlobalBlocks: 4096, NumSlidingBlocks: 4096,
		SlidingWindow: 512, EnablePrefixCaching: true})
	if err != nil {
		b.Fatal(err)
	}
	tokens := seqTokens(2, 1024)
	var warm Seq
	if err := m.Allocate(&warm, nil, 0, len(tokens)); err != nil {
		b.Fatal(err)
	}
	if err := m.Commit(&warm, tokens, len(tokens)); err != nil {
		b.Fatal(err)
	}
	m.Free(&warm)
	b.ReportAllocs()
	for b.Loop() {
		var s Seq
		hit := m.Lookup(&s, tokens)
		if hit.NumTokens != 1008 {
			b.Fatalf("hit %d", hit.NumTokens)
		}
		if err := m.Allocate(&s, &hit, hit.NumTokens, len(tokens)-hit.NumTokens); err != nil {
			b.Fatal(err)
		}
		m.Free(&s)
	}
}
