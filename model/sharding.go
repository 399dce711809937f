package model

// Tensor parallelism, part 1: the sharding plan.
//
// A ShardingPlan says, for a Config and a tensor-parallel size N, which axis of every weight
// (WeightSpecs order) and of the KV pools is split across the N chips, over which axes of the
// device mesh, and how many bytes each chip holds. It is plain data, computed and tested
// without any device; tp.go turns it into gomlx sharding specs for the xla backend and
// memplan.go into a per-chip memory plan.
//
// The split is Megatron's:
//
//   - q/k/v and gate/up projections are column-parallel: the [out, in] weight is split on its
//     out axis (whole heads for q/k/v), so each chip computes its own heads and its slice of
//     the MLP's intermediate activations without communication;
//   - o and down projections are row-parallel: split on the in axis, each chip produces a
//     partial [T, H] sum and XLA inserts one all-reduce per projection (2 per layer);
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
// exactly the kv head its q heads use (q head j uses kv head j / (NH/KV)). Any other N is
// refused with an error naming the tensor and the sizes.
//
// Errors wrap ErrSharding. A plan is immutable once built and safe to share between
// goroutines.

import (
	"errors"
	"fmt"
	"strings"

	"github.com/gomlx/gomlx/pkg/core/distributed"
)

// ErrSharding is wrapped by every error about a tensor-parallel plan (a size that does not
// divide a tensor, an unknown weight format).
var ErrSharding = errors.New("invalid tensor-parallel plan")

// Mesh axis names of the tensor-parallel device mesh.
const (
	// MeshAxisTP is the mesh's first axis: all N chips when kv heads divide by N, else one
	// entry per kv head.
	MeshAxisTP = "tp"
	// MeshAxisKVReplica is the second axis of a mesh that replicates kv heads (N / kvHeads).
	MeshAxisKVReplica = "tp_rep"
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
	// FormatBF16: weights, KV and activations in bfloat16 (the serving default).
	FormatBF16 WeightFormat = "bf16"
	// FormatF32: everything in float32 (the pure-Go backend's default).
	FormatF32 WeightFormat = "f32"
	// FormatInt8 is a what-if for planning only: every 2-D weight stored as int8 with one
	// bfloat16 scale per output row (per-channel), norms in bfloat16; KV cache and
	// activations stay bfloat16. The model code does not run int8 weights.
	FormatInt8 WeightFormat = "int8"
)

// ParseWeightFormat accepts bf16/bfloat16, f32/float32 and int8.
func ParseWeightFormat(s string) (WeightFormat, error) {
	switch strings.ToLower(s) {
	case "bf16", "bfloat16":
		return FormatBF16, nil
	case "f32", "float32":
		return FormatF32, nil
	case "int8":
		return FormatInt8, nil
	}
	return "", fmt.Errorf("%w: weight format %q (want bf16, f32 or int8)", ErrSharding, s)
}

