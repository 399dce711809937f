package vision

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
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
