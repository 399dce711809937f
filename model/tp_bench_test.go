package model

import (
	"fmt"
	"testing"

	"github.com/gomlx/gomlx/pkg/core/distributed"
	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/shapes"
	"github.com/tpuserve/tpuserve/internal/hlotest"
)

// BenchmarkShardBytes measures the host slicing each chip's piece goes through while
// weights load, on a 4096×4096 bf16 tensor (32 MiB) split 8 ways, against a plain copy of
// the same bytes (the baseline: what loading costs without sharding).
func BenchmarkShardBytes(b *testing.B) {
	const rows, cols, elem, tp = 4096, 4096, 2, 8
	src := make([]byte, rows*cols*elem)
	for i := range src {
		src[i] = byte(i)
	}
	dst := make([]byte, len(src)/tp)
	for _, tc := range []struct {
		name string
		axis int
	}{{"copy", -1}, {"column", 0}, {"row", 1}} {
		b.Run(tc.name, func(b *testing.B) {
			t := TensorPlan{Name: "w", Shape: []int{rows, cols}, Axis: tc.axis, Shards: tp, ShardShape: []int{rows, cols}}
			if tc.axis >= 0 {
				t.ShardShape[tc.axis] /= tp
			}
			b.SetBytes(int64(len(src)))
			for b.Loop() {
				if tc.axis < 0 {
					for s := 0; s < tp; s++ { // the same bytes as the tp pieces
						copy(dst, src[s*len(dst):(s+1)*len(dst)])
					}
					continue
				}
				for s := 0; s < tp; s++ {
					if err := t.ShardBytes(dst, src, elem, s); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
}

// BenchmarkBuildStepProgram measures writing 27B's step program (graph + StableHLO, no
// compilation) for one decode bucket: one chip's SPMD program at TP=8 against TP=1 (the
// baseline), on the plugin-less xla backend of tp_stablehlo_test.go.
func BenchmarkBuildStepProgram(b *testing.B) {
	cfg, err := Preset("gemma3-27b")
	if err != nil {
		b.Fatal(err)
	}
	layout := KVLayout{PageSize: 16, NumGlobalPages: 64, NumSlidingPages: 64}
	s := BatchShape{T: 64, B: 64, Q: 1, EG: 64 * 32, ES: 64 * SlidingPagesPerRow(&cfg, 16, 1), N: 64}
	for _, tp := range []int{1, 8} {
		b.Run(fmt.Sprintf("tp%d", tp), func(b *testing.B) {
			backend := hlotest.PluginlessXLA(b, tp)
			plan, err := NewShardingPlan(&cfg, tp, FormatBF16)
			if err != nil {
				b.Fatal(err)
			}
			mesh, err := distributed.NewDeviceMesh([]int{tp}, []string{MeshAxisTP})
			if err != nil {
				b.Fatal(err)
			}
			for b.Loop() {
				g := graph.NewGraph(backend, "step")
				if tp > 1 {
					if err := g.SetSPMD(mesh); err != nil {
						b.Fatal(err)
					}
				}
				func() {
					defer func() { _ = recover() }() // the placeholder client cannot compile
					if tp > 1 {
						g.Compile(buildSPMDForward(g, plan, dtypes.BFloat16, layout, s, s.T)...)
						return
					}
					in := plainStepParams(g, plan, dtypes.BFloat16, layout, s)
					g.Compile(stepProgram(&cfg, len(plan.Weights), in, logitsTail(&cfg, nil))...)
				}()
			}
		})
	}
}

// plainStepParams declares the unsharded step program's parameters.
func plainStepParams(g *graph.Graph, plan *ShardingPlan, dtype dtypes.DType, layout KVLayout, s BatchShape) []*graph.Node {
	var in []*graph.Node
	for _, w := range plan.Weights {
		in = append(in, graph.Parameter(g, w.Name, shapes.Make(dtype, w.Shape...)))
	}
	for _, p := range plan.PoolPlans(layout) {
		in = append(in, graph.Parameter(g, p.Name, shapes.Make(dtype, p.Shape...)))
	}
	for i, dims := range [][]int{{s.T}, {s.T}, {s.T}, {s.T}, {s.T}, {s.B, s.Q}, {s.EG, PagesPerEntry}, {s.EG}, {s.EG}, {s.ES, PagesPerEntry}, {s.ES}, {s.ES}, {s.N}} {
		in = append(in, graph.Parameter(g, fmt.Sprintf("step%d", i), shapes.Make(dtypes.Int32, dims...)))
	}
	return in
}
