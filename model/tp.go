package model

// Tensor parallelism, part 3: the per-chip programs.
//
// A ShardedModel holds each chip's piece of every weight (ShardingPlan). Its programs are
// written for one chip (forwardChips, VocabShards head programs) and run over the
// collectives seam (mesh.go): on the xla backend as one SPMD program per chip over the
// backend's first TP devices, with explicit all-reduces; on any other backend (the pure-Go
// one) over a virtual mesh that computes every chip side by side in one graph on device 0.
// Each chip gets its number as an input (chip.index: it places the chip's vocabulary
// slice), its weight pieces and its KV pools; the step inputs and the head programs' extra
// inputs are the same on every chip. TP=1 keeps the plain Model path.
//
// Parameters of a step program: per chip [chip.index, weights…, pools…], then the step
// inputs and the tail's; per device on xla (SPMD: one chip each), all chips in a row on a
// virtual mesh. Outputs: per chip its pools, then the tail's outputs, once per device
// (SPMD) or once in all (virtual).
//
// Lifecycle: LoadShardedModel (or NewShardedModel over host weights) → NewKVPools →
// NewForwardExec / NewHeadExec → Precompile/Run per step → Finalize the execs, the pools,
// Close the model. Concurrency: an exec runs one step at a time (the pools are donated and
// replaced by Run); the model's weights are read-only and may be shared.

import (
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/pkg/core/distributed"
	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/shapes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/tpuserve/tpuserve/model/quant"
)

// ShardedModel is a Gemma 3 text model split across tensor-parallel chips: the devices of an
// xla backend, or a virtual mesh on device 0 of any other backend.
type ShardedModel struct {
	Config  Config
	DType   dtypes.DType
	Backend backends.Backend
	Plan    *ShardingPlan
	// Virtual: the chips run side by side on device 0 (a virtual mesh), not one per device.
	Virtual bool
	// Shards[d][i] is chip d's piece of weight i (WeightSpecs order), on device d (device 0
	// on a virtual mesh).
	Shards [][]*tensors.Tensor
	spmd   *distributed.DeviceMesh // the devices' mesh on xla
	zeros  shardedImageZeros       // the image input of steps without images (tp_images.go)
}

// device is the device chip d's tensors live on.
func (m *ShardedModel) device(d int) backends.DeviceNum {
	if m.Virtual {
		return 0
	}
	return backends.DeviceNum(d)
}

// collectives is the mesh the model's programs are built over.
func (m *ShardedModel) collectives() Collectives {
	if m.Virtual {
		return VirtualMesh(m.Plan.TP)
	}
	return spmdMesh(m.Plan.TP)
}

// instances is the number of program instances a call runs: one per device (SPMD) or one
// for all chips (virtual mesh).
func (m *ShardedModel) instances() int {
	if m.Virtual {
		return 1
	}
	return m.Plan.TP
}

// formatOf is the weight format of a compute dtype.
func formatOf(dtype dtypes.DType) (WeightFormat, error) {
	switch dtype {
	case dtypes.BFloat16:
		return FormatBF16, nil
	case dtypes.Float32:
		return FormatF32, nil
	}
	return "", fmt.Errorf("%w: compute dtype %s not supported (want float32 or bfloat16)", ErrConfig, dtype)
}

// CheckTPBackend says whether backend can run a plan of tp chips: the xla backend runs one
// SPMD program per device and needs at least tp devices; any other backend runs the chips
// side by side on a virtual mesh (slow: for tests and demos).
func CheckTPBackend(backend backends.Backend, tp int) error {
	if backend == nil {
		return fmt.Errorf("%w: no backend", ErrBackend)
	}
	if tp < 1 {
		return fmt.Errorf("%w: tensor-parallel size must be >= 1, got %d", ErrBackend, tp)
	}
	if backend.Name() != "xla" {
		return nil
	}
	if n := backend.NumDevices(); n < tp {
		return fmt.Errorf("%w: tensor parallelism (TP=%d) needs %d devices, backend %s has %d", ErrBackend, tp, tp, backend.Description(), n)
	}
	return nil
}

// virtualMeshOn reports whether backend runs tensor parallelism on a virtual mesh.
func virtualMeshOn(backend backends.Backend) bool { return backend.Name() != "xla" }

func newShardedModel(backend backends.Backend, cfg Config, tp int, dtype dtypes.DType) (*ShardedModel, error) {
	if err := CheckTPBackend(backend, tp); err != nil {
		return nil, err
	}
	if cfg.KVCache.Quantized() {
		return nil, fmt.Errorf("%w: Config.KVCache %s: the sharded pools hold K and V only (no quantized KV cache with TP=%d)", ErrConfig, cfg.KVCache, tp)
	}
	format, err := formatOf(dtype)
	if err != nil {
		return nil, err
	}
	plan, err := NewShardingPlan(&cfg, tp, format)
	if err != nil {
		return nil, err
	}
	m := &ShardedModel{Config: cfg, DType: dtype, Backend: backend, Plan: plan, Virtual: virtualMeshOn(backend), Shards: make([][]*tensors.Tensor, tp)}
	if !m.Virtual {
		if m.spmd, err = distributed.NewDeviceMesh([]int{tp}, []string{MeshAxisTP}); err != nil {
			return nil, fmt.Errorf("%w: SPMD mesh of %d devices: %w", ErrBackend, tp, err)
		}
	}
	for d := range m.Shards {
		m.Shards[d] = make([]*tensors.Tensor, len(plan.Weights))
	}
	return m, nil
}

