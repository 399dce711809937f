package model

// Tensor parallelism, part 3: the sharded program.
//
// A ShardedModel holds each chip's piece of every weight (ShardingPlan) on that chip; its
// step program is model.Forward unchanged, built once as a single logical program with
// gomlx's AutoSharding strategy: every weight and KV pool parameter carries the sharding
// spec of its plan, step inputs and extra inputs are replicated, the pools come back with
// their input sharding (so donation updates them in place on every chip) and the other
// outputs replicated. XLA's Shardy partitioner propagates the shardings through the graph
// and inserts the collectives (the all-reduces after o_proj and down_proj, the vocabulary
// reductions of the sampler). Only the xla backend (PJRT) supports it; TP=1 keeps the plain
// Model/StepExec path, which is what the pure-Go backend runs.
//
// Lifecycle: LoadShardedModel (or NewShardedModel over host weights) → NewKVPools →
// NewStepExec → Precompile/Run per step → Finalize the exec, the pools, Close the model.
// Concurrency: like StepExec, a ShardedStepExec runs one step at a time (the pools are
// donated and replaced by Run); the model's weights are read-only and may be shared.

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

// ShardedModel is a Gemma 3 text model split across the chips of an xla backend.
type ShardedModel struct {
	Config  Config
	DType   dtypes.DType
	Backend backends.Backend
	Plan    *ShardingPlan
	Mesh    *distributed.DeviceMesh
	// Shards[d][i] is chip d's piece of weight i (WeightSpecs order), on device d.
	Shards [][]*tensors.Tensor
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

// CheckTPBackend says whether backend can run a plan of tp chips: it must be the xla
// backend (SPMD partitioning is XLA's) with at least tp devices.
func CheckTPBackend(backend backends.Backend, tp int) error {
	if backend == nil {
		return fmt.Errorf("%w: no backend", ErrBackend)
	}
	if name := backend.Name(); name != "xla" {
		return fmt.Errorf("%w: tensor parallelism (TP=%d) needs the xla backend (a PJRT plugin: xla:tpu, xla:cuda, xla:cpu), backend is %q",
			ErrBackend, tp, name)
	}
	if n := backend.NumDevices(); n < tp {
		return fmt.Errorf("%w: tensor parallelism needs %d devices, backend %s has %d", ErrBackend, tp, backend.Description(), n)
	}
	return nil
}

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
	mesh, err := plan.Mesh()
	if err != nil {
		return nil, err
	}
	m := &ShardedModel{Config: cfg, DType: dtype, Backend: backend, Plan: plan, Mesh: mesh, Shards: make([][]*tensors.Tensor, tp)}
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
		err = shard.MaterializeOnDevice(m.Backend, false, backends.DeviceNum(d))
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
	slog.Info("sharded weights", "tp", tp, "mesh", m.Mesh.String(), "bytes_per_chip", m.Plan.WeightBytesPerChip)
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
			if err := t.MaterializeOnDevice(m.Backend, false, backends.DeviceNum(d)); err != nil {
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

// stepOutputs wires the step program's parameters (weights, pools, StepNodes fields,
// LogitsIndex, extra inputs, in that order) through Forward, the logits and post, as
// StepExec does.
func stepOutputs(cfg *Config, numW int, post PostFn, in []*graph.Node) []*graph.Node {
	return stepProgram(cfg, numW, in, logitsTail(cfg, post))
}

// inputSpecs are the sharding specs of the step program's inputs: the weights', the pools',
// then replicated for the step and extra inputs (gomlx reuses the last spec for the tail).
func (p *ShardingPlan) inputSpecs(mesh *distributed.DeviceMesh) []*distributed.ShardingSpec {
	specs := make([]*distributed.ShardingSpec, 0, len(p.Weights)+2*p.cfg.NumHiddenLayers+1)
	for _, w := range p.Weights {
		specs = append(specs, w.Spec(mesh))
	}
	for range 2 * p.cfg.NumHiddenLayers {
		specs = append(specs, p.KVPool.Spec(mesh))
	}
	return append(specs, distributed.NewReplicatedShardingSpec(mesh))
}

// outputSpecs: the pools keep their input sharding (in-place donation on every chip), the
// logits or sampler outputs are replicated.
func (p *ShardingPlan) outputSpecs(mesh *distributed.DeviceMesh) []*distributed.ShardingSpec {
	specs := make([]*distributed.ShardingSpec, 0, 2*p.cfg.NumHiddenLayers+1)
	for range 2 * p.cfg.NumHiddenLayers {
		specs = append(specs, p.KVPool.Spec(mesh))
	}
	return append(specs, distributed.NewReplicatedShardingSpec(mesh))
}

// ShardedStepExec runs the sharded forward program (plus an optional PostFn) for batches
// of any bucket; each bucket compiles once and is cached.
type ShardedStepExec struct {
	m        *ShardedModel
	exec     *graph.Exec
	numExtra int
}

// NewStepExec builds the sharded executor. With post == nil the outputs are the logits.
// Extra inputs are replicated on every chip.
func (m *ShardedModel) NewStepExec(numExtraInputs int, post PostFn) (*ShardedStepExec, error) {
	cfg := m.Config
	numW := len(m.Plan.Weights)
	e, err := graph.NewExec(m.Backend, func(in []*graph.Node) []*graph.Node { return stepOutputs(&cfg, numW, post, in) })
	if err != nil {
		return nil, fmt.Errorf("model: building the sharded step program: %w", err)
	}
	e = e.AutoSharding(m.Mesh).
		WithInputShardingSpecs(m.Plan.inputSpecs(m.Mesh)...).
		WithOutputShardingSpecs(m.Plan.outputSpecs(m.Mesh)...)
	e.SetMaxCache(MaxBuckets)
	return &ShardedStepExec{m: m, exec: e.WithName(fmt.Sprintf("gemma3_step_tp%d", m.Plan.TP)), numExtra: numExtraInputs}, nil
}

// args lays out the arguments device-major, as gomlx's distributed Exec wants them: for
// each chip, its weight pieces, its pool pieces (donated when donate), the step inputs and
// the extra inputs (fresh host tensors per chip: a tensor lives on one device). The second
// result lists the per-call tensors to free after the call.
func (e *ShardedStepExec) args(pools *ShardedKVPools, b *Batch, donate bool, extra []any) ([]any, []*tensors.Tensor, error) {
	if len(extra) != e.numExtra {
		return nil, nil, fmt.Errorf("%w: %d extra inputs, the program takes %d", ErrInput, len(extra), e.numExtra)
	}
	return e.m.stepArgs(pools, b, donate, func(d int) ([]any, []*tensors.Tensor, error) {
		li := b.logitsIndexTensor()
		rest, temps, err := perChip(extra)
		return append([]any{li}, rest...), append(temps, li), err
	})
}

// perChip makes one chip's copy of extra inputs: a tensor lives on one device, so each
// chip gets a fresh clone (returned to be freed after the call); Go values pass as they are.
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

func finalizeAll(ts []*tensors.Tensor) {
	for _, t := range ts {
		if t != nil {
			t.FinalizeAll()
		}
	}
}

// Precompile compiles the program for b's bucket (with extra inputs of the shapes given)
// without running it.
func (e *ShardedStepExec) Precompile(pools *ShardedKVPools, b *Batch, extra ...any) error {
	args, temps, err := e.args(pools, b, false, extra)
	defer finalizeAll(temps)
	if err != nil {
		return err
	}
	if err := e.exec.PreCompile(args...); err != nil {
		return fmt.Errorf("model: compiling sharded bucket %+v: %w", b.Shape, err)
	}
	return nil
}

// Run executes one step on every chip: each chip's pools are donated and replaced by their
// updated versions; the outputs after the pools (replicated) are returned from chip 0.
func (e *ShardedStepExec) Run(pools *ShardedKVPools, b *Batch, extra ...any) ([]*tensors.Tensor, error) {
	args, temps, err := e.args(pools, b, true, extra)
	defer finalizeAll(temps)
	if err != nil {
		return nil, err
	}
	rest, err := runShardedDonated(e.exec, pools, b, args, e.m.Plan.TP)
	if err != nil {
		return nil, err
	}
	for d := 1; d < len(rest); d++ {
		finalizeAll(rest[d])
	}
	return rest[0], nil
}

// runShardedDonated executes a sharded step program whose first outputs on every chip are
// its pools: on success each chip's pools are replaced and the rest of each chip's outputs
// returned; on failure the pools are lost (donated) and set to nil.
func runShardedDonated(exec *graph.Exec, pools *ShardedKVPools, b *Batch, args []any, tp int) ([][]*tensors.Tensor, error) {
	outs, err := exec.Exec(args...)
	if err != nil {
		for _, dev := range pools.Shards {
			for i := range dev {
				dev[i] = nil
			}
		}
		return nil, fmt.Errorf("model: running sharded step %+v: %w", b.Shape, err)
	}
	perChip := len(outs) / tp
	rest := make([][]*tensors.Tensor, tp)
	for d := 0; d < tp; d++ {
		numP := len(pools.Shards[d])
		copy(pools.Shards[d], outs[d*perChip:d*perChip+numP])
		rest[d] = outs[d*perChip+numP : (d+1)*perChip]
	}
	return rest, nil
}

// Finalize frees the compiled programs.
func (e *ShardedStepExec) Finalize() { e.exec.Finalize() }

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
	exec, err := m.NewStepExec(0, nil)
	if err != nil {
		return nil, err
	}
	defer exec.Finalize()
	outs, err := exec.Run(pools, batch)
	if err != nil {
		return nil, err
	}
	return outs[0], nil
}

// buildShardedStep declares the sharded step program's parameters in g (which must have
// AutoSharding set with mesh) from shapes alone, for weights in dtype, pools of layout and
// a batch of shape s, and returns its outputs (pools, logits) and their sharding specs.
// Parameters are named after the tensors so the program reads well.
func buildShardedStep(g *graph.Graph, plan *ShardingPlan, mesh *distributed.DeviceMesh, dtype dtypes.DType, layout KVLayout, s BatchShape) ([]*graph.Node, []*distributed.ShardingSpec) {
	cfg := plan.Config()
	specs := plan.inputSpecs(mesh)
	var in []*graph.Node
	for i, w := range plan.Weights {
		in = append(in, graph.ShardedParameter(g, w.Name, shapes.Make(dtype, w.Shape...), specs[i]))
	}
	for i, p := range plan.PoolPlans(layout) {
		in = append(in, graph.ShardedParameter(g, p.Name, shapes.Make(dtype, p.Shape...), specs[len(plan.Weights)+i]))
	}
	rep := specs[len(specs)-1]
	for _, st := range []struct {
		name string
		dims []int
	}{
		{"step.tokens", []int{s.T}}, {"step.positions", []int{s.T}}, {"step.slots_global", []int{s.T}},
		{"step.slots_sliding", []int{s.T}}, {"step.token_cell", []int{s.T}}, {"step.grid_index", []int{s.B, s.Q}},
		{"step.global_page", []int{s.EG, PagesPerEntry}}, {"step.global_row", []int{s.EG}}, {"step.global_base", []int{s.EG}},
		{"step.sliding_page", []int{s.ES, PagesPerEntry}}, {"step.sliding_row", []int{s.ES}}, {"step.sliding_base", []int{s.ES}},
		{"step.logits_index", []int{s.N}},
	} {
		in = append(in, graph.ShardedParameter(g, st.name, shapes.Make(dtypes.Int32, st.dims...), rep))
	}
	outs := stepOutputs(cfg, len(plan.Weights), nil, in)
	return outs, shardedOutputSpecs(plan, mesh, len(outs))
}

// CompileShardedStep builds and compiles the sharded step program for one bucket from
// shapes alone (no weights or pools are allocated): the check that a plan's program
// partitions and compiles on backend, e.g. 27B at TP=8 on a v5e-8, before loading 54 GB.
func CompileShardedStep(backend backends.Backend, cfg *Config, tp int, dtype dtypes.DType, layout KVLayout, s BatchShape) (err error) {
	if err := CheckTPBackend(backend, tp); err != nil {
		return err
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
	mesh, err := plan.Mesh()
	if err != nil {
		return err
	}
	g := graph.NewGraph(backend, fmt.Sprintf("gemma3_step_tp%d", tp))
	if err := g.SetAutoSharding(mesh); err != nil {
		return fmt.Errorf("model: sharded step program: %w", err)
	}
	defer g.Finalize()
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("model: compiling the sharded step program (TP=%d, bucket %+v): %v", tp, s, r)
		}
	}()
	outs, specs := buildShardedStep(g, plan, mesh, dtype, layout, s)
	g.CompileWithSharding(outs, specs)
	return nil
}

