package model

import (
	"fmt"
	"strings"
	"testing"

	"github.com/gomlx/go-xla/pkg/stablehlo"
	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/tpuserve/tpuserve/internal/hlotest"
)

// The StableHLO of one chip's SPMD program (see internal/hlotest: written without a PJRT
// plugin): its collectives and its parameters, checked against the plan.

// TestSPMDForwardStableHLO checks one chip's step program of 27B at TP=8 (and smaller
// cases, kv and q heads replicated) without a device: exactly the planned collectives — the
// embedding's all-reduce and two per layer, sums of [T, H] in the compute dtype over all
// chips — no other collective (no all-gather of a weight or of anything), and parameters
// whose bytes are the plan's per chip.
func TestSPMDForwardStableHLO(t *testing.T) {
	for _, tc := range []struct {
		preset string
		tp     int
		format WeightFormat
		s      func(cfg *Config) BatchShape
	}{
		{"gemma3-27b", 8, FormatBF16, func(cfg *Config) BatchShape { // a decode bucket
			return BatchShape{T: 64, B: 64, Q: 1, EG: 64 * 4, ES: 64 * SlidingPagesPerRow(cfg, 16, 1), N: 64}
		}},
		{"gemma3-27b", 8, FormatBF16, func(cfg *Config) BatchShape { // a prefill chunk
			return BatchShape{T: 512, B: 1, Q: 512, EG: 32, ES: SlidingPagesPerRow(cfg, 16, 512), N: 1}
		}},
		{"gemma3-4b", 8, FormatBF16, func(cfg *Config) BatchShape { return BatchShape{T: 16, B: 1, Q: 16, EG: 2, ES: 2, N: 1} }},
		{"tiny", 8, FormatF32, func(cfg *Config) BatchShape { return BatchShape{T: 16, B: 1, Q: 16, EG: 2, ES: 2, N: 1} }},
	} {
		cfg, err := Preset(tc.preset)
		if err != nil {
			t.Fatal(err)
		}
		s := tc.s(&cfg)
		t.Run(fmt.Sprintf("%s/tp%d/T%d", tc.preset, tc.tp, s.T), func(t *testing.T) {
			plan, err := NewShardingPlan(&cfg, tc.tp, tc.format)
			if err != nil {
				t.Fatal(err)
			}
			dtype := tc.format.ComputeDType()
			layout := KVLayout{PageSize: 16, NumGlobalPages: 64, NumSlidingPages: 64}
			text := hlotest.SPMDProgram(t, tc.tp, MeshAxisTP, "gemma3_forward", func(g *graph.Graph) []*graph.Node {
				return buildSPMDForward(g, plan, dtype, layout, s, s.T)
			})
			if !strings.Contains(text, fmt.Sprintf("stablehlo.num_replicas = %d", tc.tp)) {
				t.Errorf("the module does not run on %d replicas", tc.tp)
			}
			dt := map[dtypes.DType]string{dtypes.BFloat16: "bf16", dtypes.Float32: "f32"}[dtype]
			want := hlotest.Collective{Kind: "all_reduce", Reduction: "add", Operand: fmt.Sprintf("tensor<%dx%dx%s>", s.T, cfg.HiddenSize, dt), Groups: hlotest.AllDevices(tc.tp)}
			got := hlotest.Collectives(t, text)
			if len(got) != 2*cfg.NumHiddenLayers+1 {
				t.Errorf("%d collectives, want %d: the embedding's and two per layer", len(got), 2*cfg.NumHiddenLayers+1)
			}
			for i, c := range got {
				if c != want {
					t.Errorf("collective %d: %+v, want %+v", i, c, want)
				}
			}
			params := hlotest.MainParams(text)
			var weights, pools int64
			for _, w := range plan.Weights {
				typ, ok := params[stablehlo.NormalizeIdentifier(w.Name)]
				if !ok {
					t.Fatalf("%s is not a parameter", w.Name)
				}
				weights += hlotest.TensorBytes(t, typ)
			}
			var planPools int64
			for _, p := range plan.PoolPlans(layout) {
				typ, ok := params[stablehlo.NormalizeIdentifier(p.Name)]
				if !ok {
					t.Fatalf("%s is not a parameter", p.Name)
				}
				pools += hlotest.TensorBytes(t, typ)
				planPools += p.BytesPerChip
			}
			if weights != plan.WeightBytesPerChip {
				t.Errorf("weight parameters hold %d bytes, the plan %d per chip", weights, plan.WeightBytesPerChip)
			}
			if pools != planPools {
				t.Errorf("pool parameters hold %d bytes, the plan %d per chip", pools, planPools)
			}
			if want := len(plan.Weights) + len(plan.PoolPlans(layout)) + 1 + numStepInputs; len(params) != want {
				t.Errorf("%d parameters, want %d (chip.index, weights, pools, step inputs)", len(params), want)
			}
			var collectiveBytes int64
			for _, c := range got {
				collectiveBytes += hlotest.TensorBytes(t, strings.TrimSuffix(strings.TrimPrefix(c.Operand, "tensor<"), ">"))
			}
			t.Logf("%d parameters, weights %d bytes per chip, %d all-reduces of %s: %d bytes per step (%.1f KiB per token)",
				len(params), weights, len(got), want.Operand, collectiveBytes, float64(collectiveBytes)/float64(s.T)/1024)
		})
	}
}

// TestCheckTPBackendDevices: on xla, more chips than devices is an error with the numbers.
func TestCheckTPBackendDevices(t *testing.T) {
	b := hlotest.PluginlessXLA(t, 4)
	err := CheckTPBackend(b, 8)
	if err == nil || !strings.Contains(err.Error(), "tensor parallelism (TP=8) needs 8 devices") || !strings.Contains(err.Error(), "has 4") {
		t.Errorf("TP=8 on 4 xla devices: %v", err)
	}
	if err := CheckTPBackend(b, 4); err != nil {
		t.Errorf("TP=4 on 4 xla devices: %v", err)
	}
}
