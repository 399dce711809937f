package vision

import (
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// FuzzPreprocess: arbitrary bytes never panic, and every failure is a typed image error.
// The seed corpus (the fixture images, the WebP samples, their truncations) runs with
// plain `go test`; `go test -fuzz FuzzPreprocess ./vision` explores further.
func FuzzPreprocess(f *testing.F) {
	for _, path := range []string{
		"gemma3-tiny-vision/images/landscape.png", "gemma3-tiny-vision/images/rgba.png",
		"gemma3-tiny-vision/images/gray.png", "gopher-doc.1bpp.lossless.webp", "blue-purple-pink.lossy.webp",
	} {
		data, err := os.ReadFile(filepath.Join("testdata", path))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
		f.Add(data[:len(data)/3])
	}
	p := fixtureProcessor(f, WithMaxPixels(1<<20))
	f.Fuzz(func(t *testing.T, data []byte) {
		pp, err := p.Preprocess(data)
		if err != nil {
			var ie *ImageError
			if !errors.As(err, &ie) || !errors.Is(err, ErrImage) {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		if len(pp.Images) != 1 || len(pp.Images[0]) != 3*pp.Height*pp.Width {
			t.Fatalf("bad result %v", pp)
		}
	})
}

// TestMutatedInputsFailCleanly is a deterministic stand-in for fuzzing on a loaded CI box:
// 1,500 seeded corruptions and truncations of the sample images each either preprocess or
// fail with a typed image error, within a second each.
func TestMutatedInputsFailCleanly(t *testing.T) {
	p := fixtureProcessor(t, WithMaxPixels(1<<20))
	rng := rand.New(rand.NewPCG(1, 2))
	for _, path := range []string{
		"gemma3-tiny-vision/images/landscape.png", "gemma3-tiny-vision/images/rgba.png",
		"gemma3-tiny-vision/images/gray.png", "gopher-doc.1bpp.lossless.webp", "blue-purple-pink.lossy.webp",
	} {
		seed, err := os.ReadFile(filepath.Join("testdata", path))
		if err != nil {
			t.Fatal(err)
		}
		for it := 0; it < 300; it++ {
			d := slices.Clone(seed)
			for k := 0; k < 1+rng.IntN(4); k++ {
				d[rng.IntN(len(d))] = byte(rng.IntN(256))
			}
			if rng.IntN(3) == 0 {
				d = d[:rng.IntN(len(d))]
			}
			start := time.Now()
			_, err := p.Preprocess(d)
			if el := time.Since(start); el > time.Second {
				t.Errorf("%s mutation %d took %v", path, it, el)
			}
			if err != nil {
				var ie *ImageError
				if !errors.As(err, &ie) || !errors.Is(err, ErrImage) {
					t.Fatalf("%s mutation %d: untyped error %v", path, it, err)
				}
			}
		}
	}
}
