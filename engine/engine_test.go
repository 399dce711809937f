package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"go.uber.org/goleak"

	"github.com/tpuserve/tpuserve/internal/backendtest"
	"github.com/tpuserve/tpuserve/kvcache"
	"github.com/tpuserve/tpuserve/model"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("github.com/gomlx/gomlx/backends/simplego.(*workersPool).lockedRunTaskInGoroutine.func1"))
}

// fixtureDir is the HF golden fixture the model package tests against.
var fixtureDir = filepath.Join("..", "model", "testdata", "gemma3-tiny")

// engineFixture is a model the engine's invariance tests run on: the unquantized tiny
// fixture and its two compressed-tensors checkpoints (W8A8 and FP8-dynamic, f32 compute),
// with the golden.json keys of their own HF greedy runs. The quantized ones matter here
// because their per-token activation scales are exactly what a batch-dependent bug (a
// max over the whole step instead of over one token's row) would break.
//
// quick runs the invariance test's short form, to keep the package's tests fast: 10
// requests instead of 64 (HF's greedy runs cut to 16 tokens) and one batched engine that combines every condition (concurrent
// requests, chunked prefill, a cache small enough to preempt, prefix hits) instead of one
// engine per condition. The full form runs on the unquantized fixture (~100 s here).
//
// kvCacheDType sets Config.KVCacheDType; a quantized cache changes the logits (by up to
// 0.05 for int8 on this model, model TestKVCacheQuantizedLogits), so its runs are compared
// with each other, not with HF's greedy tokens.
type engineFixture struct {
	name, dir          string
	greedyKey, margins string
	quick              bool
	kvCacheDType       string
}

var engineFixtures = []engineFixture{
	{"unquantized", fixtureDir, "greedy_f32", "top1_margins", false, ""},
	{"w8a8", filepath.Join("..", "model", "testdata", "gemma3-tiny-w8a8"), "greedy_dyn", "margins_dyn", true, ""},
	{"fp8", filepath.Join("..", "model", "testdata", "gemma3-tiny-fp8"), "greedy_dyn", "margins_dyn", true, ""},
	{"kv-int8", fixtureDir, "greedy_f32", "top1_margins", true, "int8"},
}

// withKV applies fx's KV cache dtype to an engine config after mutate.
func (fx engineFixture) withKV(mutate func(*Config)) func(*Config) {
	return func(c *Config) {
		c.KVCacheDType = fx.kvCacheDType
		if mutate != nil {
			mutate(c)
		}
	}
}

var (
	fixtureMu     sync.Mutex
	fixtureModels = map[string]*model.Model{}
)

// fixtureModelAt loads (once per directory) the checkpoint at dir in float32; a compressed
// checkpoint runs in its own quantization mode.
func fixtureModelAt(t testing.TB, dir string) *model.Model {
	t.Helper()
	backend := backendtest.Backend(t)
	fixtureMu.Lock()
	defer fixtureMu.Unlock()
	if m, ok := fixtureModels[dir]; ok {
		return m
	}
	m, err := model.Load(backend, model.LoadOptions{Model: dir, DType: dtypes.Float32, Progress: func(model.LoadProgress) {}})
	if err != nil {
		t.Fatalf("load %s: %v", dir, err)
	}
	fixtureModels[dir] = m
	return m
}

func tinyFixture(t testing.TB) *model.Model { return fixtureModelAt(t, fixtureDir) }

// textDecoder is a stand-in detokenizer: token t reads "<t>", special tokens (0–3) read
// "" when skipped.
type textDecoder struct {
	skip  bool
	vocab int32 // 0 = the fixture's 512
}

func (d *textDecoder) Add(id int32) (string, error) {
	vocab := d.vocab
	if vocab == 0 {
		vocab = 512
	}
	if id < 0 || id >= vocab {
		return "", fmt.Errorf("token %d out of range", id)
	}
	if d.skip && id < 4 {
		return "", nil
	}
	return fmt.Sprintf("<%d>", id), nil
}
func (d *textDecoder) Flush() string { return "" }

