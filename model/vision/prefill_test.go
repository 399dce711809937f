package vision

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/tpuserve/tpuserve/internal/backendtest"
	"github.com/tpuserve/tpuserve/model"
)

var (
	lmOnce sync.Once
	lmF32  *model.Model
	lmErr  error
)

// fixtureLM is the fixture's language model in float32.
func fixtureLM(t testing.TB) *model.Model {
	t.Helper()
	lmOnce.Do(func() {
		lmF32, lmErr = model.Load(backendtest.Backend(t), model.LoadOptions{Model: fixtureDir, DType: dtypes.Float32, Progress: func(model.LoadProgress) {}})
	})
	if lmErr != nil {
		t.Fatal(lmErr)
	}
	if !lmF32.Config.Vision {
		t.Fatal("the fixture's config has a vision_config: Config.Vision must be set")
	}
	return lmF32
}

// greedyJSON is golden.json's greedy runs.
type greedyJSON struct {
	Greedy []struct {
		Prompt  []int32   `json:"prompt"`
		Images  []int     `json:"images"`
		Tokens  []int32   `json:"greedy_f32"`
		Margins []float64 `json:"top1_margins"`
	} `json:"greedy"`
}

// imageLogits runs ids with the golden sequence's images through the tower (EncodeRows,
// features left on the device) and the language model, returning logits [T·V].
func imageLogits(t testing.TB, ids []int32, images [][]float32, split bool, mask ...string) []float32 {
	t.Helper()
	enc := fixtureEncoder(t)
	lm := fixtureLM(t)
	if len(mask) > 0 || split {
		m := *lm // the same weights with another mask
		if err := m.Config.SetImageMask(append(mask, model.ImageMaskPerImage)[0], enc.Config().MMTokensPerImage); err != nil {
			t.Fatal(err)
		}
		lm = &m
	}
	cfg := enc.Config()
	rows := 4 * cfg.MMTokensPerImage
	if err := enc.PrecompileRows(rows, 1, 2, 4); err != nil {
		t.Fatal(err)
	}
	embeds, err := enc.EncodeRows(images, rows)
	if err != nil {
		t.Fatal(err)
	}
	defer embeds.FinalizeAll()
	chunks, err := cfg.ChunkImages(ids, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(chunks) != len(images) {
		t.Fatalf("%d placeholder runs, %d images", len(chunks), len(images))
	}
	if split { // the ablation: each soft token its own one-token image, per-image mask: causal
		var one []model.ChunkImage
		for _, c := range chunks {
			for k := 0; k < c.Len; k++ {
				one = append(one, model.ChunkImage{Pos: c.Pos + k, Len: 1, Row: c.Row + k})
			}
		}
		chunks = one
	}
	out, err := lm.ForwardLogitsImages(ids, chunks, embeds)
	if err != nil {
		t.Fatal(err)
	}
	defer out.FinalizeAll()
	return flatF32(t, out)
}

// TestImagePrefillMatchesHF: the three fixture sequences (one image; two images; an image
// right after <bos>), images preprocessed and encoded here, spliced into the prefill:
// logits within 1e-3 of HF's seq{i}.logits_f32 at every position.
func TestImagePrefillMatchesHF(t *testing.T) {
	meta, golden := loadGolden(t)
	p := fixtureProcessor(t)
	for i := range meta.Sequences {
		t.Run(fmt.Sprintf("seq%d", i), func(t *testing.T) {
			ids := int32s(t, golden[fmt.Sprintf("seq%d.ids", i)])
			got := imageLogits(t, ids, sequenceImages(t, p, meta, i), false)
			want := flatF32(t, golden[fmt.Sprintf("seq%d.logits_f32", i)])
			d := maxAbsDiff(got, want)
			t.Logf("seq%d (%d tokens, images %v): max |Δ logits| = %.3g (logits ±%.2f)", i, len(ids), meta.Sequences[i].Images, d, maxAbs(want))
			if d > 1e-3 {
				t.Errorf("max |Δ logits| = %g, want ≤ 1e-3", d)
			}
		})
	}
}

// TestImageCausalAblation: with causal attention among an image's tokens (each soft token
// its own span) the logits leave the 1e-3 tolerance: the golden test checks the
// bidirectional mask.
func TestImageCausalAblation(t *testing.T) {
	meta, golden := loadGolden(t)
	p := fixtureProcessor(t)
	ids := int32s(t, golden["seq0.ids"])
	got := imageLogits(t, ids, sequenceImages(t, p, meta, 0), true)
	d := maxAbsDiff(got, flatF32(t, golden["seq0.logits_f32"]))
	t.Logf("causal image attention: max |Δ logits| = %.3g (HF's own figure: %.3g)", d, 2.07)
	if d <= 1e-3 {
		t.Errorf("causal attention over the image tokens gives max |Δ| = %g, want > 1e-3 (the ablation must fail)", d)
	}
}

// TestImageMaskRuleAblation: the two-image sequence pins transformers 4.53's rule (image
// tokens within mm_tokens_per_image positions see each other, across images): with the
// per-image mask (later transformers, Gemma's training) seq1 leaves the tolerance, while
// the single-image sequences do not care.
func TestImageMaskRuleAblation(t *testing.T) {
	meta, golden := loadGolden(t)
	p := fixtureProcessor(t)
	for i, wantDiff := range []bool{false, true, false} {
		ids := int32s(t, golden[fmt.Sprintf("seq%d.ids", i)])
		got := imageLogits(t, ids, sequenceImages(t, p, meta, i), false, model.ImageMaskPerImage)
		d := maxAbsDiff(got, flatF32(t, golden[fmt.Sprintf("seq%d.logits_f32", i)]))
		t.Logf("seq%d with the per-image mask: max |Δ logits| = %.3g", i, d)
		if (d > 1e-3) != wantDiff {
			t.Errorf("seq%d: per-image mask gives max |Δ| = %g; want > 1e-3: %v", i, d, wantDiff)
		}
	}
}

// TestImageGreedyMatchesHF: the greedy continuation by full recompute with the image,
// equal to HF's wherever its top-1 margin exceeds 1e-3.
func TestImageGreedyMatchesHF(t *testing.T) {
	meta, _ := loadGolden(t)
	data, err := os.ReadFile(filepath.Join(fixtureDir, "golden.json"))
	if err != nil {
		t.Fatal(err)
	}
	var g greedyJSON
	if err := json.Unmarshal(data, &g); err != nil {
		t.Fatal(err)
	}
	p := fixtureProcessor(t)
	V := fixtureLM(t).Config.VocabSize
	for _, run := range g.Greedy {
		var imgs [][]float32
		for _, j := range run.Images {
			imgs = append(imgs, preprocessFile(t, p, meta.Images[j]).Images[0])
		}
		ids := append([]int32{}, run.Prompt...)
		for s, want := range run.Tokens {
			logits := imageLogits(t, ids, imgs, false)
			last := logits[(len(ids)-1)*V : len(ids)*V]
			best := 0
			for v := range last {
				if last[v] > last[best] {
					best = v
				}
			}
			if int32(best) != want && run.Margins[s] > 1e-3 {
				t.Fatalf("step %d: greedy %d, HF %d (margin %.3g)", s, best, want, run.Margins[s])
			}
			ids = append(ids, want) // follow HF's tokens so a tie does not derail the rest
		}
	}
}

func int32s(t testing.TB, x *tensors.Tensor) []int32 {
	t.Helper()
	var out []int32
	if err := x.ConstFlatData(func(flat any) { out = append(out, flat.([]int32)...) }); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestImagePrefillBF16: the tower and the language model in bf16 (the serving dtype)
// stay within the fixture README's bf16 tolerance of HF's f32 logits (a few tenths), with
// HF's argmax wherever its f32 top-1 margin exceeds 0.3.
func TestImagePrefillBF16(t *testing.T) {
	meta, golden := loadGolden(t)
	b := backendtest.Backend(t)
	lm, err := model.Load(b, model.LoadOptions{Model: fixtureDir, DType: dtypes.BFloat16, Progress: func(model.LoadProgress) {}})
	if err != nil {
		t.Fatal(err)
	}
	defer lm.Close()
	enc, err := LoadEncoder(b, fixtureDir, dtypes.BFloat16)
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	cfg := enc.Config()
	rows := 2 * cfg.MMTokensPerImage
	if err := enc.PrecompileRows(rows, 2); err != nil {
		t.Fatal(err)
	}
	p := fixtureProcessor(t)
	V := lm.Config.VocabSize
	for i := range meta.Sequences {
		ids := int32s(t, golden[fmt.Sprintf("seq%d.ids", i)])
		embeds, err := enc.EncodeRows(sequenceImages(t, p, meta, i), rows)
		if err != nil {
			t.Fatal(err)
		}
		chunks, err := cfg.ChunkImages(ids, 0)
		if err != nil {
			t.Fatal(err)
		}
		out, err := lm.ForwardLogitsImages(ids, chunks, embeds)
		embeds.FinalizeAll()
		if err != nil {
			t.Fatal(err)
		}
		got := flatF32(t, out)
		out.FinalizeAll()
		want := flatF32(t, golden[fmt.Sprintf("seq%d.logits_f32", i)])
		d := maxAbsDiff(got, want)
		t.Logf("seq%d bf16: max |Δ logits| = %.3g", i, d)
		if d > 0.3 {
			t.Errorf("seq%d: bf16 logits differ by %g, want ≤ 0.3", i, d)
		}
		for pos := 0; pos < len(ids); pos++ {
			row := want[pos*V : (pos+1)*V]
			best, second := argmax2(row)
			if row[best]-row[second] > 0.3 {
				if g, _ := argmax2(got[pos*V : (pos+1)*V]); g != best {
					t.Errorf("seq%d position %d: bf16 argmax %d, HF %d (margin %.3g)", i, pos, g, best, row[best]-row[second])
				}
			}
		}
	}
}

func argmax2(x []float32) (best, second int) {
	best, second = 0, 1
	if x[1] > x[0] {
		best, second = 1, 0
	}
	for i := 2; i < len(x); i++ {
		switch {
		case x[i] > x[best]:
			best, second = i, best
		case x[i] > x[second]:
			second = i
		}
	}
	return best, second
}
