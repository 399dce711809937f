package vision

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/tpuserve/tpuserve/internal/backendtest"
	"github.com/tpuserve/tpuserve/model"
)

// TestEncoderBuckets: batches run in the smallest precompiled bucket that holds them, or
// in chunks of the largest; padding images do not leak into real ones; nothing compiles
// after Precompile.
func TestEncoderBuckets(t *testing.T) {
	meta, golden := loadGolden(t)
	enc, err := LoadEncoder(backendtest.Backend(t), fixtureDir, dtypes.Float32)
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	img := func(j int) []float32 { return flatF32(t, golden[fmt.Sprintf("image%d.pixel_values", j)]) }
	if _, err := enc.Encode([][]float32{img(0)}); !errors.Is(err, ErrNotCompiled) {
		t.Fatalf("Encode before Precompile: %v, want ErrNotCompiled", err)
	}
	if err := enc.Precompile(2, 3, 2); err != nil {
		t.Fatal(err)
	}
	if got := enc.Compilations(); got != 2 {
		t.Errorf("%d compilations for buckets {2, 3}, want 2", got)
	}
	if got := enc.Buckets(); !slices.Equal(got, []int{2, 3}) {
		t.Errorf("buckets %v", got)
	}
	want := map[int][]float32{
		0: flatF32(t, golden["seq0.image_features"]),
		2: flatF32(t, golden["seq2.image_features"]),
	}
	seq1 := flatF32(t, golden["seq1.image_features"])
	want[1] = seq1[:len(seq1)/2]
	for _, batch := range [][]int{{0}, {2, 0}, {1, 2, 0}, {0, 1, 2, 2, 1, 0, 0}} {
		var imgs [][]float32
		for _, j := range batch {
			imgs = append(imgs, img(j))
		}
		f, err := enc.Encode(imgs)
		if err != nil {
			t.Fatal(err)
		}
		if f.N != len(batch) || f.Tokens != meta.MMTokensPerImage || f.Hidden != 128 {
			t.Fatalf("features %d×%d×%d", f.N, f.Tokens, f.Hidden)
		}
		for i, j := range batch {
			if d := maxAbsDiff(f.Image(i), want[j]); d > 1e-3 {
				t.Errorf("batch %v: image %d (fixture image %d) max |Δ| = %g", batch, i, j, d)
			}
		}
	}
	if got := enc.Compilations(); got != 2 {
		t.Errorf("%d compilations after serving, want still 2", got)
	}
	f, err := enc.Encode([][]float32{img(0)})
	if err != nil {
		t.Fatal(err)
	}
	for _, dt := range []dtypes.DType{dtypes.Float32, dtypes.BFloat16} {
		ft, err := f.Tensor(dt)
		if err != nil {
			t.Fatal(err)
		}
		if ft.DType() != dt || !slices.Equal(ft.Shape().Dimensions, []int{1, 16, 128}) {
			t.Errorf("features tensor %s", ft.Shape())
		}
		ft.FinalizeAll()
	}
	if _, err := enc.Encode([][]float32{make([]float32, 10)}); !errors.Is(err, ErrInput) {
		t.Errorf("wrong pixel count: %v, want ErrInput", err)
	}
	if _, err := enc.Encode(nil); !errors.Is(err, ErrInput) {
		t.Errorf("no images: %v, want ErrInput", err)
	}
	if err := enc.Precompile(0); !errors.Is(err, ErrInput) {
		t.Errorf("bucket 0: %v, want ErrInput", err)
	}
	enc.Close()
	if _, err := enc.Encode([][]float32{img(0)}); !errors.Is(err, ErrInput) {
		t.Errorf("Encode after Close: %v, want ErrInput", err)
	}
}

