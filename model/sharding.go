package model

// Tensor parallelism, part 1: the sharding plan.
//
// A ShardingPlan says, for a Config and a tensor-parallel size N, which axis of every weight
// (WeightSpecs order) and of the KV pools is split across the N chips, over which axes of the
// device mesh, and how many bytes each chip holds. It is plain data, computed and tested
// without any device; tp.go cuts each chip's pieces by it (ShardIndex, ShardBytes) for the
// per-chip programs and internal/plan turns it into a per-chip memory plan. (The gomlx
// sharding specs, Spec and Mesh, describe the same split for an AutoSharding program; the
// served programs no longer use them.)
//
// The split is Megatron's:
//
//   - q/k/v and gate/up projections are column-parallel: the [out, in] weight is split on its
//     out axis (whole heads for q/k/v), so each chip computes its own heads and its slice of
//     the MLP's intermediate activations without communication;
//   - o and down projections are row-parallel: split on the in axis, each chip produces a
//     partial [T, H] sum and one explicit all-reduce per projection sums them (2 per layer);
//   - every norm weight (1-D) is replicated;
//   - the embedding, which is also the tied output projection, is split on the vocabulary
//     axis (vocab-parallel, as vLLM's VocabParallelEmbedding/ParallelLMHead): the logits
//     [N, V] then stay split by vocabulary on the chips and the on-device sampler reduces
//     over them with a few scalars per row of communication. Splitting on hidden instead
//     would make the logits a partial sum to all-reduce: N·V·4 bytes per step (268 MB for
//     256 decode rows of 27B) against [T, H] for the lookup's all-reduce;
//   - KV pools [pages, pageSize, kvHeads, headDim] are split on the kv-head axis, so each
//     chip stores and reads only its heads' K/V (27B, TP=8: 16 kv heads → 2 per chip).
//
// Fewer kv heads than chips (1B at TP ≥ 2, 4B at TP=8): when N is a multiple of the kv-head
// count, kv heads are replicated, as vLLM does: the mesh becomes 2-D, "tp" (one entry per kv
// head) × "tp_rep" (N / kvHeads); q heads and every other split use both axes, k/v weights
// and pools only "tp". Chip d = a·rep + b holds q-head block d and kv head a, which is
// exactly the kv head its q heads use (q head j uses kv head j / (NH/KV)).
//
// Fewer q heads than chips (the 4-head test models at TP=8): when N is a multiple of the
// head count, q heads are replicated as well: the mesh is "tp" (kv heads) × "tp_q" (q heads
// per kv head) × "tp_rep" (N / heads); chip d computes q head d / (N/NH) whole, and o_proj,
// still split N ways on its input axis, gives it 1/(N/NH) of that head's columns, so the
// all-reduce still sums each column once. Any other N is refused with an error naming the
// tensor and the sizes.
//
// Errors wrap ErrSharding. A plan is immutable once built and safe to share between
// goroutines.

import (
	"errors"
	"fmt"
	"strings"

	"github.com/gomlx/gomlx/pkg/core/distributed"
	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/tpuserve/tpuserve/model/quant"
)

// ErrSharding is wrapped by every error about a tensor-parallel plan (a size that does not
// divide a tensor, an unknown weight format).
var ErrSharding = errors.New("invalid tensor-parallel plan")

// Mesh axis names of the tensor-parallel device mesh.
const (
	// MeshAxisTP is the mesh's first axis: all N chips when kv heads divide by N, else one
	// entry per kv head.
	MeshAxisTP = "tp"
	// MeshAxisKVReplica is the last axis of a mesh that replicates kv heads: N / kvHeads, or
	// N / heads when q heads are replicated too.
	MeshAxisKVReplica = "tp_rep"
	// MeshAxisQHead is the middle axis of a mesh that replicates q heads (fewer heads than
	// chips): the q heads of one kv head (heads / kvHeads).
	MeshAxisQHead = "tp_q"
)

// SplitKind is how a tensor is laid out across the chips.
type SplitKind int