func newTestEngine(t *testing.T, mutate func(*Config)) *Engine {
	t.Helper()
	return newTestEngineOn(t, tinyFixture(t), mutate)
}

// newTestEngineOn is newTestEngine on model m.
func newTestEngineOn(t *testing.T, m *model.Model, mutate func(*Config)) *Engine {
	t.Helper()
	cfg := Config{
		Model:      m,
		NewDecoder: func(skip bool) StreamDecoder { return &textDecoder{skip: skip} },
		Scheduler:  SchedulerConfig{MaxNumSeqs: 64, MaxNumBatchedTokens: 256, MaxModelLen: 512},
		PageSize:   8,
		Precompile: PrecompileNone,
	}
	if mutate != nil {
		mutate(&cfg)
	}
	e, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := e.CheckAllFree(); err != nil {
			t.Errorf("after test: %v", err)
		}
		e.Close()
	})
	return e
}

type result struct {
	tokens   []int32
	text     string
	logprobs []PositionLogprobs
	prompt   []PositionLogprobs // prompt logprobs
	final    Event
}

func collect(t testing.TB, ch <-chan Event) result {
	t.Helper()
	var r result
	for ev := range ch {
		r.tokens = append(r.tokens, ev.TokenIDs...)
		r.text += ev.Text
		r.logprobs = append(r.logprobs, ev.Logprobs...)
		r.prompt = append(r.prompt, ev.PromptLogprobs...)
		if ev.Finished || ev.Err != nil {
			r.final = ev
		}
	}
	if !r.final.Finished && r.final.Err == nil {
		t.Errorf("stream closed without a final event")
	}
	return r
}

func greedyParams(maxTokens int) SamplingParams {
	p := DefaultSamplingParams()
	p.Temperature, p.MaxTokens, p.IgnoreEOS = 0, maxTokens, true
	lp := 3
	p.Logprobs = &lp
	return p
}

func submit(t testing.TB, e *Engine, id string, prompt []int32, p SamplingParams) <-chan Event {
	t.Helper()
	ch, err := e.Submit(context.Background(), Request{ID: id, PromptIDs: prompt, Params: p})
	if err != nil {
		t.Fatalf("submit %s: %v", id, err)
	}
	return ch
}

// greedyRun is one of a fixture's HF greedy continuations and each step's top-1 margin.
type greedyRun struct {
	Prompt  []int32
	Greedy  []int32
	Margins []float64
}

// readGreedyGolden reads fx's HF greedy runs from its golden.json, under fx's keys.
func readGreedyGolden(t testing.TB, fx engineFixture) []greedyRun {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(fx.dir, "golden.json"))
	if err != nil {
		t.Fatal(err)
	}
	var golden struct {
		Greedy []map[string]json.RawMessage `json:"greedy"`
	}
	if err := json.Unmarshal(data, &golden); err != nil {
		t.Fatalf("%s golden.json: %v", fx.name, err)
	}
	var out []greedyRun
	for i, g := range golden.Greedy {
		var r greedyRun
		for key, dst := range map[string]any{"prompt": &r.Prompt, fx.greedyKey: &r.Greedy, fx.margins: &r.Margins} {
			if err := json.Unmarshal(g[key], dst); err != nil {
				t.Fatalf("%s golden.json greedy[%d].%s: %v", fx.name, i, key, err)
			}
		}
		if len(r.Greedy) == 0 || len(r.Margins) != len(r.Greedy) {
			t.Fatalf("%s golden.json greedy[%d]: %d tokens, %d margins", fx.name, i, len(r.Greedy), len(r.Margins))
		}
		out = append(out, r)
	}
	return out
}

