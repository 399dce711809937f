package vision

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"image"
	"math"
)

// Default limits of a Processor.
const (
	// DefaultMaxBytes bounds the encoded size of one image (32 MiB).
	DefaultMaxBytes = 32 << 20
	// DefaultMaxPixels bounds width×height, checked from the header before decoding
	// (≈ 50 megapixels: a 200 MB RGBA buffer at most; PIL warns at 89 M and refuses 179 M).
	DefaultMaxPixels = 50_000_000
)

// Processor turns encoded image bytes into the tower's pixel values, as Hugging Face's
// Gemma3ImageProcessor does after vLLM's RGB conversion. It is immutable and safe for
// concurrent use.
type Processor struct {
	cfg       PreprocessorConfig
	maxBytes  int64
	maxPixels int64
	antialias bool
}

// ProcessorOption configures a Processor.
type ProcessorOption func(*Processor)

// WithMaxBytes sets the largest encoded image accepted (default DefaultMaxBytes; ≤ 0: no limit).
func WithMaxBytes(n int64) ProcessorOption { return func(p *Processor) { p.maxBytes = n } }

// WithMaxPixels sets the largest width×height accepted (default DefaultMaxPixels; ≤ 0: no limit).
func WithMaxPixels(n int64) ProcessorOption { return func(p *Processor) { p.maxPixels = n } }

// withoutAntialias makes the resize sample without PIL's support scaling (ablation tests only).
func withoutAntialias() ProcessorOption { return func(p *Processor) { p.antialias = false } }

// NewProcessor validates cfg and returns a Processor.
func NewProcessor(cfg PreprocessorConfig, opts ...ProcessorOption) (*Processor, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	p := &Processor{cfg: cfg, maxBytes: DefaultMaxBytes, maxPixels: DefaultMaxPixels, antialias: true}
	for _, o := range opts {
		o(p)
	}
	return p, nil
}

// Config returns the processor's configuration.
func (p *Processor) Config() PreprocessorConfig { return p.cfg }

// Preprocessed is one input image ready for the tower.
type Preprocessed struct {
	// Images are float32 pixel values [3, Height, Width] (channel-major), normalised:
	// Images[0] is the whole image, then its NumCrops pan-and-scan crops (HF's order).
	Images        [][]float32
	Height, Width int
	NumCrops      int
	// Format is the decoded format ("png", "jpeg", "webp", "gif"; "" for PreprocessImage).
	Format string
	// SourceWidth, SourceHeight are the decoded image's size.
	SourceWidth, SourceHeight int
	// Hash identifies the pixel values: equal hashes ⇔ equal Images for the same processor
	// configuration (it covers the resized 8-bit pixels of every crop, the crop layout and
	// the normalisation parameters). Use it in prefix-cache keys.
	Hash [32]byte
}

// Preprocess decodes data (PNG, JPEG, WebP, GIF's first frame) and preprocesses it. Errors
// are *ImageError values wrapping ErrImage and one of ErrCorrupt, ErrUnsupportedFormat,
// ErrTooLarge, ErrEmpty.
func (p *Processor) Preprocess(data []byte) (*Preprocessed, error) {
	img, format, err := decodeImage(data, p.maxBytes, p.maxPixels)
	if err != nil {
		return nil, err
	}
	out, err := p.PreprocessImage(img)
	if err != nil {
		return nil, err
	}
	out.Format = format
	return out, nil
}

