package model

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/gomlx/gomlx/pkg/core/shapes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
)

// ParseDType maps "f32"/"float32" and "bf16"/"bfloat16" to a compute dtype.
func ParseDType(s string) (dtypes.DType, error) {
	switch strings.ToLower(s) {
	case "f32", "float32":
		return dtypes.Float32, nil
	case "bf16", "bfloat16":
		return dtypes.BFloat16, nil
	}
	return dtypes.InvalidDType, fmt.Errorf("%w: dtype %q (want f32 or bf16)", ErrConfig, s)
}

// LoadOptions say where a model comes from and how it runs.
type LoadOptions struct {
	// Model is a checkpoint directory or a preset name (see PresetNames); presets get
	// seeded random weights.
	Model string
	DType dtypes.DType
	// Seed of the random weights of a preset.
	Seed uint64
	// Progress, if set, is called while weights load (default: log with slog).
	Progress func(LoadProgress)
	// Quantization overrides the checkpoint's own quantization_config (see quant.ParseMode
	// and quant.Resolve): "" follows the checkpoint (else none); "int8", "int8-weight-only",
	// "fp8", "fp8-weight-only" quantize an unquantized checkpoint (or a preset) at load, or
	// pick the activation handling of a compressed one; "none" keeps an unquantized one as is.
	Quantization string
}

// Load reads (or, for a preset, generates) a model's weights and puts them on the backend.
func Load(backend backends.Backend, opts LoadOptions) (*Model, error) {
	progress := opts.Progress
	if progress == nil {
		progress = LogProgress
	}
	start := time.Now()
	if slices.Contains(PresetNames(), opts.Model) {
		if _, err := os.Stat(opts.Model); err != nil { // a directory of that name wins
			cfg, err := Preset(opts.Model)
			if err != nil {
				return nil, err
			}
			w, err := RandomWeights(&cfg, opts.DType, opts.Seed)
			if err != nil {
				return nil, err
			}
			slog.Info("random weights", "preset", opts.Model, "params", cfg.NumParams(), "seed", opts.Seed, "elapsed", time.Since(start).Round(time.Millisecond))
			if cfg, w, err = quantizePreset(cfg, w, opts.Quantization); err != nil {
				return nil, err
			}
			return New(backend, cfg, w)
		}
	}
	cfg, err := LoadConfig(opts.Model)
	if err != nil {
		return nil, err
	}
	if err := cfg.resolveQuantization(opts.Quantization); err != nil {
		return nil, err
	}
	ck, err := OpenCheckpoint(opts.Model)
	if err != nil {
		return nil, err
	}
	defer ck.Close()
	w, err := LoadWeights(ck, &cfg, opts.DType, progress)
	if err != nil {
		return nil, err
	}
	return New(backend, cfg, w)
}

// HubConfig renders cfg as a hub config.json: Gemma3ForCausalLM, or with multimodal
// Gemma3ForConditionalGeneration with the text part under text_config.
func HubConfig(cfg *Config, multimodal bool) ([]byte, error) {
	text := map[string]any{
		"model_type": "gemma3_text", "vocab_size": cfg.VocabSize, "hidden_size": cfg.HiddenSize,
		"intermediate_size": cfg.IntermediateSize, "num_hidden_layers": cfg.NumHiddenLayers,
		"num_attention_heads": cfg.NumAttentionHeads, "num_key_value_heads": cfg.NumKeyValueHeads,
		"head_dim": cfg.HeadDim, "query_pre_attn_scalar": cfg.QueryPreAttnScalar,
		"sliding_window": cfg.SlidingWindow, "layer_types": cfg.LayerTypes,
		"max_position_embeddings": cfg.MaxPositionEmbeddings, "rms_norm_eps": cfg.RMSNormEps,
		"rope_theta": cfg.RopeTheta, "rope_local_base_freq": cfg.RopeLocalBaseFreq,
		"hidden_activation": cfg.HiddenActivation, "bos_token_id": cfg.BOSTokenID,
		"pad_token_id": cfg.PadTokenID, "eos_token_id": cfg.EOSTokenIDs,
		"attn_logit_softcapping": nil, "final_logit_softcapping": nil, "attention_bias": false,
	}
	if cfg.RopeScalingFactor != 1 {
		text["rope_scaling"] = map[string]any{"rope_type": "linear", "factor": cfg.RopeScalingFactor}
	}
	if !multimodal {
		text["architectures"] = []string{"Gemma3ForCausalLM"}
		return json.MarshalIndent(text, "", "  ")
	}
	return json.MarshalIndent(map[string]any{
		"architectures": []string{"Gemma3ForConditionalGeneration"}, "model_type": "gemma3",
		"text_config": text, "eos_token_id": cfg.EOSTokenIDs,
	}, "", "  ")
}

// WriteCheckpoint writes host weights as a hub-style checkpoint: config.json and bf16
// safetensors with tensor names under prefix ("model.", "language_model.model." or
// "model.language_model."), split into shards files (> 1 adds the index).
func WriteCheckpoint(dir string, cfg *Config, w *Weights, prefix string, shards int) error {
	if !slices.Contains(checkpointPrefixes, prefix) {
		return fmt.Errorf("%w: unknown tensor prefix %q", ErrWeights, prefix)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	hub, err := HubConfig(cfg, prefix != "model.")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), hub, 0o644); err != nil {
		return err
	}
	shards = max(1, min(shards, len(w.Tensors)))
	weightMap := map[string]string{}
	per := (len(w.Tensors) + shards - 1) / shards
	for s := 0; s < shards; s++ {
		name := "model.safetensors"
		if shards > 1 {
			name = fmt.Sprintf("model-%05d-of-%05d.safetensors", s+1, shards)
		}
		named := map[string]*tensors.Tensor{}
		for i := s * per; i < min(len(w.Tensors), (s+1)*per); i++ {
			tname := prefix + strings.TrimPrefix(w.Specs[i].Name, "model.")
			named[tname] = toBF16(w.Tensors[i])
			weightMap[tname] = name
		}
		if err := WriteSafetensors(filepath.Join(dir, name), named); err != nil {
			return err
		}
	}
	if shards > 1 {
		idx, _ := json.MarshalIndent(map[string]any{"metadata": map[string]any{}, "weight_map": weightMap}, "", "  ")
		return os.WriteFile(filepath.Join(dir, "model.safetensors.index.json"), idx, 0o644)
	}
	return nil
}

func toBF16(t *tensors.Tensor) *tensors.Tensor {
	if t.DType() == dtypes.BFloat16 {
		return t
	}
	out := tensors.FromShape(shapesWithDType(t, dtypes.BFloat16))
	_ = t.ConstBytes(func(src []byte) {
		_ = out.MutableBytes(func(dst []byte) { convertInto(dst, dtypes.BFloat16, src, "F32") })
	})
	return out
}

func shapesWithDType(t *tensors.Tensor, dt dtypes.DType) shapes.Shape {
	return shapes.Make(dt, t.Shape().Dimensions...)
}