func sameResult(a, b result) (bool, string) {
	if len(a.tokens) != len(b.tokens) {
		return false, fmt.Sprintf("%d tokens vs %d", len(a.tokens), len(b.tokens))
	}
	for i := range a.tokens {
		if a.tokens[i] != b.tokens[i] {
			return false, fmt.Sprintf("token %d: %d vs %d", i, a.tokens[i], b.tokens[i])
		}
		la, lb := a.logprobs[i], b.logprobs[i]
		if math.Abs(float64(la.Chosen.Logprob-lb.Chosen.Logprob)) > 1e-5 {
			return false, fmt.Sprintf("logprob %d: %v vs %v", i, la.Chosen.Logprob, lb.Chosen.Logprob)
		}
		for j := range la.Top {
			if la.Top[j].TokenID != lb.Top[j].TokenID || math.Abs(float64(la.Top[j].Logprob-lb.Top[j].Logprob)) > 1e-5 {
				return false, fmt.Sprintf("top logprob %d/%d differs", i, j)
			}
		}
	}
	return true, ""
}

// TestGreedyBatchInvariance: every request's greedy tokens and logprobs are the same alone
// and among 64 concurrent requests of mixed lengths, with chunked prefill, with preemption
// forced by a tiny cache and with prefix-cache hits; and equal to HF's greedy runs. On the
// unquantized fixture and on the W8A8 and FP8-dynamic checkpoints (f32 compute).
func TestGreedyBatchInvariance(t *testing.T) {
	for _, fx := range engineFixtures {
		t.Run(fx.name, func(t *testing.T) { testGreedyBatchInvariance(t, fx, nil) })
	}
}

// TestGreedyBatchInvarianceTP is TestGreedyBatchInvariance on the tensor-parallel model (a
// virtual mesh on the pure-Go backend) at TP=2 and TP=8 (the fixture's 4 heads then
// replicated on 2 chips each): batched equals alone, equals HF, and the tokens equal TP=1's.
func TestGreedyBatchInvarianceTP(t *testing.T) {
	for _, tp := range []int{2, 8} {
		t.Run(fmt.Sprintf("tp%d", tp), func(t *testing.T) {
			testGreedyBatchInvariance(t, engineFixtures[0], shardedFixture(t, tp))
		})
	}
}

// shardedFixture is the tiny fixture split over a virtual mesh of tp chips.
func shardedFixture(t *testing.T, tp int) *model.ShardedModel {
	t.Helper()
	sm, err := model.LoadShardedModel(backendtest.Backend(t), model.LoadOptions{Model: fixtureDir, DType: dtypes.Float32, Progress: func(model.LoadProgress) {}}, tp)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sm.Close)
	return sm
}

// onSharded makes an engine config use sm (when not nil) instead of the plain model.
func onSharded(sm *model.ShardedModel, mutate func(*Config)) func(*Config) {
	if sm == nil {
		return mutate
	}
	return func(c *Config) {
		c.Model, c.Sharded = nil, sm
		if mutate != nil {
			mutate(c)
		}
	}
}