// shardedOutputSpecs expands outputSpecs to n outputs (gomlx's Graph API wants one each).
func shardedOutputSpecs(plan *ShardingPlan, mesh *distributed.DeviceMesh, n int) []*distributed.ShardingSpec {
	specs := plan.outputSpecs(mesh)
	for len(specs) < n {
		specs = append(specs, specs[len(specs)-1])
	}
	return specs[:n]
}

// ShardedForwardExec is ForwardExec split across the chips: each chip's pools are donated
// and replaced, and the hidden states come back replicated, one copy per chip.
type ShardedForwardExec struct {
	m    *ShardedModel
	exec *graph.Exec
	rows int
}

// NewForwardExec builds the sharded step program (see Model.NewForwardExec).
func (m *ShardedModel) NewForwardExec(rows, maxPrograms int) (*ShardedForwardExec, error) {
	cfg := m.Config
	numW := len(m.Plan.Weights)
	e, err := graph.NewExec(m.Backend, func(in []*graph.Node) []*graph.Node {
		return stepProgram(&cfg, numW, in, func(hidden *graph.Node, _, _ []*graph.Node) []*graph.Node {
			return []*graph.Node{PadRows(hidden, rows)}
		})
	})
	if err != nil {
		return nil, fmt.Errorf("model: building the sharded step program: %w", err)
	}
	e = e.AutoSharding(m.Mesh).
		WithInputShardingSpecs(m.Plan.inputSpecs(m.Mesh)...).
		WithOutputShardingSpecs(m.Plan.outputSpecs(m.Mesh)...)
	e.SetMaxCache(max(maxPrograms, 1))
	return &ShardedForwardExec{m: m, exec: e.WithName(fmt.Sprintf("gemma3_forward_tp%d", m.Plan.TP)), rows: rows}, nil
}

