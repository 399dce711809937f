package model

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/tpuserve/tpuserve/model/quant"
)

// QuantizeCheckpoint reads the unquantized checkpoint in src, quantizes every decoder Linear
// with mode (quant.Int8, FP8 or their weight-only variants; the recipe of a quantize-at-load)
// and writes a compressed-tensors checkpoint to dst: config.json (text layout,
// Gemma3ForCausalLM, with quantization_config) and one model.safetensors with I8 / F8_E4M3
// weights, bf16 scales [out, 1] and the other tensors in bf16. Loading dst gives the same
// tensors as loading src with LoadOptions.Quantization = mode. progress may be nil.
func QuantizeCheckpoint(src, dst string, mode quant.Mode, progress func(LoadProgress)) error {
	if !mode.Quantized() {
		return fmt.Errorf("%w: quantize needs a quantization mode (int8, fp8, int8-weight-only or fp8-weight-only)", ErrConfig)
	}
	start := time.Now()
	cfg, err := LoadConfig(src)
	if err != nil {
		return err
	}
	if cfg.Quantization.Compressed {
		return fmt.Errorf("%w: %s is already quantized (%s); quantize reads an unquantized checkpoint", ErrConfig, src, cfg.Quantization.Mode)
	}
	cfg.Quantization = quant.AtLoad(mode)
	ck, err := OpenCheckpoint(src)
	if err != nil {
		return err
	}
	defer ck.Close()
	w, err := LoadWeights(ck, &cfg, dtypes.BFloat16, progress)
	if err != nil {
		return err
	}
	defer w.Finalize()
	if err := WriteQuantizedCheckpoint(dst, &cfg, w); err != nil {
		return err
	}
	slog.Info("wrote quantized checkpoint", "dir", dst, "mode", mode.String(), "bytes", w.Bytes(), "elapsed", time.Since(start).Round(time.Millisecond))
	return nil
}

// WriteQuantizedCheckpoint writes host weights of a quantized cfg (as LoadWeights or
// QuantizeWeights make them) as a compressed-tensors checkpoint in the text layout.
func WriteQuantizedCheckpoint(dir string, cfg *Config, w *Weights) error {
	if !cfg.Quantization.Mode.Quantized() {
		return fmt.Errorf("%w: the config is not quantized", ErrConfig)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	hub, err := HubConfig(cfg, false)
	if err != nil {
		return err
	}
	var obj map[string]any
	if err := json.Unmarshal(hub, &obj); err != nil {
		return err
	}
	scheme := cfg.Quantization
	scheme.Compressed = true
	obj["quantization_config"] = scheme.ConfigJSON()
	obj["torch_dtype"] = "bfloat16"
	data, err := json.MarshalIndent(obj, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), data, 0o644); err != nil {
		return err
	}
	named := map[string]*tensors.Tensor{}
	codes := map[string]string{}
	for i, s := range w.Specs {
		t := w.Tensors[i]
		switch t.DType() {
		case dtypes.Int8:
		case dtypes.Uint8:
			codes[s.Name] = f8E4M3Code
		default:
			t = toBF16(t)
		}
		named[s.Name] = t
	}
	return WriteSafetensorsAs(filepath.Join(dir, "model.safetensors"), named, codes)
}
