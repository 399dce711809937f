package vision

import (
	"bytes"
	"image"
	"image/jpeg"
	"image/png"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/tpuserve/tpuserve/internal/backendtest"
)

// photoLike is a w×h RGB picture with texture (so PNG/JPEG sizes are realistic).
func photoLike(w, h int) *image.RGBA {
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	seed := uint32(1)
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			seed = seed*1664525 + 1013904223
			n := uint8(seed >> 27)
			copy(img.Pix[img.PixOffset(x, y):], []uint8{uint8(x*255/w) + n, uint8(y*255/h) + n, uint8((x^y)&0xff) + n, 255})
		}
	}
	return img
}

// BenchmarkPreprocess: decode + RGB + PIL bilinear resize + normalise, per image.
//   - fixture/*: the tiny fixture's PNGs to 64×64;
//   - 4B/*: a 1280×960 photo-like picture to 896×896 (Gemma 3 4B–27B's processor size).
func BenchmarkPreprocess(b *testing.B) {
	tiny := fixtureProcessor(b)
	for _, name := range []string{"landscape.png", "rgba.png", "gray.png"} {
		data, err := os.ReadFile(filepath.Join(fixtureDir, "images", name))
		if err != nil {
			b.Fatal(err)
		}
		b.Run("fixture/"+name, func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				if _, err := tiny.Preprocess(data); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	cfg := DefaultPreprocessorConfig() // 896×896
	p896, err := NewProcessor(cfg)
	if err != nil {
		b.Fatal(err)
	}
	photo := photoLike(1280, 960)
	var pngBuf, jpgBuf bytes.Buffer
	if err := png.Encode(&pngBuf, photo); err != nil {
		b.Fatal(err)
	}
	if err := jpeg.Encode(&jpgBuf, photo, &jpeg.Options{Quality: 90}); err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct {
		name string
		data []byte
	}{{"4B/png-1280x960", pngBuf.Bytes()}, {"4B/jpeg-1280x960", jpgBuf.Bytes()}} {
		b.Run(c.name, func(b *testing.B) {
			b.SetBytes(int64(len(c.data)))
			for b.Loop() {
				if _, err := p896.Preprocess(c.data); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	b.Run("4B/resize-only-1280x960", func(b *testing.B) {
		rgb := toRGB(photo)
		for b.Loop() {
			resizeBilinear(rgb, 896, 896, true)
		}
	})
}

// BenchmarkTowerTiny: the fixture's tower + projector, f32, per batch of 1 and 2 images.
func BenchmarkTowerTiny(b *testing.B) {
	_, golden := loadGolden(b)
	enc, err := LoadEncoder(backendtest.Backend(b), fixtureDir, dtypes.Float32)
	if err != nil {
		b.Fatal(err)
	}
	defer enc.Close()
	if err := enc.Precompile(1, 2); err != nil {
		b.Fatal(err)
	}
	img := flatF32(b, golden["image0.pixel_values"])
	for _, n := range []int{1, 2} {
		b.Run("images="+strconv.Itoa(n), func(b *testing.B) {
			imgs := make([][]float32, n)
			for i := range imgs {
				imgs[i] = img
			}
			for b.Loop() {
				if _, err := enc.Encode(imgs); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N*n), "µs/image")
		})
	}
}

// BenchmarkTower4B: a SigLIP-So400m-shaped random tower with Gemma 3 4B's projector
// (hidden 1152, 16 heads, intermediate 4304, image 896, patch 14 → 4096 patches; 256
// tokens; text hidden 2560), one image, f32 and bf16. The full 27 layers take minutes per
// image on a 2-core CPU, so by default it runs TPUSERVE_VISION_BENCH_LAYERS=1 layer and
// reports the per-layer time and the 27-layer extrapolation (the embedding and projector
// are < 1% of the work). Skipped with -short.
func BenchmarkTower4B(b *testing.B) {
	if testing.Short() {
		b.Skip("4B-shaped tower: slow on a CPU")
	}
	cfg, err := ParseConfig([]byte(config4B))
	if err != nil {
		b.Fatal(err)
	}
	layers := 1
	if s := os.Getenv("TPUSERVE_VISION_BENCH_LAYERS"); s != "" {
		if layers, err = strconv.Atoi(s); err != nil || layers < 1 || layers > cfg.NumHiddenLayers {
			b.Fatalf("TPUSERVE_VISION_BENCH_LAYERS=%q: want 1..%d", s, cfg.NumHiddenLayers)
		}
	}
	full := cfg.NumHiddenLayers
	cfg.NumHiddenLayers = layers
	img := toRGB(photoLike(896, 896))
	p, err := NewProcessor(DefaultPreprocessorConfig())
	if err != nil {
		b.Fatal(err)
	}
	pixels := p.normalize(img)
	for _, dt := range []dtypes.DType{dtypes.Float32, dtypes.BFloat16} {
		b.Run(dt.String()+"/layers="+strconv.Itoa(layers), func(b *testing.B) {
			w, err := RandomWeights(&cfg, dt, 1)
			if err != nil {
				b.Fatal(err)
			}
			enc, err := NewEncoder(backendtest.Backend(b), cfg, w)
			if err != nil {
				b.Fatal(err)
			}
			defer enc.Close()
			start := time.Now()
			if err := enc.Precompile(1); err != nil {
				b.Fatal(err)
			}
			compile := time.Since(start)
			for b.Loop() {
				if _, err := enc.Encode([][]float32{pixels}); err != nil {
					b.Fatal(err)
				}
			}
			perImage := b.Elapsed().Seconds() / float64(b.N)
			b.ReportMetric(perImage/float64(layers), "s/layer")
			b.ReportMetric(perImage/float64(layers)*float64(full), "s/image-27-layers")
			b.ReportMetric(compile.Seconds(), "s-compile")
			// 2·N·D²·4 (q, k, v, out) + 2·N·D·I·2 (MLP) + 2·N²·D·2 (scores, values) per layer.
			n, d, i := float64(cfg.NumPatches()), float64(cfg.HiddenSize), float64(cfg.IntermediateSize)
			b.ReportMetric((8*n*d*d+4*n*d*i+4*n*n*d)/(perImage/float64(layers))/1e9, "GFLOP/s")
		})
	}
}
