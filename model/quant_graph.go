package model

import (
	"fmt"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	. "github.com/gomlx/gomlx/pkg/core/graph" //nolint:revive // the graph DSL reads best unqualified
	"github.com/tpuserve/tpuserve/model/quant"
)

// exactInt8Chunk is the longest contraction whose float32 sum of int8×int8 products is
// exact: every partial sum is an integer of magnitude ≤ K·128·128 < 2^24 for K ≤ 1024.
const exactInt8Chunk = 1024

// QuantizedLinear is y = x·Wᵀ for a quantized PyTorch-layout weight w [out, in] with
// per-output-row scales scale [out, 1] (or [out]) in any float dtype; x [..., in] is in the
// compute dtype, and so is y [..., out].
//
// w is Int8 (int8 values) or Uint8 (float8 e4m3fn bit patterns: gomlx v0.26 has the
// F8E4M3FN dtype on neither backend, so the patterns are decoded in the graph through a
// 256-entry table). Either way the weight stays 1 byte per parameter on the device and is
// widened to the compute dtype only next to the matmul (a fused convert on XLA).
//
// mode.Dynamic() (W8A8 / FP8-dynamic): each row of x is quantized on the fly, symmetric,
// s_x = max|x| / 127 (FP8: / 448) in float32, x_q = clamp(round_half_even(x / s_x), -128,
// 127) (FP8: rounded to e4m3, ties to even), and y = (x_q · qᵀ) · s_x · s_w. The values
// are carried in the compute dtype, where they are exact (int8 and e4m3 values are exact in
// bfloat16); in float32 an int8 contraction longer than 1024 is split so that every partial
// sum is exact and the partials are added in int32: the same result as an int8×int8→int32
// matmul. (gomlx's DotGeneral returns the operands' dtype, so an int8 dot would wrap.)
// Otherwise (weight-only): y = (x · qᵀ) · s_w.
func QuantizedLinear(mode quant.Mode, x, w, scale *Node) *Node {
	dtype := x.DType()
	out := w.Shape().Dimensions[0]
	var wv *Node
	switch w.DType() {
	case dtypes.Int8:
		wv = ConvertDType(w, dtype)
	case dtypes.Uint8:
		wv = decodeE4M3(w, dtype)
	default:
		panic(fmt.Sprintf("QuantizedLinear: weight dtype %s (want Int8 or Uint8 e4m3 bits)", w.DType()))
	}
	swDims := make([]int, x.Rank()) // [1, …, 1, out], to scale y [..., out]
	for i := range swDims {
		swDims[i] = 1
	}
	swDims[len(swDims)-1] = out
	sw := Reshape(ConvertDType(scale, dtypes.Float32), swDims...)
	if !mode.Dynamic() {
		y := ConvertDType(linear(x, wv), dtypes.Float32)
		return ConvertDType(Mul(y, sw), dtype)
	}
	xf := ConvertDType(x, dtypes.Float32)
	amax := ReduceAndKeep(Abs(xf), ReduceMax, -1)                    // [..., 1]
	amax = Where(Equal(amax, ZerosLike(amax)), OnesLike(amax), amax) // an all-zero row quantizes to zeros
	// s_x = max|x| / qmax, spelled 1 / (qmax / max|x|) in float32 (see docs/quantization.md:
	// which last bit s_x gets decides rounding ties, and this spelling agrees with the
	// reference everywhere the fixtures check; gomlx's DivScalar, a multiply by the rounded
	// reciprocal, moves FP8-dynamic logits by ~0.04 on average).
	sx := Inverse(Div(Scalar(x.Graph(), dtypes.Float32, mode.QMax()), amax))
	v := Div(xf, sx)
	var xq *Node
	if mode.IsFP8() {
		xq = roundE4M3(v)
	} else {
		xq = ClipScalar(roundHalfEven(v), -128, 127)
	}
	var acc *Node
	if !mode.IsFP8() && dtype == dtypes.Float32 {
		acc = exactInt8Dot(xq, wv)
	} else {
		acc = ConvertDType(linear(ConvertDType(xq, dtype), wv), dtypes.Float32)
	}
	y := Mul(Mul(acc, sx), sw)
	return ConvertDType(y, dtype)
}

