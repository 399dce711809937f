package vision

import (
	"encoding/json"
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
)

const fixtureDir = "testdata/gemma3-tiny-vision"

type goldenJSON struct {
	Images    []string `json:"images"`
	Sequences []struct {
		Images []int `json:"images"`
	} `json:"sequences"`
	ImageTokenIndex  int `json:"image_token_index"`
	BOITokenIndex    int `json:"boi_token_index"`
	EOITokenIndex    int `json:"eoi_token_index"`
	MMTokensPerImage int `json:"mm_tokens_per_image"`
}

var (
	goldenOnce    sync.Once
	goldenMeta    goldenJSON
	goldenTensors map[string]*tensors.Tensor
	goldenErr     error
)

func loadGolden(t testing.TB) (goldenJSON, map[string]*tensors.Tensor) {
	t.Helper()
	goldenOnce.Do(func() {
		data, err := os.ReadFile(filepath.Join(fixtureDir, "golden.json"))
		if err != nil {
			goldenErr = err
			return
		}
		if err := json.Unmarshal(data, &goldenMeta); err != nil {
			goldenErr = err
			return
		}
		goldenTensors, goldenErr = model.ReadSafetensors(filepath.Join(fixtureDir, "golden.safetensors"))
	})
	if goldenErr != nil {
		t.Fatalf("golden fixture: %v", goldenErr)
	}
	return goldenMeta, goldenTensors
}

func flatF32(t testing.TB, x *tensors.Tensor) []float32 {
	t.Helper()
	var out []float32
	if err := x.ConstFlatData(func(flat any) { out = append(out, flat.([]float32)...) }); err != nil {
		t.Fatal(err)
	}
	return out
}

func maxAbsDiff(a, b []float32) float64 {
	if len(a) != len(b) {
		return math.Inf(1)
	}
	m := 0.0
	for i := range a {
		m = max(m, math.Abs(float64(a[i])-float64(b[i])))
	}
	return m
}

