package engine

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/tpuserve/tpuserve/model"
)

func ngramConfig(k int) *SpeculativeConfig {
	return &SpeculativeConfig{Method: SpecMethodNgram, NumSpeculativeTokens: k, PromptLookupMax: 3, PromptLookupMin: 1}
}

// specJob is one request of the speculation tests.
type specJob struct {
	id     string
	prompt []int32
	max    int
}

// specJobs are the HF greedy prompts, repetitive prompts (n-gram hits) and random ones of
// mixed lengths, a third sharing a prefix (prefix-cache hits).
func specJobs(t *testing.T, n int) []specJob {
	golden := readGreedyGolden(t, engineFixtures[0])
	var jobs []specJob
	for i, g := range golden {
		jobs = append(jobs, specJob{fmt.Sprintf("hf%d", i), g.Prompt, len(g.Greedy)})
	}
	rng := rand.New(rand.NewPCG(3, 4))
	shared := []int32{2}
	for len(shared) < 40 {
		shared = append(shared, int32(3+rng.IntN(500)))
	}
	for len(jobs) < n {
		p := []int32{2}
		switch len(jobs) % 3 {
		case 0:
			p = append(append([]int32(nil), shared...), int32(3+rng.IntN(500)))
		case 1: // a repeated phrase: prompt lookup finds it
			phrase := []int32{int32(3 + rng.IntN(500)), int32(3 + rng.IntN(500)), int32(3 + rng.IntN(500))}
			for len(p) < 4+rng.IntN(40) {
				p = append(p, phrase...)
			}
		default:
			for l := 1 + rng.IntN(70); len(p) < l; {
				p = append(p, int32(3+rng.IntN(500)))
			}
		}
		jobs = append(jobs, specJob{fmt.Sprintf("r%d", len(jobs)), p, 1 + rng.IntN(30)})
	}
	return jobs
}

// checkHF compares the hf* results with HF's greedy runs wherever the margin is clear.
func checkHF(t *testing.T, who string, res map[string]result) {
	t.Helper()
	for i, g := range readGreedyGolden(t, engineFixtures[0]) {
		got := res[fmt.Sprintf("hf%d", i)].tokens
		for s, want := range g.Greedy {
			if g.Margins[s] <= 1e-3 {
				break
			}
			if s >= len(got) || got[s] != want {
				t.Fatalf("%s: HF greedy run %d step %d: %v, HF %d", who, i, s, got, want)
			}
		}
	}
}

var (
	plainSpecOnce sync.Once
	plainSpecJobs []specJob
	plainSpec     map[string]result
)

// plainSpecRuns are specJobs(64) and their greedy results without speculation, alone on a
// roomy cache (computed once for the n-gram and the draft-model tests).
func plainSpecRuns(t *testing.T) ([]specJob, map[string]result) {
	plainSpecOnce.Do(func() {
		jobs := specJobs(t, 64)
		e := newTestEngineOn(t, tinyFixture(t), nil)
		res := map[string]result{}
		for _, j := range jobs {
			res[j.id] = collect(t, submit(t, e, j.id, j.prompt, greedyParams(j.max)))
		}
		plainSpecJobs, plainSpec = jobs, res
	})
	if plainSpec == nil {
		t.Fatal("the plain reference runs failed")
	}
	return plainSpecJobs, plainSpec
}

