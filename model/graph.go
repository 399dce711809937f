package model

import (
	"math"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	. "github.com/gomlx/gomlx/pkg/core/graph" //nolint:revive // the graph DSL reads best unqualified
	"github.com/gomlx/gomlx/pkg/core/shapes"
)

// StepNodes are the per-step inputs of the forward program (see Batch for their meaning).
type StepNodes struct {
	Tokens, Positions         *Node // [T] int32
	SlotsGlobal, SlotsSliding *Node // [T] int32: flat slot (page·pageSize + offset) to write each token's K/V
	TokenCell                 *Node // [T] int32: b·Q+q, the attention-grid cell of each token
	GridIndex                 *Node // [B, Q] int32: the flat token of each grid cell
	// Page entries (see Batch): page, row (B = padding) and first key position, [EG] for the
	// global layers and [ES] for the sliding ones.
	Global, Sliding PageEntries
	// Image inputs (vision models only, else nil): ImageRow [T] int32 is each token's row
	// of ImageEmbeds [M, H] (M: not an image token), ImageSpan [T, 2·ImageRanges] int32 the
	// key ranges [start, end) an image token sees beyond causality ([0, 0) unused).
	ImageRow, ImageSpan, ImageEmbeds *Node
}

// PageEntries are a flat list of (PagesPerEntry pages [E, PagesPerEntry], reading row [E],
// first key position [E]) per attention type.
type PageEntries struct{ Page, Row, Base *Node }

// numStepInputs is the number of StepNodes inputs, in the order of stepNodesFromSlice.
const numStepInputs = 12

func stepNodesFromSlice(in []*Node) StepNodes {
	return StepNodes{
		Tokens: in[0], Positions: in[1], SlotsGlobal: in[2], SlotsSliding: in[3], TokenCell: in[4],
		GridIndex: in[5], Global: PageEntries{in[6], in[7], in[8]}, Sliding: PageEntries{in[9], in[10], in[11]},
	}
}

// numImageInputs is the number of image inputs after the step inputs of a multimodal
// model's step program (ImageRow, ImageSpan, ImageEmbeds).
const numImageInputs = 3

// stepInputCount is how many step inputs cfg's step programs take.
func stepInputCount(cfg *Config) int {
	if cfg.Vision {
		return numStepInputs + numImageInputs
	}
	return numStepInputs
}

// stepNodesOf reads cfg's step inputs (stepInputCount of them) from in.
func stepNodesOf(cfg *Config, in []*Node) StepNodes {
	s := stepNodesFromSlice(in)
	if cfg.Vision {
		s.ImageRow, s.ImageSpan, s.ImageEmbeds = in[numStepInputs], in[numStepInputs+1], in[numStepInputs+2]
	}
	return s
}

// spliceImages replaces the embeddings x [T, H] of image soft tokens by their rows of
// embeds [M, H] (row [T]: M for other tokens). As in HF's Gemma3Model the features are
// spliced after the √hidden scale: they are not scaled.
func spliceImages(x, embeds, row *Node) *Node {
	g := x.Graph()
	M, H := embeds.Shape().Dimensions[0], embeds.Shape().Dimensions[1]
	T := x.Shape().Dimensions[0]
	img := Gather(ConvertDType(embeds, x.DType()), InsertAxes(Min(row, Scalar(g, dtypes.Int32, M-1)), -1)) // [T, H]
	isImage := BroadcastToDims(InsertAxes(LessThan(row, Scalar(g, dtypes.Int32, M)), -1), T, H)
	return Where(isImage, img, x)
}

// maskedScore stands for −∞ in attention scores: finite, so a row with every key masked
// (a padding cell) gives a finite uniform softmax instead of NaN.
const maskedScore = -1e30