func fixtureProcessor(t testing.TB, opts ...ProcessorOption) *Processor {
	t.Helper()
	pc, err := LoadPreprocessorConfig(fixtureDir)
	if err != nil {
		t.Fatal(err)
	}
	p, err := NewProcessor(pc, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func preprocessFile(t testing.TB, p *Processor, name string) *Preprocessed {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(fixtureDir, "images", name))
	if err != nil {
		t.Fatal(err)
	}
	pp, err := p.Preprocess(data)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return pp
}

// TestPixelValuesMatchHF: every fixture PNG reproduces HF's pixel_values (golden.json's
// "images" says which image j is: landscape RGB 100×60, RGBA 33×33, grayscale 200×150).
// PIL's resize is integer arithmetic, so a faithful port is exact; the brief's bound is 0.02.
func TestPixelValuesMatchHF(t *testing.T) {
	meta, golden := loadGolden(t)
	p := fixtureProcessor(t)
	for j, name := range meta.Images {
		t.Run(name, func(t *testing.T) {
			pp := preprocessFile(t, p, name)
			if len(pp.Images) != 1 || pp.NumCrops != 0 {
				t.Fatalf("%d images, %d crops; want 1, 0 (pan and scan is off)", len(pp.Images), pp.NumCrops)
			}
			want := flatF32(t, golden[fmt.Sprintf("image%d.pixel_values", j)])
			d := maxAbsDiff(pp.Images[0], want)
			t.Logf("%s (%s %dx%d): max |Δ pixel_values| = %.3g", name, pp.Format, pp.SourceWidth, pp.SourceHeight, d)
			if d > 1e-6 {
				t.Errorf("max |Δ| = %g, want ≤ 1e-6 (exact PIL arithmetic); tolerance of the brief is 0.02", d)
			}
		})
	}
}

// TestAntialiasAblation: sampling without PIL's support scaling when shrinking moves the
// pixel values of the downscaled fixtures well beyond the 0.02 tolerance, so the golden
// test does check the antialiasing.
func TestAntialiasAblation(t *testing.T) {
	meta, golden := loadGolden(t)
	p := fixtureProcessor(t, withoutAntialias())
	for j, name := range meta.Images {
		if name == "rgba.png" {
			continue // 33×33 is enlarged: antialiasing does not apply
		}
		pp := preprocessFile(t, p, name)
		d := maxAbsDiff(pp.Images[0], flatF32(t, golden[fmt.Sprintf("image%d.pixel_values", j)]))
		t.Logf("%s without antialias: max |Δ| = %.3g", name, d)
		if d <= 0.02 {
			t.Errorf("%s: without antialiasing max |Δ| = %g, want > 0.02 (the ablation must fail the golden tolerance)", name, d)
		}
	}
}

var (
	encoderOnce sync.Once
	encoderF32  *Encoder
	encoderErr  error
)

func fixtureEncoder(t testing.TB) *Encoder {
	t.Helper()
	encoderOnce.Do(func() {
		encoderF32, encoderErr = LoadEncoder(backendtest.Backend(t), fixtureDir, dtypes.Float32)
		if encoderErr == nil {
			encoderErr = encoderF32.Precompile(1, 2)
		}
	})
	if encoderErr != nil {
		t.Fatal(encoderErr)
	}
	return encoderF32
}

// sequenceImages preprocesses the images a golden sequence uses, in its order.
func sequenceImages(t testing.TB, p *Processor, meta goldenJSON, seq int) [][]float32 {
	var out [][]float32
	for _, j := range meta.Sequences[seq].Images {
		out = append(out, preprocessFile(t, p, meta.Images[j]).Images[0])
	}
	return out
}

// TestFeaturesMatchHF: the f32 tower + projector on our own preprocessing reproduce each
// sequence's seq{i}.image_features (golden.json's sequences[i].images gives the images and
// their order) within 1e-3.
func TestFeaturesMatchHF(t *testing.T) {
	meta, golden := loadGolden(t)
	enc := fixtureEncoder(t)
	p := fixtureProcessor(t)
	compiles := enc.Compilations()
	for i := range meta.Sequences {
		t.Run(fmt.Sprintf("seq%d", i), func(t *testing.T) {
			imgs := sequenceImages(t, p, meta, i)
			f, err := enc.Encode(imgs)
			if err != nil {
				t.Fatal(err)
			}
			want := flatF32(t, golden[fmt.Sprintf("seq%d.image_features", i)])
			d := maxAbsDiff(f.Data, want)
			t.Logf("seq%d (images %v): max |Δ image_features| = %.3g (features range ±%.2f)", i, meta.Sequences[i].Images, d, maxAbs(want))
			if d > 1e-3 {
				t.Errorf("max |Δ| = %g, want ≤ 1e-3", d)
			}
		})
	}
	if got := enc.Compilations(); got != compiles {
		t.Errorf("Encode compiled %d programs; everything must be precompiled", got-compiles)
	}
}

func maxAbs(x []float32) float64 {
	m := 0.0
	for _, v := range x {
		m = max(m, math.Abs(float64(v)))
	}
	return m
}

// TestFeaturesFromGoldenPixels feeds HF's own pixel_values to the tower, isolating the
// graph from the preprocessing.
func TestFeaturesFromGoldenPixels(t *testing.T) {
	meta, golden := loadGolden(t)
	enc := fixtureEncoder(t)
	for i, seq := range meta.Sequences {
		var imgs [][]float32
		for _, j := range seq.Images {
			imgs = append(imgs, flatF32(t, golden[fmt.Sprintf("image%d.pixel_values", j)]))
		}
		f, err := enc.Encode(imgs)
		if err != nil {
			t.Fatal(err)
		}
		if d := maxAbsDiff(f.Data, flatF32(t, golden[fmt.Sprintf("seq%d.image_features", i)])); d > 1e-3 {
			t.Errorf("seq%d: max |Δ| = %g from HF's pixel values, want ≤ 1e-3", i, d)
		}
	}
}

// TestCausalAttentionAblation: SigLIP's attention is bidirectional; a causal mask moves the
// features beyond the 1e-3 tolerance, so the golden test checks the attention pattern.
func TestCausalAttentionAblation(t *testing.T) {
	_, golden := loadGolden(t)
	cfg, err := LoadConfig(fixtureDir)
	if err != nil {
		t.Fatal(err)
	}
	ck, err := model.OpenCheckpoint(fixtureDir)
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Close()
	w, err := LoadWeights(ck, &cfg, dtypes.Float32)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Finalize()
	pix := flatF32(t, golden["image0.pixel_values"])
	got := runEncodeOnce(t, &cfg, w, [][]float32{pix}, encodeOptions{causal: true})
	d := maxAbsDiff(got, flatF32(t, golden["seq0.image_features"]))
	t.Logf("causal attention: max |Δ| = %.3g", d)
	if d <= 1e-3 {
		t.Errorf("causal attention gives max |Δ| = %g, want > 1e-3 (the ablation must fail the golden tolerance)", d)
	}
}
