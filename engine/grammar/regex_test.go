package grammar

import (
	"errors"
	"math/rand"
	"regexp"
	"testing"
)

func TestRegexMatches(t *testing.T) {
	v := synthVocab(t)
	tests := []struct {
		pattern string
		accept  []string
		reject  []string
	}{
		{`abc`, []string{"abc"}, []string{"ab", "abcd", ""}},
		{`a+b*`, []string{"a", "aab", "abbb"}, []string{"b", "", "aba"}},
		{`[0-9]{2,3}`, []string{"12", "123"}, []string{"1", "1234", "ab"}},
		{`(?i)ab`, []string{"ab", "AB", "aB"}, []string{"ac"}},
		{`.`, []string{"a", "é", "日"}, []string{"\n", "ab", ""}},
		{`[^a]`, []string{"b", "é"}, []string{"a", "bb"}},
		{`\d+(\.\d+)?`, []string{"1", "1.5"}, []string{"1.", ".5"}},
		{`^x|y$`, []string{"x", "y"}, []string{"xy"}},
		{`日本`, []string{"日本"}, []string{"日"}},
	}
	for _, tc := range tests {
		g, err := CompileRegex(v, tc.pattern)
		if err != nil {
			t.Fatalf("%q: %v", tc.pattern, err)
		}
		for _, s := range tc.accept {
			if !matchText(g, s) {
				t.Errorf("%q should accept %q", tc.pattern, s)
			}
		}
		for _, s := range tc.reject {
			if matchText(g, s) {
				t.Errorf("%q should reject %q", tc.pattern, s)
			}
		}
	}
}

func TestRegexMaskEqualsBruteForce(t *testing.T) {
	v := synthVocab(t)
	rng := rand.New(rand.NewSource(1))
	for _, p := range []string{`(ab|a)c*`, `[a-c]{1,4}\.5`, `"[a-z]*"`, `(true|tr)+`, `日本|é+`} {
		g, err := CompileRegex(v, p)
		if err != nil {
			t.Fatal(err)
		}
		re := regexp.MustCompile(`^(?:` + p + `)$`)
		for i := 0; i < 20; i++ {
			out, done := randomWalk(t, g, rng, 30, true)
			if done && !re.MatchString(out) {
				t.Fatalf("%q: produced %q, which Go's regexp rejects", p, out)
			}
		}
	}
}

func TestRegexErrors(t *testing.T) {
	v := synthVocab(t)
	for _, p := range []string{`(`, `a\bb`, `[z-a]`} {
		if _, err := CompileRegex(v, p); !errors.Is(err, ErrInvalidRegex) {
			t.Errorf("%q: got %v, want ErrInvalidRegex", p, err)
		}
	}
}

func TestChoice(t *testing.T) {
	v := synthVocab(t)
	g, err := CompileChoice(v, []string{"true", "trust", "false"})
	if err != nil {
		t.Fatal(err)
	}
	for s, want := range map[string]bool{"true": true, "trust": true, "false": true, "tru": false, "truex": false} {
		if got := matchText(g, s); got != want {
			t.Errorf("%q: got %v want %v", s, got, want)
		}
	}
	rng := rand.New(rand.NewSource(2))
	for i := 0; i < 10; i++ {
		randomWalk(t, g, rng, 10, true)
	}
}