const (
	// Replicated: every chip holds the whole tensor.
	Replicated SplitKind = iota
	// ColumnParallel: a [out, in] weight split on its out axis (axis 0).
	ColumnParallel
	// RowParallel: a [out, in] weight split on its in axis (axis 1).
	RowParallel
	// VocabParallel: the embedding [V, H] split on its vocabulary axis (axis 0).
	VocabParallel
	// KVHeadParallel: a KV pool [pages, pageSize, kvHeads, headDim] split on axis 2.
	KVHeadParallel
)

func (s SplitKind) String() string {
	switch s {
	case Replicated:
		return "replicated"
	case ColumnParallel:
		return "column"
	case RowParallel:
		return "row"
	case VocabParallel:
		return "vocab"
	case KVHeadParallel:
		return "kv-head"
	}
	return fmt.Sprintf("SplitKind(%d)", int(s))
}

// MarshalText writes the split's name (for JSON).
func (s SplitKind) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText reads a name MarshalText wrote.
func (s *SplitKind) UnmarshalText(b []byte) error {
	for k := Replicated; k <= KVHeadParallel; k++ {
		if k.String() == string(b) {
			*s = k
			return nil
		}
	}
	return fmt.Errorf("%w: unknown split %q", ErrSharding, b)
}

// WeightFormat is how weights are stored on the chips.
type WeightFormat string

const (
	// FormatBF16: weights, KV and activations in bfloat16 (the serving default). A config
	// with a quantization_config (a compressed checkpoint) keeps its quantized Linears.
	FormatBF16 WeightFormat = "bf16"
	// FormatF32: everything in float32 (the pure-Go backend's default).
	FormatF32 WeightFormat = "f32"
	// FormatInt8: every decoder Linear int8 with one bfloat16 scale per output row, as a
	// quantize-at-load (--quantization int8 or int8-weight-only: the storage is the same)
	// or a compressed-tensors int8 checkpoint runs; the embedding (the tied lm_head) and the
	// norms stay bfloat16, and so do the KV cache and the activations.
	FormatInt8 WeightFormat = "int8"
	// FormatFP8: as FormatInt8 with float8 e4m3 weights (1 byte, Uint8 bit patterns on the
	// device) and bfloat16 scales.
	FormatFP8 WeightFormat = "fp8"
)

// ParseWeightFormat accepts bf16/bfloat16, f32/float32, int8 and fp8.
func ParseWeightFormat(s string) (WeightFormat, error) {
	switch strings.ToLower(s) {
	case "bf16", "bfloat16":
		return FormatBF16, nil
	case "f32", "float32":
		return FormatF32, nil
	case "int8":
		return FormatInt8, nil
	case "fp8":
		return FormatFP8, nil
	}
	return "", fmt.Errorf("%w: weight format %q (want bf16, f32, int8 or fp8)", ErrSharding, s)
}

// QuantizedFormat is the plan format of quantization mode m (FormatInt8 or FormatFP8;
// FormatBF16 for none): the weight-only and dynamic modes store the same tensors.
func QuantizedFormat(m quant.Mode) WeightFormat {
	switch {
	case !m.Quantized():
		return FormatBF16
	case m.IsFP8():
		return FormatFP8
	}
	return FormatInt8
}

// ComputeBytes is the size of one element of activations and KV cache.
func (f WeightFormat) ComputeBytes() int {
	if f == FormatF32 {
		return 4
	}
	return 2
}

// ComputeDType is the dtype of activations, KV cache and unquantized weights.
func (f WeightFormat) ComputeDType() dtypes.DType {
	if f == FormatF32 {
		return dtypes.Float32
	}
	return dtypes.BFloat16
}

// QuantMode is the weight quantization a format plans for (quant.None for bf16 and f32).
func (f WeightFormat) QuantMode() quant.Mode {
	switch f {
	case FormatInt8:
		return quant.Int8
	case FormatFP8:
		return quant.FP8
	}
	return quant.None
}

// PlanTensorSpecs are the device tensors a plan in format places for cfg, in WeightSpecs
// order: for int8/fp8 those of a quantize-at-load of every decoder Linear
// (QuantizedTensorSpecs); for bf16/f32 cfg's own (its quantization_config's Linears, if
// any, in their storage dtype with their scales; the rest in the compute dtype).
func PlanTensorSpecs(cfg *Config, format WeightFormat) []TensorSpec {
	if m := format.QuantMode(); m.Quantized() {
		return QuantizedTensorSpecs(cfg, m, format.ComputeDType())
	}
	return tensorSpecs(WeightSpecs(cfg), format.ComputeDType())
}

