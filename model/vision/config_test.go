package vision

import (
	"errors"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseConfigFixture(t *testing.T) {
	c, err := LoadConfig(fixtureDir)
	if err != nil {
		t.Fatal(err)
	}
	meta, _ := loadGolden(t)
	if c.HiddenSize != 32 || c.IntermediateSize != 64 || c.NumHiddenLayers != 2 || c.NumAttentionHeads != 2 ||
		c.ImageSize != 64 || c.PatchSize != 8 || c.LayerNormEps != 1e-6 || c.TextHiddenSize != 128 {
		t.Errorf("tower config %+v", c)
	}
	if c.MMTokensPerImage != meta.MMTokensPerImage || c.ImageTokenID != meta.ImageTokenIndex ||
		c.BOITokenID != meta.BOITokenIndex || c.EOITokenID != meta.EOITokenIndex {
		t.Errorf("token ids %d/%d/%d, %d tokens; golden.json says %d/%d/%d, %d", c.ImageTokenID, c.BOITokenID, c.EOITokenID,
			c.MMTokensPerImage, meta.ImageTokenIndex, meta.BOITokenIndex, meta.EOITokenIndex, meta.MMTokensPerImage)
	}
	// golden.json's sequence 2 is bos, then exactly one image's placeholder run.
	ids := c.PlaceholderIDs()
	if len(ids) != 18 || ids[0] != 509 || ids[1] != 511 || ids[16] != 511 || ids[17] != 510 {
		t.Errorf("placeholder ids %v", ids)
	}
	if c.PatchesPerSide() != 8 || c.TokensPerSide() != 4 || c.PoolKernel() != 2 || c.NumPatches() != 64 {
		t.Errorf("derived sizes: %d patches/side, %d tokens/side, kernel %d", c.PatchesPerSide(), c.TokensPerSide(), c.PoolKernel())
	}
	p, err := LoadPreprocessorConfig(fixtureDir)
	if err != nil {
		t.Fatal(err)
	}
	if p.Height != 64 || p.Width != 64 || p.RescaleFactor != 1.0/255 || p.ImageMean != [3]float64{0.5, 0.5, 0.5} ||
		p.DoPanAndScan || p.PanAndScanMinCropSize != 256 || p.PanAndScanMaxNumCrops != 4 || p.PanAndScanMinRatioToActivate != 1.2 {
		t.Errorf("preprocessor %+v", p)
	}
	if err := p.CheckAgainst(&c); err != nil {
		t.Error(err)
	}
}

// A real Gemma 3 4B config.json omits layer_norm_eps and hidden_act: SigLIP's defaults apply.
const config4B = `{
 "architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
 "boi_token_index": 255999, "eoi_token_index": 256000, "image_token_index": 262144, "mm_tokens_per_image": 256,
 "text_config": {"hidden_size": 2560, "model_type": "gemma3_text"},
 "vision_config": {"hidden_size": 1152, "image_size": 896, "intermediate_size": 4304, "model_type": "siglip_vision_model",
   "num_attention_heads": 16, "num_hidden_layers": 27, "patch_size": 14, "vision_use_head": false}
}`

func TestParseConfig4B(t *testing.T) {
	c, err := ParseConfig([]byte(config4B))
	if err != nil {
		t.Fatal(err)
	}
	if c.LayerNormEps != 1e-6 || c.HiddenAct != "gelu_pytorch_tanh" || c.NumChannels != 3 {
		t.Errorf("defaults not applied: %+v", c)
	}
	if c.PatchesPerSide() != 64 || c.PoolKernel() != 4 || c.ImageTokenID != 262144 {
		t.Errorf("4B derived: %d patches/side, kernel %d", c.PatchesPerSide(), c.PoolKernel())
	}
	// SigLIP-So400m + projector: 419.8 M parameters (2.9 M of them the projection).
	if n := c.NumParams(); n != 419_816_304 {
		t.Errorf("4B tower has %d params, want 419816304", n)
	}
	if b := c.WeightBytes(dtypes.BFloat16); b != 2*419_816_304 {
		t.Errorf("bf16 weight bytes %d", b)
	}
	// One image in bf16: scores 16·4096²·(4+2) = 1.61 GB, MLP 2·4096·4304·2 = 70.5 MB,
	// hidden 4·4096·1152·2 = 37.7 MB.
	if got, want := c.PeakActivationBytes(1, dtypes.BFloat16), int64(1_610_612_736+70_516_736+37_748_736); got != want {
		t.Errorf("peak activations %d, want %d", got, want)
	}
}

func TestConfigErrorsNameTheField(t *testing.T) {
	cases := []struct {
		name, from, to, field string
	}{
		{"no vision_config", `"vision_config"`, `"vision_configx"`, "vision_config"},
		{"no image token", `"image_token_index": 262144,`, ``, "image_token_index"},
		{"no boi", `"boi_token_index": 255999,`, ``, "boi_token_index"},
		{"no mm tokens", `"mm_tokens_per_image": 256,`, ``, "mm_tokens_per_image"},
		{"mm tokens not square", `"mm_tokens_per_image": 256`, `"mm_tokens_per_image": 200`, "mm_tokens_per_image"},
		{"pool uneven", `"mm_tokens_per_image": 256`, `"mm_tokens_per_image": 25`, "mm_tokens_per_image"},
		{"heads", `"num_attention_heads": 16`, `"num_attention_heads": 7`, "num_attention_heads"},
		{"patch", `"patch_size": 14`, `"patch_size": 15`, "patch_size"},
		{"act", `"vision_use_head": false`, `"hidden_act": "relu"`, "hidden_act"},
		{"text hidden", `"hidden_size": 2560, `, ``, "text_config.hidden_size"},
		{"bad type", `"image_size": 896`, `"image_size": "big"`, "vision_config"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			src := strings.Replace(config4B, tc.from, tc.to, 1)
			if src == config4B {
				t.Fatalf("replacement %q not found", tc.from)
			}
			_, err := ParseConfig([]byte(src))
			if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), tc.field) {
				t.Errorf("error %v: want ErrConfig naming %s", err, tc.field)
			}
		})
	}
}