func testGreedyBatchInvariance(t *testing.T, fx engineFixture, sm *model.ShardedModel) {
	m := fixtureModelAt(t, fx.dir)
	golden := readGreedyGolden(t, fx)
	rng := rand.New(rand.NewPCG(1, 2))
	type job struct {
		id     string
		prompt []int32
		max    int
	}
	var jobs []job
	for i, g := range golden {
		n := len(g.Greedy)
		if fx.quick {
			n = min(n, 16) // the model package checks the whole runs (TestQuantizedGreedyMatchesHuggingFace)
		}
		jobs = append(jobs, job{fmt.Sprintf("hf%d", i), g.Prompt, n})
	}
	shared := make([]int32, 40) // a common prefix: prefix-cache hits
	shared[0] = 2
	for i := 1; i < len(shared); i++ {
		shared[i] = int32(3 + rng.IntN(500))
	}
	numJobs := 64
	if fx.quick {
		numJobs = 10
	}
	for len(jobs) < numJobs {
		n := 1 + rng.IntN(70)
		var p []int32
		if len(jobs)%3 == 0 {
			p = append(append(p, shared...), int32(3+rng.IntN(500)))
		} else {
			p = []int32{2}
			for len(p) < n {
				p = append(p, int32(3+rng.IntN(500)))
			}
		}
		jobs = append(jobs, job{fmt.Sprintf("r%d", len(jobs)), p, 1 + rng.IntN(24)})
	}

	// Alone, one at a time, on a roomy cache.
	alone := map[string]result{}
	{
		e := newTestEngineOn(t, m, onSharded(sm, fx.withKV(nil)))
		for _, j := range jobs {
			alone[j.id] = collect(t, submit(t, e, j.id, j.prompt, greedyParams(j.max)))
		}
	}
	if sm != nil { // the same tokens as the one-chip engine
		e := newTestEngineOn(t, m, fx.withKV(nil))
		for _, j := range jobs {
			if ok, why := sameResult(alone[j.id], collect(t, submit(t, e, j.id, j.prompt, greedyParams(j.max)))); !ok {
				t.Errorf("%s: TP=%d differs from TP=1: %s", j.id, sm.Plan.TP, why)
			}
		}
	}
	// Against HF's greedy continuations, wherever the margin is clear.
	for i, g := range golden {
		if fx.kvCacheDType != "" {
			break
		}
		got := alone[fmt.Sprintf("hf%d", i)].tokens
		for s, want := range g.Greedy[:min(len(got), len(g.Greedy))] {
			if g.Margins[s] <= 1e-3 {
				break
			}
			if got[s] != want {
				t.Fatalf("HF greedy run %d step %d: engine %d, HF %d", i, s, got[s], want)
			}
		}
	}
	scenarios := []struct {
		name   string
		mutate func(*Config)
	}{
		{"concurrent", nil},
		{"chunked-prefill", func(c *Config) { c.Scheduler.MaxNumBatchedTokens = 64; c.SegmentLen = 4 }},
		{"preemption", func(c *Config) { c.KVCacheBytes = 512 << 10; c.Scheduler.MaxNumBatchedTokens = 64 }},
		{"no-prefix-cache", func(c *Config) { c.DisablePrefixCaching = true }},
	}
	if fx.quick || sm != nil {
		// One scenario with chunked prefill, preemption and prefix hits together (the
		// virtual mesh runs every chip on the CPU: the four apart cost minutes at TP=8).
		scenarios = scenarios[:0]
		scenarios = append(scenarios, struct {
			name   string
			mutate func(*Config)
		}{"mixed", func(c *Config) {
			c.Scheduler.MaxNumBatchedTokens = 64
			c.SegmentLen = 4
			c.KVCacheBytes = 512 << 10
			if c.KVCacheDType != "" {
				// The same tokens as the f32 cache: 1 byte per element plus a 4-byte scale
				// per 32 (head_dim) instead of 4 bytes per element.
				c.KVCacheBytes = c.KVCacheBytes * (32 + 4) / (4 * 32)
			}
		}})
	}
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			e := newTestEngineOn(t, m, onSharded(sm, fx.withKV(sc.mutate)))
			chans := map[string]<-chan Event{}
			for _, j := range jobs {
				chans[j.id] = submit(t, e, j.id, j.prompt, greedyParams(j.max))
			}
			for _, j := range jobs {
				got := collect(t, chans[j.id])
				if ok, why := sameResult(got, alone[j.id]); !ok {
					t.Errorf("%s: batched differs from alone: %s", j.id, why)
				}
				if got.final.FinishReason != FinishLength || got.final.NumOutputTokens != j.max || got.final.NumPromptTokens != len(j.prompt) {
					t.Errorf("%s: final %+v", j.id, got.final)
				}
			}
			st := e.Stats()
			if (sc.name == "preemption" || sc.name == "mixed") && st.NumPreemptions == 0 {
				t.Errorf("the tiny cache forced no preemption")
			}
			if (sc.name == "concurrent" || sc.name == "mixed") && st.PrefixCacheHits == 0 {
				t.Errorf("no prefix-cache hits with shared prompts")
			}
			t.Logf("%s: %+v", sc.name, st)
		})
	}
}

