package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/gomlx/gomlx/pkg/core/tensors"

	"github.com/tpuserve/tpuserve/internal/backendtest"
	"github.com/tpuserve/tpuserve/model"
	"github.com/tpuserve/tpuserve/model/vision"
)

// visionDir is the tiny vision fixture, kept once under the vision package's testdata
// (provenance: model/vision/testdata/PROVENANCE.md).
var visionDir = filepath.Join("..", "model", "vision", "testdata", "gemma3-tiny-vision")

var (
	visionOnce   sync.Once
	visionEnc    *vision.Encoder
	visionImages []Image // golden.json's images, preprocessed
	visionErr    error
)

// visionFixture loads the fixture's vision tower (f32) and preprocesses its images.
func visionFixture(t testing.TB) (*model.Model, *vision.Encoder, []Image) {
	t.Helper()
	m := fixtureModelAt(t, visionDir)
	visionOnce.Do(func() {
		visionEnc, visionErr = vision.LoadEncoder(backendtest.Backend(t), visionDir, dtypes.Float32)
		if visionErr != nil {
			return
		}
		var pc vision.PreprocessorConfig
		if pc, visionErr = vision.LoadPreprocessorConfig(visionDir); visionErr != nil {
			return
		}
		var proc *vision.Processor
		if proc, visionErr = vision.NewProcessor(pc); visionErr != nil {
			return
		}
		for _, name := range visionGolden(t).Images {
			data, err := os.ReadFile(filepath.Join(visionDir, "images", name))
			if err != nil {
				visionErr = err
				return
			}
			pp, err := proc.Preprocess(data)
			if err != nil {
				visionErr = err
				return
			}
			visionImages = append(visionImages, Image{Pixels: pp.Images[0], Hash: pp.Hash})
		}
	})
	if visionErr != nil {
		t.Fatal(visionErr)
	}
	return m, visionEnc, visionImages
}

type visionGoldenJSON struct {
	Images    []string `json:"images"`
	Sequences []struct {
		Images []int   `json:"images"`
		IDs    []int32 `json:"ids"`
	} `json:"sequences"`
	Greedy []struct {
		Prompt  []int32   `json:"prompt"`
		Images  []int     `json:"images"`
		Tokens  []int32   `json:"greedy_f32"`
		Margins []float64 `json:"top1_margins"`
	} `json:"greedy"`
}

func visionGolden(t testing.TB) visionGoldenJSON {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(visionDir, "golden.json"))
	if err != nil {
		t.Fatal(err)
	}
	var g visionGoldenJSON
	if err := json.Unmarshal(data, &g); err != nil {
		t.Fatal(err)
	}
	return g
}

// newVisionEngine is an engine on the vision fixture with its tower, every program
// compiled at start-up.
func newVisionEngine(t *testing.T, mutate func(*Config)) *Engine {
	t.Helper()
	m, enc, _ := visionFixture(t)
	return newTestEngineOn(t, m, func(c *Config) {
		c.Vision = enc
		c.Precompile = PrecompileAll
		c.Scheduler = SchedulerConfig{MaxNumSeqs: 4, MaxNumBatchedTokens: 48, MaxModelLen: 96}
		c.MaxImagesPerStep = 2
		if mutate != nil {
			mutate(c)
		}
	})
}

func submitImages(t testing.TB, e *Engine, id string, prompt []int32, images []Image, p SamplingParams) <-chan Event {
	t.Helper()
	ch, err := e.Submit(context.Background(), Request{ID: id, PromptIDs: prompt, Params: p, Images: images})
	if err != nil {
		t.Fatalf("submit %s: %v", id, err)
	}
	return ch
}

func pick(images []Image, idx []int) []Image {
	var out []Image
	for _, j := range idx {
		out = append(out, images[j])
	}
	return out
}

// collectPrompt is collect that also keeps the prompt logprobs.
func collectPrompt(t testing.TB, ch <-chan Event) (result, []PositionLogprobs) {
	t.Helper()
	var r result
	var plp []PositionLogprobs
	for ev := range ch {
		r.tokens = append(r.tokens, ev.TokenIDs...)
		r.logprobs = append(r.logprobs, ev.Logprobs...)
		plp = append(plp, ev.PromptLogprobs...)
		if ev.Finished || ev.Err != nil {
			r.final = ev
		}
	}
	if r.final.Err != nil {
		t.Fatalf("request failed: %v", r.final.Err)
	}
	return r, plp
}

