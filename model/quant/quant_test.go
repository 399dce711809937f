package quant_test

import (
	"encoding/json"
	"errors"
	"math"
	"os"
	"strings"
	"testing"

	"github.com/tpuserve/tpuserve/model/quant"
)

func TestParseMode(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want quant.Mode
		ok   bool
	}{
		{"", quant.None, true}, {"none", quant.None, true}, {"int8", quant.Int8, true}, {"W8A8", quant.Int8, true},
		{"int8-weight-only", quant.Int8WeightOnly, true}, {"fp8", quant.FP8, true},
		{"fp8-weight-only", quant.FP8WeightOnly, true}, {"int4", quant.None, false}, {"fp16", quant.None, false},
	} {
		got, err := quant.ParseMode(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseMode(%q) = %v, %v; want %v, ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
		if err != nil && !errors.Is(err, quant.ErrInvalid) {
			t.Errorf("ParseMode(%q): error %v does not wrap ErrInvalid", tc.in, err)
		}
	}
	for _, name := range quant.ModeNames() {
		m, err := quant.ParseMode(name)
		if err != nil || m.String() != name {
			t.Errorf("ParseMode(%q) = %v (%v), does not round-trip", name, m, err)
		}
	}
}

// fixtureQC is the quantization_config of a copied fixture.
func fixtureQC(t *testing.T, dir string) map[string]any {
	t.Helper()
	data, err := os.ReadFile("../testdata/" + dir + "/config.json")
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := json.Unmarshal(data, &cfg); err != nil {
		t.Fatal(err)
	}
	return cfg["quantization_config"].(map[string]any)
}

func TestParseConfigFixtures(t *testing.T) {
	for dir, want := range map[string]quant.Mode{"gemma3-tiny-w8a8": quant.Int8, "gemma3-tiny-fp8": quant.FP8} {
		raw, _ := json.Marshal(fixtureQC(t, dir))
		s, err := quant.ParseConfig(raw)
		if err != nil || s.Mode != want || !s.Compressed {
			t.Fatalf("%s: %+v, %v; want mode %v compressed", dir, s, err, want)
		}
		for module, covered := range map[string]bool{
			"model.layers.0.self_attn.q_proj": true, "model.layers.5.mlp.down_proj": true, "lm_head": false,
		} {
			if s.Quantizes(module) != covered {
				t.Errorf("%s: Quantizes(%s) = %v", dir, module, !covered)
			}
		}
		// What tpuserve writes reads back as the same scheme.
		back, _ := json.Marshal(s.ConfigJSON())
		s2, err := quant.ParseConfig(back)
		if err != nil || s2.Mode != s.Mode || !s2.Compressed {
			t.Errorf("%s: ConfigJSON round trip: %+v, %v", dir, s2, err)
		}
	}
	if s, err := quant.ParseConfig(nil); err != nil || s.Mode != quant.None {
		t.Errorf("absent quantization_config: %+v, %v", s, err)
	}
	if s, err := quant.ParseConfig(json.RawMessage("null")); err != nil || s.Mode != quant.None {
		t.Errorf("null quantization_config: %+v, %v", s, err)
	}
}

