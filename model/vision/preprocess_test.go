package vision

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"image"
	"image/color"
	"image/color/palette"
	"image/gif"
	"image/jpeg"
	"image/png"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func encodePNG(t testing.TB, img image.Image) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// identityProcessor keeps the image size (64×64, so no resize) with the fixture's
// normalisation: pixel value = (v/255 − 0.5)/0.5.
func identityProcessor(t testing.TB, opts ...ProcessorOption) *Processor {
	t.Helper()
	return fixtureProcessor(t, opts...)
}

func norm(v uint8) float32 { return (float32(float64(v)*(1.0/255)) - 0.5) / 0.5 }

// rgbAt reads back the 8-bit value of channel c at (x, y) of a 64×64 preprocessed image.
func valueAt(pp *Preprocessed, c, x, y int) float32 {
	return pp.Images[0][c*pp.Height*pp.Width+y*pp.Width+x]
}

// TestAlphaOverWhite: transparent pixels are composited over white with PIL's integer
// blend (paste with the alpha band as mask), for every Go image type that carries alpha.
func TestAlphaOverWhite(t *testing.T) {
	cases := []struct {
		name       string
		r, g, b, a uint8
		want       [3]uint8
	}{
		{"opaque", 100, 50, 0, 255, [3]uint8{100, 50, 0}},
		{"transparent", 100, 50, 0, 0, [3]uint8{255, 255, 255}},
		// (255·127 + 100·128)/255 = 177.2 → 177; (255·127 + 50·128)/255 = 152.1 → 152; 127.
		{"half", 100, 50, 0, 128, [3]uint8{177, 152, 127}},
		// (255·255 − 255·1 + 0·1)... a = 1: (255·254 + 0)/255 = 254.
		{"almost transparent black", 0, 0, 0, 1, [3]uint8{254, 254, 254}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			nrgba := image.NewNRGBA(image.Rect(0, 0, 64, 64))
			for i := 0; i < 64*64; i++ {
				copy(nrgba.Pix[4*i:], []uint8{tc.r, tc.g, tc.b, tc.a})
			}
			pal := image.NewPaletted(image.Rect(0, 0, 64, 64), color.Palette{color.NRGBA{tc.r, tc.g, tc.b, tc.a}})
			for _, img := range []image.Image{nrgba, pal} {
				got := toRGB(img).Pix[:3]
				if !slices.Equal(got, tc.want[:]) {
					t.Errorf("%T: toRGB = %v, want %v", img, got, tc.want)
				}
			}
			// Through PNG encoding and Preprocess (64×64: no resize).
			pp, err := identityProcessor(t).Preprocess(encodePNG(t, nrgba))
			if err != nil {
				t.Fatal(err)
			}
			for c := 0; c < 3; c++ {
				if got, want := valueAt(pp, c, 5, 7), norm(tc.want[c]); got != want {
					t.Errorf("channel %d: pixel value %g, want %g", c, got, want)
				}
			}
		})
	}
}

// TestGrayscaleAndCMYK: L replicates into R, G, B; CMYK follows PIL's cmyk2rgb.
func TestGrayscaleAndCMYK(t *testing.T) {
	gray := image.NewGray(image.Rect(0, 0, 3, 1))
	gray.Pix = []uint8{0, 77, 255}
	if got := toRGB(gray).Pix; !slices.Equal(got, []uint8{0, 0, 0, 77, 77, 77, 255, 255, 255}) {
		t.Errorf("gray → RGB %v", got)
	}
	g16 := image.NewGray16(image.Rect(0, 0, 1, 1))
	g16.SetGray16(0, 0, color.Gray16{Y: 0xab12})
	if got := toRGB(g16).Pix; !slices.Equal(got, []uint8{0xab, 0xab, 0xab}) {
		t.Errorf("gray16 → RGB %v, want the high byte", got)
	}
	cmyk := image.NewCMYK(image.Rect(0, 0, 3, 1))
	cmyk.Pix = []uint8{
		255, 0, 0, 0, // cyan: r = 255 − 255 = 0
		0, 0, 0, 128, // 50% black: nk = 127
		100, 50, 200, 55, // nk = 200: 200 − round(100·200/255) = 200 − 78 = 122; 200 − 39 = 161; 200 − 157 = 43
	}
	if got := toRGB(cmyk).Pix; !slices.Equal(got, []uint8{0, 255, 255, 127, 127, 127, 122, 161, 43}) {
		t.Errorf("CMYK → RGB %v", got)
	}
	// A grayscale PNG and the same picture as an RGB PNG preprocess identically (and hash the same).
	p := identityProcessor(t)
	big := image.NewGray(image.Rect(0, 0, 90, 40))
	rgb := image.NewRGBA(big.Bounds())
	for i := range big.Pix {
		v := uint8(i * 7 % 251)
		big.Pix[i] = v
		copy(rgb.Pix[4*i:], []uint8{v, v, v, 255})
	}
	a, err := p.Preprocess(encodePNG(t, big))
	if err != nil {
		t.Fatal(err)
	}
	b, err := p.Preprocess(encodePNG(t, rgb))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(a.Images[0], b.Images[0]) || a.Hash != b.Hash {
		t.Errorf("grayscale and RGB versions of one picture differ")
	}
	n := a.Height * a.Width
	if !slices.Equal(a.Images[0][:n], a.Images[0][n:2*n]) || !slices.Equal(a.Images[0][:n], a.Images[0][2*n:]) {
		t.Errorf("grayscale image: channels differ")
	}
}