func TestPreprocessorConfigErrors(t *testing.T) {
	cases := []struct {
		name, json, field string
	}{
		{"resample", `{"resample": 3}`, "resample"},
		{"mean length", `{"image_mean": [0.5, 0.5]}`, "image_mean"},
		{"std zero", `{"image_std": 0}`, "image_std"},
		{"size", `{"size": {"height": 64}}`, "size"},
		{"processor type", `{"image_processor_type": "SiglipImageProcessor"}`, "image_processor_type"},
		{"crops", `{"do_pan_and_scan": true, "pan_and_scan_max_num_crops": 1}`, "pan_and_scan_max_num_crops"},
		{"no resize", `{"do_resize": false}`, "do_resize"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParsePreprocessorConfig([]byte(tc.json))
			if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), tc.field) {
				t.Errorf("error %v: want ErrConfig naming %s", err, tc.field)
			}
		})
	}
	p, err := ParsePreprocessorConfig([]byte(`{"image_mean": 0.25, "size": {"shortest_edge": 224}, "do_pan_and_scan": true}`))
	if err != nil {
		t.Fatal(err)
	}
	if p.ImageMean != [3]float64{0.25, 0.25, 0.25} || p.Height != 224 || !p.DoPanAndScan {
		t.Errorf("parsed %+v", p)
	}
	cfg, _ := ParseConfig([]byte(config4B))
	if err := p.CheckAgainst(&cfg); err == nil || !strings.Contains(err.Error(), "image_size") {
		t.Errorf("224 preprocessor against a 896 tower: %v", err)
	}
	dir := t.TempDir()
	if _, err := LoadPreprocessorConfig(dir); !errors.Is(err, ErrConfig) || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(`{"model_type": "gemma3_text"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadConfig(dir); !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "vision_config") {
		t.Errorf("text-only config: %v", err)
	}
}
