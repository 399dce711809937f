package model

// Tensor parallelism, part 2: the collectives seam.
//
// The tensor-parallel programs are written for one chip (forwardChips, the vocabulary-split
// sampler): every value a chip holds is one *Node per chip the graph computes, and chips
// talk only through Collectives.AllReduce. Two implementations:
//
//   - VirtualMesh(n), on any single-device backend (the pure-Go one in CI): the graph
//     builds all n chips' computations side by side, each from its own weight pieces and
//     pools, and an all-reduce is the exact sum (or max, min) of the n chips' values. The
//     math CI checks is the math each chip runs; VirtualMesh(1) is the plain model.
//   - spmdMesh, on xla: the graph is one chip's program, compiled SPMD for every device of
//     the mesh (gomlx's explicit strategy), and an all-reduce is stablehlo.all_reduce over
//     all of them (g.Distributed().AllReduce).

import (
	"fmt"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/pkg/core/dtypes"
	. "github.com/gomlx/gomlx/pkg/core/graph" //nolint:revive // the graph DSL reads best unqualified
	"github.com/gomlx/gomlx/pkg/core/shapes"
)

// Collectives is how the chips of a tensor-parallel program exchange values.
type Collectives interface {
	// Chips is the number of chips of the mesh (the tensor-parallel size).
	Chips() int
	// Local is the number of chips whose computation this graph holds: Chips() on a virtual
	// mesh, 1 in an SPMD program.
	Local() int
	// AllReduce reduces xs (one value per local chip, all of one shape) across every chip of
	// the mesh with op (ReduceOpSum, ReduceOpMax or ReduceOpMin); every chip gets the result.
	AllReduce(xs []*Node, op backends.ReduceOpType) []*Node
}

// VirtualMesh is an n-chip mesh inside one single-device graph.
func VirtualMesh(n int) Collectives { return virtualMesh(n) }

type virtualMesh int

func (m virtualMesh) Chips() int { return int(m) }
func (m virtualMesh) Local() int { return int(m) }

func (m virtualMesh) AllReduce(xs []*Node, op backends.ReduceOpType) []*Node {
	if len(xs) != int(m) {
		panic(fmt.Sprintf("model: all-reduce of %d values on a virtual mesh of %d chips", len(xs), int(m)))
	}
	r := xs[0]
	for _, x := range xs[1:] {
		switch op {
		case backends.ReduceOpSum:
			r = Add(r, x)
		case backends.ReduceOpMax:
			r = Max(r, x)
		case backends.ReduceOpMin:
			r = Min(r, x)
		default:
			panic(fmt.Sprintf("model: all-reduce %s is not supported", op))
		}
	}
	out := make([]*Node, len(xs))
	for i := range out {
		out[i] = r
	}
	return out
}

// spmdMesh is one chip's view of an SPMD program over n devices.
type spmdMesh int

func (m spmdMesh) Chips() int { return int(m) }
func (m spmdMesh) Local() int { return 1 }

func (m spmdMesh) AllReduce(xs []*Node, op backends.ReduceOpType) []*Node {
	if len(xs) != 1 {
		panic(fmt.Sprintf("model: all-reduce of %d values in an SPMD program (one chip per program)", len(xs)))
	}
	return []*Node{xs[0].Graph().Distributed().AllReduceOne(xs[0], op)}
}

// VocabShards are float32 logits [N, V] split on the vocabulary across the chips of Mesh:
// local chip c holds the columns Offsets[c] … Offsets[c]+Width−1 as Parts[c] [N, Width].
// Head programs (the sampler) reduce over them with Mesh's collectives, never gathering
// the [N, V] logits.
type VocabShards struct {
	Mesh    Collectives
	Parts   []*Node
	Offsets []*Node // scalar int32 per local chip
	Index   []*Node // scalar int32 per local chip: its number on the mesh
	Width   int     // columns per chip
	Vocab   int     // V, every chip's columns together
}

// GlobalIDs are the vocabulary ids of chip c's columns, [N, Width] int32.
func (v *VocabShards) GlobalIDs(c int) *Node {
	p := v.Parts[c]
	N := p.Shape().Dimensions[0]
	ids := Iota(p.Graph(), shapes.Make(dtypes.Int32, N, v.Width), 1)
	if v.Mesh.Chips() == 1 {
		return ids // offset 0: spare the one-chip sampler a pass over [N, V]
	}
	return Add(ids, v.Offsets[c])
}

// Each applies fn to every local chip.
func (v *VocabShards) Each(fn func(c int) *Node) []*Node {
	out := make([]*Node, len(v.Parts))
	for c := range out {
		out[c] = fn(c)
	}
	return out
}

// Reduce reduces xs (one [N, Width] value per local chip) over the whole vocabulary with
// op (ReduceOpSum, ReduceOpMax or ReduceOpMin): [N, 1], replicated (one node per chip).
func (v *VocabShards) Reduce(xs []*Node, op backends.ReduceOpType) []*Node {
	local := make([]*Node, len(xs))
	for c, x := range xs {
		switch op {
		case backends.ReduceOpSum:
			local[c] = ReduceAndKeep(x, ReduceSum, -1)
		case backends.ReduceOpMax:
			local[c] = ReduceAndKeep(x, ReduceMax, -1)
		case backends.ReduceOpMin:
			local[c] = ReduceAndKeep(x, ReduceMin, -1)
		default:
			panic(fmt.Sprintf("model: vocabulary reduction %s is not supported", op))
		}
	}
	return v.Mesh.AllReduce(local, op)
}

// ArgMax is the vocabulary id of each row's largest value of xs (one [N, Width] float
// value per local chip), [N] int32, replicated: each chip's maximum and argmax, then the
// smallest id among the chips holding the row's maximum, as one ArgMax over [N, V] picks.
func (v *VocabShards) ArgMax(xs []*Node) []*Node {
	out := make([]*Node, len(xs))
	if v.Mesh.Chips() == 1 {
		for c, x := range xs {
			out[c] = ArgMax(x, -1, dtypes.Int32)
		}
		return out
	}
	g := xs[0].Graph()
	local := make([]*Node, len(xs))
	for c, x := range xs {
		local[c] = ReduceMax(x, -1) // [N]
	}
	best := v.Mesh.AllReduce(local, backends.ReduceOpMax)
	for c, x := range xs {
		id := Add(ArgMax(x, -1, dtypes.Int32), v.Offsets[c])
		out[c] = Where(Equal(local[c], best[c]), id, BroadcastToDims(Scalar(g, dtypes.Int32, int32(v.Vocab)), id.Shape().Dimensions...))
	}
	return v.Mesh.AllReduce(out, backends.ReduceOpMin)
}

// Gather collects small per-chip values xs ([N, K] each, one per local chip) into
// [N, Chips·K], chip-major, replicated: each chip writes its block into zeros and the
// blocks are summed across the chips (an all-gather built from an all-reduce, for the few
// candidates a top-k merge needs).
func (v *VocabShards) Gather(xs []*Node) []*Node {
	g := xs[0].Graph()
	n := v.Mesh.Chips()
	blocks := make([]*Node, len(xs))
	for c, x := range xs {
		N, K := x.Shape().Dimensions[0], x.Shape().Dimensions[1]
		slot := Equal(Iota(g, shapes.Make(dtypes.Int32, N, n, K), 1), v.Index[c])
		bx := BroadcastToDims(InsertAxes(x, 1), N, n, K)
		blocks[c] = Reshape(Where(slot, bx, ZerosLike(bx)), N, n*K)
	}
	return v.Mesh.AllReduce(blocks, backends.ReduceOpSum)
}
