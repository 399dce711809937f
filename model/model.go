package model

import (
	"fmt"
	"slices"

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
	return &Model{Config: cfg, DType: dtype, Backend: backend, Weights: weights}, nil
}

// Close frees the weights.
func (m *Model) Close() { m.Weights.Finalize() }

// KVPools are the model's paged K/V pools on the device: for layer l, Tensors[2l] is K and
// Tensors[2l+1] is V, shaped [pages, pageSize, kvHeads, headDim] with the page count of
// the layer's group. A StepExec updates them in place.
type KVPools struct {
	Layout  KVLayout
	Tensors []*tensors.Tensor
}

// PoolBytes is the device memory of pools with layout for cfg in dtype.
func PoolBytes(cfg *Config, layout KVLayout, dtype dtypes.DType) int64 {
	perPage := int64(layout.PageSize*cfg.NumKeyValueHeads*cfg.HeadDim) * int64(dtype.Size()) * 2
	return perPage * (int64(cfg.NumGlobalLayers())*int64(layout.NumGlobalPages) + int64(cfg.NumSlidingLayers())*int64(layout.NumSlidingPages))
}

// NewKVPools allocates zeroed pools on the device.
func (m *Model) NewKVPools(layout KVLayout) (*KVPools, error) {
	if err := layout.Validate(); err != nil {
		return nil, err
	}
	c := &m.Config
	pools := &KVPools{Layout: layout, Tensors: make([]*tensors.Tensor, 2*c.NumHiddenLayers)}
	zeros := map[int]*graph.Exec{}
	for l := 0; l < c.NumHiddenLayers; l++ {
		pages := layout.NumSlidingPages
		if c.IsGlobal(l) {
			pages = layout.NumGlobalPages
		}
		shape := shapes.Make(m.DType, pages, layout.PageSize, c.NumKeyValueHeads, c.HeadDim)
		e, ok := zeros[pages]
		if !ok {
			var err error
			e, err = graph.NewExec(m.Backend, func(g *graph.Graph) *graph.Node { return graph.Zeros(g, shape) })
			if err != nil {
				return nil, fmt.Errorf("model: allocating KV pools: %w", err)
			}
			zeros[pages] = e
		}
		for kv := 0; kv < 2; kv++ {
			out, err := e.Exec()
			if err != nil {
				pools.Finalize()
				return nil, fmt.Errorf("model: allocating KV pools (%d bytes): %w", PoolBytes(c, layout, m.DType), err)
			}
			pools.Tensors[2*l+kv] = out[0]
		}
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

// StepExec runs the forward program (plus an optional PostFn) for batches of any bucket;
// each bucket compiles once and is cached.
type StepExec struct {
	m        *Model
	exec     *graph.Exec
	numExtra int
}

// MaxBuckets bounds the number of compiled programs one StepExec keeps.
const MaxBuckets = 256

// NewStepExec builds the executor. With post == nil the outputs are the logits.
func (m *Model) NewStepExec(numExtraInputs int, post PostFn) (*StepExec, error) {
	numW := len(m.Weights.Tensors)
	numP := 2 * m.Config.NumHiddenLayers
	cfg := m.Config
	fn := func(in []*graph.Node) []*graph.Node {
		weights := in[:numW]
		pools := in[numW : numW+numP]
		step := stepNodesFromSlice(in[numW+numP : numW+numP+numStepInputs])
		extra := in[numW+numP+numStepInputs:]
		logits, newPools := Forward(&cfg, weights, pools, step)
		outs := append([]*graph.Node{}, newPools...)
		if post == nil {
			return append(outs, logits)
		}
		return append(outs, post(logits, extra)...)
	}
	e, err := graph.NewExec(m.Backend, fn)
	if err != nil {
		return nil, fmt.Errorf("model: building the step program: %w", err)
	}
	e.SetMaxCache(MaxBuckets)
	return &StepExec{m: m, exec: e.WithName("gemma3_step"), numExtra: numExtraInputs}, nil
}

func (e *StepExec) args(pools *KVPools, b *Batch, donate bool, extra []any) ([]any, error) {
	if len(extra) != e.numExtra {
		return nil, fmt.Errorf("%w: %d extra inputs, the program takes %d", ErrInput, len(extra), e.numExtra)
	}
	if len(pools.Tensors) != 2*e.m.Config.NumHiddenLayers {
		return nil, fmt.Errorf("%w: %d pool tensors, want %d", ErrInput, len(pools.Tensors), 2*e.m.Config.NumHiddenLayers)
	}
	args := make([]any, 0, len(e.m.Weights.Tensors)+len(pools.Tensors)+numStepInputs+len(extra))
	for _, t := range e.m.Weights.Tensors {
		args = append(args, t)
	}
	for _, t := range pools.Tensors {
		if t == nil || !t.Ok() {
			return nil, fmt.Errorf("%w: KV pools were lost by an earlier failed step", ErrInput)
		}
		if donate {
			d, err := graph.DonateTensorBuffer(t, e.m.Backend, 0)
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
	outs, err := e.exec.Exec(args...)
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