// TestResizeHandComputed checks PIL's BILINEAR on rows whose results follow from
// Resample.c by hand (1-row images, so only the horizontal pass runs).
func TestResizeHandComputed(t *testing.T) {
	cases := []struct {
		name string
		in   []uint8
		outW int
		want []uint8
	}{
		// Shrink 4 → 2: support 2, taps (3/7, 3/7, 1/7) and (1/7, 3/7, 3/7) in 22-bit fixed
		// point: 70·3/7 + 140/7 = 50 (49.9999… + ½ truncates to 50); 10 + 60 + 90 = 160.
		{"shrink 4→2", []uint8{0, 70, 140, 210}, 2, []uint8{50, 160}},
		// Enlarge 2 → 4: support 1, centres 0.25, 0.75, 1.25, 1.75: taps clipped at the
		// edges (one tap, weight 1), then (¾, ¼) and (¼, ¾).
		{"enlarge 2→4", []uint8{0, 200}, 4, []uint8{0, 50, 150, 200}},
		// Shrink 3 → 1: centre 1.5, support 3: taps x = 0, 1, 2 with weights ⅔·(¾... ):
		// w(x) = 1 − |x + 0.5 − 1.5|/3 = ⅔, 1, ⅔ → (2/7, 3/7, 2/7): 30·2/7 + 60·3/7 + 90·2/7 = 60.
		{"shrink 3→1", []uint8{30, 60, 90}, 1, []uint8{60}},
		// Same size: a copy.
		{"same", []uint8{1, 2, 3}, 3, []uint8{1, 2, 3}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			src := newRGB(len(tc.in), 1)
			for i, v := range tc.in {
				src.Pix[3*i], src.Pix[3*i+1], src.Pix[3*i+2] = v, v, v
			}
			got := resizeBilinear(src, tc.outW, 1, true)
			for i, w := range tc.want {
				if got.Pix[3*i] != w {
					t.Errorf("out[%d] = %d, want %d (row %v)", i, got.Pix[3*i], w, got.Pix)
				}
			}
		})
	}
	// The vertical pass is the same filter: a 1-column image resized 4 → 2 in height.
	src := newRGB(1, 4)
	for i, v := range []uint8{0, 70, 140, 210} {
		src.Pix[3*i], src.Pix[3*i+1], src.Pix[3*i+2] = v, v, v
	}
	if got := resizeBilinear(src, 1, 2, true); got.Pix[0] != 50 || got.Pix[3] != 160 {
		t.Errorf("vertical 4→2 = %v, want 50, 160", got.Pix)
	}
}

// pngWithDims rewrites the IHDR of a valid PNG to claim w×h (with a valid CRC).
func pngWithDims(t testing.TB, w, h uint32) []byte {
	t.Helper()
	data := encodePNG(t, image.NewGray(image.Rect(0, 0, 2, 2)))
	out := slices.Clone(data)
	binary.BigEndian.PutUint32(out[16:], w)
	binary.BigEndian.PutUint32(out[20:], h)
	binary.BigEndian.PutUint32(out[29:], crc32.ChecksumIEEE(out[12:29]))
	return out
}

