package engine

import (
	"fmt"
	"regexp"
	"testing"

	"github.com/tpuserve/tpuserve/engine/grammar"
)

// fixtureVocabulary is the grammar vocabulary of the test decoder: token t reads "<t>",
// ids 0–3 are control tokens, EOS is 1.
func fixtureVocabulary(t *testing.T) *grammar.Vocabulary {
	t.Helper()
	tokens := make([][]byte, 512)
	for id := 4; id < 512; id++ {
		tokens[id] = []byte(fmt.Sprintf("<%d>", id))
	}
	v, err := grammar.NewVocabulary(tokens, []int32{1})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestGrammarMaskOnDevice: requests constrained by a choice list or a regex produce only
// text the grammar accepts — sampled at temperature 1 with seeds, greedy, next to
// unconstrained requests in the same steps — and end with EOS when the grammar completes;
// an unconstrained request beside them is unaffected (the same tokens alone and batched).
func TestGrammarMaskOnDevice(t *testing.T) {
	v := fixtureVocabulary(t)
	choice, err := grammar.CompileChoice(v, []string{"<10><20>", "<30>", "<40><41><42>"})
	if err != nil {
		t.Fatal(err)
	}
	re, err := grammar.CompileRegex(v, `(<1[0-9]>){2,4}`)
	if err != nil {
		t.Fatal(err)
	}
	e := newTestEngine(t, nil)
	free := greedyParams(12)
	alone := collect(t, submit(t, e, "free-alone", vocabPrompt(1, 20), free))
	for _, tc := range []struct {
		name  string
		g     *grammar.Grammar
		match func(string) bool
	}{
		{"choice", choice, func(s string) bool { return s == "<10><20>" || s == "<30>" || s == "<40><41><42>" }},
		{"regex", re, regexp.MustCompile(`^(<1[0-9]>){2,4}$`).MatchString},
	} {
		for seed := int64(0); seed < 6; seed++ {
			p := DefaultSamplingParams()
			p.MaxTokens, p.Grammar = 10, tc.g
			sd := seed
			p.Seed = &sd
			if seed == 0 {
				p.Temperature = 0
			}
			ch := submit(t, e, fmt.Sprintf("%s-%d", tc.name, seed), vocabPrompt(int(seed)+2, 9), p)
			beside := submit(t, e, fmt.Sprintf("free-%s-%d", tc.name, seed), vocabPrompt(1, 20), free)
			r := collect(t, ch)
			if r.final.FinishReason != FinishStop || !tc.match(r.text) {
				t.Errorf("%s seed %d: %q (%s), not a complete match", tc.name, seed, r.text, r.final.FinishReason)
			}
			if got := collect(t, beside); fmt.Sprint(got.tokens) != fmt.Sprint(alone.tokens) {
				t.Errorf("an unconstrained request beside the grammar changed: %v vs %v", got.tokens, alone.tokens)
			}
		}
	}
}