// placeShard makes chip d's piece of weight i from src (row-major, srcType elements, the
// whole tensor) and moves it to device d. The host copy of the piece is freed.
func (m *ShardedModel) placeShard(i, d int, src []byte, srcType string) error {
	t := m.Plan.Weights[i]
	shard := tensors.FromShape(shapes.Make(m.DType, t.ShardShape...))
	var sliceErr error
	err := shard.MutableBytes(func(dst []byte) {
		piece := src
		srcSize := dtypeSize(srcType)
		if t.Axis >= 0 {
			n := len(dst) / m.DType.Size() * srcSize
			piece = make([]byte, n)
			if sliceErr = t.ShardBytes(piece, src, srcSize, m.Plan.ShardIndex(t, d)); sliceErr != nil {
				return
			}
		}
		convertInto(dst, m.DType, piece, srcType)
	})
	if err == nil {
		err = sliceErr
	}
	if err == nil {
		err = shard.MaterializeOnDevice(m.Backend, false, m.device(d))
	}
	if err != nil {
		shard.FinalizeAll()
		return fmt.Errorf("%w: tensor %s, chip %d: %w", ErrWeights, t.Name, d, err)
	}
	shard.FinalizeLocal()
	m.Shards[d][i] = shard
	return nil
}

// srcTypeOf is the safetensors dtype name of a host tensor's dtype.
func srcTypeOf(dtype dtypes.DType) string {
	if dtype == dtypes.BFloat16 {
		return "BF16"
	}
	return "F32"
}

// NewShardedModel splits host weights across tp chips of backend (one piece at a time, so
// the host holds the weights plus one piece) and frees the host weights.
func NewShardedModel(backend backends.Backend, cfg Config, tp int, weights *Weights) (*ShardedModel, error) {
	if len(weights.Tensors) != len(WeightSpecs(&cfg)) {
		return nil, fmt.Errorf("%w: %d weight tensors, the config needs %d", ErrWeights, len(weights.Tensors), len(WeightSpecs(&cfg)))
	}
	m, err := newShardedModel(backend, cfg, tp, weights.Tensors[0].DType())
	if err != nil {
		return nil, err
	}
	for i, t := range weights.Tensors {
		if !slices.Equal(t.Shape().Dimensions, weights.Specs[i].Shape) || t.DType() != m.DType {
			m.Close()
			return nil, fmt.Errorf("%w: tensor %s is %s, want %v of %s", ErrWeights, weights.Specs[i].Name, t.Shape(), weights.Specs[i].Shape, m.DType)
		}
		var placeErr error
		if err := t.ConstBytes(func(src []byte) {
			for d := 0; d < tp && placeErr == nil; d++ {
				placeErr = m.placeShard(i, d, src, srcTypeOf(m.DType))
			}
		}); err != nil || placeErr != nil {
			m.Close()
			if placeErr != nil {
				return nil, placeErr
			}
			return nil, fmt.Errorf("%w: tensor %s: %w", ErrWeights, weights.Specs[i].Name, err)
		}
		t.FinalizeAll()
	}
	return m, nil
}

