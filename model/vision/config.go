package vision

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
)

// ErrConfig is wrapped by every configuration error; the message names the field.
var ErrConfig = errors.New("invalid vision config")

// Config is the image part of a Gemma 3 (Gemma3ForConditionalGeneration) config.json: the
// SigLIP vision tower (`vision_config`, as Hugging Face's SiglipVisionConfig), the
// multimodal projector and the image token ids. Tower fields a hub config omits take
// SiglipVisionConfig's defaults (real Gemma 3 configs omit layer_norm_eps and hidden_act);
// the token ids and mm_tokens_per_image are required.
type Config struct {
	HiddenSize        int     `json:"hidden_size"`
	IntermediateSize  int     `json:"intermediate_size"`
	NumHiddenLayers   int     `json:"num_hidden_layers"`
	NumAttentionHeads int     `json:"num_attention_heads"`
	NumChannels       int     `json:"num_channels"`
	ImageSize         int     `json:"image_size"`
	PatchSize         int     `json:"patch_size"`
	LayerNormEps      float64 `json:"layer_norm_eps"`
	HiddenAct         string  `json:"hidden_act"`

	// MMTokensPerImage is the number of soft tokens one image becomes (a square number).
	MMTokensPerImage int
	// TextHiddenSize is the language model's hidden size (the projector's output width).
	TextHiddenSize int
	// ImageTokenID is the placeholder token each soft token replaces; BOI/EOI bracket them.
	ImageTokenID, BOITokenID, EOITokenID int
}

// sigLIPDefaults are SiglipVisionConfig's defaults (transformers configuration_siglip.py).
func sigLIPDefaults() Config {
	return Config{
		HiddenSize: 768, IntermediateSize: 3072, NumHiddenLayers: 12, NumAttentionHeads: 12,
		NumChannels: 3, ImageSize: 224, PatchSize: 16, LayerNormEps: 1e-6, HiddenAct: "gelu_pytorch_tanh",
	}
}

// PatchesPerSide is image_size / patch_size.
func (c *Config) PatchesPerSide() int { return c.ImageSize / c.PatchSize }

// NumPatches is the tower's sequence length per image.
func (c *Config) NumPatches() int { return c.PatchesPerSide() * c.PatchesPerSide() }

// HeadDim is hidden_size / num_attention_heads.
func (c *Config) HeadDim() int { return c.HiddenSize / c.NumAttentionHeads }

// TokensPerSide is √mm_tokens_per_image.
func (c *Config) TokensPerSide() int { return int(math.Round(math.Sqrt(float64(c.MMTokensPerImage)))) }

// PoolKernel is the projector's average-pool kernel (and stride): patches_per_side / tokens_per_side.
func (c *Config) PoolKernel() int { return c.PatchesPerSide() / c.TokensPerSide() }

// PlaceholderIDs is the token run one image takes in a prompt: boi, mm_tokens_per_image
// image tokens, eoi (the soft tokens replace the image tokens). Hugging Face's
// Gemma3Processor also wraps it in "\n\n" on both sides; those ids come from the tokenizer.
func (c *Config) PlaceholderIDs() []int32 {
	ids := make([]int32, 0, c.MMTokensPerImage+2)
	ids = append(ids, int32(c.BOITokenID))
	for i := 0; i < c.MMTokensPerImage; i++ {
		ids = append(ids, int32(c.ImageTokenID))
	}
	return append(ids, int32(c.EOITokenID))
}

// NumParams counts the tower's and projector's parameters.
func (c *Config) NumParams() int64 {
	var n int64
	for _, s := range WeightSpecs(c) {
		p := int64(1)
		for _, d := range s.Shape {
			p *= int64(d)
		}
		n += p
	}
	return n
}

// WeightBytes is the device memory of the tower's and projector's weights in dtype (per
// chip: they are replicated under tensor parallelism).
func (c *Config) WeightBytes(dtype dtypes.DType) int64 { return c.NumParams() * int64(dtype.Size()) }

// PeakActivationBytes estimates the largest live activations of one encoder run over
// images images in dtype, as an unfused executor holds them inside one encoder layer: the
// float32 attention scores and their softmax in dtype ([images, heads, N, N] each), the
// MLP's intermediate before and after the activation, and four hidden-state tensors. It
// is an upper bound for XLA (which fuses the softmax), for the memory plan.
func (c *Config) PeakActivationBytes(images int, dtype dtypes.DType) int64 {
	b, n, s := int64(images), int64(c.NumPatches()), int64(dtype.Size())
	scores := b * int64(c.NumAttentionHeads) * n * n * (4 + s)
	mlp := 2 * b * n * int64(c.IntermediateSize) * s
	hidden := 4 * b * n * int64(c.HiddenSize) * s
	return scores + mlp + hidden
}