// TestBadInput: each bad input maps to its typed error, all wrapping ErrImage.
func TestBadInput(t *testing.T) {
	landscape, err := os.ReadFile(filepath.Join(fixtureDir, "images", "landscape.png"))
	if err != nil {
		t.Fatal(err)
	}
	flipped := slices.Clone(landscape)
	flipped[len(flipped)/2] ^= 0xff // inside IDAT: CRC mismatch or zlib error
	var gifBuf bytes.Buffer
	if err := gif.Encode(&gifBuf, image.NewPaletted(image.Rect(0, 0, 4, 4), palette.Plan9), nil); err != nil {
		t.Fatal(err)
	}
	zeroGIF := slices.Clone(gifBuf.Bytes())
	binary.LittleEndian.PutUint16(zeroGIF[6:], 0) // logical screen width 0

	cases := []struct {
		name   string
		data   []byte
		opts   []ProcessorOption
		kind   error
		format string
	}{
		{"empty", nil, nil, ErrEmpty, ""},
		{"random bytes", []byte("definitely not an image, just text"), nil, ErrUnsupportedFormat, ""},
		{"bmp", append([]byte("BM"), make([]byte, 64)...), nil, ErrUnsupportedFormat, "bmp"},
		{"tiff", append([]byte("II*\x00"), make([]byte, 64)...), nil, ErrUnsupportedFormat, "tiff"},
		{"truncated png", landscape[:len(landscape)/2], nil, ErrCorrupt, "png"},
		{"png header only", landscape[:20], nil, ErrCorrupt, "png"},
		{"corrupt png body", flipped, nil, ErrCorrupt, "png"},
		{"truncated jpeg", []byte{0xff, 0xd8, 0xff, 0xe0, 0, 16, 'J', 'F', 'I', 'F'}, nil, ErrCorrupt, "jpeg"},
		{"oversized dimensions", pngWithDims(t, 100000, 100000), nil, ErrTooLarge, "png"},
		{"over pixel option", pngWithDims(t, 2, 2), []ProcessorOption{WithMaxPixels(3)}, ErrTooLarge, "png"},
		{"over byte option", landscape, []ProcessorOption{WithMaxBytes(1000)}, ErrTooLarge, ""},
		{"zero width png", pngWithDims(t, 0, 5), nil, ErrEmpty, "png"},
		{"zero width gif", zeroGIF, nil, ErrEmpty, "gif"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := identityProcessor(t, tc.opts...).Preprocess(tc.data)
			if err == nil {
				t.Fatal("no error")
			}
			var ie *ImageError
			if !errors.As(err, &ie) {
				t.Fatalf("error %v is not an *ImageError", err)
			}
			if !errors.Is(err, ErrImage) || !errors.Is(err, tc.kind) {
				t.Errorf("error %q: want kind %q wrapped with ErrImage", err, tc.kind)
			}
			if ie.Format != tc.format {
				t.Errorf("error %q names format %q, want %q", err, ie.Format, tc.format)
			}
			t.Logf("%s: %v", tc.name, err)
		})
	}
	// A decoded image of zero size.
	if _, err := identityProcessor(t).PreprocessImage(image.NewRGBA(image.Rect(0, 0, 0, 3))); !errors.Is(err, ErrEmpty) {
		t.Errorf("zero-size image.Image: %v, want ErrEmpty", err)
	}
}

func gradient(w, h int) *image.RGBA {
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			copy(img.Pix[img.PixOffset(x, y):], []uint8{uint8(x * 255 / (w - 1)), uint8(y * 255 / (h - 1)), uint8((x + y) * 2), 255})
		}
	}
	return img
}