// TestSpeculativeGreedyMatchesPlain: with n-gram speculation every request's greedy tokens
// and logprobs equal those of the same engine without it (within 1e-5) — alone, among 64
// concurrent requests of mixed lengths, with chunked prefill, with preemption forced by a
// tiny cache and with prefix hits — and HF's greedy runs; proposals are accepted, and
// every block is back in its pool (newTestEngineOn's cleanup).
func TestSpeculativeGreedyMatchesPlain(t *testing.T) {
	m := tinyFixture(t)
	jobs, plain := plainSpecRuns(t)
	checkHF(t, "plain engine", plain)
	for _, sc := range []struct {
		name       string
		concurrent bool
		mutate     func(*Config)
	}{
		{"alone", false, nil},
		{"concurrent", true, nil},
		// Chunked prefill, and preemption forced by a tiny cache.
		{"mixed", true, func(c *Config) { c.Scheduler.MaxNumBatchedTokens = 64; c.SegmentLen = 8; c.KVCacheBytes = 512 << 10 }},
		// Tensor parallelism on a virtual mesh: the verifier works on vocabulary shards.
		{"tp2", true, func(c *Config) { c.Model, c.Sharded = nil, shardedFixture(t, 2) }},
	} {
		t.Run(sc.name, func(t *testing.T) {
			e := newTestEngineOn(t, m, func(c *Config) {
				c.Speculative = ngramConfig(4)
				if sc.mutate != nil {
					sc.mutate(c)
				}
			})
			got := map[string]result{}
			if sc.concurrent {
				chans := map[string]<-chan Event{}
				for _, j := range jobs {
					chans[j.id] = submit(t, e, j.id, j.prompt, greedyParams(j.max))
				}
				for _, j := range jobs {
					got[j.id] = collect(t, chans[j.id])
				}
			} else {
				for _, j := range jobs {
					got[j.id] = collect(t, submit(t, e, j.id, j.prompt, greedyParams(j.max)))
				}
			}
			checkHF(t, "speculative engine", got)
			for _, j := range jobs {
				if ok, why := sameResult(got[j.id], plain[j.id]); !ok {
					t.Errorf("%s: speculative differs from plain: %s", j.id, why)
				}
				if f := got[j.id].final; f.FinishReason != FinishLength || f.NumOutputTokens != j.max {
					t.Errorf("%s: final %+v", j.id, f)
				}
			}
			st := e.Stats()
			if st.Spec.NumAcceptedTokens == 0 || st.Spec.NumDrafts == 0 {
				t.Errorf("no proposal accepted: %+v", st.Spec)
			}
			if sc.name == "mixed" && st.NumPreemptions == 0 {
				t.Errorf("the tiny cache forced no preemption")
			}
			if sc.concurrent && st.PrefixCacheHits == 0 {
				t.Errorf("no prefix-cache hit")
			}
			t.Logf("%s: drafts %d, proposals %d, accepted %d (%.2f), per position %v", sc.name, st.Spec.NumDrafts,
				st.Spec.NumDraftTokens, st.Spec.NumAcceptedTokens, st.Spec.AcceptanceRate(), st.Spec.AcceptedPerPos)
		})
	}
}

// TestSpeculativeConfigErrors: a bad --speculative-config is refused at start-up with an
// error naming what is wrong.
func TestSpeculativeConfigErrors(t *testing.T) {
	for _, tc := range []struct{ json, want string }{
		{`{"method":"medusa","num_speculative_tokens":3}`, `unknown method "medusa"`},
		{`{"num_speculative_tokens":3}`, "method is required"},
		{`{"method":"ngram","num_speculative_tokens":0}`, "num_speculative_tokens 0 must be > 0"},
		{`{"method":"ngram","num_speculative_tokens":-2}`, "num_speculative_tokens -2 must be > 0"},
		{`{"method":"ngram","num_speculative_tokens":3,"prompt_lookup_min":4,"prompt_lookup_max":2}`, "prompt_lookup_min 4 and prompt_lookup_max 2"},
		{`{"method":"ngram","num_speculative_tokens":3,"lookahead":2}`, `unknown field "lookahead"`},
		{`{"method":"ngram","num_speculative_tokens":"3"}`, "num_speculative_tokens"},
		{`{"method":"draft_model","num_speculative_tokens":3}`, "method draft_model needs a model"},
		{`{"method":"draft_model","model":"tiny","num_speculative_tokens":3,"prompt_lookup_max":2}`, "prompt_lookup_max and prompt_lookup_min are for method ngram"},
	} {
		_, err := ParseSpeculativeConfig(tc.json)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, ErrInvalidRequest) {
			t.Errorf("%s: error %v, want one containing %q", tc.json, err, tc.want)
		}
	}
	c, err := ParseSpeculativeConfig(`{"method":"ngram","num_speculative_tokens":3,"prompt_lookup_max":4}`)
	if err != nil || c.PromptLookupMin != 4 || c.PromptLookupMax != 4 {
		t.Errorf("defaults: %+v, %v", c, err)
	}
	// K too large for the program set: a verification must fit one attention row.
	_, err = New(Config{
		Model: tinyFixture(t), NewDecoder: func(skip bool) StreamDecoder { return &textDecoder{skip: skip} },
		Scheduler: SchedulerConfig{MaxNumSeqs: 8, MaxNumBatchedTokens: 64, MaxModelLen: 128}, PageSize: 8,
		SegmentLen: 8, Precompile: PrecompileNone, Speculative: ngramConfig(8), Logger: discardLogger(),
	})
	if err == nil || !strings.Contains(err.Error(), "num_speculative_tokens 8") || !strings.Contains(err.Error(), "SegmentLen") {
		t.Errorf("K = 8 with SegmentLen 8: %v", err)
	}
}