// exactInt8Dot contracts the last axis of int8-valued float32 x with int8-valued float32
// w [out, in] exactly (as int32 accumulation would), returning float32.
func exactInt8Dot(x, w *Node) *Node {
	K := w.Shape().Dimensions[1]
	if K <= exactInt8Chunk+8 { // 1032·128·127 < 2^24: still exact
		return linear(x, w)
	}
	var sum *Node
	for lo := 0; lo < K; lo += exactInt8Chunk {
		hi := min(K, lo+exactInt8Chunk)
		xs := make([]SliceAxisSpec, x.Rank())
		for i := range xs {
			xs[i] = AxisRange()
		}
		xs[x.Rank()-1] = AxisRange(lo, hi)
		part := ConvertDType(linear(Slice(x, xs...), Slice(w, AxisRange(), AxisRange(lo, hi))), dtypes.Int32)
		if sum == nil {
			sum = part
		} else {
			sum = Add(sum, part)
		}
	}
	return ConvertDType(sum, dtypes.Float32)
}

// roundHalfEven rounds float32 x to the nearest integer, ties to even, exactly for
// |x| < 2^23, with ops every backend has (gomlx's Round rounds ties away from zero on the
// pure-Go backend).
func roundHalfEven(x *Node) *Node {
	f := Floor(x)
	d := Sub(x, f)
	half := ScalarOne(x.Graph(), x.DType())
	half = MulScalar(half, 0.5)
	odd := Sub(f, MulScalar(Floor(MulScalar(f, 0.5)), 2)) // 1 where f is odd, else 0
	up := Or(GreaterThan(d, half), And(Equal(d, half), Equal(odd, OnesLike(odd))))
	return Add(f, ConvertDType(up, x.DType()))
}

// roundE4M3 rounds float32 x to the nearest float8 e4m3fn value (ties to even), saturating
// at ±448, with exact float32 ops: the quantum of |x| is found by comparisons against the
// powers of two of e4m3's normal range, and x/quantum is rounded half to even.
func roundE4M3(x *Node) *Node {
	g := x.Graph()
	a := Abs(x)
	quantum := BroadcastToDims(Scalar(g, dtypes.Float32, 1.0/512), x.Shape().Dimensions...) // subnormals and [2^-6, 2^-5)
	for e := -5; e <= 8; e++ {
		quantum = Where(GreaterOrEqual(a, Scalar(g, dtypes.Float32, pow2(e))), BroadcastToDims(Scalar(g, dtypes.Float32, pow2(e-3)), x.Shape().Dimensions...), quantum)
	}
	r := MinScalar(Mul(roundHalfEven(Div(a, quantum)), quantum), quant.E4M3Max)
	return Where(LessThan(x, ZerosLike(x)), Neg(r), r)
}

func pow2(e int) float64 {
	v := 1.0
	for ; e > 0; e-- {
		v *= 2
	}
	for ; e < 0; e++ {
		v /= 2
	}
	return v
}

// decodeE4M3 maps e4m3fn bit patterns (Uint8) to their values in dtype by a table gather.
func decodeE4M3(bits *Node, dtype dtypes.DType) *Node {
	table := quant.E4M3Table()
	rows := make([][]float32, len(table))
	for i, v := range table {
		rows[i] = []float32{v}
	}
	lut := ConvertDType(Const(bits.Graph(), rows), dtype) // [256, 1]: gathering scalars from a rank-1 operand fails on SimpleGo
	idx := InsertAxes(ConvertDType(bits, dtypes.Int32), -1)
	return Reshape(Gather(lut, idx), bits.Shape().Dimensions...)
}

// layerLinear is Linear k of a layer: plain, or quantized when the layer has its scale.
func layerLinear(cfg *Config, x *Node, weights []*Node, li layerIndex, k int) *Node {
	if s := li.scale[k]; s >= 0 {
		return QuantizedLinear(cfg.Quantization.Mode, x, weights[li.start+k], weights[s])
	}
	return linear(x, weights[li.start+k])
}