// LoadShardedModel loads a checkpoint directory (or a preset's seeded random weights)
// straight onto tp chips: each tensor is read from the memory-mapped safetensors, sliced
// and converted per chip and moved to its device, so the host never holds more than one
// piece of one tensor (presets are generated whole on the host first).
func LoadShardedModel(backend backends.Backend, opts LoadOptions, tp int) (*ShardedModel, error) {
	if err := CheckTPBackend(backend, tp); err != nil {
		return nil, err
	}
	// NewShardingPlan places quantized weights and their scales, but this loader slices and
	// converts every tensor to the compute dtype and the sharded step has no quantized
	// Linear: refuse rather than silently serve the bf16 weights.
	if opts.Quantization != "" && opts.Quantization != "none" {
		return nil, fmt.Errorf("%w: quantization %q with tensor parallelism (TP=%d) is not supported yet", ErrConfig, opts.Quantization, tp)
	}
	if isDir(opts.Model) {
		if cfg, err := LoadConfig(opts.Model); err == nil && cfg.Quantization.Mode != quant.None {
			return nil, fmt.Errorf("%w: %s is a quantized checkpoint (quantization_config); tensor parallelism (TP=%d) does not place quantized weights yet", ErrConfig, opts.Model, tp)
		}
	}
	if slices.Contains(PresetNames(), opts.Model) && !isDir(opts.Model) {
		cfg, err := Preset(opts.Model)
		if err != nil {
			return nil, err
		}
		w, err := RandomWeights(&cfg, opts.DType, opts.Seed)
		if err != nil {
			return nil, err
		}
		return NewShardedModel(backend, cfg, tp, w)
	}
	progress := opts.Progress
	if progress == nil {
		progress = LogProgress
	}
	cfg, err := LoadConfig(opts.Model)
	if err != nil {
		return nil, err
	}
	ck, err := OpenCheckpoint(opts.Model)
	if err != nil {
		return nil, err
	}
	defer ck.Close()
	prefix, err := resolvePrefix(ck)
	if err != nil {
		return nil, err
	}
	m, err := newShardedModel(backend, cfg, tp, opts.DType)
	if err != nil {
		return nil, err
	}
	var total, done int64
	infos := make([]TensorInfo, len(m.Plan.Weights))
	for i, t := range m.Plan.Weights {
		name := prefix + strings.TrimPrefix(t.Name, "model.")
		info, ok := ck.Lookup(name)
		if !ok {
			m.Close()
			return nil, fmt.Errorf("%w: tensor %s is missing from %s", ErrWeights, name, ck.Dir)
		}
		if !slices.Equal(info.Shape, t.Shape) {
			m.Close()
			return nil, fmt.Errorf("%w: tensor %s in %s has shape %v, the config needs %v", ErrWeights, name, info.File, info.Shape, t.Shape)
		}
		switch info.DType {
		case "BF16", "F16", "F32":
		default:
			m.Close()
			return nil, fmt.Errorf("%w: tensor %s in %s has dtype %s (want BF16, F16 or F32)", ErrWeights, name, info.File, info.DType)
		}
		infos[i] = info
		total += info.End - info.Begin
	}
	start, last := time.Now(), time.Now()
	for i, t := range m.Plan.Weights {
		name := prefix + strings.TrimPrefix(t.Name, "model.")
		raw, err := ck.Bytes(name)
		if err != nil {
			m.Close()
			return nil, err
		}
		for d := 0; d < tp; d++ {
			if err := m.placeShard(i, d, raw, infos[i].DType); err != nil {
				m.Close()
				return nil, err
			}
		}
		done += int64(len(raw))
		if time.Since(last) > time.Second || i == len(m.Plan.Weights)-1 {
			last = time.Now()
			progress(LoadProgress{Bytes: done, TotalBytes: total, Elapsed: time.Since(start)})
		}
	}
	slog.Info("sharded weights", "tp", tp, "virtual_mesh", m.Virtual, "bytes_per_chip", m.Plan.WeightBytesPerChip)
	return m, nil
}

// isDir reports whether path is an existing directory (a directory named like a preset
// wins over the preset, as in Load).
func isDir(path string) bool {
	st, err := os.Stat(path)
	return err == nil && st.IsDir()
}

// Close frees every chip's weights.
func (m *ShardedModel) Close() {
	m.zeros.finalize()
	for _, dev := range m.Shards {
		for _, t := range dev {
			if t != nil {
				t.FinalizeAll()
			}
		}
	}
}

// ShardedKVPools are the KV pools of a ShardedModel: Shards[d] is chip d's pieces in
// KVPools order (layer l: 2l is K, 2l+1 is V), each [pages, pageSize, kvHeadsPerChip, headDim].
type ShardedKVPools struct {
	Layout KVLayout
	Shards [][]*tensors.Tensor
}

// NewKVPools allocates zeroed pools on every chip.
func (m *ShardedModel) NewKVPools(layout KVLayout) (*ShardedKVPools, error) {
	if err := layout.Validate(); err != nil {
		return nil, err
	}
	plans := m.Plan.PoolPlans(layout)
	pools := &ShardedKVPools{Layout: layout, Shards: make([][]*tensors.Tensor, m.Plan.TP)}
	for d := range pools.Shards {
		pools.Shards[d] = make([]*tensors.Tensor, len(plans))
		for i, p := range plans {
			t := tensors.FromShape(shapes.Make(m.DType, p.ShardShape...)) // zeroed
			if err := t.MaterializeOnDevice(m.Backend, false, m.device(d)); err != nil {
				t.FinalizeAll()
				pools.Finalize()
				return nil, fmt.Errorf("model: allocating KV pool %s on chip %d (%d bytes per chip in all): %w",
					p.Name, d, PoolBytes(&m.Config, layout, m.DType)/int64(m.Plan.TP/m.Plan.KVReplicas), err)
			}
			t.FinalizeLocal()
			pools.Shards[d][i] = t
		}
	}
	return pools, nil
}

// Finalize frees the pools.
func (p *ShardedKVPools) Finalize() {
	for _, dev := range p.Shards {
		for _, t := range dev {
			if t != nil {
				t.FinalizeAll()
			}
		}
	}
}

// chipInputs is the number of per-chip parameters of a step program: chip.index, the
// weights, the pools.
func (m *ShardedModel) chipInputs() int { return 1 + len(m.Plan.Weights) + numPoolTensors(&m.Config) }