// TestNgramProposer pins prompt lookup: the longest matching suffix, its latest earlier
// occurrence, at most k proposals, none without a match.
func TestNgramProposer(t *testing.T) {
	p := ngramProposer(1, 3)
	for _, tc := range []struct {
		tokens []int32
		k      int
		want   []int32
	}{
		{[]int32{1, 2, 3, 4, 1, 2, 3}, 2, []int32{4, 1}},             // suffix 1 2 3 at 0
		{[]int32{5, 9, 7, 1, 2, 8, 1, 2}, 3, []int32{8, 1, 2}},       // 1 2 at 3
		{[]int32{1, 2, 3, 9, 3}, 4, []int32{9, 3}},                   // 1-gram 3, cut at the end
		{[]int32{1, 2, 3, 4}, 3, nil},                                // no repeat
		{[]int32{7, 7, 7, 7}, 2, []int32{7}},                         // 3-gram at 0, one token after
		{[]int32{7, 7, 7, 7, 7, 7, 7}, 3, []int32{7, 7, 7}},          // a loop: an occurrence with k after it
		{[]int32{1, 2, 9, 1, 2, 8, 8, 1, 2}, 2, []int32{8, 8}},       // the latest with k after it
		{[]int32{1, 2, 9, 4, 1, 2, 8, 1, 2}, 4, []int32{9, 4, 1, 2}}, // none with k after: the earliest...
		{[]int32{4, 5, 6, 4, 5, 6, 4, 5}, 5, []int32{6, 4, 5}},       // the 3-gram 6 4 5 at 2
	} {
		got := p(tc.tokens, tc.k)
		if fmt.Sprint(got) != fmt.Sprint(tc.want) && !(len(got) == 0 && len(tc.want) == 0) {
			t.Errorf("%v k=%d: %v, want %v", tc.tokens, tc.k, got, tc.want)
		}
	}
}

// TestSpeculativeStopsAndLimits: stop token ids, EOS, stop strings, min_tokens, max_tokens
// and max_model_len end a speculating request exactly where plain decoding ends it — the
// same tokens, text, logprobs, finish and stop reasons and token counts — including when
// the stop falls inside an accepted run; blocks are all back at teardown.
func TestSpeculativeStopsAndLimits(t *testing.T) {
	m := tinyFixture(t)
	limits := func(c *Config) { c.Scheduler.MaxModelLen = 48 }
	plainE := newTestEngineOn(t, m, limits)
	specE := newTestEngineOn(t, m, func(c *Config) { limits(c); c.Speculative = ngramConfig(4) })
	prompts := [][]int32{{2, 10, 20, 30}, {2, 7, 8, 9, 7, 8, 9, 7, 8}}
	long := []int32{2}
	for len(long) < 36 {
		long = append(long, int32(40+len(long)%5))
	}
	prompts = append(prompts, long)
	// HF's first greedy run loops on one token: stops land inside accepted runs.
	prompts = append(prompts, readGreedyGolden(t, engineFixtures[0])[0].Prompt)
	n := 0
	for pi, prompt := range prompts {
		base := collect(t, submit(t, plainE, fmt.Sprint("base", pi), prompt, greedyParams(24)))
		t.Logf("prompt %d: plain output %v", pi, base.tokens)
		mid := base.tokens[min(6, len(base.tokens)-1)]
		midText := fmt.Sprintf("<%d>", mid)
		pair := fmt.Sprintf("<%d><%d>", base.tokens[min(3, len(base.tokens)-1)], base.tokens[min(4, len(base.tokens)-1)])
		for _, tc := range []struct {
			name   string
			mutate func(p *SamplingParams)
		}{
			{"max_tokens", func(p *SamplingParams) { p.MaxTokens = 7 }},
			{"max_model_len", func(p *SamplingParams) { p.MaxTokens = 40 }},
			{"stop token id", func(p *SamplingParams) { p.StopTokenIDs = []int32{mid} }},
			{"stop token id after min_tokens", func(p *SamplingParams) { p.StopTokenIDs = []int32{mid}; p.MinTokens = 9 }},
			{"stop string", func(p *SamplingParams) { p.Stop = []string{midText} }},
			{"stop string across tokens", func(p *SamplingParams) { p.Stop = []string{pair}; p.IncludeStopStrInOutput = true }},
			// Seven tokens' text: it first ends at the seventh token, inside a run.
			{"stop string inside a run", func(p *SamplingParams) { p.Stop = []string{strings.Join(texts(base.tokens[:7]), "")} }},
			{"eos", func(p *SamplingParams) { p.IgnoreEOS = false }},
		} {
			p := greedyParams(24)
			tc.mutate(&p)
			eos := tc.name == "eos"
			for _, e := range []*Engine{plainE, specE} {
				e.mu.Lock()
				if eos {
					e.eos[mid] = true
				} else {
					delete(e.eos, mid)
				}
				e.mu.Unlock()
			}
			id := fmt.Sprintf("p%d %s", pi, tc.name)
			want := collect(t, submit(t, plainE, id, prompt, p))
			got := collect(t, submit(t, specE, id, prompt, p))
			n++
			if ok, why := sameResult(got, want); !ok || got.text != want.text || got.final.FinishReason != want.final.FinishReason ||
				fmt.Sprint(got.final.StopReason) != fmt.Sprint(want.final.StopReason) || got.final.NumOutputTokens != want.final.NumOutputTokens {
				t.Errorf("%s: speculative %v %q %s/%v (%d tokens), plain %v %q %s/%v (%d): %s", id, got.tokens, got.text, got.final.FinishReason,
					got.final.StopReason, got.final.NumOutputTokens, want.tokens, want.text, want.final.FinishReason, want.final.StopReason, want.final.NumOutputTokens, why)
			}
		}
	}
	if st := specE.Stats().Spec; st.NumAcceptedTokens == 0 {
		t.Errorf("no proposal accepted in %d requests: %+v", n, st)
	}
}

