package engine

import (
	"strings"
	"testing"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/tpuserve/tpuserve/internal/backendtest"
	"github.com/tpuserve/tpuserve/model"
)

func draftConfig(k int) *SpeculativeConfig {
	return &SpeculativeConfig{Method: SpecMethodDraftModel, Model: "test draft", NumSpeculativeTokens: k}
}

// randomDraft is a model of the fixture's vocabulary with other (random) weights and
// layers: a draft that rarely agrees with the target.
func randomDraft(t testing.TB, mutate func(*model.Config)) *model.Model {
	t.Helper()
	cfg := tinyFixture(t).Config
	cfg.NumHiddenLayers = 3 // sliding, sliding, global
	cfg.LayerTypes = append([]string(nil), cfg.LayerTypes[:3]...)
	if mutate != nil {
		mutate(&cfg)
	}
	w, err := model.RandomWeights(&cfg, dtypes.Float32, 11)
	if err != nil {
		t.Fatal(err)
	}
	m, err := model.New(backendtest.Backend(t), cfg, w)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	return m
}

// TestDraftModelGreedyMatchesPlain: with a draft model, greedy tokens and logprobs equal the
// plain engine's — alone (12 requests) and among 64 concurrent requests with chunked prefill, preemption
// and prefix hits; with the target as its own draft every proposal is accepted, with a
// random draft few are and the output is still the same. Blocks all return to the pools.
func TestDraftModelGreedyMatchesPlain(t *testing.T) {
	m := tinyFixture(t)
	allJobs, plain := plainSpecRuns(t)
	for _, sc := range []struct {
		name       string
		draft      *model.Model
		concurrent bool
		jobs       int
		mutate     func(*Config)
	}{
		{"self draft, alone", m, false, 12, nil},
		{"self draft, mixed", m, true, 64, func(c *Config) { c.Scheduler.MaxNumBatchedTokens = 64; c.SegmentLen = 8; c.KVCacheBytes = 640 << 10 }},
		{"random draft, concurrent", randomDraft(t, nil), true, 24, nil},
	} {
		t.Run(sc.name, func(t *testing.T) {
			jobs := allJobs[:sc.jobs]
			e := newTestEngineOn(t, m, func(c *Config) {
				c.Speculative, c.DraftModel = draftConfig(3), sc.draft
				if sc.mutate != nil {
					sc.mutate(c)
				}
			})
			got := map[string]result{}
			chans := map[string]<-chan Event{}
			for _, j := range jobs {
				if sc.concurrent {
					chans[j.id] = submit(t, e, j.id, j.prompt, greedyParams(j.max))
				} else {
					got[j.id] = collect(t, submit(t, e, j.id, j.prompt, greedyParams(j.max)))
				}
			}
			for id, ch := range chans {
				got[id] = collect(t, ch)
			}
			checkHF(t, sc.name, got)
			for _, j := range jobs {
				if ok, why := sameResult(got[j.id], plain[j.id]); !ok {
					t.Errorf("%s: with the draft differs from plain: %s", j.id, why)
				}
			}
			st := e.Stats()
			t.Logf("%s: drafts %d, proposals %d, accepted %d (%.3f), per position %v; preemptions %d, prefix hits %d", sc.name, st.Spec.NumDrafts,
				st.Spec.NumDraftTokens, st.Spec.NumAcceptedTokens, st.Spec.AcceptanceRate(), st.Spec.AcceptedPerPos, st.NumPreemptions, st.PrefixCacheHits)
			switch {
			case st.Spec.NumDrafts == 0:
				t.Errorf("no verification ran")
			case sc.draft == m && st.Spec.NumAcceptedTokens != st.Spec.NumDraftTokens:
				t.Errorf("the target as its own draft: %d of %d proposals accepted, want all", st.Spec.NumAcceptedTokens, st.Spec.NumDraftTokens)
			case sc.draft != m && st.Spec.AcceptanceRate() > 0.5:
				t.Errorf("a random draft had %.2f of its proposals accepted", st.Spec.AcceptanceRate())
			}
			if strings.Contains(sc.name, "mixed") && (st.NumPreemptions == 0 || st.PrefixCacheHits == 0) {
				t.Errorf("mixed: %d preemptions, %d prefix hits; want both", st.NumPreemptions, st.PrefixCacheHits)
			}
		})
	}
}

// TestDraftModelErrors: a draft with another vocabulary, a longer sliding window, or whose
// pools do not fit the KV budget is refused at start-up, naming the problem.
func TestDraftModelErrors(t *testing.T) {
	m := tinyFixture(t)
	for _, tc := range []struct {
		name   string
		draft  *model.Model
		budget int64
		want   string
	}{
		{"vocabulary", randomDraft(t, func(c *model.Config) { c.VocabSize, c.TextVocabSize = 640, 640 }), 0, "vocabulary (640 rows, 640 text tokens) differs from the target's (512, 512)"},
		{"window", randomDraft(t, func(c *model.Config) { c.SlidingWindow *= 2 }), 0, "sliding window"},
		{"memory", m, 24 << 10, "the draft model does not fit the memory plan"},
	} {
		e, err := New(Config{
			Model: m, NewDecoder: func(skip bool) StreamDecoder { return &textDecoder{skip: skip} },
			Scheduler: SchedulerConfig{MaxNumSeqs: 8, MaxNumBatchedTokens: 64, MaxModelLen: 128}, PageSize: 8,
			Precompile: PrecompileNone, Speculative: draftConfig(2), DraftModel: tc.draft, KVCacheBytes: tc.budget, Logger: discardLogger(),
		})
		if err == nil {
			e.Close()
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error containing %q", tc.name, err, tc.want)
		}
	}
}
