package model

import (
	"fmt"
	"slices"
	"sync"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/shapes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
)

// Model is a Gemma 3 text model with its weights on a backend's device 0.
type Model struct {
	Config  Config
	DType   dtypes.DType
	Backend backends.Backend
	Weights *Weights

	zeros *imageZeros // the image input of steps without images (set by New)
}

// imageZeros are zero image embeddings on the device, by rows.
type imageZeros struct {
	mu  sync.Mutex
	byM map[int]*tensors.Tensor
}

// New moves weights to the backend's device (freeing the host copies) and returns the model.
func New(backend backends.Backend, cfg Config, weights *Weights) (*Model, error) {
	if len(weights.Tensors) != len(WeightSpecs(&cfg)) {
		return nil, fmt.Errorf("%w: %d weight tensors, the config needs %d", ErrWeights, len(weights.Tensors), len(WeightSpecs(&cfg)))
	}
	dtype := weights.Tensors[0].DType()
	for i, t := range weights.Tensors {
		want := dtype
		if weights.Specs[i].DType != dtypes.InvalidDType { // a quantized weight
			want = weights.Specs[i].DType
		}
		if !slices.Equal(t.Shape().Dimensions, weights.Specs[i].Shape) || t.DType() != want {
			return nil, fmt.Errorf("%w: tensor %s is %s, want %v of %s", ErrWeights, weights.Specs[i].Name, t.Shape(), weights.Specs[i].Shape, want)
		}
		if err := t.MaterializeOnDevice(backend, false, 0); err != nil {
			return nil, fmt.Errorf("%w: moving %s to the device: %w", ErrWeights, weights.Specs[i].Name, err)
		}
		t.FinalizeLocal()
	}
	return &Model{Config: cfg, DType: dtype, Backend: backend, Weights: weights, zeros: &imageZeros{}}, nil
}

// Close frees the weights.
func (m *Model) Close() {
	m.Weights.Finalize()
	if z := m.zeros; z != nil {
		z.mu.Lock()
		for _, t := range z.byM {
			t.FinalizeAll()
		}
		z.byM = nil
		z.mu.Unlock()
	}
}

// imageEmbeds is the image-embedding input of b (a vision model's step): b.ImageEmbeds,
// checked, or zeros of [M, H] kept on the device, so a text step transfers nothing.
func (m *Model) imageEmbeds(b *Batch) (*tensors.Tensor, error) {
	M, H := b.Shape.M, m.Config.HiddenSize
	if M == 0 {
		return nil, fmt.Errorf("%w: the model takes image inputs, the batch shape has no image rows (M = 0)", ErrInput)
	}
	if t := b.ImageEmbeds; t != nil {
		if !slices.Equal(t.Shape().Dimensions, []int{M, H}) || t.DType() != m.DType {
			return nil, fmt.Errorf("%w: image embeddings are %s, the step wants [%d, %d] of %s", ErrInput, t.Shape(), M, H, m.DType)
		}
		return t, nil
	}
	z := m.zeros
	if z == nil {
		return nil, fmt.Errorf("%w: the model was not built by model.New: no zero image embeddings", ErrInput)
	}
	z.mu.Lock()
	defer z.mu.Unlock()
	if t, ok := z.byM[M]; ok {
		return t, nil
	}
	t := tensors.FromShape(shapes.Make(m.DType, M, H))
	if err := t.MaterializeOnDevice(m.Backend, false, 0); err != nil {
		return nil, fmt.Errorf("model: zero image embeddings: %w", err)
	}
	t.FinalizeLocal()
	if z.byM == nil {
		z.byM = map[int]*tensors.Tensor{}
	}
	z.byM[M] = t
	return t, nil
}

// KVPools are the model's paged K/V pools on the device: for layer l, Tensors[2l] is K and
// Tensors[2l+1] is V, shaped [pages, pageSize, kvHeads, headDim] with the page count of
// the layer's group; with Config.KVCache set they hold 1 byte per element and
// Tensors[2L+2l], Tensors[2L+2l+1] are their scales [pages, pageSize, kvHeads, 1]
// (kvquant.go). A StepExec updates them in place.
type KVPools struct {
	Layout  KVLayout
	Tensors []*tensors.Tensor
}

// PoolBytes is the device memory of pools with layout for cfg in compute dtype dtype: K and
// V in dtype, or, with cfg.KVCache set, 1 byte per element plus one scale in dtype per
// position and kv head.
func PoolBytes(cfg *Config, layout KVLayout, dtype dtypes.DType) int64 {
	elem, scale := KVElementBytes(cfg, dtype)
	perPage := int64(layout.PageSize*cfg.NumKeyValueHeads) * int64(cfg.HeadDim*elem+scale) * 2
	return perPage * (int64(cfg.NumGlobalLayers())*int64(layout.NumGlobalPages) + int64(cfg.NumSlidingLayers())*int64(layout.NumSlidingPages))
}

