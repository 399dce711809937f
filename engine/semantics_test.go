package engine

import (
	"context"
	"fmt"
	"math"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/tpuserve/tpuserve/model"
)

// logSoftmax of one row of logits, in float64.
func logSoftmax(row []float32) []float64 {
	mx := math.Inf(-1)
	for _, v := range row {
		mx = math.Max(mx, float64(v))
	}
	var sum float64
	for _, v := range row {
		sum += math.Exp(float64(v) - mx)
	}
	out := make([]float64, len(row))
	for i, v := range row {
		out[i] = float64(v) - mx - math.Log(sum)
	}
	return out
}

// TestPromptLogprobsMatchHF: with prompt logprobs (top 5) and max_tokens 0 or 1, every
// prompt position after the first gets the log-softmax of Hugging Face's float32 logits of
// the position before it, for the prompt's actual token and for the top 5 — also when the
// prompt is scored in chunks (a small token budget) and next to other requests.
func TestPromptLogprobsMatchHF(t *testing.T) {
	golden, err := model.ReadSafetensors(filepath.Join(fixtureDir, "golden.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	for _, budget := range []int{256, 16} {
		e := newTestEngine(t, func(c *Config) {
			c.Scheduler.MaxNumBatchedTokens = budget
			c.Scheduler.MaxNumSeqs = 16
		})
		for i := 0; i < 5; i++ {
			ids := tensors.MustCopyFlatData[int32](golden[fmt.Sprintf("seq%d.ids", i)])
			logits := tensors.MustCopyFlatData[float32](golden[fmt.Sprintf("seq%d.logits_f32", i)])
			V := len(logits) / len(ids)
			for _, maxTokens := range []int{0, 1} {
				p := greedyParams(maxTokens)
				top := 5
				p.PromptLogprobs, p.Logprobs = &top, nil
				// Another request runs beside it.
				other := submit(t, e, fmt.Sprintf("other%d-%d-%d", budget, i, maxTokens), vocabPrompt(i, 30), greedyParams(5))
				ch := submit(t, e, fmt.Sprintf("p%d-%d-%d", budget, i, maxTokens), ids, p)
				var prompt []PositionLogprobs
				var final Event
				for ev := range ch {
					prompt = append(prompt, ev.PromptLogprobs...)
					if ev.Finished || ev.Err != nil {
						final = ev
					}
				}
				collect(t, other)
				if final.Err != nil || final.NumOutputTokens != maxTokens {
					t.Fatalf("seq %d max_tokens %d: %+v", i, maxTokens, final)
				}
				if len(prompt) != len(ids)-1 {
					t.Fatalf("seq %d: %d prompt logprobs for %d tokens", i, len(prompt), len(ids))
				}
				maxDiff := 0.0
				for pos := 1; pos < len(ids); pos++ {
					ref := logSoftmax(logits[(pos-1)*V : pos*V])
					got := prompt[pos-1]
					if got.Chosen.TokenID != ids[pos] {
						t.Fatalf("position %d: token %d, the prompt has %d", pos, got.Chosen.TokenID, ids[pos])
					}
					maxDiff = math.Max(maxDiff, math.Abs(float64(got.Chosen.Logprob)-ref[ids[pos]]))
					order := make([]int, V)
					for j := range order {
						order[j] = j
					}
					sort.SliceStable(order, func(a, b int) bool { return ref[order[a]] > ref[order[b]] })
					if len(got.Top) != top {
						t.Fatalf("position %d: %d alternatives", pos, len(got.Top))
					}
					for j, alt := range got.Top {
						maxDiff = math.Max(maxDiff, math.Abs(float64(alt.Logprob)-ref[alt.TokenID]))
						// The rank must match HF's wherever the reference separates the ranks.
						if int(alt.TokenID) != order[j] && ref[order[j]]-ref[alt.TokenID] > 1e-4 {
							t.Errorf("position %d: top %d is %d, HF's is %d", pos, j, alt.TokenID, order[j])
						}
					}
				}
				if maxDiff > 1e-3 {
					t.Errorf("seq %d budget %d: prompt logprobs differ from HF's by %.2g", i, budget, maxDiff)
				}
			}
		}
	}
}

// TestLogitBias: +100 on a token makes greedy pick it, −100 bans the token greedy picked,
// and out-of-range ids or values are refused.
func TestLogitBias(t *testing.T) {
	e := newTestEngine(t, nil)
	pr := vocabPrompt(3, 12)
	base := collect(t, submit(t, e, "base", pr, greedyParams(1)))
	forced := greedyParams(1)
	forced.LogitBias = map[int32]float32{77: 100}
	if r := collect(t, submit(t, e, "forced", pr, forced)); r.tokens[0] != 77 {
		t.Errorf("+100 on token 77: greedy picked %d", r.tokens[0])
	}
	banned := greedyParams(1)
	banned.LogitBias = map[int32]float32{base.tokens[0]: -100}
	if r := collect(t, submit(t, e, "banned", pr, banned)); r.tokens[0] == base.tokens[0] {
		t.Errorf("−100 on token %d: greedy still picked it", base.tokens[0])
	}
	for _, bad := range []map[int32]float32{{-1: 1}, {512: 1}, {5: 101}, {5: float32(math.NaN())}} {
		p := greedyParams(1)
		p.LogitBias = bad
		if _, err := e.Submit(context.Background(), Request{ID: "bad", PromptIDs: pr, Params: p}); err == nil {
			t.Errorf("logit_bias %v accepted", bad)
		}
	}
}

// TestMinTokensHoldsStopStrings: a stop string that appears before min_tokens is ignored
// (vLLM's rule); the same string after min_tokens ends the request there.
func TestMinTokensHoldsStopStrings(t *testing.T) {
	e := newTestEngine(t, nil)
	pr := vocabPrompt(5, 9)
	free := collect(t, submit(t, e, "free", pr, greedyParams(20)))
	// The stop string is the text of the first token that did not occur before it.
	j := 1
	for ; j < len(free.tokens); j++ {
		seen := false
		for _, x := range free.tokens[:j] {
			seen = seen || x == free.tokens[j]
		}
		if !seen {
			break
		}
	}
	if j >= 10 {
		t.Skipf("the fixture repeats itself: %v", free.tokens)
	}
	stop := fmt.Sprintf("<%d>", free.tokens[j])
	p := greedyParams(20)
	p.Stop = []string{stop}
	early := collect(t, submit(t, e, "early", pr, p))
	if early.final.FinishReason != FinishStop || len(early.tokens) != j+1 {
		t.Fatalf("without min_tokens: %d tokens, %s; want a stop after %d", len(early.tokens), early.final.FinishReason, j+1)
	}
	p.MinTokens = j + 3
	held := collect(t, submit(t, e, "held", pr, p))
	if len(held.tokens) < p.MinTokens {
		t.Fatalf("min_tokens %d: stopped after %d tokens", p.MinTokens, len(held.tokens))
	}
	// It stops at the first occurrence ending at or after min_tokens, if there is one.
	want := len(free.tokens)
	for i := p.MinTokens - 1; i < len(free.tokens); i++ {
		if fmt.Sprintf("<%d>", free.tokens[i]) == stop {
			want = i + 1
			break
		}
	}
	if len(held.tokens) != want {
		t.Errorf("min_tokens %d: %d tokens, want %d (free run %v)", p.MinTokens, len(held.tokens), want, free.tokens)
	}
	if held.final.FinishReason == FinishStop {
		// The matched occurrence is cut from the text; earlier ones (before min_tokens) stay.
		var wantText strings.Builder
		for _, tok := range held.tokens[:len(held.tokens)-1] {
			fmt.Fprintf(&wantText, "<%d>", tok)
		}
		if held.text != wantText.String() {
			t.Errorf("text %q, want %q", held.text, wantText.String())
		}
	}
}

// TestPriorityScheduling: with the priority policy a high-priority request that arrives
// later starts before earlier low-priority ones when the server is full; with FCFS it
// waits its turn.
func TestPriorityScheduling(t *testing.T) {
	for _, policy := range []SchedulingPolicy{PolicyPriority, PolicyFCFS} {
		e := newTestEngine(t, func(c *Config) {
			c.Scheduler = SchedulerConfig{MaxNumSeqs: 1, MaxNumBatchedTokens: 64, MaxModelLen: 256, Policy: policy}
		})
		submitP := func(id string, prio int) <-chan Event {
			ch, err := e.Submit(context.Background(), Request{ID: id, PromptIDs: vocabPrompt(len(id), 8), Params: greedyParams(6), Priority: prio})
			if err != nil {
				t.Fatal(err)
			}
			return ch
		}
		first := submitP("running", 5)
		time.Sleep(50 * time.Millisecond) // it holds the only slot
		low1, low2 := submitP("low1", 5), submitP("low2", 5)
		high := submitP("high", 0)
		starts := map[string]time.Time{}
		for id, ch := range map[string]<-chan Event{"running": first, "low1": low1, "low2": low2, "high": high} {
			starts[id] = collect(t, ch).final.Metrics.FirstScheduledTime
		}
		highFirst := starts["high"].Before(starts["low1"]) && starts["high"].Before(starts["low2"])
		if policy == PolicyPriority && !highFirst {
			t.Errorf("priority: the high-priority request started at %v, after low ones (%v, %v)", starts["high"], starts["low1"], starts["low2"])
		}
		if policy == PolicyFCFS && highFirst {
			t.Errorf("fcfs: the later request overtook earlier ones")
		}
	}
}