// TestFormats decodes JPEG (color and grayscale, made here), GIF (first frame, transparent
// index) and WebP (committed samples) and compares with the same pictures losslessly.
func TestFormats(t *testing.T) {
	p := identityProcessor(t)
	src := gradient(64, 64)
	ref, err := p.PreprocessImage(src)
	if err != nil {
		t.Fatal(err)
	}
	t.Run("jpeg", func(t *testing.T) {
		var buf bytes.Buffer
		if err := jpeg.Encode(&buf, src, &jpeg.Options{Quality: 100}); err != nil {
			t.Fatal(err)
		}
		pp, err := p.Preprocess(buf.Bytes())
		if err != nil {
			t.Fatal(err)
		}
		// JPEG is lossy (4:2:0 chroma): close to the source, not equal.
		if pp.Format != "jpeg" {
			t.Errorf("format %q", pp.Format)
		}
		if d := maxAbsDiff(pp.Images[0], ref.Images[0]); d > 0.1 {
			t.Errorf("JPEG q100 of a smooth gradient: max |Δ| = %g, want ≤ 0.1", d)
		} else {
			t.Logf("JPEG q100 vs source: max |Δ| = %.3g", d)
		}
	})
	t.Run("jpeg gray", func(t *testing.T) {
		g := image.NewGray(image.Rect(0, 0, 64, 64))
		for i := range g.Pix {
			g.Pix[i] = uint8(i % 64 * 4)
		}
		var buf bytes.Buffer
		if err := jpeg.Encode(&buf, g, &jpeg.Options{Quality: 100}); err != nil {
			t.Fatal(err)
		}
		pp, err := p.Preprocess(buf.Bytes())
		if err != nil {
			t.Fatal(err)
		}
		n := 64 * 64
		if !slices.Equal(pp.Images[0][:n], pp.Images[0][n:2*n]) {
			t.Error("grayscale JPEG: channels differ")
		}
	})
	t.Run("gif", func(t *testing.T) {
		pal := color.Palette{color.RGBA{0, 0, 0, 0}, color.RGBA{255, 0, 0, 255}, color.RGBA{0, 0, 255, 255}}
		f1 := image.NewPaletted(image.Rect(0, 0, 64, 64), pal)
		f2 := image.NewPaletted(image.Rect(0, 0, 64, 64), pal)
		for i := range f1.Pix {
			f1.Pix[i] = uint8(1 + i%2) // red/blue stripes, except the transparent corner below
			f2.Pix[i] = 2
		}
		f1.Pix[0] = 0
		var buf bytes.Buffer
		if err := gif.EncodeAll(&buf, &gif.GIF{Image: []*image.Paletted{f1, f2}, Delay: []int{10, 10}}); err != nil {
			t.Fatal(err)
		}
		pp, err := p.Preprocess(buf.Bytes())
		if err != nil {
			t.Fatal(err)
		}
		// First frame: pixel (1,0) is blue (index 2), (2,0) red; (0,0) transparent → white.
		check := func(x int, want [3]uint8) {
			for c := 0; c < 3; c++ {
				if got := valueAt(pp, c, x, 0); got != norm(want[c]) {
					t.Errorf("pixel (%d,0) channel %d = %g, want %g", x, c, got, norm(want[c]))
				}
			}
		}
		check(0, [3]uint8{255, 255, 255})
		check(1, [3]uint8{0, 0, 255})
		check(2, [3]uint8{255, 0, 0})

		// A first frame smaller than the logical screen sits at its offset on a white screen.
		small := image.NewPaletted(image.Rect(10, 0, 20, 64), pal)
		for i := range small.Pix {
			small.Pix[i] = 1
		}
		buf.Reset()
		if err := gif.EncodeAll(&buf, &gif.GIF{Image: []*image.Paletted{small}, Delay: []int{0},
			Config: image.Config{ColorModel: pal, Width: 64, Height: 64}}); err != nil {
			t.Fatal(err)
		}
		if pp, err = p.Preprocess(buf.Bytes()); err != nil {
			t.Fatal(err)
		}
		if pp.SourceWidth != 64 || pp.SourceHeight != 64 {
			t.Fatalf("decoded at %dx%d, want the 64x64 screen", pp.SourceWidth, pp.SourceHeight)
		}
		check(0, [3]uint8{255, 255, 255})
		check(10, [3]uint8{255, 0, 0})
	})
	t.Run("webp lossless", func(t *testing.T) {
		webpData, err := os.ReadFile("testdata/gopher-doc.1bpp.lossless.webp")
		if err != nil {
			t.Fatal(err)
		}
		pngData, err := os.ReadFile("testdata/gopher-doc.1bpp.png")
		if err != nil {
			t.Fatal(err)
		}
		a, err := p.Preprocess(webpData)
		if err != nil {
			t.Fatal(err)
		}
		b, err := p.Preprocess(pngData)
		if err != nil {
			t.Fatal(err)
		}
		if a.Format != "webp" || a.SourceWidth != b.SourceWidth || a.SourceHeight != b.SourceHeight {
			t.Fatalf("webp %s %dx%d vs png %dx%d", a.Format, a.SourceWidth, a.SourceHeight, b.SourceWidth, b.SourceHeight)
		}
		if d := maxAbsDiff(a.Images[0], b.Images[0]); d != 0 {
			t.Errorf("lossless WebP and its PNG differ by %g", d)
		}
		if a.Hash != b.Hash {
			t.Error("same pixels, different hashes")
		}
	})
	t.Run("webp lossy", func(t *testing.T) {
		data, err := os.ReadFile("testdata/blue-purple-pink.lossy.webp")
		if err != nil {
			t.Fatal(err)
		}
		pp, err := p.Preprocess(data)
		if err != nil {
			t.Fatal(err)
		}
		if pp.Format != "webp" || len(pp.Images) != 1 || len(pp.Images[0]) != 3*64*64 {
			t.Errorf("lossy WebP: %v", pp)
		}
		if _, err := p.Preprocess(data[:len(data)/2]); !errors.Is(err, ErrCorrupt) {
			t.Errorf("truncated WebP: %v, want ErrCorrupt", err)
		}
	})
}