// TestParseConfigRefuses: every unsupported or malformed setting is refused with an error
// that names its field.
func TestParseConfigRefuses(t *testing.T) {
	group := func(qc map[string]any) map[string]any {
		return qc["config_groups"].(map[string]any)["group_0"].(map[string]any)
	}
	for _, tc := range []struct {
		name, field string
		sentinel    error
		edit        func(qc map[string]any)
	}{
		{"gptq", "quant_method", quant.ErrUnsupported, func(qc map[string]any) { qc["quant_method"] = "gptq" }},
		{"fp8 method", "quant_method", quant.ErrUnsupported, func(qc map[string]any) { qc["quant_method"] = "fp8" }},
		{"int4 packed", "format", quant.ErrUnsupported, func(qc map[string]any) { qc["format"] = "pack-quantized" }},
		{"unknown format", "format", quant.ErrUnsupported, func(qc map[string]any) { qc["format"] = "mystery" }},
		{"frozen", "quantization_status", quant.ErrUnsupported, func(qc map[string]any) { qc["quantization_status"] = "frozen" }},
		{"group strategy", "weights.strategy", quant.ErrUnsupported, func(qc map[string]any) {
			group(qc)["weights"].(map[string]any)["strategy"] = "group"
			group(qc)["weights"].(map[string]any)["group_size"] = 128
		}},
		{"group size", "weights.group_size", quant.ErrUnsupported, func(qc map[string]any) { group(qc)["weights"].(map[string]any)["group_size"] = 128 }},
		{"block", "weights.block_structure", quant.ErrUnsupported, func(qc map[string]any) {
			group(qc)["weights"].(map[string]any)["block_structure"] = []int{128, 128}
		}},
		{"tensor strategy", "weights.strategy", quant.ErrUnsupported, func(qc map[string]any) { group(qc)["weights"].(map[string]any)["strategy"] = "tensor" }},
		{"int4", "weights.num_bits", quant.ErrUnsupported, func(qc map[string]any) { group(qc)["weights"].(map[string]any)["num_bits"] = 4 }},
		{"asymmetric weights", "weights.symmetric", quant.ErrUnsupported, func(qc map[string]any) { group(qc)["weights"].(map[string]any)["symmetric"] = false }},
		{"type mismatch", "weights.type", quant.ErrUnsupported, func(qc map[string]any) { group(qc)["weights"].(map[string]any)["type"] = "float" }},
		{"static activations", "input_activations.dynamic", quant.ErrUnsupported, func(qc map[string]any) {
			group(qc)["input_activations"].(map[string]any)["dynamic"] = false
		}},
		{"asymmetric activations", "input_activations.symmetric", quant.ErrUnsupported, func(qc map[string]any) {
			group(qc)["input_activations"].(map[string]any)["symmetric"] = false
		}},
		{"per-tensor activations", "input_activations.strategy", quant.ErrUnsupported, func(qc map[string]any) {
			group(qc)["input_activations"].(map[string]any)["strategy"] = "tensor"
		}},
		{"output activations", "output_activations", quant.ErrUnsupported, func(qc map[string]any) {
			group(qc)["output_activations"] = map[string]any{"num_bits": 8}
		}},
		{"kv cache", "kv_cache_scheme", quant.ErrUnsupported, func(qc map[string]any) { qc["kv_cache_scheme"] = map[string]any{"num_bits": 8} }},
		{"two groups", "config_groups", quant.ErrUnsupported, func(qc map[string]any) {
			qc["config_groups"].(map[string]any)["group_1"] = group(qc)
		}},
		{"lm_head quantized", "ignore", quant.ErrUnsupported, func(qc map[string]any) { qc["ignore"] = []string{} }},
		{"bad regexp", "targets", quant.ErrInvalid, func(qc map[string]any) { group(qc)["targets"] = []string{"re:(("} }},
		{"no weights", "weights", quant.ErrInvalid, func(qc map[string]any) { delete(group(qc), "weights") }},
		{"not an object", "quantization_config", quant.ErrInvalid, func(qc map[string]any) { qc["config_groups"] = 7 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			qc := fixtureQC(t, "gemma3-tiny-w8a8")
			tc.edit(qc)
			raw, _ := json.Marshal(qc)
			_, err := quant.ParseConfig(raw)
			if err == nil {
				t.Fatal("accepted")
			}
			if !errors.Is(err, tc.sentinel) || !strings.Contains(err.Error(), tc.field) {
				t.Fatalf("error %q: want %v naming %s", err, tc.sentinel, tc.field)
			}
		})
	}
}

func TestTargetsAndIgnore(t *testing.T) {
	s := quant.Scheme{Mode: quant.Int8, Targets: []string{"re:.*self_attn\\..*"}, Ignore: []string{"lm_head", "re:.*layers\\.0\\."}}
	for module, want := range map[string]bool{
		"model.layers.1.self_attn.q_proj": true, "model.layers.0.self_attn.q_proj": false,
		"model.layers.1.mlp.up_proj": false, "lm_head": false,
	} {
		if got := s.Quantizes(module); got != want {
			t.Errorf("Quantizes(%s) = %v, want %v", module, got, want)
		}
	}
}

