package model_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/tpuserve/tpuserve/model"
	"github.com/tpuserve/tpuserve/model/quant"
)

func preset(t testing.TB, name string) model.Config {
	t.Helper()
	c, err := model.Preset(name)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestShardingPlanSizes checks every published size at TP 1/2/4/8: which sizes are
// refused, the per-chip head counts, every tensor's split, and that the bytes add up.
func TestShardingPlanSizes(t *testing.T) {
	for _, tc := range []struct {
		preset            string
		tp                int
		err               string // substring of the refusal; "" = accepted
		heads, kvh, kvrep int
	}{
		{"gemma3-1b", 1, "", 4, 1, 1},
		{"gemma3-1b", 2, "", 2, 1, 2}, // 1 kv head: replicated on both chips
		{"gemma3-1b", 4, "", 1, 1, 4},
		{"gemma3-1b", 8, "", 1, 1, 8}, // 4 q heads over 8 chips: each on 2 (taking half its o_proj columns)
		{"gemma3-1b", 6, "tensor-parallel size 6 neither divides nor is a multiple of the 4 attention heads", 0, 0, 0},
		{"gemma3-4b", 1, "", 8, 4, 1},
		{"gemma3-4b", 2, "", 4, 2, 1},
		{"gemma3-4b", 4, "", 2, 1, 1},
		{"gemma3-4b", 8, "", 1, 1, 2}, // 4 kv heads over 8 chips: each on 2
		{"gemma3-12b", 1, "", 16, 8, 1},
		{"gemma3-12b", 2, "", 8, 4, 1},
		{"gemma3-12b", 4, "", 4, 2, 1},
		{"gemma3-12b", 8, "", 2, 1, 1},
		{"gemma3-27b", 1, "", 32, 16, 1},
		{"gemma3-27b", 2, "", 16, 8, 1},
		{"gemma3-27b", 4, "", 8, 4, 1},
		{"gemma3-27b", 8, "", 4, 2, 1},
		{"gemma3-27b", 3, "tensor-parallel size 3 neither divides nor is a multiple of the 32 attention heads of model.layers.*.self_attn.q_proj.weight [4096 5376]", 0, 0, 0},
	} {
		t.Run(fmt.Sprintf("%s/tp%d", tc.preset, tc.tp), func(t *testing.T) {
			cfg := preset(t, tc.preset)
			p, err := model.NewShardingPlan(&cfg, tc.tp, model.FormatBF16)
			if tc.err != "" {
				if err == nil || !errors.Is(err, model.ErrSharding) || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("got %v, want an ErrSharding containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if p.HeadsPerChip != tc.heads || p.KVHeadsPerChip != tc.kvh || p.KVReplicas != tc.kvrep {
				t.Errorf("heads/kv heads/kv replicas per chip = %d/%d/%d, want %d/%d/%d",
					p.HeadsPerChip, p.KVHeadsPerChip, p.KVReplicas, tc.heads, tc.kvh, tc.kvrep)
			}
			if want := max(tc.tp/cfg.NumAttentionHeads, 1); p.QReplicas != want {
				t.Errorf("q replicas %d, want %d", p.QReplicas, want)
			}
			mesh := 1
			for _, s := range p.MeshAxisSizes {
				mesh *= s
			}
			if mesh != tc.tp {
				t.Errorf("mesh %v %v has %d devices, want %d", p.MeshAxisNames, p.MeshAxisSizes, mesh, tc.tp)
			}
			specs := model.WeightSpecs(&cfg)
			if len(p.Weights) != len(specs) {
				t.Fatalf("%d tensors planned, the model has %d", len(p.Weights), len(specs))
			}
			var sum, sumChip, onAllChips int64
			for i, w := range p.Weights {
				if w.Name != specs[i].Name || fmt.Sprint(w.Shape) != fmt.Sprint(specs[i].Shape) {
					t.Fatalf("tensor %d is %s %v, want %s %v (WeightSpecs order)", i, w.Name, w.Shape, specs[i].Name, specs[i].Shape)
				}
				// The rule, restated from the names.
				wantAxis, wantShards := -1, 1
				if tc.tp > 1 {
					switch {
					case len(w.Shape) == 1:
					case strings.Contains(w.Name, "k_proj"), strings.Contains(w.Name, "v_proj"):
						wantAxis, wantShards = 0, tc.tp/tc.kvrep
					case strings.Contains(w.Name, "q_proj"):
						wantAxis, wantShards = 0, min(tc.tp, cfg.NumAttentionHeads)
					case strings.Contains(w.Name, "embed_tokens"),
						strings.Contains(w.Name, "gate_proj"), strings.Contains(w.Name, "up_proj"):
						wantAxis, wantShards = 0, tc.tp
					case strings.Contains(w.Name, "o_proj"), strings.Contains(w.Name, "down_proj"):
						wantAxis, wantShards = 1, tc.tp
					}
				}
				if w.Axis != wantAxis || w.Shards != wantShards {
					t.Errorf("%s: split on axis %d in %d shards, want axis %d in %d", w.Name, w.Axis, w.Shards, wantAxis, wantShards)
				}
				elems := int64(1)
				for a, d := range w.ShardShape {
					full := w.Shape[a]
					if a == w.Axis {
						full /= w.Shards
					}
					if d != full {
						t.Errorf("%s: shard shape %v of %v split on %d in %d", w.Name, w.ShardShape, w.Shape, w.Axis, w.Shards)
					}
					elems *= int64(d)
				}
				if w.BytesPerChip != 2*elems {
					t.Errorf("%s: %d bytes per chip, want 2·%d", w.Name, w.BytesPerChip, elems)
				}
				sum += w.Bytes
				sumChip += w.BytesPerChip
				// What the N chips hold together: the tensor once per replica of each piece.
				onAllChips += w.BytesPerChip * int64(tc.tp)
				if want := w.Bytes * int64(tc.tp/w.Shards); w.BytesPerChip*int64(tc.tp) != want {
					t.Errorf("%s: %d chips × %d bytes != %d replicas × %d bytes", w.Name, tc.tp, w.BytesPerChip, tc.tp/w.Shards, w.Bytes)
				}
			}
			if sum != p.WeightBytes || sumChip != p.WeightBytesPerChip {
				t.Errorf("plan totals %d / %d per chip, tensors sum to %d / %d", p.WeightBytes, p.WeightBytesPerChip, sum, sumChip)
			}
			if want := 2 * cfg.NumParams(); p.WeightBytes != want {
				t.Errorf("model bytes %d, want 2·NumParams = %d", p.WeightBytes, want)
			}
			if onAllChips < p.WeightBytes {
				t.Errorf("the chips hold %d bytes together, less than the model's %d", onAllChips, p.WeightBytes)
			}
			if p.KVPool.Axis != map[bool]int{true: -1, false: 2}[tc.tp == 1] || p.KVPool.BytesPerChip != int64(2*tc.kvh*cfg.HeadDim) {
				t.Errorf("KV pool split on axis %d with %d bytes per slot per chip", p.KVPool.Axis, p.KVPool.BytesPerChip)
			}
		})
	}
}

// Test27BPerChipBytes recomputes 27B's bf16 share per chip at TP=8 from the config.
func Test27BPerChipBytes(t *testing.T) {
	cfg := preset(t, "gemma3-27b")
	p, err := model.NewShardingPlan(&cfg, 8, model.FormatBF16)
	if err != nil {
		t.Fatal(err)
	}
	H, I, D, L, V := int64(5376), int64(21504), int64(128), int64(62), int64(262208)
	split := V*H + L*(32*D*H+2*16*D*H+32*D*H+3*H*I)
	replicated := L*(4*H+2*D) + H
	if want := 2 * (split/8 + replicated); p.WeightBytesPerChip != want {
		t.Errorf("27B TP=8: %d bytes per chip, want %d", p.WeightBytesPerChip, want)
	}
	// 54.0 GB in all, 6.75 GB per chip.
	if gb := float64(p.WeightBytesPerChip) / 1e9; gb < 6.7 || gb > 6.8 {
		t.Errorf("27B TP=8: %.2f GB per chip, want about 6.75", gb)
	}
}

func TestShardingPlanRefusals(t *testing.T) {
	custom := func(mut func(c *model.Config)) model.Config {
		c := model.DefaultConfig()
		c.TextVocabSize = c.VocabSize
		mut(&c)
		return c
	}
	for _, tc := range []struct {
		name   string
		cfg    model.Config
		tp     int
		format model.WeightFormat
		want   string
	}{
		{"zero", preset(t, "gemma3-27b"), 0, model.FormatBF16, "must be >= 1, got 0"},
		{"format", preset(t, "gemma3-27b"), 8, "int4", `weight format "int4"`},
		{"kv heads", custom(func(c *model.Config) { c.NumAttentionHeads, c.NumKeyValueHeads = 6, 3 }), 2, model.FormatBF16,
			"neither divides nor is a multiple of the 3 kv heads of model.layers.*.self_attn.k_proj.weight [768 1152]"},
		{"intermediate", custom(func(c *model.Config) { c.NumAttentionHeads, c.NumKeyValueHeads, c.IntermediateSize = 8, 8, 100 }), 8, model.FormatBF16,
			"model.layers.*.mlp.gate_proj.weight [100 1152]: intermediate_size 100 over 8 chips"},
		{"vocab", custom(func(c *model.Config) {
			c.NumAttentionHeads, c.NumKeyValueHeads, c.VocabSize, c.TextVocabSize = 4, 4, 1001, 1001
		}), 4, model.FormatBF16,
			"model.embed_tokens.weight [1001 1152]: vocab_size 1001 over 4 chips"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := model.NewShardingPlan(&tc.cfg, tc.tp, tc.format)
			if err == nil || !errors.Is(err, model.ErrSharding) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an ErrSharding containing %q", err, tc.want)
			}
		})
	}
}