// PreprocessImage preprocesses an already decoded image (size limits apply).
func (p *Processor) PreprocessImage(img image.Image) (*Preprocessed, error) {
	b := img.Bounds()
	if err := checkDims("", b.Dx(), b.Dy(), p.maxPixels); err != nil {
		return nil, err
	}
	rgb := toRGB(img)
	crops := []*rgbImage{rgb}
	if p.cfg.DoPanAndScan {
		for _, r := range panAndScan(rgb.W, rgb.H, p.cfg.PanAndScanMinCropSize, p.cfg.PanAndScanMaxNumCrops, p.cfg.PanAndScanMinRatioToActivate) {
			crops = append(crops, crop(rgb, r))
		}
	}
	out := &Preprocessed{Height: p.cfg.Height, Width: p.cfg.Width, NumCrops: len(crops) - 1, SourceWidth: rgb.W, SourceHeight: rgb.H}
	h := sha256.New()
	var hdr [8]byte
	h.Write([]byte("tpuserve/vision/pixels/v1"))
	for _, v := range []float64{p.cfg.RescaleFactor, p.cfg.ImageMean[0], p.cfg.ImageMean[1], p.cfg.ImageMean[2],
		p.cfg.ImageStd[0], p.cfg.ImageStd[1], p.cfg.ImageStd[2], boolF(p.cfg.DoRescale), boolF(p.cfg.DoNormalize)} {
		binary.LittleEndian.PutUint64(hdr[:], math.Float64bits(v))
		h.Write(hdr[:])
	}
	for _, n := range []int{p.cfg.Height, p.cfg.Width, len(crops)} {
		binary.LittleEndian.PutUint64(hdr[:], uint64(n))
		h.Write(hdr[:])
	}
	for _, c := range crops {
		resized := resizeBilinear(c, p.cfg.Width, p.cfg.Height, p.antialias)
		h.Write(resized.Pix)
		out.Images = append(out.Images, p.normalize(resized))
	}
	h.Sum(out.Hash[:0])
	return out, nil
}

func boolF(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// normalize rescales and normalises as HF does: float64(v)·rescale_factor rounded to
// float32 (image_transforms.rescale), then (x − mean)/std in float32 (normalize), laid out
// channel-major.
func (p *Processor) normalize(img *rgbImage) []float32 {
	n := img.W * img.H
	out := make([]float32, 3*n)
	var lut [3][256]float32
	for c := 0; c < 3; c++ {
		mean, std := float32(p.cfg.ImageMean[c]), float32(p.cfg.ImageStd[c])
		for v := 0; v < 256; v++ {
			x := float32(v)
			if p.cfg.DoRescale {
				x = float32(float64(v) * p.cfg.RescaleFactor)
			}
			if p.cfg.DoNormalize {
				x = (x - mean) / std
			}
			lut[c][v] = x
		}
	}
	for i := 0; i < n; i++ {
		out[i] = lut[0][img.Pix[3*i]]
		out[n+i] = lut[1][img.Pix[3*i+1]]
		out[2*n+i] = lut[2][img.Pix[3*i+2]]
	}
	return out
}

// panAndScan returns the crop rectangles of HF's Gemma3ImageProcessor.pan_and_scan (none
// when the aspect ratio is below minRatio or the crops would be smaller than minCrop).
// The last crop of a row or column may be narrower: like numpy slicing, it stops at the edge.
func panAndScan(width, height, minCrop, maxCrops int, minRatio float64) []image.Rectangle {
	w, h := float64(width), float64(height)
	numW, numH := 1, 1
	if width >= height {
		if w/h < minRatio {
			return nil
		}
		numW = int(math.Floor(w/h + 0.5))
		numW = min(int(math.Floor(w/float64(minCrop))), numW)
		numW = max(2, numW)
		numW = min(maxCrops, numW)
	} else {
		if h/w < minRatio {
			return nil
		}
		numH = int(math.Floor(h/w + 0.5))
		numH = min(int(math.Floor(h/float64(minCrop))), numH)
		numH = max(2, numH)
		numH = min(maxCrops, numH)
	}
	cropW := int(math.Ceil(w / float64(numW)))
	cropH := int(math.Ceil(h / float64(numH)))
	if min(cropW, cropH) < minCrop {
		return nil
	}
	var out []image.Rectangle
	for i := 0; i < numH; i++ {
		for j := 0; j < numW; j++ {
			r := image.Rect(j*cropW, i*cropH, j*cropW+cropW, i*cropH+cropH).Intersect(image.Rect(0, 0, width, height))
			if r.Empty() {
				continue // numpy would give an empty crop that HF's resize then rejects; skip it
			}
			out = append(out, r)
		}
	}
	return out
}

func crop(src *rgbImage, r image.Rectangle) *rgbImage {
	out := newRGB(r.Dx(), r.Dy())
	for y := 0; y < r.Dy(); y++ {
		copy(out.Pix[3*y*out.W:3*(y+1)*out.W], src.Pix[3*((r.Min.Y+y)*src.W+r.Min.X):])
	}
	return out
}

// String describes the result for logs.
func (pp *Preprocessed) String() string {
	return fmt.Sprintf("%s %dx%d → %d×[3,%d,%d] (%d crops) %x", pp.Format, pp.SourceWidth, pp.SourceHeight,
		len(pp.Images), pp.Height, pp.Width, pp.NumCrops, pp.Hash[:6])
}