// TestSeededSampling: a seeded request samples the same tokens alone and among others, and
// another seed samples others; on every engine fixture.
func TestSeededSampling(t *testing.T) {
	for _, fx := range engineFixtures {
		t.Run(fx.name, func(t *testing.T) { testSeededSampling(t, fixtureModelAt(t, fx.dir), fx) })
	}
}

// TestSeededSamplingTP: seeded requests with every sampler feature (top-k, top-p, min-p,
// penalties, logit bias, logprobs, prompt logprobs) give exactly the TP=1 tokens at TP=2 and
// TP=8, batched together; logprobs equal within float32 rounding.
func TestSeededSamplingTP(t *testing.T) {
	m := tinyFixture(t)
	params := func(i int) SamplingParams {
		p := DefaultSamplingParams()
		seed := int64(40 + i)
		lp, plp := 5, 3
		p.Temperature, p.TopP, p.TopK, p.MinP = []float32{1, 0.8, 1.3}[i%3], []float32{0.9, 1, 0.7}[i%3], []int{40, 0, 8}[i%3], []float32{0.05, 0, 0.02}[i%3]
		p.PresencePenalty, p.FrequencyPenalty, p.RepetitionPenalty = 0.4, 0.3, 1.2
		p.MaxTokens, p.Seed, p.IgnoreEOS, p.Logprobs = 12, &seed, true, &lp
		if i%2 == 0 {
			p.PromptLogprobs = &plp
			p.LogitBias = map[int32]float32{int32(100 + i): 5, 7: -100}
		}
		return p
	}
	prompts := [][]int32{{2, 10, 20, 30}, {2, 7, 7, 7, 8}, {2, 300, 301}, {2, 44}, {2, 5, 6, 7, 8, 9, 10, 11}, {2, 499}}
	run := func(e *Engine) []result {
		var chans []<-chan Event
		for i, p := range prompts {
			chans = append(chans, submit(t, e, fmt.Sprint("s", i), p, params(i)))
		}
		out := make([]result, len(chans))
		for i, ch := range chans {
			out[i] = collect(t, ch)
		}
		return out
	}
	want := run(newTestEngineOn(t, m, nil))
	for _, tp := range []int{2, 8} {
		t.Run(fmt.Sprintf("tp%d", tp), func(t *testing.T) {
			got := run(newTestEngineOn(t, m, onSharded(shardedFixture(t, tp), nil)))
			for i := range want {
				if ok, why := sameResult(got[i], want[i]); !ok {
					t.Errorf("request %d: TP=%d differs from TP=1: %s (tokens %v, TP=1 %v)", i, tp, why, got[i].tokens, want[i].tokens)
				}
				if i%2 == 0 && len(want[i].prompt) == 0 {
					t.Errorf("request %d: no prompt logprobs at TP=1", i)
				}
				gp := result{tokens: make([]int32, len(got[i].prompt)), logprobs: got[i].prompt}
				wp := result{tokens: make([]int32, len(want[i].prompt)), logprobs: want[i].prompt}
				if ok, why := sameResult(gp, wp); !ok {
					t.Errorf("request %d: TP=%d prompt logprobs differ from TP=1's: %s", i, tp, why)
				}
			}
		})
	}
}

