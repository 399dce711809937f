package model_test

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/gomlx/gomlx/pkg/core/shapes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/tpuserve/tpuserve/internal/backendtest"
	"github.com/tpuserve/tpuserve/model"
	"github.com/tpuserve/tpuserve/model/quant"
)

// editTensors rewrites dir/model.safetensors through edit (F8_E4M3 tensors read as Uint8
// and are written back as F8_E4M3).
func editTensors(t *testing.T, dir string, edit func(ts map[string]*tensors.Tensor)) {
	t.Helper()
	p := filepath.Join(dir, "model.safetensors")
	ts, err := model.ReadSafetensors(p)
	if err != nil {
		t.Fatal(err)
	}
	edit(ts)
	codes := map[string]string{}
	for n, x := range ts {
		if x.DType() == dtypes.Uint8 {
			codes[n] = "F8_E4M3"
		}
	}
	if err := model.WriteSafetensorsAs(p, ts, codes); err != nil {
		t.Fatal(err)
	}
}

// editQC rewrites the quantization_config of dir/config.json (nil edit result: remove it).
func editQC(t *testing.T, dir string, edit func(qc map[string]any) map[string]any) {
	t.Helper()
	p := filepath.Join(dir, "config.json")
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := json.Unmarshal(data, &cfg); err != nil {
		t.Fatal(err)
	}
	qc, _ := cfg["quantization_config"].(map[string]any)
	if qc = edit(qc); qc == nil {
		delete(cfg, "quantization_config")
	} else {
		cfg["quantization_config"] = qc
	}
	data, _ = json.Marshal(cfg)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func qcGroup(qc map[string]any) map[string]any {
	return qc["config_groups"].(map[string]any)["group_0"].(map[string]any)
}

func bf16Tensor(dims ...int) *tensors.Tensor {
	x := tensors.FromShape(shapes.Make(dtypes.BFloat16, dims...))
	x.MutableBytes(func(b []byte) {
		for i := 1; i < len(b); i += 2 {
			b[i] = 0x3c // 2^-7: a small positive value
		}
	})
	return x
}

// TestQuantizedCheckpointErrors: every damaged quantized checkpoint, contradictory config or
// unsupported setting is refused with the model's sentinel and an error naming the tensor
// or field.
func TestQuantizedCheckpointErrors(t *testing.T) {
	const scale = "model.layers.2.mlp.up_proj.weight_scale"
	const qproj = "model.layers.0.self_attn.q_proj.weight"
	cases := []struct {
		name, fixture, flag string
		damage              func(t *testing.T, dir string)
		sentinel            error
		want                []string
	}{
		{"missing scale", "gemma3-tiny-w8a8", "", func(t *testing.T, dir string) {
			editTensors(t, dir, func(ts map[string]*tensors.Tensor) { delete(ts, scale) })
		}, model.ErrWeights, []string{"scale " + scale + " is missing"}},
		{"mis-shaped scale", "gemma3-tiny-w8a8", "", func(t *testing.T, dir string) {
			editTensors(t, dir, func(ts map[string]*tensors.Tensor) { ts[scale] = bf16Tensor(255, 1) })
		}, model.ErrWeights, []string{scale, "shape [255 1]", "want [256 1]"}},
		{"scale of int8", "gemma3-tiny-w8a8", "", func(t *testing.T, dir string) {
			editTensors(t, dir, func(ts map[string]*tensors.Tensor) { ts[scale] = tensors.FromShape(shapes.Make(dtypes.Int8, 256, 1)) })
		}, model.ErrWeights, []string{scale, "dtype I8"}},
		{"negative scale", "gemma3-tiny-w8a8", "", func(t *testing.T, dir string) {
			editTensors(t, dir, func(ts map[string]*tensors.Tensor) {
				x := bf16Tensor(256, 1)
				x.MutableBytes(func(b []byte) { b[1] = 0xbc })
				ts[scale] = x
			})
		}, model.ErrWeights, []string{scale + "[0]", "finite and ≥ 0"}},
		{"bf16 weight where the config says int8", "gemma3-tiny-w8a8", "", func(t *testing.T, dir string) {
			editTensors(t, dir, func(ts map[string]*tensors.Tensor) { ts[qproj] = bf16Tensor(128, 128) })
		}, model.ErrWeights, []string{qproj, "dtype BF16", "needs I8"}},
		{"int8 weights under a float-quantized config", "gemma3-tiny-w8a8", "", func(t *testing.T, dir string) {
			editQC(t, dir, func(qc map[string]any) map[string]any {
				qc["format"] = "float-quantized"
				qcGroup(qc)["weights"].(map[string]any)["type"] = "float"
				qcGroup(qc)["input_activations"].(map[string]any)["type"] = "float"
				return qc
			})
		}, model.ErrWeights, []string{"model.layers.0.self_attn.q_proj.weight", "dtype I8", "needs F8_E4M3"}},
		{"quantized tensor where the config says none", "gemma3-tiny-w8a8", "", func(t *testing.T, dir string) {
			editQC(t, dir, func(map[string]any) map[string]any { return nil })
		}, model.ErrWeights, []string{qproj, "dtype I8", "not quantized"}},
		{"quantized tensor that the config ignores", "gemma3-tiny-w8a8", "", func(t *testing.T, dir string) {
			editQC(t, dir, func(qc map[string]any) map[string]any {
				qc["ignore"] = []string{"lm_head", `re:.*layers\.0\.self_attn\.q_proj`}
				return qc
			})
		}, model.ErrWeights, []string{qproj, "dtype I8", "not quantized"}},
		{"scale where the config says none", "gemma3-tiny", "", func(t *testing.T, dir string) {
			editTensors(t, dir, func(ts map[string]*tensors.Tensor) { ts[qproj+"_scale"] = bf16Tensor(128, 1) })
		}, model.ErrWeights, []string{qproj + "_scale", "a quantization scale where the config says"}},
		{"scale where quantize-at-load expects none", "gemma3-tiny", "int8", func(t *testing.T, dir string) {
			editTensors(t, dir, func(ts map[string]*tensors.Tensor) { ts[qproj+"_scale"] = bf16Tensor(128, 1) })
		}, model.ErrWeights, []string{qproj + "_scale", "no quantization_config"}},
		{"unknown format", "gemma3-tiny-w8a8", "", func(t *testing.T, dir string) {
			editQC(t, dir, func(qc map[string]any) map[string]any { qc["format"] = "marlin-24"; return qc })
		}, model.ErrConfig, []string{"quantization_config.format", "marlin-24"}},
		{"group strategy", "gemma3-tiny-w8a8", "", func(t *testing.T, dir string) {
			editQC(t, dir, func(qc map[string]any) map[string]any {
				qcGroup(qc)["weights"].(map[string]any)["strategy"] = "group"
				return qc
			})
		}, model.ErrConfig, []string{"weights.strategy", "group"}},
		{"static input scales", "gemma3-tiny-w8a8", "", func(t *testing.T, dir string) {
			editQC(t, dir, func(qc map[string]any) map[string]any {
				qcGroup(qc)["input_activations"].(map[string]any)["dynamic"] = false
				return qc
			})
		}, model.ErrConfig, []string{"input_activations.dynamic"}},
		{"other quant method", "gemma3-tiny-w8a8", "", func(t *testing.T, dir string) {
			editQC(t, dir, func(qc map[string]any) map[string]any { return map[string]any{"quant_method": "awq", "bits": 4} })
		}, model.ErrConfig, []string{"quant_method", "awq"}},
		{"fp8 on an int8 checkpoint", "gemma3-tiny-w8a8", "fp8", func(*testing.T, string) {}, model.ErrConfig, []string{"--quantization fp8", "I8"}},
		{"none on an int8 checkpoint", "gemma3-tiny-w8a8", "none", func(*testing.T, string) {}, model.ErrConfig, []string{"--quantization none"}},
		{"unknown mode", "gemma3-tiny", "int4", func(*testing.T, string) {}, model.ErrConfig, []string{`--quantization "int4"`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := copyFixture(t, tc.fixture)
			tc.damage(t, dir)
			m, err := model.Load(backendtest.Backend(t), model.LoadOptions{Model: dir, DType: dtypes.Float32, Quantization: tc.flag, Progress: func(model.LoadProgress) {}})
			if err == nil {
				m.Close()
				t.Fatal("loaded")
			}
			if !errors.Is(err, tc.sentinel) {
				t.Fatalf("error %v, want %v", err, tc.sentinel)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

// TestPartiallyQuantizedCheckpoint: a Linear the config ignores stays in bf16 (no scale),
// the others are int8; the model loads and its logits stay close to the W8A8 golden.
func TestPartiallyQuantizedCheckpoint(t *testing.T) {
	dir := copyFixture(t, "gemma3-tiny-w8a8")
	const qproj = "model.layers.0.self_attn.q_proj.weight"
	src, err := model.ReadSafetensors(filepath.Join("testdata", "gemma3-tiny", "model.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	editTensors(t, dir, func(ts map[string]*tensors.Tensor) {
		ts[qproj] = src[qproj]
		delete(ts, qproj+"_scale")
	})
	editQC(t, dir, func(qc map[string]any) map[string]any {
		qc["ignore"] = []string{"lm_head", `re:.*layers\.0\.self_attn\.q_proj$`}
		return qc
	})
	m := loadQuant(t, dir, dtypes.Float32, "")
	if got, want := len(m.Weights.Tensors), len(model.WeightSpecs(&m.Config)); got != want || got != 1+6*13+1+6*7-1 {
		t.Fatalf("%d tensors (specs %d), want %d", got, want, 1+6*13+1+6*7-1)
	}
	golden, ts := loadQuantGolden(t, filepath.Join("testdata", "gemma3-tiny-w8a8"))
	got, err := m.ForwardLogits(golden.Sequences[1])
	if err != nil {
		t.Fatal(err)
	}
	maxD, _, _, _ := logitsDiff(flat32(t, got), flat32(t, ts["seq1.logits_dyn"]), m.Config.VocabSize, 0)
	if maxD > 0.2 || maxD < 1e-6 {
		t.Errorf("max |Δ| against the fully quantized golden = %.3g: want a small but visible change", maxD)
	}
	t.Logf("one Linear unquantized: max |Δ| against the W8A8 golden %.3g", maxD)
}

// TestQuantizedTensorSpecs: the plans' tensor list for the 1B shape, in bytes.
func TestQuantizedTensorSpecs(t *testing.T) {
	cfg, err := model.Preset("gemma3-1b")
	if err != nil {
		t.Fatal(err)
	}
	h, i, d := int64(cfg.HiddenSize), int64(cfg.IntermediateSize), int64(cfg.HeadDim)
	nh, kv, L := int64(cfg.NumAttentionHeads), int64(cfg.NumKeyValueHeads), int64(cfg.NumHiddenLayers)
	linParams := L * (2*nh*d*h + 2*kv*d*h + 3*h*i)
	linRows := L * (nh*d + 2*kv*d + h + 2*i + h) // output rows: q, k, v, o, gate, up, down
	other := int64(cfg.VocabSize)*h + L*(4*h+2*d) + h
	for _, tc := range []struct {
		mode    string
		compute dtypes.DType
		want    int64
	}{
		{"none", dtypes.BFloat16, 2 * (linParams + other)},
		{"int8", dtypes.BFloat16, linParams + 2*linRows + 2*other},
		{"fp8-weight-only", dtypes.Float32, linParams + 4*linRows + 4*other},
	} {
		m, _ := quantParseMode(t, tc.mode)
		var got int64
		scales := 0
		for _, s := range model.QuantizedTensorSpecs(&cfg, m, tc.compute) {
			got += s.Bytes()
			if s.ScaleOf != "" {
				scales++
				if !strings.HasSuffix(s.Name, "_scale") || s.Shape[1] != 1 {
					t.Errorf("scale %s %v", s.Name, s.Shape)
				}
			}
		}
		if got != tc.want {
			t.Errorf("%s/%s: %d bytes, want %d", tc.mode, tc.compute, got, tc.want)
		}
		if wantScales := map[bool]int{true: 0, false: 7 * 26}[tc.mode == "none"]; scales != wantScales {
			t.Errorf("%s: %d scales, want %d", tc.mode, scales, wantScales)
		}
		t.Logf("gemma3-1b %s (%s compute): %.1f MiB of weights", tc.mode, tc.compute, float64(got)/(1<<20))
	}
}

func quantParseMode(t *testing.T, s string) (quant.Mode, error) {
	t.Helper()
	m, err := quant.ParseMode(s)
	if err != nil {
		t.Fatal(err)
	}
	return m, nil
}

// TestQuantizedPreset: a preset's random weights quantize at load like a checkpoint.
func TestQuantizedPreset(t *testing.T) {
	ids := []int32{2, 17, 9, 300}
	logits := map[string][]float32{}
	for _, q := range []string{"", "int8", "fp8-weight-only"} {
		m, err := model.Load(backendtest.Backend(t), model.LoadOptions{Model: "tiny", DType: dtypes.Float32, Seed: 5, Quantization: q, Progress: func(model.LoadProgress) {}})
		if err != nil {
			t.Fatal(err)
		}
		int8s := 0
		for _, x := range m.Weights.Tensors {
			if x.DType() == dtypes.Int8 || x.DType() == dtypes.Uint8 {
				int8s++
			}
		}
		if want := map[string]int{"": 0, "int8": 28, "fp8-weight-only": 28}[q]; int8s != want || (q != "" && m.Config.Quantization.Mode.String() != q) {
			t.Errorf("%q: %d quantized tensors (want %d), mode %s", q, int8s, want, m.Config.Quantization.Mode)
		}
		out, err := m.ForwardLogits(ids)
		if err != nil {
			t.Fatal(err)
		}
		logits[q] = flat32(t, out)
		m.Close()
	}
	for _, q := range []string{"int8", "fp8-weight-only"} {
		maxD, _, _, _ := logitsDiff(logits[q], logits[""], 262208, 0)
		if maxD == 0 || maxD > 0.5 { // the fixtures move by up to 0.2 (golden.json quality)
			t.Errorf("%s vs unquantized: max |Δ| %.3g, want a small nonzero change", q, maxD)
		}
		t.Logf("tiny preset %s vs unquantized: max |Δ| %.3g", q, maxD)
	}
}