// NewKVPools allocates zeroed pools on the device.
func (m *Model) NewKVPools(layout KVLayout) (*KVPools, error) {
	if err := layout.Validate(); err != nil {
		return nil, err
	}
	c := &m.Config
	if err := checkKVCache(c); err != nil {
		return nil, err
	}
	L := c.NumHiddenLayers
	pools := &KVPools{Layout: layout, Tensors: make([]*tensors.Tensor, numPoolTensors(c))}
	zeros := map[string]*graph.Exec{}
	for i := range pools.Tensors {
		l := (i % (2 * L)) / 2
		pages := layout.NumSlidingPages
		if c.IsGlobal(l) {
			pages = layout.NumGlobalPages
		}
		shape := shapes.Make(m.DType, pages, layout.PageSize, c.NumKeyValueHeads, c.HeadDim)
		switch {
		case i >= 2*L: // a quantized cache's scales
			shape = shapes.Make(m.DType, pages, layout.PageSize, c.NumKeyValueHeads, 1)
		case c.KVCache.Quantized():
			shape = shapes.Make(kvStorageDType(c.KVCache), pages, layout.PageSize, c.NumKeyValueHeads, c.HeadDim)
		}
		e, ok := zeros[shape.String()]
		if !ok {
			var err error
			e, err = graph.NewExec(m.Backend, func(g *graph.Graph) *graph.Node { return graph.Zeros(g, shape) })
			if err != nil {
				pools.Finalize()
				return nil, fmt.Errorf("model: allocating KV pools: %w", err)
			}
			zeros[shape.String()] = e
		}
		out, err := e.Exec()
		if err != nil {
			pools.Finalize()
			return nil, fmt.Errorf("model: allocating KV pools (%d bytes): %w", PoolBytes(c, layout, m.DType), err)
		}
		pools.Tensors[i] = out[0]
	}
	for _, e := range zeros {
		e.Finalize()
	}
	return pools, nil
}

// Finalize frees the pools.
func (p *KVPools) Finalize() {
	for _, t := range p.Tensors {
		if t != nil {
			t.FinalizeAll()
		}
	}
}

// PostFn extends the forward program: it gets the float32 logits [N, V] and the step's
// extra inputs and returns extra outputs (e.g. sampled tokens). It runs inside the same
// compiled program, so only its outputs cross to the host.
type PostFn func(logits *graph.Node, extra []*graph.Node) []*graph.Node

// stepProgram wires a program's parameters (weights, pools, StepNodes fields, then tail
// inputs) through Forward; tail returns the outputs after the pools from the hidden states
// and the tail inputs.
func stepProgram(cfg *Config, numW int, in []*graph.Node, tail func(hidden *graph.Node, weights, rest []*graph.Node) []*graph.Node) []*graph.Node {
	numP := numPoolTensors(cfg)
	weights := in[:numW]
	pools := in[numW : numW+numP]
	numS := stepInputCount(cfg)
	step := stepNodesOf(cfg, in[numW+numP:numW+numP+numS])
	hidden, newPools := Forward(cfg, weights, pools, step)
	outs := append([]*graph.Node{}, newPools...)
	return append(outs, tail(hidden, weights, in[numW+numP+numS:])...)
}

// logitsTail computes logits at the rows of the first tail input (LogitsIndex) and hands
// them to post (or returns them).
func logitsTail(cfg *Config, post PostFn) func(hidden *graph.Node, weights, rest []*graph.Node) []*graph.Node {
	return func(hidden *graph.Node, weights, rest []*graph.Node) []*graph.Node {
		logits := Logits(cfg, weights[0], weights[len(weights)-1], GatherRows(hidden, rest[0]))
		if post == nil {
			return []*graph.Node{logits}
		}
		return post(logits, rest[1:])
	}
}

// StepExec runs the forward program with the logits computed inside it (plus an optional
// PostFn) for batches of any shape; each shape compiles once and is cached. It is the
// one-off path (ForwardLogits, tests); the engine runs ForwardExec and HeadExec instead.
type StepExec struct {
	m        *Model
	exec     *graph.Exec
	numExtra int
}

// MaxBuckets bounds the number of compiled programs one StepExec keeps.
const MaxBuckets = 256

