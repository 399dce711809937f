package engine

import (
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/gomlx/gomlx/pkg/core/tensors"

	"github.com/tpuserve/tpuserve/internal/backendtest"
	"github.com/tpuserve/tpuserve/model"
	"github.com/tpuserve/tpuserve/model/vision"
)

// imageRun is what one engine gives for the fixture's image requests: per sequence its
// prompt logprobs, and HF's greedy run with an image.
type imageRun struct {
	prompt [][]PositionLogprobs
	greedy result
}

// runImageRequests submits the fixture's three image sequences (prompt logprobs, one token)
// and its greedy run with an image, all at once with chunked prefill, and checks that
// nothing compiled while serving (the step programs nor the tower's).
func runImageRequests(t *testing.T, e *Engine) imageRun {
	t.Helper()
	_, enc, images := visionFixture(t)
	g := visionGolden(t)
	towerCompiles := enc.Compilations()
	plp := 0
	var chans []<-chan Event
	for i, seq := range g.Sequences {
		p := greedyParams(1)
		p.PromptLogprobs = &plp
		chans = append(chans, submitImages(t, e, fmt.Sprintf("img%d", i), seq.IDs, pick(images, seq.Images), p))
	}
	run := g.Greedy[0]
	greedy := submitImages(t, e, "greedy", run.Prompt, pick(images, run.Images), greedyParams(len(run.Tokens)))
	var out imageRun
	for _, ch := range chans {
		_, plps := collectPrompt(t, ch)
		out.prompt = append(out.prompt, plps)
	}
	out.greedy = collect(t, greedy)
	if st := e.Stats(); st.ServingCompilations != 0 {
		t.Errorf("%d programs compiled while serving", st.ServingCompilations)
	}
	if n := enc.Compilations() - towerCompiles; n != 0 {
		t.Errorf("the vision tower compiled %d programs while serving", n)
	}
	return out
}

// TestImagePromptsTP: image input under tensor parallelism (a virtual mesh on the pure-Go
// backend; the tower replicated, its features a replicated input of the chips' step
// program). The fixture's image sequences give the prompt logprobs of TP=1 within 1e-5 and
// HF's within 1e-3; the greedy run with an image gives TP=1's tokens and logprobs and HF's
// tokens wherever HF's top-1 margin exceeds 1e-3. TP=4 puts one query head on each chip
// (the fixture's 2 kv heads replicated on 2 chips each); TP=2 also with n-gram
// speculative decoding (the verifier on vocabulary shards after an image prefill).
func TestImagePromptsTP(t *testing.T) {
	g := visionGolden(t)
	golden, err := model.ReadSafetensors(filepath.Join(visionDir, "golden.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	V := fixtureModelAt(t, visionDir).Config.VocabSize
	ref := runImageRequests(t, newVisionEngine(t, nil))
	for _, tc := range []struct {
		name string
		tp   int
		spec bool
	}{{"tp2", 2, false}, {"tp4", 4, false}, {"tp2 n-gram speculation", 2, true}} {
		tp := tc.tp
		t.Run(tc.name, func(t *testing.T) {
			sm, err := model.LoadShardedModel(backendtest.Backend(t), model.LoadOptions{Model: visionDir, DType: dtypes.Float32, Progress: func(model.LoadProgress) {}}, tp)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(sm.Close)
			e := newVisionEngine(t, onSharded(sm, func(c *Config) {
				if tc.spec {
					c.Speculative = ngramConfig(4)
				}
			}))
			got := runImageRequests(t, e)
			if st := e.Stats().Spec; tc.spec {
				t.Logf("speculation: drafts %d, proposals %d, accepted %d", st.NumDrafts, st.NumDraftTokens, st.NumAcceptedTokens)
				if st.NumDrafts == 0 {
					t.Errorf("no proposal was verified: the case does not test speculation")
				}
			}
			for i, seq := range g.Sequences {
				logits := tensors.MustCopyFlatData[float32](golden[fmt.Sprintf("seq%d.logits_f32", i)])
				if len(got.prompt[i]) != len(seq.IDs)-1 {
					t.Fatalf("seq%d: %d prompt logprobs for %d tokens", i, len(got.prompt[i]), len(seq.IDs))
				}
				worstTP1, worstHF := 0.0, 0.0
				for p, lp := range got.prompt[i] {
					worstTP1 = math.Max(worstTP1, math.Abs(float64(lp.Chosen.Logprob-ref.prompt[i][p].Chosen.Logprob)))
					want := logSoftmaxAt(logits[p*V:(p+1)*V], int(seq.IDs[p+1]))
					worstHF = math.Max(worstHF, math.Abs(float64(lp.Chosen.Logprob)-want))
				}
				t.Logf("seq%d: max |Δ prompt logprob| vs TP=1 %.3g, vs HF %.3g", i, worstTP1, worstHF)
				if worstTP1 > 1e-5 {
					t.Errorf("seq%d: prompt logprobs differ from TP=1's by %g, want ≤ 1e-5", i, worstTP1)
				}
				if worstHF > 1e-3 {
					t.Errorf("seq%d: prompt logprobs differ from HF's by %g, want ≤ 1e-3", i, worstHF)
				}
			}
			if ok, why := sameResult(got.greedy, ref.greedy); !ok {
				t.Errorf("greedy run with an image, TP=%d vs TP=1: %s", tp, why)
			}
			run := g.Greedy[0]
			for s, want := range run.Tokens {
				if run.Margins[s] <= 1e-3 {
					break
				}
				if got.greedy.tokens[s] != want {
					t.Fatalf("greedy step %d: engine %d, HF %d (margin %.3g)", s, got.greedy.tokens[s], want, run.Margins[s])
				}
			}
		})
	}
}

// TestImageTPStartupErrors: a vision tower on another backend instance than the sharded
// model's is a start-up error naming both.
func TestImageTPStartupErrors(t *testing.T) {
	other, err := model.NewBackend("go")
	if err != nil {
		t.Fatal(err)
	}
	enc, err := vision.LoadEncoder(other, visionDir, dtypes.Float32)
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	sm, err := model.LoadShardedModel(backendtest.Backend(t), model.LoadOptions{Model: visionDir, DType: dtypes.Float32, Progress: func(model.LoadProgress) {}}, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer sm.Close()
	_, err = New(Config{Sharded: sm, Vision: enc, NewDecoder: func(skip bool) StreamDecoder { return &textDecoder{skip: skip} },
		Scheduler: SchedulerConfig{MaxNumSeqs: 4, MaxNumBatchedTokens: 48, MaxModelLen: 96}, PageSize: 8, Precompile: PrecompileNone})
	if !errors.Is(err, ErrInvalidRequest) || !strings.Contains(err.Error(), "vision tower is on another backend") {
		t.Errorf("tower on another backend: %v, want ErrInvalidRequest naming the backends", err)
	}
}