func testSeededSampling(t *testing.T, m *model.Model, fx engineFixture) {
	e := newTestEngineOn(t, m, fx.withKV(nil))
	prompt := []int32{2, 10, 20, 30}
	params := func(seed int64) SamplingParams {
		p := DefaultSamplingParams()
		p.Temperature, p.TopP, p.TopK, p.MaxTokens, p.Seed, p.IgnoreEOS = 1.0, 0.95, 50, 20, &seed, true
		return p
	}
	alone := collect(t, submit(t, e, "alone", prompt, params(7)))
	// The same seed among other requests.
	var chans []<-chan Event
	for i := 0; i < 8; i++ {
		chans = append(chans, submit(t, e, fmt.Sprint("other", i), []int32{2, int32(40 + i)}, params(int64(100+i))))
	}
	batched := collect(t, submit(t, e, "batched", prompt, params(7)))
	for _, ch := range chans {
		collect(t, ch)
	}
	if fmt.Sprint(alone.tokens) != fmt.Sprint(batched.tokens) {
		t.Errorf("seed 7: alone %v, batched %v", alone.tokens, batched.tokens)
	}
	other := collect(t, submit(t, e, "seed8", prompt, params(8)))
	if fmt.Sprint(alone.tokens) == fmt.Sprint(other.tokens) {
		t.Errorf("seeds 7 and 8 gave the same 20 tokens %v", other.tokens)
	}
}

func TestStops(t *testing.T) {
	e := newTestEngine(t, nil)
	prompt := []int32{2, 10, 20, 30}
	base := collect(t, submit(t, e, "base", prompt, greedyParams(12)))
	if len(base.tokens) != 12 {
		t.Fatalf("base: %d tokens", len(base.tokens))
	}
	third := base.tokens[2]
	thirdText := fmt.Sprintf("<%d>", third)
	firstIdx := -1
	for i, tok := range base.tokens {
		if tok == third {
			firstIdx = i
			break
		}
	}
	cases := []struct {
		name       string
		mutate     func(p *SamplingParams)
		wantText   string
		wantReason FinishReason
		wantStop   any
		wantTokens int
	}{
		{"max_tokens", func(p *SamplingParams) { p.MaxTokens = 5 }, strings.Join(texts(base.tokens[:5]), ""), FinishLength, nil, 5},
		{"stop string", func(p *SamplingParams) { p.Stop = []string{thirdText} }, strings.Join(texts(base.tokens[:firstIdx]), ""), FinishStop, thirdText, firstIdx + 1},
		{"stop string kept", func(p *SamplingParams) { p.Stop = []string{"zzz", thirdText}; p.IncludeStopStrInOutput = true },
			strings.Join(texts(base.tokens[:firstIdx+1]), ""), FinishStop, thirdText, firstIdx + 1},
		{"stop token id", func(p *SamplingParams) { p.StopTokenIDs = []int32{third} }, strings.Join(texts(base.tokens[:firstIdx]), ""), FinishStop, int(third), firstIdx + 1},
		{"eos", func(p *SamplingParams) { p.IgnoreEOS = false; e.eos[third] = true }, strings.Join(texts(base.tokens[:firstIdx]), ""), FinishStop, nil, firstIdx + 1},
		{"min_tokens bans eos", func(p *SamplingParams) { p.IgnoreEOS = false; p.MinTokens = 12; e.eos[third] = true },
			"", FinishLength, nil, 12},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := greedyParams(12)
			tc.mutate(&p)
			got := collect(t, submit(t, e, tc.name, prompt, p))
			delete(e.eos, third)
			if tc.wantText != "" && got.text != tc.wantText {
				t.Errorf("text %q, want %q", got.text, tc.wantText)
			}
			if got.final.FinishReason != tc.wantReason || fmt.Sprint(got.final.StopReason) != fmt.Sprint(tc.wantStop) || len(got.tokens) != tc.wantTokens {
				t.Errorf("finish %q stop %v after %d tokens, want %q %v %d", got.final.FinishReason, got.final.StopReason, len(got.tokens), tc.wantReason, tc.wantStop, tc.wantTokens)
			}
			if tc.name == "min_tokens bans eos" {
				for _, tok := range got.tokens {
					if tok == third {
						t.Errorf("banned EOS %d sampled before min_tokens", third)
					}
				}
			}
		})
	}
}

