package grammar

import (
	"errors"
	"sync"
	"testing"
)

func TestMatcherLifecycle(t *testing.T) {
	v := synthVocab(t)
	g := compileSchemaT(t, v, `{"type":"array","items":{"type":"integer"},"maxItems":2}`, compact)
	m := g.NewMatcher()
	mask := make([]uint32, v.MaskWords())
	eos := v.EOS()[0]
	has := func(id int32) bool { return mask[id>>5]&(1<<(id&31)) != 0 }
	id := func(s string) int32 {
		for i, tok := range v.tokens {
			if string(tok) == s {
				return int32(i)
			}
		}
		t.Fatalf("no token %q", s)
		return -1
	}
	if err := m.FillMask(mask); err != nil || has(eos) || !has(id("[")) || has(id("1")) {
		t.Fatalf("start: err %v, eos %v", err, has(eos))
	}
	if err := m.Advance(id("1")); !errors.Is(err, ErrRejected) {
		t.Fatalf("a token outside the mask: got %v, want ErrRejected", err)
	}
	for _, s := range []string{"[", "12", ", ", "3"} {
		if err := m.Advance(id(s)); err != nil {
			t.Fatalf("%q: %v", s, err)
		}
	}
	c := m.Clone()
	if m.CanEnd() {
		t.Fatal("[12, 3 is not complete")
	}
	if err := m.Advance(eos); !errors.Is(err, ErrRejected) {
		t.Fatalf("EOS before the end: %v", err)
	}
	if err := m.Advance(id("]")); err != nil {
		t.Fatal(err)
	}
	m.FillMask(mask)
	if !m.CanEnd() || !has(eos) || has(id(", ")) {
		t.Fatal("after ]: only EOS")
	}
	if err := m.Advance(eos); err != nil || !m.IsTerminated() {
		t.Fatalf("EOS: %v", err)
	}
	m.FillMask(mask)
	if len(allowed(mask)) != 0 {
		t.Fatal("after EOS nothing is allowed")
	}
	if err := m.Advance(id("1")); !errors.Is(err, ErrRejected) {
		t.Fatal("after EOS: want ErrRejected")
	}
	// The clone kept its own state: "[12, 3" can go on with "4" but not ", " (maxItems).
	if err := c.Advance(id("4")); err != nil {
		t.Fatalf("clone: %v", err)
	}
	if err := c.Advance(id(", ")); !errors.Is(err, ErrRejected) {
		t.Fatal("clone: a third item must be rejected")
	}
	m.Reset()
	if m.IsTerminated() || m.CanEnd() {
		t.Fatal("Reset")
	}
	if err := m.FillMask(make([]uint32, 3)); err == nil {
		t.Fatal("a mask shorter than the vocabulary must be an error")
	}
	padded := make([]uint32, v.MaskWords()+2)
	for i := range padded {
		padded[i] = ^uint32(0)
	}
	if err := m.FillMask(padded); err != nil || padded[len(padded)-1] != 0 || !has2(padded, id("[")) {
		t.Fatalf("a longer mask: err %v, tail %x", err, padded[len(padded)-1])
	}
}

// TestConcurrentMatchers shares one grammar (and its lazily filled cache) between
// goroutines; run with -race to check the cache's synchronization.
func TestConcurrentMatchers(t *testing.T) {
	v := synthVocab(t)
	g := compileSchemaT(t, v, `{"type":"object","properties":{"a":{"type":"string","maxLength":5},"b":{"type":"number"}}}`, compact)
	want := func() [][]int32 {
		ref, _ := CompileJSONSchema(v, []byte(`{"type":"object","properties":{"a":{"type":"string","maxLength":5},"b":{"type":"number"}}}`), compact)
		return masksAlong(t, ref, `{"a": "xyz", "b": 1.5}`)
	}()
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got := masksAlong(t, g, `{"a": "xyz", "b": 1.5}`)
			for j := range want {
				if !equalIDs(got[j], want[j]) {
					t.Errorf("step %d: masks differ between goroutines", j)
					return
				}
			}
		}()
	}
	wg.Wait()
}

func has2(mask []uint32, id int32) bool { return mask[id>>5]&(1<<(id&31)) != 0 }

// masksAlong returns the allowed ids before each byte of text.
func masksAlong(t *testing.T, g *Grammar, text string) [][]int32 {
	m := g.NewMatcher()
	mask := make([]uint32, g.Vocabulary().MaskWords())
	var out [][]int32
	for i := 0; i < len(text); i++ {
		if err := m.FillMask(mask); err != nil {
			t.Error(err)
			return nil
		}
		out = append(out, allowed(mask))
		if err := m.AdvanceBytes([]byte{text[i]}); err != nil {
			t.Errorf("%q at %d: %v", text, i, err)
			return nil
		}
	}
	return out
}
