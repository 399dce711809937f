package bench

import (
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestRandomDataset(t *testing.T) {
	tests := []struct {
		name                 string
		o                    RandomOptions
		inLo, inHi           int
		outLo, outHi, prefix int
	}{
		{"exact lengths", RandomOptions{NumPrompts: 50, InputLen: 128, OutputLen: 16, TokenLo: 256, TokenHi: 1000}, 128, 128, 16, 16, 0},
		{"range ratio", RandomOptions{NumPrompts: 400, InputLen: 100, OutputLen: 10, RangeRatio: 0.5, TokenLo: 10, TokenHi: 512}, 50, 150, 5, 15, 0},
		{"prefix", RandomOptions{NumPrompts: 20, InputLen: 30, OutputLen: 4, PrefixLen: 7, TokenLo: 256, TokenHi: 300}, 30, 30, 4, 4, 7},
		{"output floor", RandomOptions{NumPrompts: 200, InputLen: 20, OutputLen: 1, RangeRatio: 0.9, TokenLo: 0, TokenHi: 100}, 1, 38, 1, 2, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			reqs, err := RandomDataset(tc.o, rand.New(rand.NewPCG(1, 1)))
			if err != nil {
				t.Fatal(err)
			}
			if len(reqs) != tc.o.NumPrompts {
				t.Fatalf("%d requests", len(reqs))
			}
			sawIn := map[int]bool{}
			var firstPrefix []int
			for i, r := range reqs {
				ids, ok := r.Prompt.([]int)
				if !ok {
					t.Fatalf("prompt %T, want token ids", r.Prompt)
				}
				if r.PromptLen != len(ids) {
					t.Errorf("request %d: PromptLen %d for %d ids", i, r.PromptLen, len(ids))
				}
				in := len(ids) - tc.prefix
				sawIn[in] = true
				if in < tc.inLo || in > tc.inHi || r.ExpectedOutputLen < tc.outLo || r.ExpectedOutputLen > tc.outHi {
					t.Errorf("request %d: input %d (want %d..%d), output %d (want %d..%d)", i, in, tc.inLo, tc.inHi, r.ExpectedOutputLen, tc.outLo, tc.outHi)
				}
				for _, id := range ids {
					if id < tc.o.TokenLo || id >= tc.o.TokenHi {
						t.Fatalf("request %d: token %d outside [%d, %d)", i, id, tc.o.TokenLo, tc.o.TokenHi)
					}
				}
				// vLLM's sequence: consecutive ids (mod the range) after the prefix.
				vocab := tc.o.TokenHi - tc.o.TokenLo
				body := ids[tc.prefix:]
				for k := 1; k < len(body); k++ {
					if (body[k]-tc.o.TokenLo)%vocab != (body[k-1]-tc.o.TokenLo+1)%vocab {
						t.Fatalf("request %d: ids %d, %d are not consecutive", i, body[k-1], body[k])
					}
				}
				if i == 0 {
					firstPrefix = ids[:tc.prefix]
				} else if !slices.Equal(ids[:tc.prefix], firstPrefix) {
					t.Errorf("request %d: prefix %v differs from %v", i, ids[:tc.prefix], firstPrefix)
				}
			}
			if tc.inHi-tc.inLo >= 10 && len(sawIn) < 10 {
				t.Errorf("only %d distinct input lengths over a range of %d", len(sawIn), tc.inHi-tc.inLo+1)
			}
		})
	}
}

func TestRandomDatasetRefusesBadOptions(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    RandomOptions
		want string
	}{
		{"no prompts", RandomOptions{InputLen: 1, OutputLen: 1, TokenHi: 10}, "num-prompts"},
		{"ratio 1", RandomOptions{NumPrompts: 1, InputLen: 1, OutputLen: 1, RangeRatio: 1, TokenHi: 10}, "range-ratio"},
		{"zero output", RandomOptions{NumPrompts: 1, InputLen: 1, TokenHi: 10}, "random-output-len"},
		{"empty range", RandomOptions{NumPrompts: 1, InputLen: 1, OutputLen: 1, TokenLo: 5, TokenHi: 5}, "token-range"},
		{"empty prompt", RandomOptions{NumPrompts: 1, InputLen: 0, OutputLen: 1, TokenHi: 10}, "random-input-len"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := RandomDataset(tc.o, rand.New(rand.NewPCG(1, 1)))
			if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want ErrConfig naming %s", err, tc.want)
			}
		})
	}
}

func TestShareGPT(t *testing.T) {
	path := filepath.Join("testdata", "sharegpt_small.json")
	reqs, err := LoadShareGPT(ShareGPTOptions{Path: path, NumPrompts: 2}, rand.New(rand.NewPCG(1, 1)))
	if err != nil {
		t.Fatal(err)
	}
	prompts := map[string]bool{}
	for _, r := range reqs {
		p := r.Prompt.(string)
		prompts[p] = true
		if r.PromptLen != EstimateTokens(p) || r.ExpectedOutputLen < 4 {
			t.Errorf("request %+v", r)
		}
	}
	if !prompts["Explain in two sentences why the sky looks blue during the day."] ||
		!prompts["What does tensor parallelism split across the chips of a TPU slice?"] {
		t.Errorf("kept prompts %v, want the two qualifying conversations' first turns", prompts)
	}

	// More prompts than qualify: repeated; a fixed output length lets short answers in.
	reqs, err = LoadShareGPT(ShareGPTOptions{Path: path, NumPrompts: 7, OutputLen: 64}, rand.New(rand.NewPCG(1, 1)))
	if err != nil {
		t.Fatal(err)
	}
	if len(reqs) != 7 {
		t.Fatalf("%d requests, want 7", len(reqs))
	}
	for _, r := range reqs {
		if r.ExpectedOutputLen != 64 {
			t.Errorf("max_tokens %d, want the fixed 64", r.ExpectedOutputLen)
		}
		if strings.HasPrefix(r.Prompt.(string), "Hi") || strings.HasPrefix(r.Prompt.(string), "Write a haiku") {
			t.Errorf("kept %q, which vLLM skips", r.Prompt)
		}
	}

	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.json")
	os.WriteFile(bad, []byte(`{"not": "a list"}`), 0o644)
	none := filepath.Join(dir, "none.json")
	os.WriteFile(none, []byte(`[{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello there, friend"}]}]`), 0o644)
	for _, p := range []string{filepath.Join(dir, "missing.json"), bad, none} {
		if _, err := LoadShareGPT(ShareGPTOptions{Path: p, NumPrompts: 1}, rand.New(rand.NewPCG(1, 1))); !errors.Is(err, ErrConfig) {
			t.Errorf("%s: err = %v, want ErrConfig", filepath.Base(p), err)
		}
	}
}