// meshStep wires a step program's parameters (per local chip [chip.index, weights, pools],
// then the step inputs, then the tail's) through forwardChips; tail returns the outputs
// after the pools from each chip's hidden states and inputs and the tail inputs.
func meshStep(cfg *Config, mesh Collectives, numW int, in []*graph.Node, tail func(hidden []*graph.Node, chips []chipState, rest []*graph.Node) []*graph.Node) []*graph.Node {
	numP := numPoolTensors(cfg)
	per := 1 + numW + numP
	chips := make([]chipState, mesh.Local())
	for c := range chips {
		at := c * per
		chips[c] = chipState{index: in[at], weights: in[at+1 : at+1+numW], pools: in[at+1+numW : at+per]}
	}
	at := per * len(chips)
	numS := stepInputCount(cfg) // the image inputs (vision models) are replicated step inputs
	hidden, newPools := forwardChips(cfg, mesh, chips, stepNodesOf(cfg, in[at:at+numS]))
	var outs []*graph.Node
	for _, p := range newPools {
		outs = append(outs, p...)
	}
	return append(outs, tail(hidden, chips, in[at+numS:])...)
}

// vocabLogits are the logits of hidden-state rows idx [N] int32, split on the vocabulary
// as the chips hold the embedding (the tied output projection).
func vocabLogits(cfg *Config, mesh Collectives, chips []chipState, hidden []*graph.Node, idx *graph.Node) *VocabShards {
	v := &VocabShards{Mesh: mesh, Vocab: cfg.VocabSize}
	for c, ch := range chips {
		embed := ch.weights[0]
		v.Width = embed.Shape().Dimensions[0]
		v.Parts = append(v.Parts, Logits(cfg, embed, ch.weights[len(ch.weights)-1], GatherRows(hidden[c], idx)))
		index := ch.index
		if index == nil {
			index = graph.Scalar(idx.Graph(), dtypes.Int32, 0)
		}
		v.Index = append(v.Index, index)
		v.Offsets = append(v.Offsets, graph.MulScalar(index, v.Width))
	}
	return v
}

// newExec makes an exec of build over the model's mesh: SPMD over the devices on xla.
func (m *ShardedModel) newExec(name string, maxPrograms int, build func(mesh Collectives, in []*graph.Node) []*graph.Node) (*graph.Exec, error) {
	mesh := m.collectives()
	e, err := graph.NewExec(m.Backend, func(in []*graph.Node) []*graph.Node { return build(mesh, in) })
	if err != nil {
		return nil, fmt.Errorf("model: building the %s program: %w", name, err)
	}
	if !m.Virtual {
		e = e.SPMD(m.spmd)
	}
	e.SetMaxCache(max(maxPrograms, 1))
	return e.WithName(fmt.Sprintf("%s_tp%d", name, m.Plan.TP)), nil
}

// layoutArgs lays the arguments out: per device its chip's inputs then the shared ones
// (SPMD), or every chip's inputs then the shared ones once (virtual mesh). shared(d) must
// give fresh tensors per call on xla (a tensor lives on one device); temps collects the
// per-call tensors to free.
func (m *ShardedModel) layoutArgs(chip func(d int) ([]any, error), shared func(d int) ([]any, []*tensors.Tensor, error)) ([]any, []*tensors.Tensor, error) {
	var args []any
	var temps []*tensors.Tensor
	for d := 0; d < m.Plan.TP; d++ {
		c, err := chip(d)
		if err != nil {
			return nil, temps, err
		}
		args = append(args, c...)
		if !m.Virtual || d == m.Plan.TP-1 {
			s, tt, err := shared(d)
			temps = append(temps, tt...)
			if err != nil {
				return nil, temps, err
			}
			args = append(args, s...)
		}
	}
	return args, temps, nil
}

// stepArgs lays out a step program's arguments: chip.index, weight pieces, pool pieces
// (donated when donate), then the step inputs and, when tail is not nil, tail(d)'s.
func (m *ShardedModel) stepArgs(pools *ShardedKVPools, b *Batch, donate bool, tail func(d int) ([]any, []*tensors.Tensor, error)) ([]any, []*tensors.Tensor, error) {
	if len(pools.Shards) != m.Plan.TP {
		return nil, nil, fmt.Errorf("%w: pools for %d chips, the model has %d", ErrInput, len(pools.Shards), m.Plan.TP)
	}
	if m.Config.Vision {
		if err := m.checkImageEmbeds(b); err != nil {
			return nil, nil, err
		}
	}
	numP := numPoolTensors(&m.Config)
	chip := func(d int) ([]any, error) {
		args := []any{int32(d)}
		for _, t := range m.Shards[d] {
			args = append(args, t)
		}
		if len(pools.Shards[d]) != numP {
			return nil, fmt.Errorf("%w: chip %d has %d pool tensors, want %d", ErrInput, d, len(pools.Shards[d]), numP)
		}
		for _, t := range pools.Shards[d] {
			if t == nil || !t.Ok() {
				return nil, fmt.Errorf("%w: KV pools were lost by an earlier failed step", ErrInput)
			}
			if !donate {
				args = append(args, t)
				continue
			}
			buf, err := graph.DonateTensorBuffer(t, m.Backend, m.device(d))
			if err != nil {
				return nil, fmt.Errorf("model: donating KV pool on chip %d: %w", d, err)
			}
			args = append(args, buf)
		}
		return args, nil
	}
	shared := func(d int) ([]any, []*tensors.Tensor, error) {
		step := b.stepTensors()
		args := make([]any, 0, len(step)+4)
		for _, t := range step {
			args = append(args, t)
		}
		if m.Config.Vision { // image embeddings replicated: the tower is replicated too
			emb, owned, err := m.imageEmbedsFor(d, b)
			if err != nil {
				return nil, step, err
			}
			if owned {
				step = append(step, emb)
			}
			args = append(args, emb)
		}
		if tail == nil {
			return args, step, nil
		}
		more, tt, err := tail(d)
		return append(args, more...), append(step, tt...), err
	}
	return m.layoutArgs(chip, shared)
}