// stepArgs lays out, chip by chip, the weight pieces, the pool pieces (donated when
// donate), the step inputs and, when tail is not nil, tail(chip)'s inputs; the second result
// lists the per-call tensors to free.
func (m *ShardedModel) stepArgs(pools *ShardedKVPools, b *Batch, donate bool, tail func(d int) ([]any, []*tensors.Tensor, error)) ([]any, []*tensors.Tensor, error) {
	if len(pools.Shards) != m.Plan.TP {
		return nil, nil, fmt.Errorf("%w: pools for %d chips, the model has %d", ErrInput, len(pools.Shards), m.Plan.TP)
	}
	var temps []*tensors.Tensor
	var args []any
	for d := 0; d < m.Plan.TP; d++ {
		for _, t := range m.Shards[d] {
			args = append(args, t)
		}
		if len(pools.Shards[d]) != 2*m.Config.NumHiddenLayers {
			return nil, temps, fmt.Errorf("%w: chip %d has %d pool tensors, want %d", ErrInput, d, len(pools.Shards[d]), 2*m.Config.NumHiddenLayers)
		}
		for _, t := range pools.Shards[d] {
			if t == nil || !t.Ok() {
				return nil, temps, fmt.Errorf("%w: KV pools were lost by an earlier failed step", ErrInput)
			}
			if donate {
				buf, err := graph.DonateTensorBuffer(t, m.Backend, backends.DeviceNum(d))
				if err != nil {
					return nil, temps, fmt.Errorf("model: donating KV pool on chip %d: %w", d, err)
				}
				args = append(args, buf)
			} else {
				args = append(args, t)
			}
		}
		step := b.stepTensors()
		temps = append(temps, step...)
		for _, t := range step {
			args = append(args, t)
		}
		if m.Config.Vision { // image embeddings replicated: the tower runs replicated too
			emb := b.ImageEmbeds
			if emb == nil {
				emb = tensors.FromShape(shapes.Make(m.DType, b.Shape.M, m.Config.HiddenSize))
				temps = append(temps, emb)
			}
			args = append(args, emb)
		}
		if tail != nil {
			more, tt, err := tail(d)
			temps = append(temps, tt...)
			if err != nil {
				return nil, temps, err
			}
			args = append(args, more...)
		}
	}
	return args, temps, nil
}