// TestEncoderBF16: bf16 compute against the f32 reference. The tiny features reach ±4; bf16
// keeps 8 bits of mantissa, so the bound is a few hundredths.
func TestEncoderBF16(t *testing.T) {
	meta, golden := loadGolden(t)
	enc, err := LoadEncoder(backendtest.Backend(t), fixtureDir, dtypes.BFloat16)
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	if err := enc.Precompile(2); err != nil {
		t.Fatal(err)
	}
	if enc.DType() != dtypes.BFloat16 {
		t.Fatalf("dtype %s", enc.DType())
	}
	for i, seq := range meta.Sequences {
		var imgs [][]float32
		for _, j := range seq.Images {
			imgs = append(imgs, flatF32(t, golden[fmt.Sprintf("image%d.pixel_values", j)]))
		}
		f, err := enc.Encode(imgs)
		if err != nil {
			t.Fatal(err)
		}
		want := flatF32(t, golden[fmt.Sprintf("seq%d.image_features", i)])
		d := maxAbsDiff(f.Data, want)
		t.Logf("seq%d bf16 vs f32 reference: max |Δ| = %.3g (range ±%.2f)", i, d, maxAbs(want))
		if d > 0.15 {
			t.Errorf("seq%d: bf16 max |Δ| = %g, want ≤ 0.15", i, d)
		}
	}
}

// TestLoadWeightsErrors: a missing or mis-shaped tensor names the tensor and file.
func TestLoadWeightsErrors(t *testing.T) {
	cfg, err := LoadConfig(fixtureDir)
	if err != nil {
		t.Fatal(err)
	}
	ck, err := model.OpenCheckpoint(fixtureDir)
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Close()
	bigger := cfg
	bigger.NumHiddenLayers = 3
	if _, err := LoadWeights(ck, &bigger, dtypes.Float32); !errors.Is(err, model.ErrWeights) || !strings.Contains(err.Error(), "encoder.layers.2.layer_norm1.weight") {
		t.Errorf("3 layers from a 2-layer checkpoint: %v", err)
	}
	wider := cfg
	wider.TextHiddenSize = 64
	if _, err := LoadWeights(ck, &wider, dtypes.Float32); !errors.Is(err, model.ErrWeights) || !strings.Contains(err.Error(), "mm_input_projection_weight") ||
		!strings.Contains(err.Error(), "model-00002-of-00002.safetensors") {
		t.Errorf("mis-shaped projection: %v", err)
	}
	if _, err := LoadWeights(ck, &cfg, dtypes.Float16); !errors.Is(err, ErrConfig) {
		t.Errorf("float16 compute: %v", err)
	}
	// A text-only checkpoint has no tower.
	dir := t.TempDir()
	if err := model.WriteSafetensors(filepath.Join(dir, "model.safetensors"), map[string]*tensors.Tensor{
		"model.embed_tokens.weight": tensors.FromFlatDataAndDimensions(make([]float32, 8), 2, 4),
	}); err != nil {
		t.Fatal(err)
	}
	text, err := model.OpenCheckpoint(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer text.Close()
	if _, err := LoadWeights(text, &cfg, dtypes.Float32); !errors.Is(err, model.ErrWeights) || !strings.Contains(err.Error(), "not a multimodal checkpoint") {
		t.Errorf("text-only checkpoint: %v", err)
	}
}

// TestRandomWeightsRun: seeded random weights of a config run, deterministically.
func TestRandomWeightsRun(t *testing.T) {
	cfg, err := LoadConfig(fixtureDir)
	if err != nil {
		t.Fatal(err)
	}
	w1, err := RandomWeights(&cfg, dtypes.Float32, 7)
	if err != nil {
		t.Fatal(err)
	}
	w2, err := RandomWeights(&cfg, dtypes.Float32, 7)
	if err != nil {
		t.Fatal(err)
	}
	defer w1.Finalize()
	defer w2.Finalize()
	img := make([]float32, 3*64*64)
	for i := range img {
		img[i] = float32(i%17)/8 - 1
	}
	a := runEncodeOnce(t, &cfg, w1, [][]float32{img}, encodeOptions{})
	b := runEncodeOnce(t, &cfg, w2, [][]float32{img}, encodeOptions{})
	if !slices.Equal(a, b) {
		t.Error("same seed, different features")
	}
	for _, v := range a {
		if v != v {
			t.Fatal("NaN in features")
		}
	}
}