// runStep executes a step program: on success each chip's pools are replaced and the
// outputs after the pools of each program instance returned (one per device, or one on a
// virtual mesh); on failure the pools are lost (donated) and set to nil.
func (m *ShardedModel) runStep(exec *graph.Exec, pools *ShardedKVPools, b *Batch, args []any) ([][]*tensors.Tensor, error) {
	outs, err := exec.Exec(args...)
	if err != nil {
		for _, dev := range pools.Shards {
			for i := range dev {
				dev[i] = nil
			}
		}
		return nil, fmt.Errorf("model: running sharded step %+v: %w", b.Shape, err)
	}
	numP := numPoolTensors(&m.Config)
	n := m.instances()
	perInstance := len(outs) / n
	chipsPer := m.Plan.TP / n
	rest := make([][]*tensors.Tensor, n)
	for i := 0; i < n; i++ {
		o := outs[i*perInstance : (i+1)*perInstance]
		for c := 0; c < chipsPer; c++ {
			copy(pools.Shards[i*chipsPer+c], o[c*numP:(c+1)*numP])
		}
		rest[i] = o[chipsPer*numP:]
	}
	return rest, nil
}

// perChip makes one device's copy of extra inputs: a tensor lives on one device, so each
// gets a fresh clone (returned to be freed after the call); Go values pass as they are.
func perChip(extra []any) ([]any, []*tensors.Tensor, error) {
	var temps []*tensors.Tensor
	args := make([]any, 0, len(extra))
	for i, x := range extra {
		t, ok := x.(*tensors.Tensor)
		if !ok {
			args = append(args, x) // a Go value becomes a fresh tensor per chip
			continue
		}
		c, err := t.LocalClone()
		if err != nil {
			return nil, temps, fmt.Errorf("%w: extra input %d: %w", ErrInput, i, err)
		}
		temps = append(temps, c)
		args = append(args, c)
	}
	return args, temps, nil
}

// sharedExtra is shared(d) for extra inputs: as they are on a virtual mesh, cloned per
// device on xla.
func (m *ShardedModel) sharedExtra(extra []any) ([]any, []*tensors.Tensor, error) {
	if m.Virtual {
		return extra, nil, nil
	}
	return perChip(extra)
}

func finalizeAll(ts []*tensors.Tensor) {
	for _, t := range ts {
		if t != nil {
			t.FinalizeAll()
		}
	}
}

// ShardedLogitsExec runs the step program with the logits inside (the one-off path:
// ForwardLogits, tests): each chip's vocabulary slice of the logits comes back and the
// host joins them.
type ShardedLogitsExec struct {
	m    *ShardedModel
	exec *graph.Exec
}

// NewLogitsExec builds the step program that returns the logits of the batch's
// LogitsIndex rows.
func (m *ShardedModel) NewLogitsExec() (*ShardedLogitsExec, error) {
	cfg := m.Config
	numW := len(m.Plan.Weights)
	e, err := m.newExec("gemma3_step", MaxBuckets, func(mesh Collectives, in []*graph.Node) []*graph.Node {
		return meshStep(&cfg, mesh, numW, in, func(hidden []*graph.Node, chips []chipState, rest []*graph.Node) []*graph.Node {
			return vocabLogits(&cfg, mesh, chips, hidden, rest[0]).Parts
		})
	})
	if err != nil {
		return nil, err
	}
	return &ShardedLogitsExec{m: m, exec: e}, nil
}