// TensorPlan is one tensor's placement.
type TensorPlan struct {
	Name  string    `json:"name"`
	Shape []int     `json:"shape"`
	Split SplitKind `json:"split"`
	// Axis is the split axis (-1 when replicated).
	Axis int `json:"axis"`
	// MeshAxes are the mesh axes Axis is split over, major first (nil when replicated).
	MeshAxes []string `json:"mesh_axes,omitempty"`
	// Shards is the number of distinct pieces along Axis (1 when replicated); with kv-head
	// replication it is less than the number of chips.
	Shards     int   `json:"shards"`
	ShardShape []int `json:"shard_shape"`
	// DType is the tensor's storage dtype (a quantized Linear's Int8 or Uint8, else the
	// compute dtype).
	DType string `json:"dtype,omitempty"`
	// Bytes is the whole tensor and BytesPerChip what each chip holds: elements × DType's
	// size.
	Bytes        int64 `json:"bytes"`
	BytesPerChip int64 `json:"bytes_per_chip"`
}

// Spec is the tensor's gomlx sharding spec over mesh (one entry per axis of the tensor).
func (t TensorPlan) Spec(mesh *distributed.DeviceMesh) *distributed.ShardingSpec {
	axes := make([]distributed.AxisSpec, len(t.Shape))
	if t.Axis >= 0 {
		axes[t.Axis] = distributed.AxisSpec(append([]string(nil), t.MeshAxes...))
	}
	return &distributed.ShardingSpec{Mesh: mesh, Axes: axes}
}

// ShardingPlan is the placement of every weight and of the KV pools across N chips.
type ShardingPlan struct {
	// TP is the number of chips (--tensor-parallel-size).
	TP     int          `json:"tp"`
	Format WeightFormat `json:"format"`
	// MeshAxisNames/MeshAxisSizes describe the device mesh (product = TP).
	MeshAxisNames []string `json:"mesh_axis_names"`
	MeshAxisSizes []int    `json:"mesh_axis_sizes"`
	// HeadsPerChip and KVHeadsPerChip are the attention heads each chip computes and the kv
	// heads it stores; KVReplicas is how many chips hold each kv head (1 unless replicated).
	HeadsPerChip   int `json:"heads_per_chip"`
	KVHeadsPerChip int `json:"kv_heads_per_chip"`
	KVReplicas     int `json:"kv_replicas"`
	// QReplicas is how many chips compute each q head (1 unless the heads are fewer than
	// the chips); each of them then takes 1/QReplicas of the head's o_proj columns.
	QReplicas int `json:"q_replicas,omitempty"`
	// Weights are in WeightSpecs order.
	Weights []TensorPlan `json:"weights"`
	// KVPool is the placement of every layer's K and V pool; its Shape has 0 pages and 0
	// page slots (they come from the KV layout, see PoolPlans) and its byte fields are for
	// one slot (one position of one layer's K, or V) in the compute dtype, or, for a
	// quantized cache (Config.KVCache), 1 byte per element plus the slot's scales.
	KVPool TensorPlan `json:"kv_pool"`
	// WeightBytes is the model's size and WeightBytesPerChip the sum of BytesPerChip.
	WeightBytes        int64 `json:"weight_bytes"`
	WeightBytesPerChip int64 `json:"weight_bytes_per_chip"`

	cfg Config
}

