package model

// KV cache quantization (--kv-cache-dtype int8|fp8).
//
// K and V are stored 1 byte per element (Int8, or Uint8 holding float8 e4m3fn bit patterns,
// as the FP8 weights are: gomlx v0.26 has no F8E4M3FN dtype on SimpleGo) with one scale per
// (position, kv head) in the compute dtype, in extra pools [pages, pageSize, kvHeads, 1].
// The scale is computed when the token's K/V is written: s = max|x| / 127 (FP8: / 448) over
// the head's D values, rounded to the compute dtype, and x / s is rounded half to even and
// clamped to [-128, 127] (FP8: rounded to e4m3 nearest-even, saturating at ±448), the same
// rounding the weight and activation paths use. Attention dequantizes on read: the gathered
// pages times their scales, in float32, then cast to the compute dtype.
//
// Why per (position, kv head): it is the granularity of dynamic KV quantization in vLLM and
// others, and the only one that is both exact to write and batch-independent. A token's K/V
// is written once and never rewritten, so its scale can depend only on that token's own
// values: a per-page or per-head-per-sequence scale would have to be known before the later
// tokens of the page exist (or rewrite the page when they raise the max), and a per-tensor
// scale would make one sequence's cache depend on what else shared the step. Per position
// and head costs one scale per D elements (tiny: D = 32, f32 → 4/32 bytes per element;
// 27B: D = 128, bf16 → 1/64).
//
// Pool layout with a quantized cache: pools[2l] and pools[2l+1] are layer l's K and V (1
// byte per element), pools[2L+2l] and pools[2L+2l+1] their scales.

import (
	"fmt"
	"strings"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	. "github.com/gomlx/gomlx/pkg/core/graph" //nolint:revive // the graph DSL reads best unqualified
	"github.com/tpuserve/tpuserve/model/quant"
)

// ParseKVCacheDType reads --kv-cache-dtype: "auto" (or "") is the compute dtype, "int8"
// and "fp8" (also "fp8_e4m3") a quantized cache.
func ParseKVCacheDType(s string) (quant.Mode, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "", "auto":
		return quant.None, nil
	case "int8":
		return quant.Int8, nil
	case "fp8", "fp8_e4m3", "fp8-e4m3":
		return quant.FP8, nil
	}
	return quant.None, fmt.Errorf("%w: kv-cache-dtype %q (want auto, int8 or fp8)", ErrConfig, s)
}

// KVCacheDTypeName is the --kv-cache-dtype spelling of m.
func KVCacheDTypeName(m quant.Mode) string {
	switch m {
	case quant.Int8:
		return "int8"
	case quant.FP8:
		return "fp8"
	}
	return "auto"
}

// checkKVCache refuses a KVCache mode other than none, int8 and fp8.
func checkKVCache(cfg *Config) error {
	switch cfg.KVCache {
	case quant.None, quant.Int8, quant.FP8:
		return nil
	}
	return fmt.Errorf("%w: Config.KVCache %s (want none, int8 or fp8)", ErrConfig, cfg.KVCache)
}

// numPoolTensors is how many pool tensors a step takes: K and V per layer, and their
// scales when the cache is quantized.
func numPoolTensors(cfg *Config) int {
	if cfg.KVCache.Quantized() {
		return 4 * cfg.NumHiddenLayers
	}
	return 2 * cfg.NumHiddenLayers
}

// kvStorageDType is the element dtype of quantized K/V pools.
func kvStorageDType(m quant.Mode) dtypes.DType { return quantWeightDType(m) }

// KVElementBytes is the KV cache's bytes per element and per (position, kv head) scale for
// cfg with compute dtype: (dtype size, 0) unquantized, (1, dtype size) quantized.
func KVElementBytes(cfg *Config, dtype dtypes.DType) (elem, scale int) {
	if cfg.KVCache.Quantized() {
		return 1, dtype.Size()
	}
	return dtype.Size(), 0
}

