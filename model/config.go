package model

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/tpuserve/tpuserve/model/quant"
)

// ErrConfig is wrapped by every configuration error.
var ErrConfig = errors.New("invalid model config")

// Attention kinds of a decoder layer.
const (
	SlidingAttention = "sliding_attention"
	FullAttention    = "full_attention"
)

// Config is the text part of a Gemma 3 configuration, as in Hugging Face's
// Gemma3TextConfig. A hub config must give hidden_size, intermediate_size and
// num_hidden_layers; the other fields it omits take Gemma3TextConfig's defaults.
type Config struct {
	VocabSize             int      `json:"vocab_size"`
	HiddenSize            int      `json:"hidden_size"`
	IntermediateSize      int      `json:"intermediate_size"`
	NumHiddenLayers       int      `json:"num_hidden_layers"`
	NumAttentionHeads     int      `json:"num_attention_heads"`
	NumKeyValueHeads      int      `json:"num_key_value_heads"`
	HeadDim               int      `json:"head_dim"`
	QueryPreAttnScalar    float64  `json:"query_pre_attn_scalar"`
	SlidingWindow         int      `json:"sliding_window"`
	SlidingWindowPattern  int      `json:"sliding_window_pattern"`
	LayerTypes            []string `json:"layer_types"`
	MaxPositionEmbeddings int      `json:"max_position_embeddings"`
	RMSNormEps            float64  `json:"rms_norm_eps"`
	RopeTheta             float64  `json:"rope_theta"`
	RopeLocalBaseFreq     float64  `json:"rope_local_base_freq"`
	// RopeScalingFactor is the linear scaling factor of global layers' RoPE (1 = none).
	RopeScalingFactor     float64  `json:"-"`
	HiddenActivation      string   `json:"hidden_activation"`
	AttnLogitSoftcapping  *float64 `json:"attn_logit_softcapping"`
	FinalLogitSoftcapping *float64 `json:"final_logit_softcapping"`
	AttentionBias         bool     `json:"attention_bias"`
	BOSTokenID            int      `json:"bos_token_id"`
	PadTokenID            int      `json:"pad_token_id"`
	// EOSTokenIDs are the ids that end generation (instruction-tuned Gemma 3: 1 and 106).
	EOSTokenIDs []int `json:"-"`
	// TextVocabSize is the number of rows that are real tokens; logit rows at or beyond it
	// (the multimodal checkpoints' padding rows) are never sampled. 0 = VocabSize.
	TextVocabSize int `json:"-"`
	// Multimodal is true when the config came from Gemma3ForConditionalGeneration.
	Multimodal bool `json:"-"`
	// Vision is true when that config also has a vision_config (a vision tower to serve):
	// then every step program takes the image inputs (StepNodes.ImageRow, ImageSpan,
	// ImageEmbeds) and every BatchShape has M ≥ 1 image-embedding rows.
	Vision bool `json:"-"`
	// ImageMaskWindow is which keys an image soft token sees beyond causality. 0: every
	// token of its own image (Gemma 3's training; transformers ≥ 4.54 with image_group_ids;
	// --image-mask per-image). w > 0: every image token within w positions, its own
	// image's or a neighbour's (transformers 4.53's token_type_ids_mask_function, w =
	// mm_tokens_per_image, the fixtures' reference; --image-mask hf-4.53, the default).
	// Images linked so must run in one step (ImageGroups).
	ImageMaskWindow int `json:"-"`
	// Quantization is how the decoder Linears are quantized (quantization_config, or a
	// quantize-at-load; see quant.Scheme). The zero value: not quantized.
	Quantization quant.Scheme `json:"-"`
	// KVCache is how the KV pools store K and V: quant.None (the compute dtype), quant.Int8
	// or quant.FP8 (1 byte per element with a scale per position and kv head, see
	// kvquant.go). A serving choice (--kv-cache-dtype), not part of config.json.
	KVCache quant.Mode `json:"-"`
}

// Image mask modes (SetImageMask, --image-mask).
const (
	ImageMaskHF453    = "hf-4.53"
	ImageMaskPerImage = "per-image"
)