// TestShardIndex checks which piece each chip holds, on a 1-D and a 2-D (kv-replicating) mesh.
func TestShardIndex(t *testing.T) {
	cfg := preset(t, "gemma3-4b") // 4 kv heads
	p, err := model.NewShardingPlan(&cfg, 8, model.FormatBF16)
	if err != nil {
		t.Fatal(err)
	}
	q, k, o, norm := p.Weights[2], p.Weights[3], p.Weights[5], p.Weights[1]
	for d := 0; d < 8; d++ {
		if got := p.ShardIndex(q, d); got != d {
			t.Errorf("q_proj on chip %d: piece %d, want %d", d, got, d)
		}
		if got := p.ShardIndex(o, d); got != d {
			t.Errorf("o_proj on chip %d: piece %d, want %d", d, got, d)
		}
		// Chip d computes q heads [d, d+1) (1 per chip); they use kv head d·1/2 = d/2.
		if got, want := p.ShardIndex(k, d), d*p.HeadsPerChip/(cfg.NumAttentionHeads/cfg.NumKeyValueHeads); got != want {
			t.Errorf("k_proj on chip %d: piece %d, want the kv head of its q heads, %d", d, got, want)
		}
		if got := p.ShardIndex(norm, d); got != 0 {
			t.Errorf("norm on chip %d: piece %d", d, got)
		}
	}
}

