package main

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/pkg/core/dtypes"

	"github.com/tpuserve/tpuserve/engine"
	"github.com/tpuserve/tpuserve/internal/plan"
	"github.com/tpuserve/tpuserve/model"
	"github.com/tpuserve/tpuserve/model/vision"
	"github.com/tpuserve/tpuserve/server"
	"github.com/tpuserve/tpuserve/tokenizer"
)

// imageOptions are serve's image flags.
type imageOptions struct {
	allowedMediaDomains string
	limitMMPerPrompt    string
	imageMask           string
	maxImagesPerStep    int
	maxImageBytes       int64
}

// parseLimitMM reads --limit-mm-per-prompt '{"image":N}' (vLLM's form); "" keeps the
// server's default.
func parseLimitMM(s string) (int, error) {
	if strings.TrimSpace(s) == "" {
		return 0, nil
	}
	var m map[string]int
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		return 0, fmt.Errorf(`--limit-mm-per-prompt %q: want a JSON object such as {"image": 4}: %w`, s, err)
	}
	for k, v := range m {
		if k != "image" {
			return 0, fmt.Errorf("--limit-mm-per-prompt: modality %q is not supported (only image)", k)
		}
		if v < 0 {
			return 0, fmt.Errorf("--limit-mm-per-prompt: image %d must be >= 0", v)
		}
	}
	n, ok := m["image"]
	if ok && n == 0 {
		return -1, nil // images refused
	}
	return n, nil
}

// visionInput gives the server a vision checkpoint's preprocessing and Gemma3Processor's
// prompt expansion.
type visionInput struct {
	proc *vision.Processor
	ph   tokenizer.ImagePlaceholders
}

func (v visionInput) Preprocess(data []byte) ([]engine.Image, error) {
	pp, err := v.proc.Preprocess(data)
	if err != nil {
		return nil, err
	}
	out := make([]engine.Image, len(pp.Images))
	for i, px := range pp.Images {
		// Each crop is its own image: its hash covers the whole set and its place in it.
		h := pp.Hash
		h[0] ^= byte(i)
		out[i] = engine.Image{Pixels: px, Hash: h}
	}
	return out, nil
}

func (v visionInput) ExpandPrompt(text string, crops []int) (string, error) {
	return v.ph.ExpandImages(text, crops)
}

// setupImages configures the server for a vision checkpoint before the weights load: the
// preprocessing and prompt expansion, the media fetch limits. It returns the vision config
// (nil: the server refuses image parts).
func setupImages(o *serveOptions, mcfg *model.Config, tok *tokenizer.Tokenizer, cfg *server.Config, log *slog.Logger) (*vision.Config, error) {
	limit, err := parseLimitMM(o.images.limitMMPerPrompt)
	if err != nil {
		return nil, err
	}
	for _, d := range strings.Split(o.images.allowedMediaDomains, ",") {
		if d = strings.TrimSpace(d); d != "" {
			cfg.AllowedMediaDomains = append(cfg.AllowedMediaDomains, d)
		}
	}
	if o.images.maxImageBytes > 0 {
		cfg.MaxImageBytes = o.images.maxImageBytes
	}
	if !mcfg.Vision || limit < 0 {
		return nil, nil
	}
	if o.tensorParallel > 1 {
		log.Warn("image input is not served with --tensor-parallel-size > 1 yet; image parts get 400", "tensor_parallel_size", o.tensorParallel)
		return nil, nil
	}
	if limit > 0 {
		cfg.MaxImagesPerPrompt = limit
	}
	vcfg, err := vision.LoadConfig(o.model)
	if err != nil {
		return nil, err
	}
	pcfg, err := vision.LoadPreprocessorConfig(o.model)
	if err != nil {
		return nil, err
	}
	proc, err := vision.NewProcessor(pcfg, vision.WithMaxBytes(cfg.MaxImageBytes))
	if err != nil {
		return nil, err
	}
	ph, err := tok.ImagePlaceholders(int32(vcfg.BOITokenID), int32(vcfg.ImageTokenID), int32(vcfg.EOITokenID), vcfg.MMTokensPerImage)
	if err != nil {
		return nil, err
	}
	cfg.Images = visionInput{proc: proc, ph: ph}
	log.Info("image input on", "mm_tokens_per_image", vcfg.MMTokensPerImage, "image_size", vcfg.ImageSize,
		"max_images_per_prompt", cfg.MaxImagesPerPrompt, "allowed_media_domains", cfg.AllowedMediaDomains, "image_mask", o.images.imageMask)
	return &vcfg, nil
}

// loadVisionTower puts the tower on the device for the engine and sets the model's image
// mask (--image-mask).
func loadVisionTower(o *serveOptions, backend backends.Backend, dtype dtypes.DType, m *model.Model, vcfg *vision.Config) (*vision.Encoder, error) {
	if err := m.Config.SetImageMask(o.images.imageMask, vcfg.MMTokensPerImage); err != nil {
		return nil, fmt.Errorf("--image-mask: %w", err)
	}
	return vision.LoadEncoder(backend, o.model, dtype)
}

// planVision adds a vision checkpoint's tower to the memory plan (when images are served:
// TP 1, not refused by --limit-mm-per-prompt).
func planVision(o *serveOptions, cfg *model.Config, dtype dtypes.DType, mopts *plan.MemoryOptions) error {
	if limit, _ := parseLimitMM(o.images.limitMMPerPrompt); !cfg.Vision || limit < 0 || o.tensorParallel > 1 {
		return nil
	}
	vcfg, err := vision.LoadConfig(o.model)
	if err != nil {
		return err
	}
	mopts.VisionWeightBytes = vcfg.WeightBytes(dtype)
	mopts.VisionActivationBytes = vcfg.PeakActivationBytes(o.images.maxImagesPerStep, dtype)
	mopts.MaxImagesPerStep, mopts.ImageTokens = o.images.maxImagesPerStep, vcfg.MMTokensPerImage
	return nil
}