// NewShardingPlan places cfg's tensors across tp chips in format, or says which tensor a tp
// that does not divide would break.
func NewShardingPlan(cfg *Config, tp int, format WeightFormat) (*ShardingPlan, error) {
	if tp < 1 {
		return nil, fmt.Errorf("%w: tensor-parallel size must be >= 1, got %d", ErrSharding, tp)
	}
	if _, err := ParseWeightFormat(string(format)); err != nil {
		return nil, err
	}
	nh, kv := cfg.NumAttentionHeads, cfg.NumKeyValueHeads
	if nh%tp != 0 && tp%nh != 0 {
		return nil, fmt.Errorf("%w: tensor-parallel size %d neither divides nor is a multiple of the %d attention heads of model.layers.*.self_attn.q_proj.weight %v",
			ErrSharding, tp, nh, []int{nh * cfg.HeadDim, cfg.HiddenSize})
	}
	if kv%tp != 0 && tp%kv != 0 {
		return nil, fmt.Errorf("%w: tensor-parallel size %d neither divides nor is a multiple of the %d kv heads of model.layers.*.self_attn.k_proj.weight %v (and v_proj, and the KV pools)",
			ErrSharding, tp, kv, []int{kv * cfg.HeadDim, cfg.HiddenSize})
	}
	if nh > tp && (nh*cfg.HeadDim)%tp != 0 || nh <= tp && cfg.HeadDim%(tp/nh) != 0 {
		return nil, fmt.Errorf("%w: tensor-parallel size %d does not divide model.layers.*.self_attn.o_proj.weight %v: %d attention heads × head_dim %d over %d chips",
			ErrSharding, tp, []int{cfg.HiddenSize, nh * cfg.HeadDim}, nh, cfg.HeadDim, tp)
	}
	if cfg.IntermediateSize%tp != 0 {
		return nil, fmt.Errorf("%w: tensor-parallel size %d does not divide model.layers.*.mlp.gate_proj.weight %v: intermediate_size %d over %d chips",
			ErrSharding, tp, []int{cfg.IntermediateSize, cfg.HiddenSize}, cfg.IntermediateSize, tp)
	}
	if cfg.VocabSize%tp != 0 {
		return nil, fmt.Errorf("%w: tensor-parallel size %d does not divide model.embed_tokens.weight %v: vocab_size %d over %d chips",
			ErrSharding, tp, []int{cfg.VocabSize, cfg.HiddenSize}, cfg.VocabSize, tp)
	}
	p := &ShardingPlan{TP: tp, Format: format, cfg: *cfg, HeadsPerChip: max(nh/tp, 1), QReplicas: max(tp/nh, 1)}
	all := []string{MeshAxisTP}
	qAxes, kvAxes := all, all
	qShards, kvShards := tp, tp
	switch {
	case kv%tp == 0:
		p.MeshAxisNames, p.MeshAxisSizes = []string{MeshAxisTP}, []int{tp}
		p.KVHeadsPerChip, p.KVReplicas = kv/tp, 1
	case nh%tp == 0:
		p.MeshAxisNames, p.MeshAxisSizes = []string{MeshAxisTP, MeshAxisKVReplica}, []int{kv, tp / kv}
		all = []string{MeshAxisTP, MeshAxisKVReplica}
		qAxes, kvAxes = all, []string{MeshAxisTP}
		kvShards = kv
		p.KVHeadsPerChip, p.KVReplicas = 1, tp/kv
	default: // fewer q heads than chips: each q head on QReplicas chips too
		p.MeshAxisNames, p.MeshAxisSizes = []string{MeshAxisTP, MeshAxisQHead, MeshAxisKVReplica}, []int{kv, nh / kv, tp / nh}
		all = []string{MeshAxisTP, MeshAxisQHead, MeshAxisKVReplica}
		qAxes, kvAxes = []string{MeshAxisTP, MeshAxisQHead}, []string{MeshAxisTP}
		qShards, kvShards = nh, kv
		p.KVHeadsPerChip, p.KVReplicas = 1, tp/kv
	}
	if tp == 1 {
		all, qAxes, kvAxes = nil, nil, nil
	}
	placed := map[string]TensorPlan{}
	for _, s := range PlanTensorSpecs(cfg, format) {
		split, axis, axes, shards := Replicated, -1, []string(nil), 1
		switch {
		case s.ScaleOf != "":
			// A per-output-row scale [out, 1] follows its weight's rows: a column-parallel
			// weight's chip holds rows out/N and their scales; a row-parallel one holds every
			// row (split on in), so every chip needs the whole scale.
			w, ok := placed[s.ScaleOf]
			if !ok {
				return nil, fmt.Errorf("%w: scale %s %v comes before (or without) its weight %s", ErrSharding, s.Name, s.Shape, s.ScaleOf)
			}
			if w.Split == ColumnParallel {
				split, axis, axes, shards = ColumnParallel, 0, w.MeshAxes, w.Shards
			}
		case len(s.Shape) == 1: // norms
		case s.Name == "model.embed_tokens.weight":
			split, axis, axes, shards = VocabParallel, 0, all, tp
		case strings.HasSuffix(s.Name, "self_attn.k_proj.weight"), strings.HasSuffix(s.Name, "self_attn.v_proj.weight"):
			split, axis, axes, shards = ColumnParallel, 0, kvAxes, kvShards
		case strings.HasSuffix(s.Name, "self_attn.q_proj.weight"):
			split, axis, axes, shards = ColumnParallel, 0, qAxes, qShards
		case strings.HasSuffix(s.Name, "mlp.gate_proj.weight"), strings.HasSuffix(s.Name, "mlp.up_proj.weight"):
			split, axis, axes, shards = ColumnParallel, 0, all, tp
		case strings.HasSuffix(s.Name, "self_attn.o_proj.weight"), strings.HasSuffix(s.Name, "mlp.down_proj.weight"):
			split, axis, axes, shards = RowParallel, 1, all, tp
		default:
			return nil, fmt.Errorf("%w: no placement rule for tensor %s %v", ErrSharding, s.Name, s.Shape)
		}
		if tp == 1 {
			split, axis, axes, shards = Replicated, -1, nil, 1
		}
		t, err := newTensorPlan(s.Name, s.Shape, split, axis, axes, shards, s.DType)
		if err != nil {
			return nil, err
		}
		placed[s.Name] = t
		p.Weights = append(p.Weights, t)
		p.WeightBytes += t.Bytes
		p.WeightBytesPerChip += t.BytesPerChip
	}
	// The pool descriptor: one slot (position) of one layer's K (or V) pool.
	// With cfg.KVCache set, K/V take 1 byte per element and a compute-dtype scale per kv head.
	elem, scale := KVElementBytes(cfg, format.ComputeDType())
	headBytes := int64(cfg.HeadDim*elem + scale)
	pool := TensorPlan{Name: "model.layers.*.kv_pool", Shape: []int{0, 0, kv, cfg.HeadDim},
		Split: Replicated, Axis: -1, Shards: 1, ShardShape: []int{0, 0, p.KVHeadsPerChip, cfg.HeadDim},
		Bytes: int64(kv) * headBytes, BytesPerChip: int64(p.KVHeadsPerChip) * headBytes}
	if cfg.KVCache.Quantized() {
		pool.DType = kvStorageDType(cfg.KVCache).String()
	}
	if tp > 1 {
		pool.Split, pool.Axis, pool.MeshAxes, pool.Shards = KVHeadParallel, 2, kvAxes, kvShards
	}
	p.KVPool = pool
	return p, nil
}