// TestPlanJSON round-trips a plan through JSON (what `tpuserve plan --json` writes).
func TestPlanJSON(t *testing.T) {
	cfg := preset(t, "gemma3-4b")
	p, err := model.NewShardingPlan(&cfg, 8, model.FormatBF16)
	if err != nil {
		t.Fatal(err)
	}
	data, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	var back model.ShardingPlan
	if err := json.Unmarshal(data, &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back.Weights, p.Weights) || back.KVPool.Split != model.KVHeadParallel || back.KVReplicas != 2 {
		t.Errorf("JSON round trip changed the plan:\n%s", data)
	}
	if !strings.Contains(string(data), `"split":"row"`) {
		t.Errorf("splits are not written by name: %s", data)
	}
	var k model.SplitKind
	if err := k.UnmarshalText([]byte("diagonal")); !errors.Is(err, model.ErrSharding) {
		t.Errorf("unknown split name: %v", err)
	}
}

// TestShardBytes slices a tensor on each axis and puts it back together.
func TestShardBytes(t *testing.T) {
	const elem = 2
	shape := []int{4, 6, 3}
	src := make([]byte, 4*6*3*elem)
	for i := range src {
		src[i] = byte(i)
	}
	at := func(i, j, k int) []byte { o := ((i*6+j)*3 + k) * elem; return src[o : o+elem] }
	for _, tc := range []struct{ axis, shards int }{{0, 2}, {0, 4}, {1, 3}, {1, 2}, {2, 3}, {-1, 1}} {
		t.Run(fmt.Sprintf("axis%d/%d", tc.axis, tc.shards), func(t *testing.T) {
			tp := model.TensorPlan{Name: "x", Shape: shape, Axis: tc.axis, Shards: tc.shards, ShardShape: append([]int(nil), shape...)}
			if tc.axis >= 0 {
				tp.ShardShape[tc.axis] /= tc.shards
			}
			ss := tp.ShardShape
			for s := 0; s < tc.shards; s++ {
				dst := make([]byte, ss[0]*ss[1]*ss[2]*elem)
				if err := tp.ShardBytes(dst, src, elem, s); err != nil {
					t.Fatal(err)
				}
				for i := 0; i < ss[0]; i++ {
					for j := 0; j < ss[1]; j++ {
						for k := 0; k < ss[2]; k++ {
							gi := [3]int{i, j, k}
							if tc.axis >= 0 {
								gi[tc.axis] += s * ss[tc.axis]
							}
							o := ((i*ss[1]+j)*ss[2] + k) * elem
							if !bytes.Equal(dst[o:o+elem], at(gi[0], gi[1], gi[2])) {
								t.Fatalf("shard %d [%d %d %d] = %v, want element %v = %v", s, i, j, k, dst[o:o+elem], gi, at(gi[0], gi[1], gi[2]))
							}
						}
					}
				}
			}
		})
	}
	tp := model.TensorPlan{Name: "x", Shape: shape, Axis: 0, Shards: 2, ShardShape: []int{2, 6, 3}}
	if err := tp.ShardBytes(make([]byte, 10), src, elem, 0); err == nil || !errors.Is(err, model.ErrSharding) {
		t.Errorf("wrong shard buffer size: %v", err)
	}
	if err := tp.ShardBytes(make([]byte, 2*6*3*elem), src, elem, 2); err == nil {
		t.Error("shard index out of range accepted")
	}
	if err := tp.ShardBytes(make([]byte, 2*6*3*elem), src[1:], elem, 0); err == nil {
		t.Error("short source accepted")
	}
}