// NewStepExec builds the executor. With post == nil the outputs are the logits.
func (m *Model) NewStepExec(numExtraInputs int, post PostFn) (*StepExec, error) {
	cfg := m.Config
	numW := len(m.Weights.Tensors)
	e, err := graph.NewExec(m.Backend, func(in []*graph.Node) []*graph.Node {
		return stepProgram(&cfg, numW, in, logitsTail(&cfg, post))
	})
	if err != nil {
		return nil, fmt.Errorf("model: building the step program: %w", err)
	}
	e.SetMaxCache(MaxBuckets)
	return &StepExec{m: m, exec: e.WithName("gemma3_step"), numExtra: numExtraInputs}, nil
}

// stepArgs lays out weights, pools (donated when donate) and b's step inputs.
func (m *Model) stepArgs(pools *KVPools, b *Batch, donate bool) ([]any, error) {
	if len(pools.Tensors) != numPoolTensors(&m.Config) {
		return nil, fmt.Errorf("%w: %d pool tensors, want %d (kv-cache-dtype %s)", ErrInput, len(pools.Tensors), numPoolTensors(&m.Config), KVCacheDTypeName(m.Config.KVCache))
	}
	args := make([]any, 0, len(m.Weights.Tensors)+len(pools.Tensors)+numStepInputs+8)
	for _, t := range m.Weights.Tensors {
		args = append(args, t)
	}
	for _, t := range pools.Tensors {
		if t == nil || !t.Ok() {
			return nil, fmt.Errorf("%w: KV pools were lost by an earlier failed step", ErrInput)
		}
		if donate {
			d, err := graph.DonateTensorBuffer(t, m.Backend, 0)
			if err != nil {
				return nil, fmt.Errorf("model: donating KV pool: %w", err)
			}
			args = append(args, d)
		} else {
			args = append(args, t)
		}
	}
	for _, t := range b.stepTensors() {
		args = append(args, t)
	}
	if m.Config.Vision {
		embeds, err := m.imageEmbeds(b)
		if err != nil {
			return nil, err
		}
		args = append(args, embeds)
	}
	return args, nil
}

func (e *StepExec) args(pools *KVPools, b *Batch, donate bool, extra []any) ([]any, error) {
	if len(extra) != e.numExtra {
		return nil, fmt.Errorf("%w: %d extra inputs, the program takes %d", ErrInput, len(extra), e.numExtra)
	}
	args, err := e.m.stepArgs(pools, b, donate)
	if err != nil {
		return nil, err
	}
	args = append(args, b.logitsIndexTensor())
	return append(args, extra...), nil
}

// Precompile compiles the program for b's bucket (with extra inputs of the shapes given)
// without running it.
func (e *StepExec) Precompile(pools *KVPools, b *Batch, extra ...any) error {
	args, err := e.args(pools, b, false, extra)
	if err != nil {
		return err
	}
	if err := e.exec.PreCompile(args...); err != nil {
		return fmt.Errorf("model: compiling bucket %+v: %w", b.Shape, err)
	}
	return nil
}

// Run executes one step: the pools are donated and replaced by their updated versions;
// the outputs after the pools are returned (the logits, or the PostFn's outputs).
func (e *StepExec) Run(pools *KVPools, b *Batch, extra ...any) ([]*tensors.Tensor, error) {
	args, err := e.args(pools, b, true, extra)
	if err != nil {
		return nil, err
	}
	return runDonated(e.exec, pools, b, args)
}

// runDonated executes a step program whose first outputs are the pools: on success the
// pools are replaced; on failure they are lost (they were donated) and set to nil, so the
// next step reports it instead of reading freed buffers.
func runDonated(exec *graph.Exec, pools *KVPools, b *Batch, args []any) ([]*tensors.Tensor, error) {
	outs, err := exec.Exec(args...)
	if err != nil {
		for i := range pools.Tensors {
			pools.Tensors[i] = nil
		}
		return nil, fmt.Errorf("model: running step %+v: %w", b.Shape, err)
	}
	n := len(pools.Tensors)
	copy(pools.Tensors, outs[:n])
	return outs[n:], nil
}

// Finalize frees the compiled programs.
func (e *StepExec) Finalize() { e.exec.Finalize() }

// ForwardExec is the engine's step program: the forward pass over a batch, writing K/V into
// the pools, with the hidden states [rows, H] left on the device as the one output after
// the pools (padded with zero rows to a fixed row count, so the sampler programs that read
// them have one shape whatever the step's). Each batch shape compiles once.
type ForwardExec struct {
	m    *Model
	exec *graph.Exec
	rows int
}

