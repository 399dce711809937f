package model_test

import (
	"testing"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	. "github.com/gomlx/gomlx/pkg/core/graph" //nolint:revive // the graph DSL reads best unqualified
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/tpuserve/tpuserve/internal/backendtest"
)

// TestSimpleGoQuantSupport pins what docs/quantization.md says the pure-Go backend does
// for quantized matmuls (gomlx v0.26.0), so an upgrade that changes it fails here and the
// emulation can be revisited.
func TestSimpleGoQuantSupport(t *testing.T) {
	if backendtest.Spec() != "go" && backendtest.Spec() != "go:ops_sequential" {
		t.Skipf("pins the pure-Go backend; this run uses %s", backendtest.Spec())
	}
	b := backendtest.Backend(t)
	run := func(fn func(g *Graph) *Node) (*tensors.Tensor, error) {
		e, err := NewExec(b, fn)
		if err != nil {
			return nil, err
		}
		defer e.Finalize()
		out, err := e.Exec()
		if err != nil {
			return nil, err
		}
		return out[0], nil
	}
	// Int8 DotGeneral exists but returns int8: 100·100 + 100·100 = 20000 wraps to 32.
	if out, err := run(func(g *Graph) *Node {
		a := Const(g, [][]int8{{100, 100}})
		return DotGeneral(a, []int{1}, nil, a, []int{1}, nil)
	}); err != nil || out.DType() != dtypes.Int8 || tensors.MustCopyFlatData[int8](out)[0] != 32 {
		t.Errorf("int8 DotGeneral: %v %v (want an Int8 result that wrapped to 32)", out, err)
	}
	// Round rounds ties away from zero (hence model's roundHalfEven).
	if out, err := run(func(g *Graph) *Node { return Round(Const(g, []float32{0.5, 2.5, -2.5})) }); err != nil ||
		!equalF32(tensors.MustCopyFlatData[float32](out), []float32{1, 3, -3}) {
		t.Errorf("Round: %v %v (want ties away from zero)", out, err)
	}
	// No float8 dtype and no Bitcast: FP8 weights travel as Uint8 bit patterns.
	if b.Capabilities().DTypes[dtypes.F8E4M3FN] {
		t.Error("the backend now declares F8E4M3FN: store FP8 weights natively")
	}
	if _, err := run(func(g *Graph) *Node { return ConvertDType(Const(g, []float32{1}), dtypes.F8E4M3FN) }); err == nil {
		t.Error("ConvertDType to F8E4M3FN now works")
	}
	if _, err := run(func(g *Graph) *Node { return Bitcast(Const(g, []uint8{1}), dtypes.Int8) }); err == nil {
		t.Error("Bitcast now works")
	}
	// Int8 → float conversion and a table gather with int32 indices (the FP8 decode) work.
	if out, err := run(func(g *Graph) *Node { return ConvertDType(Const(g, []int8{-128, 127}), dtypes.BFloat16) }); err != nil || out.DType() != dtypes.BFloat16 {
		t.Errorf("int8 → bf16: %v %v", out, err)
	}
}

func equalF32(a, b []float32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
