package model

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/gomlx/go-xla/pkg/stablehlo"
	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/shapes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/tpuserve/tpuserve/internal/hlotest"
)

// spmdExport is the manifest scripts/run-spmd-jax.py reads: the program's parameters in
// order (the same on every chip; chipN.safetensors holds chip N's values under these names)
// and how to read its outputs.
type spmdExport struct {
	TP          int          `json:"tp"`
	Fixture     string       `json:"fixture"`
	Tokens      []int32      `json:"tokens"`
	Params      []exportedIn `json:"params"`
	NumPools    int          `json:"num_pools"`    // outputs before the logits
	LogitsShape []int        `json:"logits_shape"` // per chip [N, V/TP]; chips in order join on the last axis
	Tolerance   float64      `json:"tolerance"`
}

type exportedIn struct {
	Name  string `json:"name"` // the StableHLO argument name is stablehlo.NormalizeIdentifier(Name)
	DType string `json:"dtype"`
	Shape []int  `json:"shape"`
}

// TestExportSPMDProgram writes one chip's TP=8 logits program for the HF fixture as
// StableHLO, every chip's inputs (its weight pieces from the checkpoint, zeroed pools, one
// prefill of the fixture's longest sequence) and the TP=1 logits, checks that they fit
// together, and keeps them in $TPUSERVE_EXPORT_SPMD when set: the input of
// scripts/run-spmd-jax.py, which runs the program on 8 emulated JAX CPU devices.
func TestExportSPMDProgram(t *testing.T) {
	const tp = 8
	dir := os.Getenv("TPUSERVE_EXPORT_SPMD")
	if dir == "" {
		dir = t.TempDir()
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	fixture := filepath.Join("testdata", "gemma3-tiny")
	backend, err := NewBackend("go")
	if err != nil {
		t.Fatal(err)
	}
	sm, err := LoadShardedModel(backend, LoadOptions{Model: fixture, DType: dtypes.Float32, Progress: func(LoadProgress) {}}, tp)
	if err != nil {
		t.Fatal(err)
	}
	defer sm.Close()
	plain, err := Load(backend, LoadOptions{Model: fixture, DType: dtypes.Float32, Progress: func(LoadProgress) {}})
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	tokens := []int32{2, 451, 37, 76, 96, 503, 50, 106, 400, 17, 33, 210, 3, 99, 7, 120, 44, 18, 9}
	want, err := plain.ForwardLogits(tokens)
	if err != nil {
		t.Fatal(err)
	}
	layout, batch, err := onePrefill(&sm.Config, tokens, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	cfg, plan := &sm.Config, sm.Plan
	text := hlotest.SPMDProgram(t, tp, MeshAxisTP, "gemma3_logits", func(g *graph.Graph) []*graph.Node {
		in := spmdStepParams(g, plan, dtypes.Float32, layout, batch.Shape)
		in = append(in, graph.Parameter(g, "step.logits_index", shapes.Make(dtypes.Int32, batch.Shape.N)))
		return meshStep(cfg, spmdMesh(tp), len(plan.Weights), in, func(hidden []*graph.Node, chips []chipState, rest []*graph.Node) []*graph.Node {
			return vocabLogits(cfg, spmdMesh(tp), chips, hidden, rest[0]).Parts
		})
	})
	if err := os.WriteFile(filepath.Join(dir, "program.mlir"), []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}

	stepNames := []string{"step.tokens", "step.positions", "step.slots_global", "step.slots_sliding", "step.token_cell", "step.grid_index",
		"step.global_page", "step.global_row", "step.global_base", "step.sliding_page", "step.sliding_row", "step.sliding_base", "step.logits_index"}
	pools := plan.PoolPlans(layout)
	man := spmdExport{TP: tp, Fixture: "model/testdata/gemma3-tiny", Tokens: tokens, NumPools: len(pools),
		LogitsShape: []int{batch.Shape.N, cfg.VocabSize / tp}, Tolerance: 1e-4}
	for d := 0; d < tp; d++ {
		named := map[string]*tensors.Tensor{"chip.index": tensors.FromScalar(int32(d))}
		order := []string{"chip.index"}
		for i, w := range plan.Weights {
			named[w.Name] = sm.Shards[d][i]
			order = append(order, w.Name)
		}
		for _, p := range pools {
			named[p.Name] = tensors.FromShape(shapes.Make(dtypes.Float32, p.ShardShape...))
			order = append(order, p.Name)
		}
		step := append(batch.stepTensors(), batch.logitsIndexTensor())
		for i, s := range step {
			named[stepNames[i]] = s
			order = append(order, stepNames[i])
		}
		if d == 0 {
			for _, n := range order {
				man.Params = append(man.Params, exportedIn{Name: n, DType: named[n].DType().String(), Shape: named[n].Shape().Dimensions})
			}
		}
		if err := WriteSafetensors(filepath.Join(dir, fmt.Sprintf("chip%d.safetensors", d)), named); err != nil {
			t.Fatal(err)
		}
	}
	if err := WriteSafetensors(filepath.Join(dir, "expected.safetensors"), map[string]*tensors.Tensor{"logits": want}); err != nil {
		t.Fatal(err)
	}
	data, err := json.MarshalIndent(man, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "manifest.json"), data, 0o644); err != nil {
		t.Fatal(err)
	}

	// The manifest is the program's signature, in order.
	params := hlotest.MainParamList(text)
	if len(params) != len(man.Params) {
		t.Fatalf("the program has %d parameters, the manifest %d", len(params), len(man.Params))
	}
	for i, p := range man.Params {
		if params[i].Name != stablehlo.NormalizeIdentifier(p.Name) || params[i].Type != hlotest.TensorType(p.Shape, p.DType) {
			t.Errorf("parameter %d: program %%%s: tensor<%s>, manifest %s %v %s", i, params[i].Name, params[i].Type, p.Name, p.Shape, p.DType)
		}
	}
	// And the inputs give the TP=1 logits on the virtual mesh, the same per-chip code.
	got, err := sm.ForwardLogits(tokens)
	if err != nil {
		t.Fatal(err)
	}
	if d := maxAbsDiff(tensors.MustCopyFlatData[float32](got), tensors.MustCopyFlatData[float32](want)); d > 1e-5 {
		t.Errorf("virtual mesh TP=%d vs TP=1: max |Δ| %.2e", tp, d)
	}
	t.Logf("wrote %s: program.mlir (%d bytes), manifest.json, chip0..%d.safetensors, expected.safetensors", dir, len(text), tp-1)
}

func maxAbsDiff(a, b []float32) float64 {
	d := 0.0
	for i := range a {
		if x := float64(a[i] - b[i]); x > d {
			d = x
		} else if -x > d {
			d = -x
		}
	}
	return d
}