func TestResolve(t *testing.T) {
	w8a8 := quant.Scheme{Mode: quant.Int8, Targets: []string{"Linear"}, Ignore: []string{"lm_head"}, Compressed: true}
	for _, tc := range []struct {
		name  string
		ck    quant.Scheme
		flag  string
		want  quant.Mode
		atLd  bool
		fails bool
	}{
		{"follow checkpoint", w8a8, "", quant.Int8, false, false},
		{"weight-only of w8a8", w8a8, "int8-weight-only", quant.Int8WeightOnly, false, false},
		{"fp8 on int8", w8a8, "fp8", 0, false, true},
		{"none on int8", w8a8, "none", 0, false, true},
		{"quantize bf16 at load", quant.Scheme{}, "fp8", quant.FP8, true, false},
		{"none on bf16", quant.Scheme{}, "none", quant.None, false, false},
		{"bad flag", quant.Scheme{}, "int3", 0, false, true},
	} {
		got, err := quant.Resolve(tc.ck, tc.flag)
		if (err != nil) != tc.fails {
			t.Errorf("%s: error %v", tc.name, err)
			continue
		}
		if err == nil && (got.Mode != tc.want || (tc.atLd && got.Compressed)) {
			t.Errorf("%s: %+v", tc.name, got)
		}
	}
}

func TestInt8Rounding(t *testing.T) {
	for _, tc := range []struct {
		v    float32
		want int8
	}{{0.5, 0}, {1.5, 2}, {2.5, 2}, {-0.5, 0}, {-1.5, -2}, {-2.5, -2}, {126.5, 126}, {127.5, 127}, {-128.5, -128}, {300, 127}, {-300, -128}, {0.49999997, 0}} {
		if got := quant.Int8Value(tc.v); got != tc.want {
			t.Errorf("Int8Value(%v) = %d, want %d", tc.v, got, tc.want)
		}
	}
}

func TestE4M3(t *testing.T) {
	// Every finite pattern decodes and encodes back to itself.
	for b := 0; b < 256; b++ {
		v := quant.E4M3Value(uint8(b))
		if b&0x7f == 0x7f {
			if !math.IsNaN(float64(v)) {
				t.Errorf("pattern %#x = %v, want NaN", b, v)
			}
			continue
		}
		if got := quant.E4M3Bits(v); got != uint8(b) && !(v == 0 && got&0x7f == 0) {
			t.Errorf("pattern %#x = %v encodes to %#x", b, v, got)
		}
	}
	for _, tc := range []struct {
		v    float32
		want float32
	}{
		{448, 448}, {460, 448}, {1e6, 448}, {-1e6, -448}, {1.0625, 1}, {1.1875, 1.25}, // ties to even: 1+1/16 → 1, 1+3/16 → 1.25
		{17, 16}, {19, 20}, {0.1, 0.1015625}, {1.0 / 1024, 0}, {3.0 / 1024, 1.0 / 256}, // 3·2^-10 is a tie between 2^-9 and 2·2^-9
		{15.5 / 1024, 1.0 / 64}, {240, 240}, {232, 224}, {-3.3, -3.25},
	} {
		if got := quant.E4M3Value(quant.E4M3Bits(tc.v)); got != tc.want {
			t.Errorf("e4m3(%v) = %v, want %v", tc.v, got, tc.want)
		}
	}
	if quant.E4M3Max != quant.E4M3Value(0x7e) {
		t.Errorf("E4M3Max %v, pattern 0x7e is %v", quant.E4M3Max, quant.E4M3Value(0x7e))
	}
}

func TestQuantizeRecipe(t *testing.T) {
	w := []float32{0.5, -1, 0.25, 0, 0, 0, 127, -63.5, 1.5}
	q, s, err := quant.QuantizeInt8(w, 3, 3)
	if err != nil {
		t.Fatal(err)
	}
	// Row 0: scale bf16(1/127); row 1: zeros; row 2: scale 1 (63.5 is a tie → 64, 1.5 → 2).
	wantQ := []int8{64, -127, 32, 0, 0, 0, 127, -64, 2}
	for i := range wantQ {
		if q[i] != wantQ[i] {
			t.Fatalf("q = %v, want %v", q, wantQ)
		}
	}
	if s[0] != quant.BF16Round(1.0/127) || s[1] != 0 || s[2] != 1 {
		t.Fatalf("scales %v", s)
	}
	if _, _, err := quant.QuantizeInt8(w, 2, 3); !errors.Is(err, quant.ErrInvalid) {
		t.Fatalf("mis-sized weight: %v", err)
	}
	b, s8, err := quant.QuantizeFP8([]float32{448, -224, 1, 0}, 1, 4)
	if err != nil || s8[0] != 1 || quant.E4M3Value(b[0]) != 448 || quant.E4M3Value(b[1]) != -224 || quant.E4M3Value(b[2]) != 1 || b[3] != 0 {
		t.Fatalf("fp8: %v %v %v", b, s8, err)
	}
}