// TestSpeculativeSeededSampling: with speculation, a seeded request samples the same tokens
// alone and among other requests (with top-k/top-p and penalties too), and another seed
// samples others.
func TestSpeculativeSeededSampling(t *testing.T) {
	e := newTestEngineOn(t, tinyFixture(t), func(c *Config) { c.Speculative = ngramConfig(3) })
	prompt := []int32{2, 7, 8, 9, 7, 8, 9, 7, 8, 9, 7, 8}
	params := func(seed int64, full bool) SamplingParams {
		p := DefaultSamplingParams()
		p.Temperature, p.MaxTokens, p.Seed, p.IgnoreEOS = 0.7, 24, &seed, true
		if full {
			p.TopK, p.TopP, p.PresencePenalty = 40, 0.9, 0.2
		}
		return p
	}
	for _, full := range []bool{false, true} {
		alone := collect(t, submit(t, e, "alone", prompt, params(7, full)))
		var chans []<-chan Event
		for i := 0; i < 8; i++ {
			chans = append(chans, submit(t, e, fmt.Sprint("other", i), append(prompt[:4:4], int32(40+i)), params(int64(100+i), !full)))
		}
		batched := collect(t, submit(t, e, "batched", prompt, params(7, full)))
		for _, ch := range chans {
			collect(t, ch)
		}
		if fmt.Sprint(alone.tokens) != fmt.Sprint(batched.tokens) {
			t.Errorf("full %v, seed 7: alone %v, batched %v", full, alone.tokens, batched.tokens)
		}
		other := collect(t, submit(t, e, "seed8", prompt, params(8, full)))
		if fmt.Sprint(alone.tokens) == fmt.Sprint(other.tokens) {
			t.Errorf("full %v: seeds 7 and 8 gave the same tokens %v", full, other.tokens)
		}
	}
	if st := e.Stats().Spec; st.NumDrafts == 0 {
		t.Errorf("no verification ran: %+v", st)
	}
	t.Logf("%+v", e.Stats().Spec)
}