// Run executes one step on every chip (pools donated and replaced) and returns the float32
// logits [N, V].
func (e *ShardedLogitsExec) Run(pools *ShardedKVPools, b *Batch) (*tensors.Tensor, error) {
	args, temps, err := e.m.stepArgs(pools, b, true, func(int) ([]any, []*tensors.Tensor, error) {
		li := b.logitsIndexTensor()
		return []any{li}, []*tensors.Tensor{li}, nil
	})
	defer finalizeAll(temps)
	if err != nil {
		return nil, err
	}
	rest, err := e.m.runStep(e.exec, pools, b, args)
	if err != nil {
		return nil, err
	}
	var parts []*tensors.Tensor
	for _, r := range rest {
		parts = append(parts, r...)
	}
	defer finalizeAll(parts)
	return joinVocab(parts, b.Shape.N, e.m.Config.VocabSize)
}

// joinVocab concatenates the chips' [N, V/TP] float32 logits on the host.
func joinVocab(parts []*tensors.Tensor, n, vocab int) (*tensors.Tensor, error) {
	width := vocab / len(parts)
	out := make([]float32, n*vocab)
	for c, p := range parts {
		data, err := tensors.CopyFlatData[float32](p)
		if err != nil {
			return nil, fmt.Errorf("model: logits of chip %d: %w", c, err)
		}
		if len(data) != n*width {
			return nil, fmt.Errorf("model: logits of chip %d hold %d values, want %d×%d", c, len(data), n, width)
		}
		for r := 0; r < n; r++ {
			copy(out[r*vocab+c*width:r*vocab+(c+1)*width], data[r*width:(r+1)*width])
		}
	}
	return tensors.FromFlatDataAndDimensions(out, n, vocab), nil
}

// Finalize frees the compiled programs.
func (e *ShardedLogitsExec) Finalize() { e.exec.Finalize() }

// ForwardLogits runs tokens as one sequence, one prefill chunk, on fresh pools and returns
// the float32 logits of every position, [T, V] (as Model.ForwardLogits).
func (m *ShardedModel) ForwardLogits(tokens []int32) (*tensors.Tensor, error) {
	layout, batch, err := onePrefill(&m.Config, tokens, nil, 0)
	if err != nil {
		return nil, err
	}
	pools, err := m.NewKVPools(layout)
	if err != nil {
		return nil, err
	}
	defer pools.Finalize()
	exec, err := m.NewLogitsExec()
	if err != nil {
		return nil, err
	}
	defer exec.Finalize()
	return exec.Run(pools, batch)
}

// ShardedForwardExec is ForwardExec split across the chips: each chip's pools are donated
// and replaced, and the hidden states come back replicated, one copy per device (one in
// all on a virtual mesh).
type ShardedForwardExec struct {
	m    *ShardedModel
	exec *graph.Exec
	rows int
}

// NewForwardExec builds the sharded step program (see Model.NewForwardExec).
func (m *ShardedModel) NewForwardExec(rows, maxPrograms int) (*ShardedForwardExec, error) {
	cfg := m.Config
	numW := len(m.Plan.Weights)
	e, err := m.newExec("gemma3_forward", maxPrograms, func(mesh Collectives, in []*graph.Node) []*graph.Node {
		return meshStep(&cfg, mesh, numW, in, func(hidden []*graph.Node, _ []chipState, _ []*graph.Node) []*graph.Node {
			return []*graph.Node{PadRows(hidden[0], rows)} // every chip's copy is the same
		})
	})
	if err != nil {
		return nil, err
	}
	return &ShardedForwardExec{m: m, exec: e, rows: rows}, nil
}

// Precompile compiles the program for b's shape without running it.
func (e *ShardedForwardExec) Precompile(pools *ShardedKVPools, b *Batch) error {
	if b.Shape.T > e.rows {
		return fmt.Errorf("%w: batch of %d tokens, the program keeps %d rows", ErrInput, b.Shape.T, e.rows)
	}
	args, temps, err := e.m.stepArgs(pools, b, false, nil)
	defer finalizeAll(temps)
	if err != nil {
		return err
	}
	if err := e.exec.PreCompile(args...); err != nil {
		return fmt.Errorf("model: compiling sharded step %+v: %w", b.Shape, err)
	}
	return nil
}

// Run executes one step on every chip and returns the hidden states, one copy per device
// (one on a virtual mesh).
func (e *ShardedForwardExec) Run(pools *ShardedKVPools, b *Batch) ([]*tensors.Tensor, error) {
	if b.Shape.T > e.rows {
		return nil, fmt.Errorf("%w: batch of %d tokens, the program keeps %d rows", ErrInput, b.Shape.T, e.rows)
	}
	args, temps, err := e.m.stepArgs(pools, b, true, nil)
	defer finalizeAll(temps)
	if err != nil {
		return nil, err
	}
	rest, err := e.m.runStep(e.exec, pools, b, args)
	if err != nil {
		return nil, err
	}
	hidden := make([]*tensors.Tensor, len(rest))
	for d, r := range rest {
		hidden[d] = r[0]
	}
	return hidden, nil
}

// Finalize frees the compiled programs.
func (e *ShardedForwardExec) Finalize() { e.exec.Finalize() }