// newTensorPlan fills shapes and bytes (elements of dtype); the shard count must divide the
// split axis.
func newTensorPlan(name string, shape []int, split SplitKind, axis int, meshAxes []string, shards int, dtype dtypes.DType) (TensorPlan, error) {
	t := TensorPlan{Name: name, Shape: append([]int(nil), shape...), Split: split, Axis: axis, DType: dtype.String(),
		MeshAxes: append([]string(nil), meshAxes...), Shards: shards, ShardShape: append([]int(nil), shape...)}
	if axis >= 0 {
		if shape[axis]%shards != 0 {
			return TensorPlan{}, fmt.Errorf("%w: tensor %s %v: axis %d (%d) does not split into %d shards",
				ErrSharding, name, shape, axis, shape[axis], shards)
		}
		t.ShardShape[axis] /= shards
	} else {
		t.MeshAxes = nil
	}
	t.Bytes = TensorSpec{DType: dtype, Shape: t.Shape}.Bytes()
	t.BytesPerChip = TensorSpec{DType: dtype, Shape: t.ShardShape}.Bytes()
	return t, nil
}

// Config is the model configuration the plan was made for (a plan decoded from JSON is
// data only: it has none, and PoolPlans needs one).
func (p *ShardingPlan) Config() *Config { return &p.cfg }