// TestQuantizedPlanBytes: with int8 or fp8 weights, a plan's bytes are its tensors' bytes
// (model.QuantizedTensorSpecs: 1 byte per quantized parameter, the scales [out, 1] and
// everything else in bf16), split as the scales' weights are: column-parallel q/k/v/gate/up
// scales by the chips, row-parallel o/down scales whole on every chip. The expected split
// is computed here from the spec list alone, independently of the plan's placement code.
func TestQuantizedPlanBytes(t *testing.T) {
	cfg := preset(t, "gemma3-27b")
	bf8, err := model.NewShardingPlan(&cfg, 8, model.FormatBF16)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		format model.WeightFormat
		mode   quant.Mode
		tp     int
		dtype  string
	}{
		{model.FormatInt8, quant.Int8, 4, "Int8"},
		{model.FormatInt8, quant.Int8, 8, "Int8"},
		{model.FormatFP8, quant.FP8, 8, "Uint8"},
	} {
		t.Run(fmt.Sprintf("%s/tp%d", tc.format, tc.tp), func(t *testing.T) {
			p, err := model.NewShardingPlan(&cfg, tc.tp, tc.format)
			if err != nil {
				t.Fatal(err)
			}
			specs := model.QuantizedTensorSpecs(&cfg, tc.mode, dtypes.BFloat16)
			if len(p.Weights) != len(specs) {
				t.Fatalf("%d tensors placed, %d specs", len(p.Weights), len(specs))
			}
			perChip := func(s model.TensorSpec) int64 {
				name := s.Name
				if s.ScaleOf != "" {
					name = s.ScaleOf
				}
				switch {
				case len(s.Shape) == 1:
					return s.Bytes()
				case s.ScaleOf != "" && (strings.HasSuffix(name, "o_proj.weight") || strings.HasSuffix(name, "down_proj.weight")):
					return s.Bytes() // a row-parallel weight's scale: every row on every chip
				}
				return s.Bytes() / int64(tc.tp) // 16 kv heads: k/v split by 4 and 8 too
			}
			var total, chip, scales int64
			for i, s := range specs {
				w := p.Weights[i]
				if w.Name != s.Name || w.DType != s.DType.String() {
					t.Fatalf("tensor %d: plan %s %s, spec %s %s", i, w.Name, w.DType, s.Name, s.DType)
				}
				if w.BytesPerChip != perChip(s) || w.Bytes != s.Bytes() {
					t.Errorf("%s: %d bytes per chip (%d in all), want %d (%d)", s.Name, w.BytesPerChip, w.Bytes, perChip(s), s.Bytes())
				}
				total += s.Bytes()
				chip += perChip(s)
				if s.ScaleOf != "" {
					scales += perChip(s)
				}
			}
			if p.WeightBytes != total || p.WeightBytesPerChip != chip {
				t.Errorf("plan %d bytes (%d per chip), the tensors sum to %d (%d)", p.WeightBytes, p.WeightBytesPerChip, total, chip)
			}
			byName := map[string]model.TensorPlan{}
			for _, w := range p.Weights {
				byName[w.Name] = w
			}
			q := int64(4096 / tc.tp)
			for name, want := range map[string]int64{
				"model.layers.0.self_attn.q_proj.weight":       q * 5376,                         // [4096/N, 5376] × 1 byte
				"model.layers.0.self_attn.q_proj.weight_scale": 2 * q,                            // [4096/N, 1] bf16
				"model.layers.0.self_attn.o_proj.weight":       5376 * q,                         // [5376, 4096/N]
				"model.layers.0.self_attn.o_proj.weight_scale": 2 * 5376,                         // [5376, 1] on every chip
				"model.layers.0.mlp.down_proj.weight_scale":    2 * 5376,                         //
				"model.layers.0.input_layernorm.weight":        2 * 5376,                         // bf16, replicated
				"model.embed_tokens.weight":                    2 * 262208 * 5376 / int64(tc.tp), // bf16, vocab-parallel
			} {
				if got := byName[name].BytesPerChip; got != want {
					t.Errorf("%s: %d bytes per chip, want %d", name, got, want)
				}
			}
			if got := byName["model.layers.0.self_attn.q_proj.weight_scale"]; got.Split != model.ColumnParallel || got.Axis != 0 {
				t.Errorf("q_proj scale placed %s axis %d, want column axis 0", got.Split, got.Axis)
			}
			if got := byName["model.layers.0.mlp.down_proj.weight_scale"]; got.Split != model.Replicated {
				t.Errorf("down_proj scale placed %s, want replicated", got.Split)
			}
			if p.KVPool.BytesPerChip*int64(tc.tp) != bf8.KVPool.BytesPerChip*8 {
				t.Errorf("quantized weights changed the KV cache size")
			}
			t.Logf("27B %s TP=%d: %.3f GiB per chip (scales %.2f MiB), %.3f GiB in all", tc.format, tc.tp,
				float64(chip)/(1<<30), float64(scales)/(1<<20), float64(total)/(1<<30))
		})
	}
	// A compressed checkpoint's config (quantization_config, here as at load) planned in bf16
	// places the same tensors as the int8 format.
	qc := cfg
	qc.Quantization = quant.AtLoad(quant.Int8)
	fromCfg, err := model.NewShardingPlan(&qc, 8, model.FormatBF16)
	if err != nil {
		t.Fatal(err)
	}
	int8Plan, err := model.NewShardingPlan(&cfg, 8, model.FormatInt8)
	if err != nil {
		t.Fatal(err)
	}
	if fromCfg.WeightBytesPerChip != int8Plan.WeightBytesPerChip {
		t.Errorf("quantized config in bf16: %d bytes per chip, int8 format %d", fromCfg.WeightBytesPerChip, int8Plan.WeightBytesPerChip)
	}
}