// SetImageMask selects the bidirectional image mask (see ImageMaskWindow): ImageMaskHF453
// with tokensPerImage (mm_tokens_per_image) as the window, or ImageMaskPerImage.
func (c *Config) SetImageMask(mode string, tokensPerImage int) error {
	switch mode {
	case ImageMaskHF453:
		c.ImageMaskWindow = tokensPerImage
	case ImageMaskPerImage:
		c.ImageMaskWindow = 0
	default:
		return fmt.Errorf("%w: image mask %q (want %s or %s)", ErrConfig, mode, ImageMaskHF453, ImageMaskPerImage)
	}
	return nil
}

// DefaultConfig returns Gemma 3's defaults for every field a hub config may omit; the
// shape fields are those of Gemma 3 1B.
func DefaultConfig() Config {
	return Config{
		VocabSize: 262144, HiddenSize: 1152, IntermediateSize: 6912, NumHiddenLayers: 26,
		NumAttentionHeads: 4, NumKeyValueHeads: 1, HeadDim: 256, QueryPreAttnScalar: 256,
		SlidingWindow: 512, SlidingWindowPattern: 6, MaxPositionEmbeddings: 32768,
		RMSNormEps: 1e-6, RopeTheta: 1e6, RopeLocalBaseFreq: 1e4, RopeScalingFactor: 1,
		HiddenActivation: "gelu_pytorch_tanh", BOSTokenID: 2, PadTokenID: 0,
		EOSTokenIDs: []int{1, 106},
	}
}