// TestPanAndScan mirrors HF's Gemma3ImageProcessor.pan_and_scan crop selection.
func TestPanAndScan(t *testing.T) {
	cases := []struct {
		name string
		w, h int
		want []image.Rectangle
	}{
		{"square", 500, 500, nil},
		{"below ratio", 590, 500, nil},
		// 1000/300 = 3.3 → 3 crops (≤ floor(1000/256) = 3) of ceil(1000/3) = 334; the last is 332 wide.
		{"wide", 1000, 300, []image.Rectangle{image.Rect(0, 0, 334, 300), image.Rect(334, 0, 668, 300), image.Rect(668, 0, 1000, 300)}},
		// 600/400 = 1.5 → round 2 → 2 crops of 300.
		{"landscape 3:2", 600, 400, []image.Rectangle{image.Rect(0, 0, 300, 400), image.Rect(300, 0, 600, 400)}},
		// 400/300 → 1 crop, forced to 2 of 200 < 256: none.
		{"crops too small", 400, 300, nil},
		// 300×700: 2.3 → 2 crops of 350 rows.
		{"portrait", 300, 700, []image.Rectangle{image.Rect(0, 0, 300, 350), image.Rect(0, 350, 300, 700)}},
		// 3000×500: 6 → min(floor(3000/256) = 11, 6) = 6 → capped at 4 crops of 750.
		{"capped", 3000, 500, []image.Rectangle{image.Rect(0, 0, 750, 500), image.Rect(750, 0, 1500, 500), image.Rect(1500, 0, 2250, 500), image.Rect(2250, 0, 3000, 500)}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := panAndScan(tc.w, tc.h, 256, 4, 1.2)
			if !slices.Equal(got, tc.want) {
				t.Errorf("panAndScan(%d, %d) = %v, want %v", tc.w, tc.h, got, tc.want)
			}
		})
	}
	cfg := DefaultPreprocessorConfig()
	cfg.Height, cfg.Width, cfg.DoPanAndScan = 64, 64, true
	p, err := NewProcessor(cfg)
	if err != nil {
		t.Fatal(err)
	}
	img := gradient(600, 400)
	pp, err := p.PreprocessImage(img)
	if err != nil {
		t.Fatal(err)
	}
	if pp.NumCrops != 2 || len(pp.Images) != 3 {
		t.Fatalf("%d crops, %d images; want 2, 3", pp.NumCrops, len(pp.Images))
	}
	// Crop 1 is the left half resized on its own.
	left, err := p.PreprocessImage(img.SubImage(image.Rect(0, 0, 300, 400)))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(pp.Images[1], left.Images[0]) {
		t.Error("first crop differs from the left half preprocessed alone")
	}
	off, err := NewProcessor(DefaultPreprocessorConfig())
	if err != nil {
		t.Fatal(err)
	}
	if pp2, _ := off.PreprocessImage(img); pp2.NumCrops != 0 || pp2.Hash == pp.Hash {
		t.Errorf("pan and scan off: %d crops; hash must differ from the cropped result", pp2.NumCrops)
	}
}

// TestHashDistinguishes: the content hash follows the pixels.
func TestHashDistinguishes(t *testing.T) {
	p := identityProcessor(t)
	a, _ := p.PreprocessImage(gradient(70, 50))
	b, _ := p.PreprocessImage(gradient(70, 50))
	img := gradient(70, 50)
	img.Pix[0] ^= 0x80
	c, _ := p.PreprocessImage(img)
	if a.Hash != b.Hash {
		t.Error("same image, different hashes")
	}
	if a.Hash == c.Hash {
		t.Error("different images, same hash")
	}
}