// TestPoolPlans checks the KV pools' split against PoolBytes.
func TestPoolPlans(t *testing.T) {
	for _, tc := range []struct {
		preset string
		tp     int
	}{{"gemma3-27b", 8}, {"gemma3-4b", 8}, {"gemma3-1b", 2}, {"gemma3-12b", 1}} {
		cfg := preset(t, tc.preset)
		p, err := model.NewShardingPlan(&cfg, tc.tp, model.FormatBF16)
		if err != nil {
			t.Fatal(err)
		}
		layout := model.KVLayout{PageSize: 16, NumGlobalPages: 100, NumSlidingPages: 30}
		pools := p.PoolPlans(layout)
		if len(pools) != 2*cfg.NumHiddenLayers {
			t.Fatalf("%s: %d pool plans", tc.preset, len(pools))
		}
		var chip int64
		for l, pp := range pools {
			pages := 30
			if cfg.IsGlobal(l / 2) {
				pages = 100
			}
			if pp.Shape[0] != pages || pp.ShardShape[2] != p.KVHeadsPerChip || (tc.tp > 1 && pp.Axis != 2) {
				t.Errorf("%s: pool %d: %+v", tc.preset, l, pp)
			}
			chip += pp.BytesPerChip
		}
		full := model.PoolBytes(&cfg, layout, dtypes.BFloat16)
		if kvShards := int64(cfg.NumKeyValueHeads / p.KVHeadsPerChip); chip*kvShards != full {
			t.Errorf("%s TP=%d: %d pool bytes per chip × %d kv shards != PoolBytes %d", tc.preset, tc.tp, chip, kvShards, full)
		}
	}
}