// Presets are the published Gemma 3 text configurations and the built-in demo model.
func Preset(name string) (Config, error) {
	c := DefaultConfig()
	switch name {
	case "gemma3-1b":
		// Defaults are 1B's.
	case "gemma3-4b":
		c.VocabSize, c.HiddenSize, c.IntermediateSize, c.NumHiddenLayers = 262208, 2560, 10240, 34
		c.NumAttentionHeads, c.NumKeyValueHeads, c.HeadDim, c.QueryPreAttnScalar = 8, 4, 256, 256
		c.SlidingWindow, c.MaxPositionEmbeddings, c.RopeScalingFactor = 1024, 131072, 8
	case "gemma3-12b":
		c.VocabSize, c.HiddenSize, c.IntermediateSize, c.NumHiddenLayers = 262208, 3840, 15360, 48
		c.NumAttentionHeads, c.NumKeyValueHeads, c.HeadDim, c.QueryPreAttnScalar = 16, 8, 256, 256
		c.SlidingWindow, c.MaxPositionEmbeddings, c.RopeScalingFactor = 1024, 131072, 8
	case "gemma3-27b":
		c.VocabSize, c.HiddenSize, c.IntermediateSize, c.NumHiddenLayers = 262208, 5376, 21504, 62
		c.NumAttentionHeads, c.NumKeyValueHeads, c.HeadDim, c.QueryPreAttnScalar = 32, 16, 128, 168
		c.SlidingWindow, c.MaxPositionEmbeddings, c.RopeScalingFactor = 1024, 131072, 8
	case "tiny":
		// The built-in demo: Gemma 3 at toy size with the multimodal checkpoints' vocabulary,
		// so the real tokenizer's ids all have rows. 4 layers: 3 sliding, 1 global.
		c.VocabSize, c.HiddenSize, c.IntermediateSize, c.NumHiddenLayers = 262208, 64, 128, 4
		c.NumAttentionHeads, c.NumKeyValueHeads, c.HeadDim, c.QueryPreAttnScalar = 4, 2, 16, 16
		c.SlidingWindow, c.SlidingWindowPattern, c.MaxPositionEmbeddings, c.RopeScalingFactor = 32, 4, 8192, 8
	default:
		return Config{}, fmt.Errorf("%w: unknown preset %q (known: %s)", ErrConfig, name, strings.Join(PresetNames(), ", "))
	}
	c.TextVocabSize = 262144
	if err := c.finish(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// PresetNames lists the names Preset accepts.
func PresetNames() []string {
	return []string{"gemma3-1b", "gemma3-4b", "gemma3-12b", "gemma3-27b", "tiny"}
}

// LoadConfig reads DIR/config.json (and DIR/generation_config.json for EOS ids when present).
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
	if gen, err := os.ReadFile(filepath.Join(dir, "generation_config.json")); err == nil {
		var g struct {
			EOS json.RawMessage `json:"eos_token_id"`
		}
		if err := json.Unmarshal(gen, &g); err != nil {
			return Config{}, fmt.Errorf("%w: generation_config.json: %w", ErrConfig, err)
		}
		if ids, err := parseIntOrList(g.EOS); err != nil {
			return Config{}, fmt.Errorf("%w: generation_config.json: eos_token_id: %w", ErrConfig, err)
		} else if len(ids) > 0 {
			c.EOSTokenIDs = ids
		}
	}
	return c, nil
}

// ParseConfig parses a hub config.json: Gemma3ForCausalLM (model_type gemma3_text) or
// Gemma3ForConditionalGeneration (model_type gemma3, text part under text_config).
func ParseConfig(data []byte) (Config, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(data, &top); err != nil {
		return Config{}, fmt.Errorf("%w: not a JSON object: %w", ErrConfig, err)
	}
	var modelType string
	if raw, ok := top["model_type"]; ok {
		if err := json.Unmarshal(raw, &modelType); err != nil {
			return Config{}, fmt.Errorf("%w: field model_type: %w", ErrConfig, err)
		}
	}
	text := top
	multimodal := false
	switch modelType {
	case "gemma3_text", "":
		if modelType == "" {
			if _, ok := top["text_config"]; ok {
				return Config{}, fmt.Errorf("%w: field model_type is missing", ErrConfig)
			}
		}
	case "gemma3":
		multimodal = true
		raw, ok := top["text_config"]
		if !ok {
			return Config{}, fmt.Errorf("%w: field text_config is missing for model_type gemma3", ErrConfig)
		}
		text = nil
		if err := json.Unmarshal(raw, &text); err != nil || text == nil {
			return Config{}, fmt.Errorf("%w: field text_config is not an object", ErrConfig)
		}
	default:
		return Config{}, fmt.Errorf("%w: field model_type %q is not a Gemma 3 model (want gemma3 or gemma3_text)", ErrConfig, modelType)
	}
	// The model's sizes have no default that fits every Gemma 3: a config without them is
	// refused, never read as 1B's shapes.
	for _, name := range requiredFields {
		if raw, ok := text[name]; !ok || string(raw) == "null" {
			return Config{}, fmt.Errorf("%w: field %s is missing (Gemma 3's sizes differ per model, so it has no default)", ErrConfig, name)
		}
	}
	c := hubDefaults()
	if err := decodeFields(text, &c); err != nil {
		return Config{}, err
	}
	c.Multimodal = multimodal
	if raw, ok := top["vision_config"]; ok && multimodal && string(raw) != "null" {
		c.Vision = true
		if raw, ok := top["mm_tokens_per_image"]; ok {
			if err := json.Unmarshal(raw, &c.ImageMaskWindow); err != nil || c.ImageMaskWindow < 0 {
				return Config{}, fmt.Errorf("%w: field mm_tokens_per_image: want a non-negative integer, got %s", ErrConfig, raw)
			}
		} else {
			c.ImageMaskWindow = 256 // Gemma3Config's default mm_tokens_per_image
		}
	}
	if err := c.parseQuantization(top, text); err != nil {
		return Config{}, err
	}
	if raw, ok := text["rope_scaling"]; ok && string(raw) != "null" {
		var rs struct {
			Factor   *float64 `json:"factor"`
			RopeType string   `json:"rope_type"`
			Type     string   `json:"type"`
		}
		if err := json.Unmarshal(raw, &rs); err != nil {
			return Config{}, fmt.Errorf("%w: field rope_scaling: %w", ErrConfig, err)
		}
		kind := rs.RopeType
		if kind == "" {
			kind = rs.Type
		}
		if kind != "linear" && kind != "default" {
			return Config{}, fmt.Errorf("%w: field rope_scaling.rope_type %q is not supported (want linear)", ErrConfig, kind)
		}
		if kind == "linear" {
			if rs.Factor == nil {
				return Config{}, fmt.Errorf("%w: field rope_scaling.factor is missing", ErrConfig)
			}
			c.RopeScalingFactor = *rs.Factor
		}
	}
	// eos_token_id may sit at the top (multimodal) or in the text config, as an int or a list.
	for _, src := range []map[string]json.RawMessage{text, top} {
		if raw, ok := src["eos_token_id"]; ok {
			ids, err := parseIntOrList(raw)
			if err != nil {
				return Config{}, fmt.Errorf("%w: field eos_token_id: %w", ErrConfig, err)
			}
			if len(ids) > 0 {
				c.EOSTokenIDs = mergeIDs(c.EOSTokenIDs, ids)
			}
		}
	}
	if c.TextVocabSize == 0 {
		c.TextVocabSize = min(c.VocabSize, 262144)
	}
	if err := c.finish(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// requiredFields must be in every hub config: every published Gemma 3 lists them (the
// 4B's text_config lists little else).
var requiredFields = []string{"hidden_size", "intermediate_size", "num_hidden_layers"}

// hubDefaults are the values a hub config.json may omit, as transformers'
// Gemma3TextConfig defaults them (the 4B checkpoint relies on its num_attention_heads 8,
// num_key_value_heads 4, head_dim 256 and max_position_embeddings 131072): the
// 1B-shaped DefaultConfig would silently build another model.
func hubDefaults() Config {
	c := DefaultConfig()
	c.VocabSize, c.NumAttentionHeads, c.NumKeyValueHeads, c.HeadDim = 262208, 8, 4, 256
	c.MaxPositionEmbeddings, c.SlidingWindow = 131072, 4096
	return c
}

// decodeFields unmarshals the known scalar fields one by one so an error names its field.
func decodeFields(text map[string]json.RawMessage, c *Config) error {
	fields := map[string]any{
		"vocab_size": &c.VocabSize, "hidden_size": &c.HiddenSize, "intermediate_size": &c.IntermediateSize,
		"num_hidden_layers": &c.NumHiddenLayers, "num_attention_heads": &c.NumAttentionHeads,
		"num_key_value_heads": &c.NumKeyValueHeads, "head_dim": &c.HeadDim,
		"query_pre_attn_scalar": &c.QueryPreAttnScalar, "sliding_window": &c.SlidingWindow,
		"sliding_window_pattern": &c.SlidingWindowPattern, "layer_types": &c.LayerTypes,
		"max_position_embeddings": &c.MaxPositionEmbeddings, "rms_norm_eps": &c.RMSNormEps,
		"rope_theta": &c.RopeTheta, "rope_local_base_freq": &c.RopeLocalBaseFreq,
		"hidden_activation": &c.HiddenActivation, "attn_logit_softcapping": &c.AttnLogitSoftcapping,
		"final_logit_softcapping": &c.FinalLogitSoftcapping, "attention_bias": &c.AttentionBias,
		"bos_token_id": &c.BOSTokenID, "pad_token_id": &c.PadTokenID,
	}
	names := make([]string, 0, len(fields))
	for n := range fields {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		raw, ok := text[name]
		if !ok || string(raw) == "null" {
			continue
		}
		if err := json.Unmarshal(raw, fields[name]); err != nil {
			return fmt.Errorf("%w: field %s: %w", ErrConfig, name, err)
		}
	}
	return nil
}

func parseIntOrList(raw json.RawMessage) ([]int, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	var one int
	if err := json.Unmarshal(raw, &one); err == nil {
		return []int{one}, nil
	}
	var many []int
	if err := json.Unmarshal(raw, &many); err != nil {
		return nil, fmt.Errorf("want an int or a list of ints: %w", err)
	}
	return many, nil
}

func mergeIDs(a, b []int) []int {
	out := append([]int(nil), a...)
	for _, id := range b {
		found := false
		for _, x := range out {
			found = found || x == id
		}
		if !found {
			out = append(out, id)
		}
	}
	return out
}

// finish fills LayerTypes from the pattern when absent and validates the whole config.
func (c *Config) finish() error {
	if len(c.LayerTypes) == 0 && c.SlidingWindowPattern > 0 && c.NumHiddenLayers > 0 {
		c.LayerTypes = make([]string, c.NumHiddenLayers)
		for i := range c.LayerTypes {
			if (i+1)%c.SlidingWindowPattern == 0 {
				c.LayerTypes[i] = FullAttention
			} else {
				c.LayerTypes[i] = SlidingAttention
			}
		}
	}
	if c.RopeScalingFactor == 0 {
		c.RopeScalingFactor = 1
	}
	return c.Validate()
}

// Validate checks every field; the error names the first bad one.
func (c *Config) Validate() error {
	positive := []struct {
		name string
		v    int
	}{
		{"vocab_size", c.VocabSize}, {"hidden_size", c.HiddenSize}, {"intermediate_size", c.IntermediateSize},
		{"num_hidden_layers", c.NumHiddenLayers}, {"num_attention_heads", c.NumAttentionHeads},
		{"num_key_value_heads", c.NumKeyValueHeads}, {"head_dim", c.HeadDim},
		{"sliding_window", c.SlidingWindow}, {"max_position_embeddings", c.MaxPositionEmbeddings},
	}
	for _, f := range positive {
		if f.v <= 0 {
			return fmt.Errorf("%w: field %s must be > 0, got %d", ErrConfig, f.name, f.v)
		}
	}
	if c.NumAttentionHeads%c.NumKeyValueHeads != 0 {
		return fmt.Errorf("%w: field num_attention_heads (%d) must be a multiple of num_key_value_heads (%d)",
			ErrConfig, c.NumAttentionHeads, c.NumKeyValueHeads)
	}
	if c.HeadDim%2 != 0 {
		return fmt.Errorf("%w: field head_dim must be even for RoPE, got %d", ErrConfig, c.HeadDim)
	}
	if !(c.QueryPreAttnScalar > 0) {
		return fmt.Errorf("%w: field query_pre_attn_scalar must be > 0, got %v", ErrConfig, c.QueryPreAttnScalar)
	}
	if !(c.RMSNormEps > 0) || math.IsInf(c.RMSNormEps, 0) {
		return fmt.Errorf("%w: field rms_norm_eps must be > 0, got %v", ErrConfig, c.RMSNormEps)
	}
	if !(c.RopeTheta > 1) || !(c.RopeLocalBaseFreq > 1) {
		return fmt.Errorf("%w: fields rope_theta and rope_local_base_freq must be > 1, got %v and %v", ErrConfig, c.RopeTheta, c.RopeLocalBaseFreq)
	}
	if !(c.RopeScalingFactor >= 1) {
		return fmt.Errorf("%w: field rope_scaling.factor must be >= 1, got %v", ErrConfig, c.RopeScalingFactor)
	}
	if c.HiddenActivation != "gelu_pytorch_tanh" && c.HiddenActivation != "gelu_tanh" {
		return fmt.Errorf("%w: field hidden_activation %q is not supported (want gelu_pytorch_tanh)", ErrConfig, c.HiddenActivation)
	}
	if c.AttnLogitSoftcapping != nil || c.FinalLogitSoftcapping != nil {
		return fmt.Errorf("%w: fields attn_logit_softcapping/final_logit_softcapping must be null for Gemma 3", ErrConfig)
	}
	if c.AttentionBias {
		return fmt.Errorf("%w: field attention_bias must be false for Gemma 3", ErrConfig)
	}
	if len(c.LayerTypes) == 0 {
		return fmt.Errorf("%w: field sliding_window_pattern must be > 0 when layer_types is absent", ErrConfig)
	}
	if len(c.LayerTypes) != c.NumHiddenLayers {
		return fmt.Errorf("%w: field layer_types has %d entries, num_hidden_layers is %d", ErrConfig, len(c.LayerTypes), c.NumHiddenLayers)
	}
	for i, t := range c.LayerTypes {
		if t != SlidingAttention && t != FullAttention {
			return fmt.Errorf("%w: field layer_types[%d] is %q (want %s or %s)", ErrConfig, i, t, SlidingAttention, FullAttention)
		}
	}
	if c.TextVocabSize <= 0 || c.TextVocabSize > c.VocabSize {
		c.TextVocabSize = c.VocabSize
	}
	return nil
}

// IsGlobal reports whether layer i uses full (global) attention.
func (c *Config) IsGlobal(layer int) bool { return c.LayerTypes[layer] == FullAttention }

// NumGlobalLayers and NumSlidingLayers count the layers of each attention kind.
func (c *Config) NumGlobalLayers() int {
	n := 0
	for i := range c.LayerTypes {
		if c.IsGlobal(i) {
			n++
		}
	}
	return n
}

func (c *Config) NumSlidingLayers() int { return c.NumHiddenLayers - c.NumGlobalLayers() }

// NumParams is the number of text-model parameters (tied embeddings counted once).
func (c *Config) NumParams() int64 {
	h, i, d := int64(c.HiddenSize), int64(c.IntermediateSize), int64(c.HeadDim)
	nh, kv := int64(c.NumAttentionHeads), int64(c.NumKeyValueHeads)
	perLayer := h*nh*d + 2*h*kv*d + nh*d*h + 2*d + 4*h + 3*h*i
	return int64(c.VocabSize)*h + int64(c.NumHiddenLayers)*perLayer + h
}