// Forward builds the Gemma 3 forward pass (../shared/docs/gemma3.md) over a flat batch of
// new tokens: it writes their K/V into the paged pools and attends to each token's
// sequence context through the page tables. weights are in WeightSpecs order; pools hold K
// and V for each layer ([pages, pageSize, kvHeads, headDim], in the compute dtype, or 1
// byte per element followed by the scale pools when cfg.KVCache is set: kvquant.go). It
// returns the hidden states after the last layer [T, H] (before the final norm: Logits
// applies it to the rows it projects) and the updated pools.
func Forward(cfg *Config, weights []*Node, pools []*Node, in StepNodes) (hidden *Node, newPools []*Node) {
	g := in.Tokens.Graph()
	dtype := weights[0].DType()
	H, D := cfg.HiddenSize, cfg.HeadDim
	NH, KV := cfg.NumAttentionHeads, cfg.NumKeyValueHeads
	T := in.Tokens.Shape().Dimensions[0]
	B, Q := in.GridIndex.Shape().Dimensions[0], in.GridIndex.Shape().Dimensions[1]

	embed := weights[0]
	x := Gather(embed, InsertAxes(in.Tokens, -1)) // [T, H]
	// The scale is cast to the weights' dtype first, as HF does (sqrt(1152) → 34.0 in bf16).
	x = Mul(x, Scalar(g, dtype, roundToDType(math.Sqrt(float64(H)), dtype)))
	if in.ImageEmbeds != nil {
		x = spliceImages(x, in.ImageEmbeds, in.ImageRow)
	}

	ropeGlobal := newRope(in.Positions, D, cfg.RopeTheta, cfg.RopeScalingFactor, dtype)
	ropeLocal := newRope(in.Positions, D, cfg.RopeLocalBaseFreq, 1, dtype)

	// Query positions on the grid. Gathered as [T, 1] rows: gathering scalars from a rank-1
	// operand fails on SimpleGo.
	qpos := Reshape(Gather(InsertAxes(in.Positions, -1), InsertAxes(in.GridIndex, -1)), B, Q)
	var qspan *Node // [B, Q, 2·ImageRanges]: each query's image key ranges
	if in.ImageSpan != nil {
		qspan = Reshape(Gather(in.ImageSpan, InsertAxes(in.GridIndex, -1)), B, Q, 2*ImageRanges)
	}
	global := newEntryAttention(qpos, qspan, in.Global, pools[0].Shape().Dimensions[1], 0)
	sliding := newEntryAttention(qpos, qspan, in.Sliding, pools[0].Shape().Dimensions[1], cfg.SlidingWindow)
	scale := 1 / math.Sqrt(cfg.QueryPreAttnScalar)

	newPools = make([]*Node, len(pools))
	layers := layerIndices(cfg) // where each layer's tensors (and quantization scales) sit
	for l := 0; l < cfg.NumHiddenLayers; l++ {
		w := weights[layers[l].start : layers[l].start+numLayerWeights]
		lin := func(x *Node, k int) *Node { return layerLinear(cfg, x, weights, layers[l], k) }
		isGlobal := cfg.IsGlobal(l)
		rope, slots, att := ropeLocal, in.SlotsSliding, sliding
		if isGlobal {
			rope, slots, att = ropeGlobal, in.SlotsGlobal, global
		}

		residual := x
		hn := rmsNorm(x, w[wInputNorm], cfg.RMSNormEps)
		q := Reshape(lin(hn, wQ), T, NH, D)
		k := Reshape(lin(hn, wK), T, KV, D)
		v := Reshape(lin(hn, wV), T, KV, D)
		q = rope.apply(rmsNorm(q, w[wQNorm], cfg.RMSNormEps))
		k = rope.apply(rmsNorm(k, w[wKNorm], cfg.RMSNormEps))

		kPool, vPool, kScale, vScale := writeKV(cfg, pools, newPools, l, slots, k, v)
		attn := att.attend(q, kPool, vPool, kScale, vScale, in.GridIndex, in.TokenCell, NH, KV, D, B, Q, scale)
		attn = lin(attn, wO)
		x = Add(residual, rmsNorm(attn, w[wPostAttnNorm], cfg.RMSNormEps))

		residual = x
		hn = rmsNorm(x, w[wPreFFNorm], cfg.RMSNormEps)
		mlp := lin(Mul(geluTanh(lin(hn, wGate)), lin(hn, wUp)), wDown)
		x = Add(residual, rmsNorm(mlp, w[wPostFFNorm], cfg.RMSNormEps))
	}
	return x, newPools
}