// TestImagePromptsMatchHF: the fixture's three image sequences through the engine, at once
// and among text-only requests, with chunked prefill (48 tokens a step, at most 2 images):
// every prompt position's logprob of the next prompt token within 1e-3 of HF's logits
// (log-softmax of seq{i}.logits_f32), the first sampled token HF's argmax, no program
// compiled while serving.
func TestImagePromptsMatchHF(t *testing.T) {
	_, _, images := visionFixture(t)
	g := visionGolden(t)
	golden, err := model.ReadSafetensors(filepath.Join(visionDir, "golden.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	e := newVisionEngine(t, nil)
	_, enc, _ := visionFixture(t)
	towerCompiles := enc.Compilations()
	plp := 0
	var chans []<-chan Event
	for i, seq := range g.Sequences {
		p := greedyParams(1)
		p.PromptLogprobs = &plp
		chans = append(chans, submitImages(t, e, fmt.Sprintf("img%d", i), seq.IDs, pick(images, seq.Images), p))
	}
	var text []<-chan Event
	for i := 0; i < 3; i++ { // text-only requests in the same steps
		text = append(text, submit(t, e, fmt.Sprintf("text%d", i), vocabPrompt(i, 20+7*i), greedyParams(6)))
	}
	V := fixtureModelAt(t, visionDir).Config.VocabSize
	for i, ch := range chans {
		r, plps := collectPrompt(t, ch)
		ids := g.Sequences[i].IDs
		logits := tensors.MustCopyFlatData[float32](golden[fmt.Sprintf("seq%d.logits_f32", i)])
		if len(plps) != len(ids)-1 {
			t.Fatalf("seq%d: %d prompt logprobs for %d tokens", i, len(plps), len(ids))
		}
		worst := 0.0
		for p := 0; p < len(ids)-1; p++ {
			want := logSoftmaxAt(logits[p*V:(p+1)*V], int(ids[p+1]))
			worst = math.Max(worst, math.Abs(float64(plps[p].Chosen.Logprob)-want))
		}
		t.Logf("seq%d: max |Δ prompt logprob| = %.3g over %d positions", i, worst, len(ids)-1)
		if worst > 1e-3 {
			t.Errorf("seq%d: prompt logprobs differ from HF's by %g, want ≤ 1e-3", i, worst)
		}
		last := logits[(len(ids)-1)*V : len(ids)*V]
		best := 0
		for v := range last {
			if last[v] > last[best] {
				best = v
			}
		}
		if len(r.tokens) != 1 || r.tokens[0] != int32(best) {
			t.Errorf("seq%d: sampled %v, HF's argmax is %d", i, r.tokens, best)
		}
	}
	for _, ch := range text {
		collect(t, ch)
	}
	if st := e.Stats(); st.ServingCompilations != 0 {
		t.Errorf("%d programs compiled while serving", st.ServingCompilations)
	}
	if n := enc.Compilations() - towerCompiles; n != 0 {
		t.Errorf("the vision tower compiled %d programs while serving", n)
	}
}

func logSoftmaxAt(logits []float32, k int) float64 {
	m := math.Inf(-1)
	for _, v := range logits {
		m = math.Max(m, float64(v))
	}
	s := 0.0
	for _, v := range logits {
		s += math.Exp(float64(v) - m)
	}
	return float64(logits[k]) - m - math.Log(s)
}

// TestImageGreedyMatchesHF: HF's greedy run with an image, through the engine with chunked
// prefill among other requests, equal wherever HF's top-1 margin exceeds 1e-3; and the
// same tokens and logprobs alone.
func TestImageGreedyMatchesHF(t *testing.T) {
	_, _, images := visionFixture(t)
	g := visionGolden(t)
	run := g.Greedy[0]
	e := newVisionEngine(t, func(c *Config) { c.Scheduler.MaxNumBatchedTokens = 24 })
	var others []<-chan Event
	for i := 0; i < 3; i++ {
		others = append(others, submit(t, e, fmt.Sprintf("text%d", i), vocabPrompt(10+i, 30), greedyParams(8)))
	}
	got := collect(t, submitImages(t, e, "img", run.Prompt, pick(images, run.Images), greedyParams(len(run.Tokens))))
	for _, ch := range others {
		collect(t, ch)
	}
	for s, want := range run.Tokens {
		if run.Margins[s] <= 1e-3 {
			break
		}
		if got.tokens[s] != want {
			t.Fatalf("step %d: engine %d, HF %d (margin %.3g)", s, got.tokens[s], want, run.Margins[s])
		}
	}
	alone := collect(t, submitImages(t, newVisionEngine(t, func(c *Config) { c.DisablePrefixCaching = true }), "img", run.Prompt, pick(images, run.Images), greedyParams(len(run.Tokens))))
	if ok, why := sameResult(got, alone); !ok {
		t.Errorf("chunked among others vs alone: %s", why)
	}
}

// TestImagePrefixCache: the same prompt with the same image reuses its blocks (and gives
// the same result); the same placeholder tokens with another image reuse only the block
// before the image, and give what an engine without a prefix cache gives.
func TestImagePrefixCache(t *testing.T) {
	_, _, images := visionFixture(t)
	g := visionGolden(t)
	ids := g.Sequences[0].IDs // the image's soft tokens at positions 7..22
	e := newVisionEngine(t, func(c *Config) { c.PageSize = 4 })
	first := collect(t, submitImages(t, e, "a", ids, images[:1], greedyParams(4)))
	again := collect(t, submitImages(t, e, "b", ids, images[:1], greedyParams(4)))
	other := collect(t, submitImages(t, e, "c", ids, images[1:2], greedyParams(4)))
	if got, want := again.final.NumCachedTokens, (len(ids)-1)/4*4; got != want {
		t.Errorf("repeated image: %d cached tokens, want %d", got, want)
	}
	if ok, why := sameResult(first, again); !ok {
		t.Errorf("repeated image, cached vs computed: %s", why)
	}
	if got := other.final.NumCachedTokens; got != 4 {
		t.Errorf("another image, same tokens: %d cached tokens, want 4 (block 0, before the image)", got)
	}
	fresh := newVisionEngine(t, func(c *Config) { c.PageSize = 4; c.DisablePrefixCaching = true })
	want := collect(t, submitImages(t, fresh, "c", ids, images[1:2], greedyParams(4)))
	if ok, why := sameResult(other, want); !ok {
		t.Errorf("another image after the first was cached: %s (a stale block was reused)", why)
	}
	if ok, _ := sameResult(first, other); ok {
		t.Errorf("two different images gave the same tokens and logprobs: the image does not reach the model")
	}
}

// TestImageRequestErrors: requests whose images do not match their prompt are refused
// with ErrInvalidRequest, and the engine keeps serving.
func TestImageRequestErrors(t *testing.T) {
	_, _, images := visionFixture(t)
	g := visionGolden(t)
	e := newVisionEngine(t, nil)
	one, two := g.Sequences[0].IDs, g.Sequences[1].IDs
	for _, tc := range []struct {
		name   string
		prompt []int32
		images []Image
	}{
		{"more images than placeholders", one, images[:2]},
		{"placeholders without images", one, nil},
		{"wrong pixel count", one, []Image{{Pixels: make([]float32, 10)}}},
		{"broken placeholder run", append([]int32{2, 509, 511, 511, 510}, 3), images[:1]},
	} {
		_, err := e.Submit(context.Background(), Request{ID: tc.name, PromptIDs: tc.prompt, Params: greedyParams(1), Images: tc.images})
		if !errors.Is(err, ErrInvalidRequest) {
			t.Errorf("%s: err = %v, want ErrInvalidRequest", tc.name, err)
		}
	}
	collect(t, submitImages(t, e, "ok", one, images[:1], greedyParams(2)))
	// seq1's two images are 6 positions apart: transformers 4.53's mask links them, so they
	// must run in one step, and a step of one image cannot take them.
	single := newVisionEngine(t, func(c *Config) { c.MaxImagesPerStep = 1 })
	if _, err := single.Submit(context.Background(), Request{ID: "two", PromptIDs: two, Params: greedyParams(1), Images: images[1:3]}); !errors.Is(err, ErrInvalidRequest) {
		t.Errorf("linked images over the step's image limit: err = %v, want ErrInvalidRequest", err)
	}
	text := newTestEngine(t, nil)
	if _, err := text.Submit(context.Background(), Request{ID: "x", PromptIDs: []int32{2, 3}, Params: greedyParams(1), Images: images[:1]}); !errors.Is(err, ErrInvalidRequest) {
		t.Errorf("image to a text-only engine: err = %v, want ErrInvalidRequest", err)
	}
}

// TestCutImages: a chunk never ends inside an image group and takes at most the step's
// image budget.
func TestCutImages(t *testing.T) {
	r := &seqState{images: &imagePlan{groups: []imageGroup{{start: 5, end: 21, first: 0, count: 1}, {start: 30, end: 60, first: 1, count: 2}}}}
	for _, tc := range []struct {
		start, n, budget int
		wantN, wantLeft  int
	}{
		{0, 5, 2, 5, 2},    // before the first image
		{0, 10, 2, 5, 2},   // would end inside image 0: cut at its start
		{0, 25, 2, 25, 1},  // image 0 whole
		{0, 40, 2, 30, 1},  // ends inside the group of images 1–2
		{0, 70, 2, 30, 1},  // both groups fit the tokens, not the image budget
		{0, 70, 3, 70, 0},  // everything
		{5, 10, 2, 0, 2},   // starts at the image, cannot finish it: waits
		{0, 25, 0, 5, 0},   // no image budget left: stop before the image
		{21, 9, 0, 9, 0},   // text between the groups needs no budget
		{40, 30, 2, 30, 0}, // resumes inside a group (a prefix-cache hit): its images count
		{60, 10, 0, 10, 0}, // after every image
		{0, 0, 2, 0, 2},    // nothing to schedule
		{21, 20, 1, 9, 1},  // the next group needs 2 images, 1 left
	} {
		b := tc.budget
		if n := cutImages(r, tc.start, tc.n, &b); n != tc.wantN || b != tc.wantLeft {
			t.Errorf("start %d n %d budget %d: n %d budget left %d, want %d and %d", tc.start, tc.n, tc.budget, n, b, tc.wantN, tc.wantLeft)
		}
	}
}

// TestImagePreemption: image requests preempted by a tiny cache recompute their images
// (encoded again when their tokens run again) and give what they give alone.
func TestImagePreemption(t *testing.T) {
	_, _, images := visionFixture(t)
	g := visionGolden(t)
	alone := newVisionEngine(t, func(c *Config) { c.DisablePrefixCaching = true })
	want := map[int]result{}
	for i, seq := range g.Sequences {
		want[i] = collect(t, submitImages(t, alone, fmt.Sprint(i), seq.IDs, pick(images, seq.Images), greedyParams(16)))
	}
	e := newVisionEngine(t, func(c *Config) { c.KVCacheBytes = 256 << 10; c.PageSize = 4 })
	var chans []<-chan Event
	for k := 0; k < 2; k++ {
		for i, seq := range g.Sequences {
			chans = append(chans, submitImages(t, e, fmt.Sprintf("%d-%d", k, i), seq.IDs, pick(images, seq.Images), greedyParams(16)))
		}
	}
	for j, ch := range chans {
		got := collect(t, ch)
		if ok, why := sameResult(got, want[j%3]); !ok {
			t.Errorf("request %d (seq%d) under preemption: %s", j, j%3, why)
		}
	}
	if n := e.Stats().NumPreemptions; n == 0 {
		t.Errorf("no preemption happened: the cache is too large for this test")
	} else {
		t.Logf("%d preemptions", n)
	}
}

// TestImagePrefixHitInsideImage: a prefix-cache hit that ends inside an image (the same
// image, text differing after it in the same block) resumes mid-image exactly: the image is
// encoded again for the mask and the splice, its first tokens' keys come from the cache.
func TestImagePrefixHitInsideImage(t *testing.T) {
	_, _, images := visionFixture(t)
	g := visionGolden(t)
	a := g.Sequences[0].IDs // image at positions 7..22, eoi at 23
	b := append([]int32{}, a...)
	b[26] = 3 // differs after the image, in the same 16-token block
	e := newVisionEngine(t, func(c *Config) { c.PageSize = 16 })
	collect(t, submitImages(t, e, "a", a, images[:1], greedyParams(4)))
	got := collect(t, submitImages(t, e, "b", b, images[:1], greedyParams(4)))
	if got.final.NumCachedTokens != 16 {
		t.Fatalf("%d cached tokens, want 16 (block 0: the hit ends inside the image)", got.final.NumCachedTokens)
	}
	fresh := newVisionEngine(t, func(c *Config) { c.PageSize = 16; c.DisablePrefixCaching = true })
	want := collect(t, submitImages(t, fresh, "b", b, images[:1], greedyParams(4)))
	if ok, why := sameResult(got, want); !ok {
		t.Errorf("resumed inside the image vs computed whole: %s", why)
	}
}