// VocabHeadFn builds a sampler-side program from the step's hidden states: logits(idx)
// gives the float32 logits of rows idx [N] int32 (final norm and output projection
// included), split on the vocabulary across the chips; extra are the program's own inputs
// (the same on every chip). Its outputs must be replicated (reduced across the chips).
type VocabHeadFn func(logits func(idx *graph.Node) *VocabShards, extra []*graph.Node) []*graph.Node

// ShardedHeadExec runs a VocabHeadFn program on every chip: per chip its parameters are
// chip.index, its embedding rows, the final norm and the hidden states, then the extra
// inputs; the outputs come back from chip 0.
type ShardedHeadExec struct {
	m    *ShardedModel
	exec *graph.Exec
}

// NewHeadExec builds a sharded head program; maxPrograms bounds the shapes it may compile.
func (m *ShardedModel) NewHeadExec(name string, fn VocabHeadFn, maxPrograms int) (*ShardedHeadExec, error) {
	cfg := m.Config
	e, err := m.newExec(name, maxPrograms, func(mesh Collectives, in []*graph.Node) []*graph.Node {
		chips := make([]chipState, mesh.Local())
		hidden := make([]*graph.Node, len(chips))
		for c := range chips {
			chips[c] = chipState{index: in[4*c], weights: in[4*c+1 : 4*c+3]}
			hidden[c] = in[4*c+3]
		}
		return fn(func(idx *graph.Node) *VocabShards { return vocabLogits(&cfg, mesh, chips, hidden, idx) }, in[4*len(chips):])
	})
	if err != nil {
		return nil, err
	}
	return &ShardedHeadExec{m: m, exec: e}, nil
}

func (e *ShardedHeadExec) args(hidden []*tensors.Tensor, extra []any) ([]any, []*tensors.Tensor, error) {
	m := e.m
	if len(hidden) != m.instances() {
		return nil, nil, fmt.Errorf("%w: hidden states of %d program instances, the model runs %d", ErrInput, len(hidden), m.instances())
	}
	last := len(m.Plan.Weights) - 1
	return m.layoutArgs(func(d int) ([]any, error) {
		return []any{int32(d), m.Shards[d][0], m.Shards[d][last], hidden[min(d, len(hidden)-1)]}, nil
	}, func(int) ([]any, []*tensors.Tensor, error) { return m.sharedExtra(extra) })
}

// Precompile compiles the program for these input shapes without running it.
func (e *ShardedHeadExec) Precompile(hidden []*tensors.Tensor, extra ...any) error {
	args, temps, err := e.args(hidden, extra)
	defer finalizeAll(temps)
	if err != nil {
		return err
	}
	if err := e.exec.PreCompile(args...); err != nil {
		return fmt.Errorf("model: compiling a sharded head program: %w", err)
	}
	return nil
}

// Run executes the program and returns chip 0's (replicated) outputs.
func (e *ShardedHeadExec) Run(hidden []*tensors.Tensor, extra ...any) ([]*tensors.Tensor, error) {
	args, temps, err := e.args(hidden, extra)
	defer finalizeAll(temps)
	if err != nil {
		return nil, err
	}
	outs, err := e.exec.Exec(args...)
	if err != nil {
		return nil, fmt.Errorf("model: running a sharded head program: %w", err)
	}
	n := e.m.instances()
	per := len(outs) / n
	for d := 1; d < n; d++ {
		finalizeAll(outs[d*per : (d+1)*per])
	}
	return outs[:per], nil
}

// Finalize frees the compiled programs.
func (e *ShardedHeadExec) Finalize() { e.exec.Finalize() }

// ZeroHidden is a zero hidden-state tensor [rows, H] per program instance, to compile head
// programs on.
func (m *ShardedModel) ZeroHidden(rows int) ([]*tensors.Tensor, error) {
	out := make([]*tensors.Tensor, m.instances())
	for d := range out {
		t := tensors.FromShape(shapes.Make(m.DType, rows, m.Config.HiddenSize))
		if err := t.MaterializeOnDevice(m.Backend, false, m.device(d)); err != nil {
			finalizeAll(out)
			return nil, fmt.Errorf("model: hidden states on chip %d: %w", d, err)
		}
		t.FinalizeLocal()
		out[d] = t
	}
	return out, nil
}