func texts(toks []int32) []string {
	out := make([]string, len(toks))
	for i, t := range toks {
		out[i] = fmt.Sprintf("<%d>", t)
	}
	return out
}

func TestCancellationFreesBlocks(t *testing.T) {
	e := newTestEngine(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	ch, err := e.Submit(ctx, Request{ID: "c", PromptIDs: []int32{2, 3, 4}, Params: greedyParams(400)})
	if err != nil {
		t.Fatal(err)
	}
	<-ch // first token
	cancel()
	got := collect(t, ch)
	if got.final.FinishReason != FinishAbort {
		t.Errorf("finish %q, want abort", got.final.FinishReason)
	}
	deadline := time.Now().Add(5 * time.Second)
	for e.Stats().NumRunning != 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if st := e.Stats(); st.NumRunning != 0 || st.KVCacheUsage != 0 {
		t.Errorf("after abort: %+v", st)
	}
}

func TestSubmitErrors(t *testing.T) {
	e := newTestEngine(t, func(c *Config) { c.KVCacheBytes = 64 << 10 })
	bad := func(mut func(r *Request)) error {
		r := Request{ID: "x", PromptIDs: []int32{2, 5}, Params: greedyParams(4)}
		mut(&r)
		_, err := e.Submit(context.Background(), r)
		return err
	}
	cases := []struct {
		name string
		mut  func(r *Request)
		is   error
		want string
	}{
		{"token beyond vocab", func(r *Request) { r.PromptIDs = []int32{2, 600} }, ErrInvalidRequest, "prompt token 600"},
		{"temperature", func(r *Request) { r.Params.Temperature = -1 }, ErrInvalidRequest, "temperature"},
		{"top_p", func(r *Request) { r.Params.TopP = 0 }, ErrInvalidRequest, "top_p"},
		{"logprobs", func(r *Request) { n := 21; r.Params.Logprobs = &n }, ErrInvalidRequest, "logprobs"},
		{"min_tokens", func(r *Request) { r.Params.MinTokens = 9 }, ErrInvalidRequest, "min_tokens"},
		{"empty prompt", func(r *Request) { r.PromptIDs = nil }, ErrInvalidRequest, "empty"},
		{"too long", func(r *Request) { r.PromptIDs = make([]int32, 600) }, ErrPromptTooLong, "600"},
		{"never fits", func(r *Request) { r.PromptIDs = make([]int32, 500); r.Params.MaxTokens = 10 }, kvcache.ErrKVCacheFull, ""},
	}
	for _, tc := range cases {
		err := bad(tc.mut)
		if err == nil || !errors.Is(err, tc.is) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %v containing %q", tc.name, err, tc.is, tc.want)
		}
	}
}

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// TestKVCacheDTypeConfig: an unknown KVCacheDType is refused naming the field, and a
// quantized cache leaves the caller's model as it was (the engine runs a copy).
func TestKVCacheDTypeConfig(t *testing.T) {
	m := tinyFixture(t)
	_, err := New(Config{Model: m, NewDecoder: func(bool) StreamDecoder { return &textDecoder{} }, KVCacheDType: "int4", Precompile: PrecompileNone})
	if err == nil || !errors.Is(err, ErrInvalidRequest) || !strings.Contains(err.Error(), "KVCacheDType") || !strings.Contains(err.Error(), `"int4"`) {
		t.Errorf("KVCacheDType int4: %v", err)
	}
	e := newTestEngine(t, func(c *Config) { c.KVCacheDType = "fp8" })
	if got := collect(t, submit(t, e, "a", []int32{2, 10, 20}, greedyParams(3))); len(got.tokens) != 3 {
		t.Errorf("fp8 cache: %d tokens", len(got.tokens))
	}
	if m.Config.KVCache.Quantized() {
		t.Errorf("the engine changed the shared model's KV cache setting to %s", m.Config.KVCache)
	}
}
