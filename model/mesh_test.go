package model

import (
	"path/filepath"
	"testing"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
)

// localOnly is a virtual mesh whose all-reduce does nothing: each chip keeps its own value.
type localOnly struct{ Collectives }

func (localOnly) AllReduce(xs []*graph.Node, _ backends.ReduceOpType) []*graph.Node { return xs }

// TestVirtualMeshAblation: the parity tests can fail — the per-chip programs with the
// all-reduces taken out are far from TP=1, and with them equal within 1e-5.
func TestVirtualMeshAblation(t *testing.T) {
	const tp = 2
	fixture := filepath.Join("testdata", "gemma3-tiny")
	backend, err := NewBackend("go")
	if err != nil {
		t.Fatal(err)
	}
	opts := LoadOptions{Model: fixture, DType: dtypes.Float32, Progress: func(LoadProgress) {}}
	sm, err := LoadShardedModel(backend, opts, tp)
	if err != nil {
		t.Fatal(err)
	}
	defer sm.Close()
	plain, err := Load(backend, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	tokens := []int32{2, 40, 41, 300, 7, 9, 11, 500, 3}
	want, err := plain.ForwardLogits(tokens)
	if err != nil {
		t.Fatal(err)
	}
	layout, batch, err := onePrefill(&sm.Config, tokens, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	cfg := &sm.Config
	for _, tc := range []struct {
		name    string
		mesh    Collectives
		atLeast float64 // the smallest max |Δ| from TP=1 expected
		atMost  float64
	}{{"all-reduce", VirtualMesh(tp), 0, 1e-5}, {"no all-reduce", localOnly{VirtualMesh(tp)}, 1e-2, 1e9}} {
		t.Run(tc.name, func(t *testing.T) {
			pools, err := sm.NewKVPools(layout)
			if err != nil {
				t.Fatal(err)
			}
			defer pools.Finalize()
			e, err := graph.NewExec(backend, func(in []*graph.Node) []*graph.Node {
				return meshStep(cfg, tc.mesh, len(sm.Plan.Weights), in, func(hidden []*graph.Node, chips []chipState, rest []*graph.Node) []*graph.Node {
					return vocabLogits(cfg, tc.mesh, chips, hidden, rest[0]).Parts
				})
			})
			if err != nil {
				t.Fatal(err)
			}
			defer e.Finalize()
			li := batch.logitsIndexTensor()
			args, temps, err := sm.stepArgs(pools, batch, false, func(int) ([]any, []*tensors.Tensor, error) { return []any{li}, nil, nil })
			defer finalizeAll(temps)
			if err != nil {
				t.Fatal(err)
			}
			outs, err := e.Exec(args...)
			if err != nil {
				t.Fatal(err)
			}
			numP := tp * numPoolTensors(cfg)
			defer finalizeAll(outs)
			got, err := joinVocab(outs[numP:], batch.Shape.N, cfg.VocabSize)
			if err != nil {
				t.Fatal(err)
			}
			d := maxAbsDiff(tensors.MustCopyFlatData[float32](got), tensors.MustCopyFlatData[float32](want))
			if d < tc.atLeast || d > tc.atMost {
				t.Errorf("max |TP=%d − TP=1| = %.2e, want within [%g, %g]", tp, d, tc.atLeast, tc.atMost)
			}
			t.Logf("%s: max |TP=%d − TP=1| = %.2e", tc.name, tp, d)
		})
	}
}