// TestSpeculativeSamplingDistribution: on a model with a vocabulary of 16, the tokens a
// request emits with speculation (the model as its own draft) follow the same distribution
// as without it: over 800 seeded requests per engine (temperature 0.55), a two-sample χ²
// over output positions 1..3. The ablation breaks the residual draw in the
// engine's verifier (the token after a rejection drawn from p, not max(p − q, 0)) and must
// be caught.
func TestSpeculativeSamplingDistribution(t *testing.T) {
	small := randomDraft(t, func(c *model.Config) { c.VocabSize, c.TextVocabSize = 16, 16 })
	prompt := []int32{2, 9, 10, 9, 10, 9, 10, 9, 10, 9}
	const draws, positions = 800, 4
	sample := func(t *testing.T, mutate func(*Config)) ([positions][16]int, SpecStats) {
		e := newTestEngineOn(t, small, func(c *Config) {
			c.NewDecoder = func(skip bool) StreamDecoder { return &textDecoder{skip: skip, vocab: 16} }
			if mutate != nil {
				mutate(c)
			}
		})
		var counts [positions][16]int
		for start := 0; start < draws; start += 100 {
			var chans []<-chan Event
			for i := start; i < start+100; i++ {
				seed := int64(i)
				p := DefaultSamplingParams()
				p.Temperature, p.MaxTokens, p.IgnoreEOS, p.Seed, p.SkipSpecialTokens = 0.55, positions, true, &seed, false
				chans = append(chans, submit(t, e, fmt.Sprint("s", i), prompt, p))
			}
			for _, ch := range chans {
				r := collect(t, ch)
				for j, tok := range r.tokens {
					counts[j][tok]++
				}
			}
		}
		return counts, e.Stats().Spec
	}
	chi2 := func(a, b [16]int) float64 {
		x := 0.0
		for v := range a {
			if n := a[v] + b[v]; n > 0 {
				d := float64(a[v] - b[v])
				x += d * d / float64(n)
			}
		}
		return x
	}
	plain, _ := sample(t, nil)
	// The model as its own draft proposes its argmax: a likely token, so rejections are
	// frequent and the residual matters (with n-gram proposals of a random model p(d) is
	// mostly tiny, and so is the ablation's effect, p(d)(1 − p(d))).
	spec := func(c *Config) { c.Speculative, c.DraftModel = draftConfig(3), small }
	withSpec, st := sample(t, spec)
	broken, _ := sample(t, func(c *Config) { spec(c); c.verify.breakResidual = true })
	t.Logf("speculation: %d drafts, %d proposals, %d accepted", st.NumDrafts, st.NumDraftTokens, st.NumAcceptedTokens)
	if st.NumDraftTokens-st.NumAcceptedTokens < draws/4 {
		t.Fatalf("only %d rejections: the test cannot see the residual draw", st.NumDraftTokens-st.NumAcceptedTokens)
	}
	// Positions 1..3 together (position 0 is sampled at the prefill, never speculated):
	// df ≤ 45, threshold 100 (p < 1e-6 for a correct sampler; the draws are seeded, so the
	// outcome is reproducible).
	var x, xb float64
	for j := 1; j < positions; j++ {
		x += chi2(plain[j], withSpec[j])
		xb += chi2(plain[j], broken[j])
		t.Logf("position %d: χ² %.1f with speculation, %.1f with the broken residual", j, chi2(plain[j], withSpec[j]), chi2(plain[j], broken[j]))
	}
	if x > 100 {
		t.Errorf("emitted tokens with speculation differ from plain sampling: χ² %.1f > 100 (%v vs %v)", x, withSpec, plain)
	}
	if xb <= 100 {
		t.Errorf("the broken residual passed (χ² %.1f ≤ 100): the test cannot tell", xb)
	}
}

// ngramReference is prompt lookup written the direct way: for n from lookupMax down, the
// latest earlier occurrence of the n-token suffix with k tokens after it, else the earliest.
func ngramReference(tokens []int32, lookupMin, lookupMax, k int) []int32 {
	L := len(tokens)
	for n := min(lookupMax, L-1); n >= lookupMin; n-- {
		suffix := tokens[L-n:]
		match := func(i int) bool { return slices.Equal(tokens[i:i+n], suffix) }
		for i := L - n - k; i >= 0; i-- {
			if match(i) {
				return tokens[i+n : i+n+k]
			}
		}
		for i := 0; i < L-n; i++ {
			if match(i) {
				return tokens[i+n:]
			}
		}
	}
	return nil
}

// TestNgramProposerMatchesReference: the one-pass proposer equals the direct definition on
// random token strings over small alphabets (many repeats).
func TestNgramProposerMatchesReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	for trial := 0; trial < 3000; trial++ {
		lo := 1 + rng.IntN(3)
		hi := lo + rng.IntN(3)
		k := 1 + rng.IntN(5)
		toks := make([]int32, 1+rng.IntN(40))
		for i := range toks {
			toks[i] = int32(rng.IntN(2 + trial%5))
		}
		got, want := ngramProposer(lo, hi)(toks, k), ngramReference(toks, lo, hi, k)
		if !slices.Equal(got, want) {
			t.Fatalf("%v lookup %d..%d k=%d: %v, want %v", toks, lo, hi, k, got, want)
		}
	}
}