// NewForwardExec builds the step program whose hidden-state output has rows rows (at least
// every batch's T). maxPrograms bounds the shapes it may compile (the size of the closed set).
func (m *Model) NewForwardExec(rows, maxPrograms int) (*ForwardExec, error) {
	cfg := m.Config
	numW := len(m.Weights.Tensors)
	e, err := graph.NewExec(m.Backend, func(in []*graph.Node) []*graph.Node {
		return stepProgram(&cfg, numW, in, func(hidden *graph.Node, _, _ []*graph.Node) []*graph.Node {
			return []*graph.Node{PadRows(hidden, rows)}
		})
	})
	if err != nil {
		return nil, fmt.Errorf("model: building the step program: %w", err)
	}
	e.SetMaxCache(max(maxPrograms, 1))
	return &ForwardExec{m: m, exec: e.WithName("gemma3_forward"), rows: rows}, nil
}

// Precompile compiles the program for b's shape without running it.
func (e *ForwardExec) Precompile(pools *KVPools, b *Batch) error {
	if b.Shape.T > e.rows {
		return fmt.Errorf("%w: batch of %d tokens, the program keeps %d rows", ErrInput, b.Shape.T, e.rows)
	}
	args, err := e.m.stepArgs(pools, b, false)
	if err != nil {
		return err
	}
	if err := e.exec.PreCompile(args...); err != nil {
		return fmt.Errorf("model: compiling step %+v: %w", b.Shape, err)
	}
	return nil
}

// Run executes one step (pools donated and replaced) and returns the hidden states
// [rows, H] on the device; the caller frees them.
func (e *ForwardExec) Run(pools *KVPools, b *Batch) (*tensors.Tensor, error) {
	if b.Shape.T > e.rows {
		return nil, fmt.Errorf("%w: batch of %d tokens, the program keeps %d rows", ErrInput, b.Shape.T, e.rows)
	}
	args, err := e.m.stepArgs(pools, b, true)
	if err != nil {
		return nil, err
	}
	outs, err := runDonated(e.exec, pools, b, args)
	if err != nil {
		return nil, err
	}
	return outs[0], nil
}

// Finalize frees the compiled programs.
func (e *ForwardExec) Finalize() { e.exec.Finalize() }

// HeadFn builds a sampler-side program from the step's hidden states: logits(idx) gives
// the float32 logits [N, V] of rows idx [N] int32 (final norm and output projection
// included); extra are the program's own inputs.
type HeadFn func(logits func(idx *graph.Node) *graph.Node, extra []*graph.Node) []*graph.Node

// HeadExec runs a HeadFn program over hidden states from ForwardExec; its parameters are
// the embedding, the final norm, the hidden states and the extra inputs.
type HeadExec struct {
	m    *Model
	exec *graph.Exec
}

// NewHeadExec builds a head program; maxPrograms bounds the shapes it may compile.
func (m *Model) NewHeadExec(name string, fn HeadFn, maxPrograms int) (*HeadExec, error) {
	cfg := m.Config
	e, err := graph.NewExec(m.Backend, func(in []*graph.Node) []*graph.Node {
		embed, norm, hidden := in[0], in[1], in[2]
		return fn(func(idx *graph.Node) *graph.Node { return Logits(&cfg, embed, norm, GatherRows(hidden, idx)) }, in[3:])
	})
	if err != nil {
		return nil, fmt.Errorf("model: building the %s program: %w", name, err)
	}
	e.SetMaxCache(max(maxPrograms, 1))
	return &HeadExec{m: m, exec: e.WithName(name)}, nil
}

func (e *HeadExec) args(hidden *tensors.Tensor, extra []any) []any {
	w := e.m.Weights.Tensors
	return append([]any{w[0], w[len(w)-1], hidden}, extra...)
}

// Precompile compiles the program for these input shapes without running it.
func (e *HeadExec) Precompile(hidden *tensors.Tensor, extra ...any) error {
	if err := e.exec.PreCompile(e.args(hidden, extra)...); err != nil {
		return fmt.Errorf("model: compiling a head program: %w", err)
	}
	return nil
}

// Run executes the program; the outputs are the HeadFn's.
func (e *HeadExec) Run(hidden *tensors.Tensor, extra ...any) ([]*tensors.Tensor, error) {
	outs, err := e.exec.Exec(e.args(hidden, extra)...)
	if err != nil {
		return nil, fmt.Errorf("model: running a head program: %w", err)
	}
	return outs, nil
}

// Finalize frees the compiled programs.
func (e *HeadExec) Finalize() { e.exec.Finalize() }

// ZeroHidden is a zero hidden-state tensor [rows, H] on the device, to compile head
// programs on.
func (m *Model) ZeroHidden(rows int) (*tensors.Tensor, error) {
	t := tensors.FromShape(shapes.Make(m.DType, rows, m.Config.HiddenSize))
	if err := t.MaterializeOnDevice(m.Backend, false, 0); err != nil {
		return nil, fmt.Errorf("model: hidden states: %w", err)
	}
	t.FinalizeLocal()
	return t, nil
}
