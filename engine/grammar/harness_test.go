package grammar

import (
	"math/rand"
	"sort"
	"strings"
	"testing"
)

// synthVocab is a small synthetic vocabulary: every printable ASCII byte, some multi-byte
// pieces that cross grammar boundaries, a few UTF-8 pieces, and EOS as id 0.
func synthVocab(t testing.TB) *Vocabulary {
	t.Helper()
	pieces := []string{"<eos>"}
	for c := 0x20; c < 0x7f; c++ {
		pieces = append(pieces, string(rune(c)))
	}
	pieces = append(pieces, "\n", "\t", "\\n", `\"`, `":`, `": `, `", "`, `"}`, `"]`, `{"`, `["`,
		"true", "false", "null", "tr", "ue", "nu", "ll", "12", "3.", ".5", "e+", "-1", "00",
		"name", "age", "abc", `"a`, `a"`, "é", "日本", "\xe6", "\x97\xa5", ", ", ": ", "}}", "]]", "},", "],", `{}`, `[]`)
	for c := 0x80; c < 0x100; c++ {
		pieces = append(pieces, string([]byte{byte(c)}))
	}
	tokens := make([][]byte, len(pieces))
	for i, p := range pieces {
		if i == 0 {
			continue
		}
		tokens[i] = []byte(p)
	}
	v, err := NewVocabulary(tokens, []int32{0})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// allowed lists the ids set in mask.
func allowed(mask []uint32) []int32 {
	var ids []int32
	for w, bits := range mask {
		for b := 0; b < 32; b++ {
			if bits&(1<<b) != 0 {
				ids = append(ids, int32(w*32+b))
			}
		}
	}
	return ids
}

// bruteAllowed is the reference mask: a token is allowed iff a clone accepts it.
func bruteAllowed(t testing.TB, m *Matcher) []int32 {
	t.Helper()
	var ids []int32
	v := m.g.vocab
	for id := 0; id < v.size; id++ {
		c := m.Clone()
		if c.Advance(int32(id)) == nil {
			ids = append(ids, int32(id))
		}
	}
	return ids
}

func equalIDs(a, b []int32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func idsText(v *Vocabulary, ids []int32) string {
	var s []string
	for _, id := range ids {
		if v.isEOS(id) {
			s = append(s, "<eos>")
		} else {
			s = append(s, string(v.tokens[id]))
		}
	}
	sort.Strings(s)
	return strings.Join(s, "|")
}

// matchText feeds text byte by byte and reports whether it is a complete match.
func matchText(g *Grammar, text string) bool {
	m := g.NewMatcher()
	if m.AdvanceBytes([]byte(text)) != nil {
		return false
	}
	return m.CanEnd()
}

// randomWalk samples tokens under the mask until EOS (or steps run out); it checks at
// every step that the mask equals the brute-force mask when check is set.
func randomWalk(t *testing.T, g *Grammar, rng *rand.Rand, steps int, check bool) (string, bool) {
	t.Helper()
	m := g.NewMatcher()
	mask := make([]uint32, g.vocab.MaskWords())
	var out []byte
	for i := 0; i < steps; i++ {
		if err := m.FillMask(mask); err != nil {
			t.Fatal(err)
		}
		ids := allowed(mask)
		if check {
			if want := bruteAllowed(t, m); !equalIDs(ids, want) {
				t.Fatalf("after %q: the mask has extra %s, lacks %s", out, idsText(g.vocab, minus(ids, want)), idsText(g.vocab, minus(want, ids)))
			}
		}
		if len(ids) == 0 {
			t.Fatalf("after %q: empty mask (dead end)", out)
		}
		// Prefer ending when possible half of the time, so walks finish.
		id := ids[rng.Intn(len(ids))]
		if m.CanEnd() && rng.Intn(2) == 0 {
			id = g.vocab.eos[0]
		}
		if err := m.Advance(id); err != nil {
			t.Fatalf("after %q: token %d in the mask but rejected: %v", out, id, err)
		}
		if m.IsTerminated() {
			return string(out), true
		}
		out = append(out, g.vocab.tokens[id]...)
	}
	return string(out), false
}

func minus(a, b []int32) []int32 {
	in := map[int32]bool{}
	for _, x := range b {
		in[x] = true
	}
	var out []int32
	for _, x := range a {
		if !in[x] {
			out = append(out, x)
		}
	}
	return out
}