// Validate checks the fields against each other.
func (c *Config) Validate() error {
	pos := []struct {
		name string
		v    int
	}{
		{"vision_config.hidden_size", c.HiddenSize}, {"vision_config.intermediate_size", c.IntermediateSize},
		{"vision_config.num_hidden_layers", c.NumHiddenLayers}, {"vision_config.num_attention_heads", c.NumAttentionHeads},
		{"vision_config.image_size", c.ImageSize}, {"vision_config.patch_size", c.PatchSize},
		{"mm_tokens_per_image", c.MMTokensPerImage}, {"text_config.hidden_size", c.TextHiddenSize},
	}
	for _, p := range pos {
		if p.v <= 0 {
			return fmt.Errorf("%w: %s is %d, must be positive", ErrConfig, p.name, p.v)
		}
	}
	if c.NumChannels != 3 {
		return fmt.Errorf("%w: vision_config.num_channels is %d, only 3 (RGB) is supported", ErrConfig, c.NumChannels)
	}
	if c.HiddenSize%c.NumAttentionHeads != 0 {
		return fmt.Errorf("%w: vision_config.hidden_size %d is not a multiple of vision_config.num_attention_heads %d",
			ErrConfig, c.HiddenSize, c.NumAttentionHeads)
	}
	if c.ImageSize%c.PatchSize != 0 {
		return fmt.Errorf("%w: vision_config.image_size %d is not a multiple of vision_config.patch_size %d", ErrConfig, c.ImageSize, c.PatchSize)
	}
	if t := c.TokensPerSide(); t*t != c.MMTokensPerImage {
		return fmt.Errorf("%w: mm_tokens_per_image %d is not a square number", ErrConfig, c.MMTokensPerImage)
	}
	if c.PatchesPerSide()%c.TokensPerSide() != 0 {
		return fmt.Errorf("%w: mm_tokens_per_image %d: %d patches per side do not pool evenly to %d tokens per side",
			ErrConfig, c.MMTokensPerImage, c.PatchesPerSide(), c.TokensPerSide())
	}
	if !(c.LayerNormEps > 0) {
		return fmt.Errorf("%w: vision_config.layer_norm_eps is %g, must be positive", ErrConfig, c.LayerNormEps)
	}
	if c.HiddenAct != "gelu_pytorch_tanh" {
		return fmt.Errorf("%w: vision_config.hidden_act %q is not supported (want gelu_pytorch_tanh)", ErrConfig, c.HiddenAct)
	}
	for _, id := range []struct {
		name string
		v    int
	}{{"image_token_index", c.ImageTokenID}, {"boi_token_index", c.BOITokenID}, {"eoi_token_index", c.EOITokenID}} {
		if id.v < 0 {
			return fmt.Errorf("%w: %s is %d, must not be negative", ErrConfig, id.name, id.v)
		}
	}
	return nil
}

