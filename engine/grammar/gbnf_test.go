package grammar

import (
	"errors"
	"math/rand"
	"testing"
)

func TestGBNF(t *testing.T) {
	v := synthVocab(t)
	tests := []struct {
		src            string
		accept, reject []string
	}{
		{`root ::= "a" b* "c"
b ::= "b"`, []string{"ac", "abbc"}, []string{"a", "abd"}},
		{`root ::= list
list ::= "[" (item ("," item)*)? "]"   # a comment
item ::= [0-9]+ | list`, []string{"[]", "[1,22]", "[[1],[]]"}, []string{"[1,]", "[a]"}},
		{`root ::= [^a-c\n]{2,3}`, []string{"de", "déf"}, []string{"a", "dddd", "d\n"}},
		{`root ::= "x" ( "y"
  | "z" ) .`, []string{"xya", "xz日"}, []string{"xy"}},
		{`root ::= "\x41\u00e9\"" [\]]`, []string{`Aé"]`}, []string{`A`}},
	}
	rng := rand.New(rand.NewSource(3))
	for _, tc := range tests {
		g, err := CompileGBNF(v, tc.src)
		if err != nil {
			t.Fatalf("%s: %v", tc.src, err)
		}
		for _, s := range tc.accept {
			if !matchText(g, s) {
				t.Errorf("%s: should accept %q", tc.src, s)
			}
		}
		for _, s := range tc.reject {
			if matchText(g, s) {
				t.Errorf("%s: should reject %q", tc.src, s)
			}
		}
		for i := 0; i < 5; i++ {
			randomWalk(t, g, rng, 20, true)
		}
	}
}

func TestGBNFErrors(t *testing.T) {
	v := synthVocab(t)
	for _, src := range []string{
		`root ::= "a`,        // unterminated
		`root ::= undefined`, // undefined rule
		`start ::= "a"`,      // no root
		`root ::= root "a" | "b"`,
		`root ::= [b-a]`,
		`root ::= "a"{3,1}`,
		`root ::= "a"
root ::= "b"`,
	} {
		if _, err := CompileGBNF(v, src); !errors.Is(err, ErrInvalidGrammar) {
			t.Errorf("%q: got %v, want ErrInvalidGrammar", src, err)
		}
	}
}

func TestCache(t *testing.T) {
	v := synthVocab(t)
	c := NewCache(v, 2)
	a1, err := c.JSONSchema([]byte(`{"type":"string"}`), compact)
	if err != nil {
		t.Fatal(err)
	}
	a2, _ := c.JSONSchema([]byte(`{"type":"string"}`), compact)
	if a1 != a2 {
		t.Error("same schema and options: want the cached grammar")
	}
	b, _ := c.JSONSchema([]byte(`{"type":"string"}`))
	if b == a1 {
		t.Error("other options: want another grammar")
	}
	if _, err := c.JSONSchema([]byte(`{"not":{"required":["a"]}}`)); !errors.Is(err, ErrUnsupported) {
		t.Errorf("errors are returned from the cache too: %v", err)
	}
	if c.Len() != 2 {
		t.Errorf("Len %d, want 2 (bounded)", c.Len())
	}
	if a3, _ := c.JSONSchema([]byte(`{"type":"string"}`), compact); a3 == a1 {
		t.Error("evicted entry came back without recompiling")
	}
	if g, err := c.Regex("a+"); err != nil || !matchText(g, "aa") {
		t.Errorf("Regex: %v", err)
	}
	if g, err := c.Choice([]string{"x", "y"}); err != nil || !matchText(g, "y") {
		t.Errorf("Choice: %v", err)
	}
	if g, err := c.GBNF(`root ::= "q"`); err != nil || !matchText(g, "q") {
		t.Errorf("GBNF: %v", err)
	}
}