// spmdStepParams declares one chip's step-program parameters from shapes alone (plan
// shard shapes in dtype, pools of layout, a batch of shape s), named after the tensors.
func spmdStepParams(g *graph.Graph, plan *ShardingPlan, dtype dtypes.DType, layout KVLayout, s BatchShape) []*graph.Node {
	in := []*graph.Node{graph.Parameter(g, "chip.index", shapes.Make(dtypes.Int32))}
	for _, w := range plan.Weights {
		in = append(in, graph.Parameter(g, w.Name, shapes.Make(dtype, w.ShardShape...)))
	}
	for _, p := range plan.PoolPlans(layout) {
		in = append(in, graph.Parameter(g, p.Name, shapes.Make(dtype, p.ShardShape...)))
	}
	for _, st := range []struct {
		name string
		dims []int
	}{
		{"step.tokens", []int{s.T}}, {"step.positions", []int{s.T}}, {"step.slots_global", []int{s.T}},
		{"step.slots_sliding", []int{s.T}}, {"step.token_cell", []int{s.T}}, {"step.grid_index", []int{s.B, s.Q}},
		{"step.global_page", []int{s.EG, PagesPerEntry}}, {"step.global_row", []int{s.EG}}, {"step.global_base", []int{s.EG}},
		{"step.sliding_page", []int{s.ES, PagesPerEntry}}, {"step.sliding_row", []int{s.ES}}, {"step.sliding_base", []int{s.ES}},
	} {
		in = append(in, graph.Parameter(g, st.name, shapes.Make(dtypes.Int32, st.dims...)))
	}
	if plan.Config().Vision { // replicated, as stepArgs passes them
		in = append(in, graph.Parameter(g, "step.image_row", shapes.Make(dtypes.Int32, s.T)),
			graph.Parameter(g, "step.image_span", shapes.Make(dtypes.Int32, s.T, 2*ImageRanges)),
			graph.Parameter(g, "step.image_embeds", shapes.Make(dtype, s.M, plan.Config().HiddenSize)))
	}
	return in
}

// buildSPMDForward writes one chip's forward program (the engine's step program: pools,
// then the hidden states padded to rows) into g, which must have SPMD set over plan.TP
// devices, and returns its outputs.
func buildSPMDForward(g *graph.Graph, plan *ShardingPlan, dtype dtypes.DType, layout KVLayout, s BatchShape, rows int) []*graph.Node {
	in := spmdStepParams(g, plan, dtype, layout, s)
	return meshStep(plan.Config(), spmdMesh(plan.TP), len(plan.Weights), in, func(hidden []*graph.Node, _ []chipState, _ []*graph.Node) []*graph.Node {
		return []*graph.Node{PadRows(hidden[0], rows)}
	})
}

// CompileShardedStep builds and compiles one chip's SPMD step program for one bucket from
// shapes alone (no weights or pools are allocated): the check that a plan's program
// compiles on backend, e.g. 27B at TP=8 on a v5e-8, before loading 54 GB.
func CompileShardedStep(backend backends.Backend, cfg *Config, tp int, dtype dtypes.DType, layout KVLayout, s BatchShape) (err error) {
	if err := CheckTPBackend(backend, tp); err != nil {
		return err
	}
	if virtualMeshOn(backend) {
		return fmt.Errorf("%w: compiling the SPMD step program needs the xla backend, backend is %q", ErrBackend, backend.Name())
	}
	if cfg.KVCache.Quantized() {
		return fmt.Errorf("%w: Config.KVCache %s: the sharded pools hold K and V only (no quantized KV cache with TP=%d)", ErrConfig, cfg.KVCache, tp)
	}
	format, err := formatOf(dtype)
	if err != nil {
		return err
	}
	plan, err := NewShardingPlan(cfg, tp, format)
	if err != nil {
		return err
	}
	mesh, err := distributed.NewDeviceMesh([]int{tp}, []string{MeshAxisTP})
	if err != nil {
		return fmt.Errorf("%w: SPMD mesh of %d devices: %w", ErrBackend, tp, err)
	}
	g := graph.NewGraph(backend, fmt.Sprintf("gemma3_forward_tp%d", tp))
	if err := g.SetSPMD(mesh); err != nil {
		return fmt.Errorf("model: sharded step program: %w", err)
	}
	defer g.Finalize()
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("model: compiling the sharded step program (TP=%d, bucket %+v): %v", tp, s, r)
		}
	}()
	g.Compile(buildSPMDForward(g, plan, dtype, layout, s, s.T)...)
	return nil
}

// BuildSPMDHead writes one chip's head program into g (SPMD over plan.TP devices) from
// shapes alone: it declares chip.index, the chip's embedding rows, the final norm and the
// hidden states [rows, H] in dtype, then extra(g)'s parameters, and returns fn's outputs
// (to check a sampler program's collectives without a device).
func BuildSPMDHead(g *graph.Graph, plan *ShardingPlan, dtype dtypes.DType, rows int, fn VocabHeadFn, extra func(g *graph.Graph) []*graph.Node) []*graph.Node {
	cfg := plan.Config()
	embed, norm := plan.Weights[0], plan.Weights[len(plan.Weights)-1]
	chip := chipState{
		index: graph.Parameter(g, "chip.index", shapes.Make(dtypes.Int32)),
		weights: []*graph.Node{
			graph.Parameter(g, embed.Name, shapes.Make(dtype, embed.ShardShape...)),
			graph.Parameter(g, norm.Name, shapes.Make(dtype, norm.ShardShape...)),
		},
	}
	hidden := graph.Parameter(g, "hidden", shapes.Make(dtype, rows, cfg.HiddenSize))
	mesh := spmdMesh(plan.TP)
	return fn(func(idx *graph.Node) *VocabShards {
		return vocabLogits(cfg, mesh, []chipState{chip}, []*graph.Node{hidden}, idx)
	}, extra(g))
}