// LoadConfig reads dir/config.json.
func LoadConfig(dir string) (Config, error) {
	path := filepath.Join(dir, "config.json")
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	c, err := ParseConfig(data)
	if err != nil {
		return Config{}, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// ParseConfig parses a Gemma3ForConditionalGeneration config.json (model_type gemma3).
func ParseConfig(data []byte) (Config, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(data, &top); err != nil {
		return Config{}, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	rawVision, ok := top["vision_config"]
	if !ok || string(rawVision) == "null" {
		return Config{}, fmt.Errorf("%w: vision_config is missing (not a multimodal Gemma 3 config)", ErrConfig)
	}
	c := sigLIPDefaults()
	if err := json.Unmarshal(rawVision, &c); err != nil {
		return Config{}, fmt.Errorf("%w: vision_config: %w", ErrConfig, err)
	}
	ints := []struct {
		name string
		dst  *int
	}{
		{"mm_tokens_per_image", &c.MMTokensPerImage}, {"image_token_index", &c.ImageTokenID},
		{"boi_token_index", &c.BOITokenID}, {"eoi_token_index", &c.EOITokenID},
	}
	for _, f := range ints {
		raw, ok := top[f.name]
		if !ok || string(raw) == "null" {
			return Config{}, fmt.Errorf("%w: %s is missing", ErrConfig, f.name)
		}
		if err := json.Unmarshal(raw, f.dst); err != nil {
			return Config{}, fmt.Errorf("%w: %s: %w", ErrConfig, f.name, err)
		}
	}
	var text struct {
		HiddenSize int `json:"hidden_size"`
	}
	rawText, ok := top["text_config"]
	if !ok || string(rawText) == "null" {
		return Config{}, fmt.Errorf("%w: text_config is missing", ErrConfig)
	}
	if err := json.Unmarshal(rawText, &text); err != nil {
		return Config{}, fmt.Errorf("%w: text_config: %w", ErrConfig, err)
	}
	if text.HiddenSize == 0 {
		return Config{}, fmt.Errorf("%w: text_config.hidden_size is missing", ErrConfig)
	}
	c.TextHiddenSize = text.HiddenSize
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// PreprocessorConfig is preprocessor_config.json, as Hugging Face's Gemma3ImageProcessor
// reads it. Null or absent fields take the processor's defaults (see DefaultPreprocessorConfig).
type PreprocessorConfig struct {
	DoResize      bool
	Height, Width int
	// Resample is PIL's filter code; only 2 (BILINEAR) is supported.
	Resample      int
	DoRescale     bool
	RescaleFactor float64
	DoNormalize   bool
	ImageMean     [3]float64
	ImageStd      [3]float64
	// Pan and scan (off unless do_pan_and_scan is true).
	DoPanAndScan                 bool
	PanAndScanMinCropSize        int
	PanAndScanMaxNumCrops        int
	PanAndScanMinRatioToActivate float64
}

// DefaultPreprocessorConfig is Gemma3ImageProcessor's defaults with Gemma3Processor's
// pan-and-scan defaults (min crop 256, at most 4 crops, aspect ratio ≥ 1.2, off), at 896².
func DefaultPreprocessorConfig() PreprocessorConfig {
	return PreprocessorConfig{
		DoResize: true, Height: 896, Width: 896, Resample: 2,
		DoRescale: true, RescaleFactor: 1.0 / 255, DoNormalize: true,
		ImageMean: [3]float64{0.5, 0.5, 0.5}, ImageStd: [3]float64{0.5, 0.5, 0.5},
		PanAndScanMinCropSize: 256, PanAndScanMaxNumCrops: 4, PanAndScanMinRatioToActivate: 1.2,
	}
}

// LoadPreprocessorConfig reads dir/preprocessor_config.json.
func LoadPreprocessorConfig(dir string) (PreprocessorConfig, error) {
	path := filepath.Join(dir, "preprocessor_config.json")
	data, err := os.ReadFile(path)
	if err != nil {
		return PreprocessorConfig{}, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	p, err := ParsePreprocessorConfig(data)
	if err != nil {
		return PreprocessorConfig{}, fmt.Errorf("%s: %w", path, err)
	}
	return p, nil
}

// ParsePreprocessorConfig parses preprocessor_config.json.
func ParsePreprocessorConfig(data []byte) (PreprocessorConfig, error) {
	var raw struct {
		DoResize      *bool           `json:"do_resize"`
		Size          *map[string]int `json:"size"`
		Resample      *int            `json:"resample"`
		DoRescale     *bool           `json:"do_rescale"`
		RescaleFactor *float64        `json:"rescale_factor"`
		DoNormalize   *bool           `json:"do_normalize"`
		ImageMean     json.RawMessage `json:"image_mean"`
		ImageStd      json.RawMessage `json:"image_std"`
		DoPanAndScan  *bool           `json:"do_pan_and_scan"`
		MinCrop       *int            `json:"pan_and_scan_min_crop_size"`
		MaxCrops      *int            `json:"pan_and_scan_max_num_crops"`
		MinRatio      *float64        `json:"pan_and_scan_min_ratio_to_activate"`
		Type          string          `json:"image_processor_type"`
	}
	if err := json.Unmarshal(data, &raw); err != nil {
		return PreprocessorConfig{}, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	p := DefaultPreprocessorConfig()
	if raw.Type != "" && raw.Type != "Gemma3ImageProcessor" && raw.Type != "Gemma3ImageProcessorFast" {
		return p, fmt.Errorf("%w: image_processor_type %q is not Gemma3ImageProcessor", ErrConfig, raw.Type)
	}
	setBool := func(dst *bool, v *bool) {
		if v != nil {
			*dst = *v
		}
	}
	setBool(&p.DoResize, raw.DoResize)
	setBool(&p.DoRescale, raw.DoRescale)
	setBool(&p.DoNormalize, raw.DoNormalize)
	setBool(&p.DoPanAndScan, raw.DoPanAndScan)
	if raw.Size != nil {
		s := *raw.Size
		h, hok := s["height"]
		w, wok := s["width"]
		if se, ok := s["shortest_edge"]; ok && !hok && !wok {
			h, w, hok, wok = se, se, true, true
		}
		if !hok || !wok {
			return p, fmt.Errorf("%w: size %v needs height and width", ErrConfig, s)
		}
		p.Height, p.Width = h, w
	}
	if raw.Resample != nil {
		p.Resample = *raw.Resample
	}
	if raw.RescaleFactor != nil {
		p.RescaleFactor = *raw.RescaleFactor
	}
	var err error
	if p.ImageMean, err = parseTriple("image_mean", raw.ImageMean, p.ImageMean); err != nil {
		return p, err
	}
	if p.ImageStd, err = parseTriple("image_std", raw.ImageStd, p.ImageStd); err != nil {
		return p, err
	}
	if raw.MinCrop != nil {
		p.PanAndScanMinCropSize = *raw.MinCrop
	}
	if raw.MaxCrops != nil {
		p.PanAndScanMaxNumCrops = *raw.MaxCrops
	}
	if raw.MinRatio != nil {
		p.PanAndScanMinRatioToActivate = *raw.MinRatio
	}
	if err := p.Validate(); err != nil {
		return p, err
	}
	return p, nil
}

// parseTriple reads a float or a list of 3 floats (HF accepts both for mean and std).
func parseTriple(name string, raw json.RawMessage, def [3]float64) ([3]float64, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return def, nil
	}
	var one float64
	if err := json.Unmarshal(raw, &one); err == nil {
		return [3]float64{one, one, one}, nil
	}
	var list []float64
	if err := json.Unmarshal(raw, &list); err != nil {
		return def, fmt.Errorf("%w: %s: %w", ErrConfig, name, err)
	}
	if len(list) != 3 {
		return def, fmt.Errorf("%w: %s has %d values, want 3 (one per RGB channel)", ErrConfig, name, len(list))
	}
	return [3]float64{list[0], list[1], list[2]}, nil
}

// Validate checks the preprocessing parameters.
func (p *PreprocessorConfig) Validate() error {
	if !p.DoResize {
		return fmt.Errorf("%w: do_resize is false: the tower needs a fixed image size", ErrConfig)
	}
	if p.Height <= 0 || p.Width <= 0 {
		return fmt.Errorf("%w: size %dx%d must be positive", ErrConfig, p.Height, p.Width)
	}
	if p.Resample != 2 {
		return fmt.Errorf("%w: resample %d is not supported (want 2, PIL BILINEAR)", ErrConfig, p.Resample)
	}
	for i, s := range p.ImageStd {
		if s == 0 {
			return fmt.Errorf("%w: image_std[%d] is 0", ErrConfig, i)
		}
	}
	if p.DoPanAndScan {
		if p.PanAndScanMinCropSize <= 0 {
			return fmt.Errorf("%w: pan_and_scan_min_crop_size %d must be positive", ErrConfig, p.PanAndScanMinCropSize)
		}
		if p.PanAndScanMaxNumCrops < 2 {
			return fmt.Errorf("%w: pan_and_scan_max_num_crops %d must be at least 2", ErrConfig, p.PanAndScanMaxNumCrops)
		}
		if !(p.PanAndScanMinRatioToActivate > 0) {
			return fmt.Errorf("%w: pan_and_scan_min_ratio_to_activate %g must be positive", ErrConfig, p.PanAndScanMinRatioToActivate)
		}
	}
	return nil
}

// CheckAgainst checks that the preprocessor produces the tower's image size.
func (p *PreprocessorConfig) CheckAgainst(c *Config) error {
	if p.Height != c.ImageSize || p.Width != c.ImageSize {
		return fmt.Errorf("%w: preprocessor size %dx%d does not match vision_config.image_size %d", ErrConfig, p.Height, p.Width, c.ImageSize)
	}
	return nil
}
