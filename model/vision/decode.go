package vision

import (
	"bytes"
	"encoding/binary"
	"errors"
	"image"
	"image/color"
	_ "image/gif"  // GIF (first frame)
	_ "image/jpeg" // JPEG (baseline and progressive; CMYK/YCCK as image.CMYK)
	_ "image/png"  // PNG (all color types and bit depths)

	_ "golang.org/x/image/webp" // WebP (lossy, lossless, with alpha)
)

// rgbImage is an 8-bit RGB image, row-major, 3 bytes per pixel (PIL mode "RGB").
type rgbImage struct {
	W, H int
	Pix  []uint8
}

func newRGB(w, h int) *rgbImage { return &rgbImage{W: w, H: h, Pix: make([]uint8, 3*w*h)} }

// magic numbers of formats we do not decode, to name them in the error.
var knownUnsupported = []struct {
	name  string
	magic []byte
	at    int
}{
	{"bmp", []byte("BM"), 0}, {"tiff", []byte("II*\x00"), 0}, {"tiff", []byte("MM\x00*"), 0},
	{"heic/avif", []byte("ftyp"), 4}, {"ico", []byte{0, 0, 1, 0}, 0}, {"psd", []byte("8BPS"), 0},
	{"jpeg-xl", []byte{0xff, 0x0a}, 0}, {"svg/xml", []byte("<"), 0},
}

// decodeImage decodes data after checking its size and, from the header alone, its
// dimensions: a decompression bomb is refused before any pixel buffer is allocated.
func decodeImage(data []byte, maxBytes, maxPixels int64) (img image.Image, format string, err error) {
	if len(data) == 0 {
		return nil, "", imageErr(ErrEmpty, "", nil, "no image bytes")
	}
	if maxBytes > 0 && int64(len(data)) > maxBytes {
		return nil, "", imageErr(ErrTooLarge, "", nil, "%d bytes, the limit is %d", len(data), maxBytes)
	}
	defer func() {
		// The standard decoders do not panic on bad input, but a request must never crash
		// the server: treat a panic as corrupt data.
		if r := recover(); r != nil {
			img, err = nil, imageErr(ErrCorrupt, format, nil, "decoder panicked: %v", r)
		}
	}()
	cfg, format, err := image.DecodeConfig(bytes.NewReader(data))
	if err != nil {
		if errors.Is(err, image.ErrFormat) {
			for _, k := range knownUnsupported {
				if len(data) >= k.at+len(k.magic) && bytes.Equal(data[k.at:k.at+len(k.magic)], k.magic) {
					return nil, "", imageErr(ErrUnsupportedFormat, k.name, nil, "want PNG, JPEG, WebP or GIF")
				}
			}
			return nil, "", imageErr(ErrUnsupportedFormat, "", nil, "unrecognised data (want PNG, JPEG, WebP or GIF)")
		}
		if w, h, ok := pngHeaderDims(data); ok && (w == 0 || h == 0) {
			return nil, "png", imageErr(ErrEmpty, "png", nil, "%dx%d pixels", w, h)
		}
		return nil, format, imageErr(ErrCorrupt, format, err, "bad header")
	}
	if err := checkDims(format, cfg.Width, cfg.Height, maxPixels); err != nil {
		return nil, format, err
	}
	img, _, err = image.Decode(bytes.NewReader(data))
	if err != nil {
		return nil, format, imageErr(ErrCorrupt, format, err, "")
	}
	b := img.Bounds()
	if err := checkDims(format, b.Dx(), b.Dy(), maxPixels); err != nil {
		return nil, format, err
	}
	if screen := image.Rect(0, 0, cfg.Width, cfg.Height); format == "gif" && b != screen {
		img = onGIFScreen(img, screen)
	}
	return img, format, nil
}