// Logits are the float32 logits [N, V] of hidden-state rows h [N, H] from Forward: the
// final norm, then the tied embedding embed [V, H] as the output projection.
func Logits(cfg *Config, embed, finalNorm, h *Node) *Node {
	h = rmsNorm(h, finalNorm, cfg.RMSNormEps)
	return ConvertDType(Einsum("nh,vh->nv", h, embed), dtypes.Float32)
}

// GatherRows picks rows idx [N] int32 of x [T, H] → [N, H].
func GatherRows(x, idx *Node) *Node { return Gather(x, InsertAxes(idx, -1)) }

// PadRows pads x [T, H] with zero rows to [rows, H] (Concatenate: the pure-Go backend has
// no Pad), so every step leaves hidden states of one shape for the sampler programs.
func PadRows(x *Node, rows int) *Node {
	t := x.Shape().Dimensions[0]
	if t == rows {
		return x
	}
	return Concatenate([]*Node{x, Zeros(x.Graph(), shapes.Make(x.DType(), rows-t, x.Shape().Dimensions[1]))}, 0)
}

// linear is y = x·Wᵀ for a PyTorch-layout weight [out, in].
func linear(x, w *Node) *Node {
	return DotGeneral(x, []int{x.Rank() - 1}, nil, w, []int{1}, nil)
}

// rmsNorm is Gemma's zero-centred RMSNorm over the last axis, computed in float32:
// x·rsqrt(mean(x²)+eps)·(1+w), cast back to x's dtype.
func rmsNorm(x, w *Node, eps float64) *Node {
	dtype := x.DType()
	xf := ConvertDType(x, dtypes.Float32)
	variance := ReduceAndKeep(Mul(xf, xf), ReduceMean, -1)
	y := Mul(xf, Rsqrt(AddScalar(variance, eps)))
	scaleW := OnePlus(ConvertDType(w, dtypes.Float32))
	for scaleW.Rank() < y.Rank() {
		scaleW = InsertAxes(scaleW, 0)
	}
	y = Mul(y, scaleW)
	return ConvertDType(y, dtype)
}

// geluTanh is gelu_pytorch_tanh: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).
func geluTanh(x *Node) *Node {
	inner := MulScalar(Add(x, MulScalar(Mul(Mul(x, x), x), 0.044715)), math.Sqrt(2/math.Pi))
	return Mul(MulScalar(x, 0.5), OnePlus(Tanh(inner)))
}

// rope holds the cos/sin tables of one RoPE kind for the step's positions.
type rope struct {
	cos, sin *Node // [T, 1, D] in the compute dtype
	half     int
}

func newRope(positions *Node, headDim int, base, scaling float64, dtype dtypes.DType) rope {
	g := positions.Graph()
	half := headDim / 2
	invFreq := make([]float32, half)
	for i := range invFreq {
		// float32 as transformers computes it: 1 / base^(2i/D), then ÷ the linear factor.
		exp := float32(2*i) / float32(headDim)
		invFreq[i] = float32(1/math.Pow(base, float64(exp))) / float32(scaling)
	}
	angles := Mul(InsertAxes(ConvertDType(positions, dtypes.Float32), -1), InsertAxes(Const(g, invFreq), 0)) // [T, D/2]
	angles = Concatenate([]*Node{angles, angles}, -1)                                                        // [T, D]
	return rope{
		cos:  InsertAxes(ConvertDType(Cos(angles), dtype), 1),
		sin:  InsertAxes(ConvertDType(Sin(angles), dtype), 1),
		half: half,
	}
}