// Mesh is the gomlx device mesh of the plan.
func (p *ShardingPlan) Mesh() (*distributed.DeviceMesh, error) {
	m, err := distributed.NewDeviceMesh(p.MeshAxisSizes, p.MeshAxisNames)
	if err != nil {
		return nil, fmt.Errorf("%w: mesh %v %v: %w", ErrSharding, p.MeshAxisNames, p.MeshAxisSizes, err)
	}
	return m, nil
}

// ShardIndex is the piece of t that chip (device) d holds: its coordinates on t's mesh axes,
// major first, over a row-major mesh. 0 for a replicated tensor.
func (p *ShardingPlan) ShardIndex(t TensorPlan, d int) int {
	if t.Axis < 0 {
		return 0
	}
	coords := make(map[string]int, len(p.MeshAxisNames))
	rest := d
	for i := len(p.MeshAxisNames) - 1; i >= 0; i-- {
		coords[p.MeshAxisNames[i]] = rest % p.MeshAxisSizes[i]
		rest /= p.MeshAxisSizes[i]
	}
	idx := 0
	for _, a := range t.MeshAxes {
		for i, name := range p.MeshAxisNames {
			if name == a {
				idx = idx*p.MeshAxisSizes[i] + coords[a]
			}
		}
	}
	return idx
}

// PoolPlans places the KV pools of layout: for layer l, entries 2l (K) and 2l+1 (V), as
// KVPools lays them out. Bytes are in the plan's compute dtype.
func (p *ShardingPlan) PoolPlans(layout KVLayout) []TensorPlan {
	c := &p.cfg
	out := make([]TensorPlan, 0, 2*c.NumHiddenLayers)
	for l := 0; l < c.NumHiddenLayers; l++ {
		pages := layout.NumSlidingPages
		if c.IsGlobal(l) {
			pages = layout.NumGlobalPages
		}
		for _, kind := range []string{"k", "v"} {
			t := p.KVPool
			t.Name = fmt.Sprintf("model.layers.%d.kv_pool.%s", l, kind)
			t.Shape = []int{pages, layout.PageSize, c.NumKeyValueHeads, c.HeadDim}
			t.ShardShape = []int{pages, layout.PageSize, p.KVHeadsPerChip, c.HeadDim}
			slots := int64(pages) * int64(layout.PageSize)
			t.Bytes = slots * p.KVPool.Bytes
			t.BytesPerChip = slots * p.KVPool.BytesPerChip
			t.MeshAxes = append([]string(nil), p.KVPool.MeshAxes...)
			out = append(out, t)
		}
	}
	return out
}

// ShardBytes copies the piece idx (of t.Shards) of a row-major tensor of t.Shape whose
// elements are elemSize bytes (the source may be in any dtype: slicing happens before
// conversion) into dst, which must hold exactly the shard.
func (t TensorPlan) ShardBytes(dst, src []byte, elemSize, idx int) error {
	total := elemSize
	for _, d := range t.Shape {
		total *= d
	}
	if len(src) != total {
		return fmt.Errorf("%w: tensor %s %v: source has %d bytes, want %d", ErrSharding, t.Name, t.Shape, len(src), total)
	}
	if t.Axis < 0 {
		if len(dst) != total {
			return fmt.Errorf("%w: tensor %s: shard buffer has %d bytes, want %d", ErrSharding, t.Name, len(dst), total)
		}
		copy(dst, src)
		return nil
	}
	if idx < 0 || idx >= t.Shards {
		return fmt.Errorf("%w: tensor %s: shard %d outside 0..%d", ErrSharding, t.Name, idx, t.Shards-1)
	}
	outer := 1
	for _, d := range t.Shape[:t.Axis] {
		outer *= d
	}
	inner := elemSize
	for _, d := range t.Shape[t.Axis+1:] {
		inner *= d
	}
	chunk := t.ShardShape[t.Axis] * inner // bytes of one shard per outer index
	stride := t.Shape[t.Axis] * inner
	if len(dst) != outer*chunk {
		return fmt.Errorf("%w: tensor %s: shard buffer has %d bytes, want %d", ErrSharding, t.Name, len(dst), outer*chunk)
	}
	for o := 0; o < outer; o++ {
		copy(dst[o*chunk:(o+1)*chunk], src[o*stride+idx*chunk:o*stride+(idx+1)*chunk])
	}
	return nil
}