// onGIFScreen places a GIF's first frame on its logical screen (Go decodes the frame at
// its own bounds); the area outside the frame is transparent, so it becomes white.
func onGIFScreen(frame image.Image, screen image.Rectangle) image.Image {
	out := image.NewNRGBA(screen)
	r := frame.Bounds().Intersect(screen)
	for y := r.Min.Y; y < r.Max.Y; y++ {
		for x := r.Min.X; x < r.Max.X; x++ {
			out.Set(x, y, frame.At(x, y))
		}
	}
	return out
}

// pngHeaderDims reads the IHDR dimensions of a PNG (Go's decoder rejects zero dimensions
// as a format error; they are reported as an empty image instead).
func pngHeaderDims(data []byte) (w, h uint32, ok bool) {
	if len(data) < 24 || !bytes.HasPrefix(data, []byte("\x89PNG\r\n\x1a\n")) || string(data[12:16]) != "IHDR" {
		return 0, 0, false
	}
	return binary.BigEndian.Uint32(data[16:20]), binary.BigEndian.Uint32(data[20:24]), true
}

func checkDims(format string, w, h int, maxPixels int64) error {
	if w <= 0 || h <= 0 {
		return imageErr(ErrEmpty, format, nil, "%dx%d pixels", w, h)
	}
	if maxPixels > 0 && int64(w)*int64(h) > maxPixels {
		return imageErr(ErrTooLarge, format, nil, "%dx%d = %d pixels, the limit is %d", w, h, int64(w)*int64(h), maxPixels)
	}
	return nil
}