// apply rotates x [T, heads, D] in the rotate-half layout: x·cos + concat(−x₂, x₁)·sin.
func (r rope) apply(x *Node) *Node {
	x1 := Slice(x, AxisRange(), AxisRange(), AxisRange(0, r.half))
	x2 := Slice(x, AxisRange(), AxisRange(), AxisRange(r.half))
	rotated := Concatenate([]*Node{Neg(x2), x1}, -1)
	return Add(Mul(x, r.cos), Mul(rotated, r.sin))
}

// writeSlots overwrites rows of pool [pages, pageSize, KV, D] at flat slots [T] with
// values [T, KV, D]. ScatterMin(−∞) then ScatterMax(values) is an exact overwrite with ops
// the pure-Go backend has (it lacks DynamicUpdateSlice); with the pool donated it is in place.
func writeSlots(pool, slots, values *Node) *Node {
	dims := pool.Shape().Dimensions
	flat := Reshape(pool, dims[0]*dims[1], dims[2], dims[3])
	idx := InsertAxes(slots, -1)
	lowest := Infinity(pool.Graph(), pool.DType(), -1)
	switch pool.DType() {
	case dtypes.Int8:
		lowest = Scalar(pool.Graph(), dtypes.Int8, -128)
	case dtypes.Uint8:
		lowest = Scalar(pool.Graph(), dtypes.Uint8, 0)
	}
	negInf := BroadcastToDims(lowest, values.Shape().Dimensions...)
	flat = ScatterMin(flat, idx, negInf, false, false)
	flat = ScatterMax(flat, idx, values, false, false)
	return Reshape(flat, dims...)
}

// entryAttention is attention over one flat list of page entries, with what every layer of
// that attention type shares: the entries' rows and pages, and the mask of each entry's
// keys against its row's queries.
type entryAttention struct {
	ent  PageEntries
	mask *Node // [E, Q, S]: key s of entry e is visible to query q of its row
}

// newEntryAttention builds the mask of entries ent for queries at qpos [B, Q]: key position
// base+s ≤ query position, and for a window w > 0 also > query position − w; or, with
// qspan [B, Q, 2·ImageRanges] (nil: text only), the key inside one of the query's image key
// ranges [start, end) (HF's token_type_ids mask, bidirectional among image tokens, OR-ed
// onto both the causal and the sliding mask). Padding entries (row B, base beyond every
// position) are masked everywhere.
func newEntryAttention(qpos, qspan *Node, ent PageEntries, pageSize, window int) entryAttention {
	g := qpos.Graph()
	Q := qpos.Shape().Dimensions[1]
	E := ent.Page.Shape().Dimensions[0]
	// One extra row for padding entries.
	qposPad := Concatenate([]*Node{qpos, Zeros(g, shapes.Make(dtypes.Int32, 1, Q))}, 0)
	qe := InsertAxes(Gather(qposPad, InsertAxes(ent.Row, -1)), -1)                                                       // [E, Q, 1]
	ke := InsertAxes(Add(Iota(g, shapes.Make(dtypes.Int32, E, PagesPerEntry*pageSize), 1), InsertAxes(ent.Base, -1)), 1) // [E, 1, S]
	mask := LessOrEqual(ke, qe)
	if window > 0 {
		mask = And(mask, GreaterThan(ke, SubScalar(qe, window)))
	}
	if qspan != nil {
		spanPad := Concatenate([]*Node{qspan, Zeros(g, shapes.Make(dtypes.Int32, 1, Q, 2*ImageRanges))}, 0)
		se := Gather(spanPad, InsertAxes(ent.Row, -1)) // [E, Q, 2·ImageRanges]
		for r := 0; r < ImageRanges; r++ {
			start := Slice(se, AxisRange(), AxisRange(), AxisRange(2*r, 2*r+1))
			end := Slice(se, AxisRange(), AxisRange(), AxisRange(2*r+1, 2*r+2))
			mask = Or(mask, And(GreaterOrEqual(ke, start), LessThan(ke, end)))
		}
	}
	return entryAttention{ent: ent, mask: mask}
}