// Precompile compiles the program for b's shape without running it.
func (e *ShardedForwardExec) Precompile(pools *ShardedKVPools, b *Batch) error {
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

// Run executes one step on every chip and returns each chip's copy of the hidden states.
func (e *ShardedForwardExec) Run(pools *ShardedKVPools, b *Batch) ([]*tensors.Tensor, error) {
	args, temps, err := e.m.stepArgs(pools, b, true, nil)
	defer finalizeAll(temps)
	if err != nil {
		return nil, err
	}
	rest, err := runShardedDonated(e.exec, pools, b, args, e.m.Plan.TP)
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

// ShardedHeadExec is HeadExec over the chips: the embedding stays split as the plan says,
// the final norm, hidden states and extra inputs are replicated, the outputs replicated.
type ShardedHeadExec struct {
	m    *ShardedModel
	exec *graph.Exec
}

// NewHeadExec builds a sharded head program (see Model.NewHeadExec).
func (m *ShardedModel) NewHeadExec(name string, fn HeadFn, maxPrograms int) (*ShardedHeadExec, error) {
	cfg := m.Config
	e, err := graph.NewExec(m.Backend, func(in []*graph.Node) []*graph.Node {
		embed, norm, hidden := in[0], in[1], in[2]
		return fn(func(idx *graph.Node) *graph.Node { return Logits(&cfg, embed, norm, GatherRows(hidden, idx)) }, in[3:])
	})
	if err != nil {
		return nil, fmt.Errorf("model: building the sharded %s program: %w", name, err)
	}
	rep := distributed.NewReplicatedShardingSpec(m.Mesh)
	last := len(m.Plan.Weights) - 1
	e = e.AutoSharding(m.Mesh).
		WithInputShardingSpecs(m.Plan.Weights[0].Spec(m.Mesh), m.Plan.Weights[last].Spec(m.Mesh), rep).
		WithOutputShardingSpecs(rep)
	e.SetMaxCache(max(maxPrograms, 1))
	return &ShardedHeadExec{m: m, exec: e.WithName(fmt.Sprintf("%s_tp%d", name, m.Plan.TP))}, nil
}

func (e *ShardedHeadExec) args(hidden []*tensors.Tensor, extra []any) ([]any, []*tensors.Tensor, error) {
	m := e.m
	if len(hidden) != m.Plan.TP {
		return nil, nil, fmt.Errorf("%w: hidden states on %d chips, the model has %d", ErrInput, len(hidden), m.Plan.TP)
	}
	var temps []*tensors.Tensor
	var args []any
	last := len(m.Plan.Weights) - 1
	for d := 0; d < m.Plan.TP; d++ {
		args = append(args, m.Shards[d][0], m.Shards[d][last], hidden[d])
		rest, tt, err := perChip(extra)
		temps = append(temps, tt...)
		if err != nil {
			return nil, temps, err
		}
		args = append(args, rest...)
	}
	return args, temps, nil
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
	perChip := len(outs) / e.m.Plan.TP
	for d := 1; d < e.m.Plan.TP; d++ {
		finalizeAll(outs[d*perChip : (d+1)*perChip])
	}
	return outs[:perChip], nil
}

// Finalize frees the compiled programs.
func (e *ShardedHeadExec) Finalize() { e.exec.Finalize() }

// ZeroHidden is a zero hidden-state tensor [rows, H] per chip, to compile head programs on.
func (m *ShardedModel) ZeroHidden(rows int) ([]*tensors.Tensor, error) {
	out := make([]*tensors.Tensor, m.Plan.TP)
	for d := range out {
		t := tensors.FromShape(shapes.Make(m.DType, rows, m.Config.HiddenSize))
		if err := t.MaterializeOnDevice(m.Backend, false, backends.DeviceNum(d)); err != nil {
			finalizeAll(out)
			return nil, fmt.Errorf("model: hidden states on chip %d: %w", d, err)
		}
		t.FinalizeLocal()
		out[d] = t
	}
	return out, nil
}