// toRGB converts a decoded image to 8-bit RGB as vLLM does before the HF processor
// (vllm/multimodal/image.py convert_image_mode, then PIL's convert("RGB")):
//   - an image with an alpha channel is composited over white with PIL's integer blend
//     (Image.paste with the alpha band as mask): out = (255·(255−a) + c·a) / 255, rounded.
//     vLLM does this for RGBA; here LA (Go: NRGBA), RGB with tRNS and palettes with
//     transparent entries get the same treatment (vLLM's convert would drop their alpha and
//     show whatever colour hides under it).
//   - grayscale (L) is replicated into R, G, B; palettes are looked up.
//   - CMYK uses PIL's cmyk2rgb: c' = 255 − k − c·(255 − k)/255, rounded.
//   - 16-bit samples keep their high byte (PIL reads 16-bit RGB(A) PNGs this way; for 16-bit
//     grayscale PIL's I;16→RGB clips to 255 instead, which whitens the image: not copied).
//   - JPEG's YCbCr is converted with Go's color.YCbCrToRGB and nearest chroma upsampling;
//     libjpeg (PIL) upsamples chroma with a triangle filter, so JPEG pixels can differ from
//     PIL's by a few levels at colour edges (the only source here that is not bit-exact).
func toRGB(img image.Image) *rgbImage {
	b := img.Bounds()
	w, h := b.Dx(), b.Dy()
	out := newRGB(w, h)
	p := out.Pix
	switch src := img.(type) {
	case *image.Gray:
		for y := 0; y < h; y++ {
			row := src.Pix[y*src.Stride : y*src.Stride+w]
			for x, v := range row {
				i := 3 * (y*w + x)
				p[i], p[i+1], p[i+2] = v, v, v
			}
		}
	case *image.Gray16:
		for y := 0; y < h; y++ {
			for x := 0; x < w; x++ {
				v := src.Pix[y*src.Stride+2*x] // big-endian: high byte first
				i := 3 * (y*w + x)
				p[i], p[i+1], p[i+2] = v, v, v
			}
		}
	case *image.NRGBA:
		for y := 0; y < h; y++ {
			for x := 0; x < w; x++ {
				s := src.Pix[y*src.Stride+4*x:]
				putOverWhite(p[3*(y*w+x):], s[0], s[1], s[2], s[3])
			}
		}
	case *image.NRGBA64:
		for y := 0; y < h; y++ {
			for x := 0; x < w; x++ {
				s := src.Pix[y*src.Stride+8*x:]
				putOverWhite(p[3*(y*w+x):], s[0], s[2], s[4], s[6])
			}
		}
	case *image.RGBA:
		for y := 0; y < h; y++ {
			for x := 0; x < w; x++ {
				s := src.Pix[y*src.Stride+4*x:]
				if s[3] == 0xff {
					copy(p[3*(y*w+x):3*(y*w+x)+3], s[:3])
					continue
				}
				c := color.NRGBAModel.Convert(color.RGBA{s[0], s[1], s[2], s[3]}).(color.NRGBA)
				putOverWhite(p[3*(y*w+x):], c.R, c.G, c.B, c.A)
			}
		}
	case *image.Paletted:
		pal := make([][4]uint8, len(src.Palette))
		for i, c := range src.Palette {
			n := color.NRGBAModel.Convert(c).(color.NRGBA)
			pal[i] = [4]uint8{n.R, n.G, n.B, n.A}
		}
		for y := 0; y < h; y++ {
			for x := 0; x < w; x++ {
				idx := int(src.Pix[y*src.Stride+x])
				var c [4]uint8 // an index beyond the palette reads as black, as Go's At does
				if idx < len(pal) {
					c = pal[idx]
				} else {
					c[3] = 0xff
				}
				putOverWhite(p[3*(y*w+x):], c[0], c[1], c[2], c[3])
			}
		}
	case *image.CMYK:
		for y := 0; y < h; y++ {
			for x := 0; x < w; x++ {
				s := src.Pix[y*src.Stride+4*x:]
				nk := 255 - int(s[3])
				i := 3 * (y*w + x)
				for c := 0; c < 3; c++ {
					p[i+c] = clipU8(nk - mulDiv255(int(s[c]), nk))
				}
			}
		}
	case *image.YCbCr:
		for y := 0; y < h; y++ {
			for x := 0; x < w; x++ {
				yi := src.YOffset(b.Min.X+x, b.Min.Y+y)
				ci := src.COffset(b.Min.X+x, b.Min.Y+y)
				r, g, bl := color.YCbCrToRGB(src.Y[yi], src.Cb[ci], src.Cr[ci])
				i := 3 * (y*w + x)
				p[i], p[i+1], p[i+2] = r, g, bl
			}
		}
	case *image.NYCbCrA:
		for y := 0; y < h; y++ {
			for x := 0; x < w; x++ {
				yi := src.YOffset(b.Min.X+x, b.Min.Y+y)
				ci := src.COffset(b.Min.X+x, b.Min.Y+y)
				r, g, bl := color.YCbCrToRGB(src.Y[yi], src.Cb[ci], src.Cr[ci])
				putOverWhite(p[3*(y*w+x):], r, g, bl, src.A[src.AOffset(b.Min.X+x, b.Min.Y+y)])
			}
		}
	default:
		for y := 0; y < h; y++ {
			for x := 0; x < w; x++ {
				c := color.NRGBAModel.Convert(img.At(b.Min.X+x, b.Min.Y+y)).(color.NRGBA)
				putOverWhite(p[3*(y*w+x):], c.R, c.G, c.B, c.A)
			}
		}
	}
	return out
}

// putOverWhite writes r, g, b composited over white with alpha a, as PIL's paste with an
// "L" mask computes it (Paste.c: BLEND with DIV255 rounding).
func putOverWhite(dst []uint8, r, g, b, a uint8) {
	if a == 0xff {
		dst[0], dst[1], dst[2] = r, g, b
		return
	}
	ai := int(a)
	dst[0] = uint8(div255(255*(255-ai) + int(r)*ai))
	dst[1] = uint8(div255(255*(255-ai) + int(g)*ai))
	dst[2] = uint8(div255(255*(255-ai) + int(b)*ai))
}

// div255 is PIL's rounding division by 255: t = v + 128; (t>>8 + t) >> 8.
func div255(v int) int {
	t := v + 128
	return ((t >> 8) + t) >> 8
}

// mulDiv255 is PIL's MULDIV255(a, b) = round(a·b / 255).
func mulDiv255(a, b int) int { return div255(a * b) }

func clipU8(v int) uint8 {
	if v < 0 {
		return 0
	}
	if v > 255 {
		return 255
	}
	return uint8(v)
}