// attend computes attention of the step's queries q [T, NH, D] on the [B, Q] grid against
// the keys and values of the entries' pages, and returns the per-token output [T, NH·D].
// Each entry scores its page against its row's queries; the softmax over a row's entries is
// exact: the row maximum by ScatterMax, then the exponentials' sums and the weighted values
// by ScatterSum (in float32), divided at the end. With scale pools kScale, vScale
// [pages, pageSize, KV, 1] (a quantized cache; else nil) the gathered pages are
// dequantized by their gathered scales.
func (a entryAttention) attend(q, kPool, vPool, kScale, vScale, gridIndex, tokenCell *Node, NH, KV, D, B, Q int, scale float64) *Node {
	g := q.Graph()
	dtype := q.DType()
	E := a.ent.Page.Shape().Dimensions[0]
	S := PagesPerEntry * kPool.Shape().Dimensions[1] // keys per entry
	G := NH / KV
	rowIdx := InsertAxes(a.ent.Row, -1)
	pageIdx := InsertAxes(a.ent.Page, -1)                  // [E, PagesPerEntry, 1]
	keys := Reshape(Gather(kPool, pageIdx), E, S, KV, D)   // [E, S, KV, D]
	values := Reshape(Gather(vPool, pageIdx), E, S, KV, D) // [E, S, KV, D]
	if kScale != nil {
		keys = dequantizeKV(keys, Reshape(Gather(kScale, pageIdx), E, S, KV, 1), dtype)
		values = dequantizeKV(values, Reshape(Gather(vScale, pageIdx), E, S, KV, 1), dtype)
	}
	qg := Reshape(Gather(q, InsertAxes(gridIndex, -1)), B, Q, KV, G, D)
	qg = Concatenate([]*Node{qg, Zeros(g, shapes.Make(dtype, 1, Q, KV, G, D))}, 0) // + the padding row
	qe := Gather(qg, rowIdx)                                                       // [E, Q, KV, G, D]
	scores := ConvertDType(MulScalar(Einsum("eqkgd,eskd->ekgqs", qe, keys), scale), dtypes.Float32)
	m := BroadcastToDims(Reshape(a.mask, E, 1, 1, Q, S), E, KV, G, Q, S)
	scores = Where(m, scores, BroadcastToDims(Scalar(g, dtypes.Float32, maskedScore), E, KV, G, Q, S))
	rows := shapes.Make(dtypes.Float32, B+1, KV, G, Q)
	rowMax := ScatterMax(BroadcastToDims(Scalar(g, dtypes.Float32, maskedScore), rows.Dimensions...), rowIdx, ReduceMax(scores, -1), false, false)
	p := Exp(Sub(scores, InsertAxes(Gather(rowMax, rowIdx), -1))) // [E, KV, G, Q, S]
	sums := ScatterSum(Zeros(g, rows), rowIdx, ReduceSum(p, -1), false, false)
	weighted := ConvertDType(Einsum("ekgqs,eskd->ekgqd", ConvertDType(p, dtype), values), dtypes.Float32)
	out := ScatterSum(Zeros(g, shapes.Make(dtypes.Float32, B+1, KV, G, Q, D)), rowIdx, weighted, false, false)
	out = Div(out, InsertAxes(sums, -1))
	out = Slice(out, AxisRange(0, B))               // drop the padding row
	out = ConvertDType(Transpose(out, 1, 3), dtype) // [B, Q, G, KV, D]
	out = Transpose(out, 2, 3)                      // [B, Q, KV, G, D]
	out = Reshape(out, B*Q, NH*D)
	return Gather(out, InsertAxes(tokenCell, -1)) // [T, NH·D]
}

// roundToDType rounds v as a value of dtype would hold it.
func roundToDType(v float64, dtype dtypes.DType) float64 {
	if dtype == dtypes.BFloat16 {
		return float64(math.Float32frombits(uint32(float32ToBF16Bits(float32(v))) << 16))
	}
	return float64(float32(v))
}