// quantizeKV quantizes x [T, KV, D] per (token, head) and returns the stored values [T,
// KV, D] (Int8, or Uint8 e4m3 bits) and the scales [T, KV, 1] in scaleDType.
func quantizeKV(mode quant.Mode, x *Node, scaleDType dtypes.DType) (q, scale *Node) {
	g := x.Graph()
	xf := ConvertDType(x, dtypes.Float32)
	amax := ReduceAndKeep(Abs(xf), ReduceMax, -1)
	amax = Where(Equal(amax, ZerosLike(amax)), OnesLike(amax), amax) // an all-zero head stores zeros
	s := ConvertDType(Div(amax, Scalar(g, dtypes.Float32, mode.QMax())), scaleDType)
	v := Div(xf, ConvertDType(s, dtypes.Float32)) // by the stored (rounded) scale, as the weight recipe
	if mode.IsFP8() {
		return encodeE4M3(roundE4M3(v)), s
	}
	return ConvertDType(ClipScalar(roundHalfEven(v), -128, 127), dtypes.Int8), s
}

// dequantizeKV is q · scale in float32, cast to dtype: q [..., D] as quantizeKV stores it,
// scale [..., 1].
func dequantizeKV(q, scale *Node, dtype dtypes.DType) *Node {
	var v *Node
	if q.DType() == dtypes.Uint8 {
		// decodeE4M3 gathers with rank-2 bits (a weight); flatten ours to one row.
		v = Reshape(decodeE4M3(Reshape(q, 1, q.Shape().Size()), dtypes.Float32), q.Shape().Dimensions...)
	} else {
		v = ConvertDType(q, dtypes.Float32)
	}
	return ConvertDType(Mul(v, ConvertDType(scale, dtypes.Float32)), dtype)
}

// encodeE4M3 turns float32 values that are e4m3fn values (roundE4M3's output) into their
// bit patterns (Uint8) with exact float32 ops (no Bitcast or shifts on SimpleGo): for |r|
// in binade [2^e, 2^(e+1)), e ≥ -6, the bits are (e+7)·8 + (|r|/2^e − 1)·8; below 2^-6
// (subnormals) |r| / 2^-9; the sign adds 128.
func encodeE4M3(r *Node) *Node {
	g := r.Graph()
	a := Abs(r)
	dims := r.Shape().Dimensions
	full := func(v float64) *Node { return BroadcastToDims(Scalar(g, dtypes.Float32, v), dims...) }
	bits := Mul(a, full(512)) // subnormals: m · 2^-9
	for e := -6; e <= 8; e++ {
		normal := AddScalar(MulScalar(Div(a, full(pow2(e))), 8), float64((e+7)*8-8))
		bits = Where(GreaterOrEqual(a, full(pow2(e))), normal, bits)
	}
	bits = Where(LessThan(r, ZerosLike(r)), AddScalar(bits, 128), bits)
	return ConvertDType(bits, dtypes.Uint8)
}

// writeKV writes layer l's new k, v [T, KV, D] at slots [T] into pools (in place in
// newPools), quantized when cfg.KVCache says so, and returns the layer's K and V as
// attention reads them: the pools and, for a quantized cache, their scale pools.
func writeKV(cfg *Config, pools, newPools []*Node, l int, slots, k, v *Node) (kPool, vPool, kScale, vScale *Node) {
	if !cfg.KVCache.Quantized() {
		kPool, vPool = writeSlots(pools[2*l], slots, k), writeSlots(pools[2*l+1], slots, v)
		newPools[2*l], newPools[2*l+1] = kPool, vPool
		return kPool, vPool, nil, nil
	}
	L := cfg.NumHiddenLayers
	sd := pools[2*L].DType()
	kq, ks := quantizeKV(cfg.KVCache, k, sd)
	vq, vs := quantizeKV(cfg.KVCache, v, sd)
	kPool, vPool = writeSlots(pools[2*l], slots, kq), writeSlots(pools[2*l+1], slots, vq)
	kScale, vScale = writeSlots(pools[2*L+2*l], slots, ks), writeSlots(pools[2*L+2*l+1], slots, vs)
	newPools[2*l], newPools[2*l+1] = kPool, vPool
	newPools[2*L+2*l], newPools[2*L+2*l+1] = kScale, vScale
	return kPool, vPool, kScale, vScale
}