// ComputeBytes is the size of one element of activations and KV cache.
func (f WeightFormat) ComputeBytes() int {
	if f == FormatF32 {
		return 4
	}
	return 2
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
	// Bytes is the whole tensor and BytesPerChip what each chip holds, in the plan's format.
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
	// Weights are in WeightSpecs order.
	Weights []TensorPlan `json:"weights"`
	// KVPool is the placement of every layer's K and V pool; its Shape has 0 pages and 0
	// page slots (they come from the KV layout, see PoolPlans) and its byte fields are for
	// one slot (one position of one layer's K, or V) in the compute dtype.
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
	if nh%tp != 0 {
		return nil, fmt.Errorf("%w: tensor-parallel size %d does not divide model.layers.*.self_attn.q_proj.weight %v: %d attention heads over %d chips",
			ErrSharding, tp, []int{nh * cfg.HeadDim, cfg.HiddenSize}, nh, tp)
	}
	if kv%tp != 0 && tp%kv != 0 {
		return nil, fmt.Errorf("%w: tensor-parallel size %d neither divides nor is a multiple of the %d kv heads of model.layers.*.self_attn.k_proj.weight %v (and v_proj, and the KV pools)",
			ErrSharding, tp, kv, []int{kv * cfg.HeadDim, cfg.HiddenSize})
	}
	if cfg.IntermediateSize%tp != 0 {
		return nil, fmt.Errorf("%w: tensor-parallel size %d does not divide model.layers.*.mlp.gate_proj.weight %v: intermediate_size %d over %d chips",
			ErrSharding, tp, []int{cfg.IntermediateSize, cfg.HiddenSize}, cfg.IntermediateSize, tp)
	}
	if cfg.VocabSize%tp != 0 {
		return nil, fmt.Errorf("%w: tensor-parallel size %d does not divide model.embed_tokens.weight %v: vocab_size %d over %d chips",
			ErrSharding, tp, []int{cfg.VocabSize, cfg.HiddenSize}, cfg.VocabSize, tp)
	}
	p := &ShardingPlan{TP: tp, Format: format, cfg: *cfg, HeadsPerChip: nh / tp}
	all := []string{MeshAxisTP}
	kvAxes := []string{MeshAxisTP}
	kvShards := tp
	if kv%tp == 0 {
		p.MeshAxisNames, p.MeshAxisSizes = []string{MeshAxisTP}, []int{tp}
		p.KVHeadsPerChip, p.KVReplicas = kv/tp, 1
	} else {
		p.MeshAxisNames, p.MeshAxisSizes = []string{MeshAxisTP, MeshAxisKVReplica}, []int{kv, tp / kv}
		all = []string{MeshAxisTP, MeshAxisKVReplica}
		kvShards = kv
		p.KVHeadsPerChip, p.KVReplicas = 1, tp/kv
	}
	if tp == 1 {
		all, kvAxes = nil, nil
	}
	for _, s := range WeightSpecs(cfg) {
		split, axis, axes, shards := Replicated, -1, []string(nil), 1
		switch {
		case len(s.Shape) == 1: // norms
		case s.Name == "model.embed_tokens.weight":
			split, axis, axes, shards = VocabParallel, 0, all, tp
		case strings.HasSuffix(s.Name, "self_attn.k_proj.weight"), strings.HasSuffix(s.Name, "self_attn.v_proj.weight"):
			split, axis, axes, shards = ColumnParallel, 0, kvAxes, kvShards
		case strings.HasSuffix(s.Name, "self_attn.q_proj.weight"), strings.HasSuffix(s.Name, "mlp.gate_proj.weight"),
			strings.HasSuffix(s.Name, "mlp.up_proj.weight"):
			split, axis, axes, shards = ColumnParallel, 0, all, tp
		case strings.HasSuffix(s.Name, "self_attn.o_proj.weight"), strings.HasSuffix(s.Name, "mlp.down_proj.weight"):
			split, axis, axes, shards = RowParallel, 1, all, tp
		default:
			return nil, fmt.Errorf("%w: no placement rule for tensor %s %v", ErrSharding, s.Name, s.Shape)
		}
		if tp == 1 {
			split, axis, axes, shards = Replicated, -1, nil, 1
		}
		t, err := newTensorPlan(s.Name, s.Shape, split, axis, axes, shards, format)
		if err != nil {
			return nil, err
		}
		p.Weights = append(p.Weights, t)
		p.WeightBytes += t.Bytes
		p.WeightBytesPerChip += t.BytesPerChip
	}
	// The pool descriptor: one slot (position) of one layer's K (or V) pool.
	pool := TensorPlan{Name: "model.layers.*.kv_pool", Shape: []int{0, 0, kv, cfg.HeadDim},
		Split: Replicated, Axis: -1, Shards: 1, ShardShape: []int{0, 0, p.KVHeadsPerChip, cfg.HeadDim},
		Bytes:        int64(kv*cfg.HeadDim) * int64(format.ComputeBytes()),
		BytesPerChip: int64(p.KVHeadsPerChip*cfg.HeadDim) * int64(format.ComputeBytes())}
	if tp > 1 {
		pool.Split, pool.Axis, pool.MeshAxes, pool.Shards = KVHeadParallel, 2, kvAxes, kvShards
	}
	p.KVPool = pool
	return p, nil
}

// newTensorPlan fills shapes and bytes; the shard count must divide the split axis.
func newTensorPlan(name string, shape []int, split SplitKind, axis int, meshAxes []string, shards int, format WeightFormat) (TensorPlan, error) {
	t := TensorPlan{Name: name, Shape: append([]int(nil), shape...), Split: split, Axis: axis,
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
	t.Bytes = formatBytes(t.Shape, format)
	t.BytesPerChip = formatBytes(t.ShardShape, format)
	return t, nil
}

// formatBytes is the storage of a tensor (or shard) of shape in format. For int8, a 2-D
// weight carries one bf16 scale per output row (axis 0): a row-parallel shard keeps all of
// its tensor's rows and so all the scales, a column shard only its rows'.
func formatBytes(shape []int, format WeightFormat) int64 {
	n := int64(1)
	for _, d := range shape {
		n *= int64(d)
	}
	switch format {
	case FormatF32:
		return 4 * n
	case FormatInt8:
		if len(shape) != 2 {
			return 2 * n
		}
		return n + 2*int64(shape[0])
	}
	return 2 * n
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
