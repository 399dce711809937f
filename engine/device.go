package engine

import (
	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/tpuserve/tpuserve/model"
)

// deviceModel is the model on its device(s) with its KV pools: the plain single-device
// model, or the tensor-parallel one. The runner drives either the same way: one step
// program per step (forward pass, K/V written in place, hidden states left on the device),
// then the sampler programs that read those hidden states.
type deviceModel interface {
	config() *model.Config
	dtype() dtypes.DType
	// kvHeadsPerDevice is how many kv heads each device's pools hold.
	kvHeadsPerDevice() int
	allocPools(layout model.KVLayout) error
	freePools()
	newForward(rows, maxPrograms int) (forwardProgram, error)
	newHead(name string, fn model.HeadFn, maxPrograms int) (headProgram, error)
	// zeroHidden is a hidden-state value of rows rows to compile head programs on.
	zeroHidden(rows int) (hiddenStates, error)
}

// hiddenStates are a step's hidden states on the device(s); the runner frees them.
type hiddenStates interface{ Finalize() }

// forwardProgram is the step program bound to the device's current pools.
type forwardProgram interface {
	precompile(b *model.Batch) error
	run(b *model.Batch) (hiddenStates, error)
	finalize()
}

// headProgram is a sampler program over a step's hidden states.
type headProgram interface {
	precompile(h hiddenStates, extra []any) error
	run(h hiddenStates, extra []any) ([]*tensors.Tensor, error)
	finalize()
}

// plainDevice is a model.Model on one device.
type plainDevice struct {
	m     *model.Model
	pools *model.KVPools
}

func newPlainDevice(m *model.Model) *plainDevice { return &plainDevice{m: m} }

func (d *plainDevice) config() *model.Config { return &d.m.Config }
func (d *plainDevice) dtype() dtypes.DType   { return d.m.DType }
func (d *plainDevice) kvHeadsPerDevice() int { return d.m.Config.NumKeyValueHeads }
func (d *plainDevice) allocPools(l model.KVLayout) error {
	// Free first: the memory plan sizes the pools to the byte, so both cannot coexist.
	d.freePools()
	p, err := d.m.NewKVPools(l)
	if err != nil {
		return err
	}
	d.pools = p
	return nil
}

func (d *plainDevice) freePools() {
	if d.pools != nil {
		d.pools.Finalize()
		d.pools = nil
	}
}

func (d *plainDevice) newForward(rows, maxPrograms int) (forwardProgram, error) {
	e, err := d.m.NewForwardExec(rows, maxPrograms)
	if err != nil {
		return nil, err
	}
	return &plainForward{d: d, e: e}, nil
}

func (d *plainDevice) newHead(name string, fn model.HeadFn, maxPrograms int) (headProgram, error) {
	e, err := d.m.NewHeadExec(name, fn, maxPrograms)
	if err != nil {
		return nil, err
	}
	return plainHead{e}, nil
}

func (d *plainDevice) zeroHidden(rows int) (hiddenStates, error) {
	t, err := d.m.ZeroHidden(rows)
	if err != nil {
		return nil, err
	}
	return plainHidden{t}, nil
}

type plainHidden struct{ t *tensors.Tensor }

func (h plainHidden) Finalize() { h.t.FinalizeAll() }

type plainForward struct {
	d *plainDevice
	e *model.ForwardExec
}

func (p *plainForward) precompile(b *model.Batch) error { return p.e.Precompile(p.d.pools, b) }
func (p *plainForward) run(b *model.Batch) (hiddenStates, error) {
	if p.d.pools == nil {
		return nil, errPoolsLost
	}
	t, err := p.e.Run(p.d.pools, b)
	if err != nil {
		return nil, err
	}
	return plainHidden{t}, nil
}
func (p *plainForward) finalize() { p.e.Finalize() }

type plainHead struct{ e *model.HeadExec }

func (p plainHead) precompile(h hiddenStates, extra []any) error {
	return p.e.Precompile(h.(plainHidden).t, extra...)
}
func (p plainHead) run(h hiddenStates, extra []any) ([]*tensors.Tensor, error) {
	return p.e.Run(h.(plainHidden).t, extra...)
}
func (p plainHead) finalize() { p.e.Finalize() }

// shardedDevice is a model.ShardedModel split over the devices of an xla backend.
type shardedDevice struct {
	m     *model.ShardedModel
	pools *model.ShardedKVPools
}

func newShardedDevice(m *model.ShardedModel) *shardedDevice { return &shardedDevice{m: m} }

func (d *shardedDevice) config() *model.Config { return &d.m.Config }
func (d *shardedDevice) dtype() dtypes.DType   { return d.m.DType }
func (d *shardedDevice) kvHeadsPerDevice() int { return d.m.Plan.KVHeadsPerChip }
func (d *shardedDevice) allocPools(l model.KVLayout) error {
	d.freePools()
	p, err := d.m.NewKVPools(l)
	if err != nil {
		return err
	}
	d.pools = p
	return nil
}

func (d *shardedDevice) freePools() {
	if d.pools != nil {
		d.pools.Finalize()
		d.pools = nil
	}
}

func (d *shardedDevice) newForward(rows, maxPrograms int) (forwardProgram, error) {
	e, err := d.m.NewForwardExec(rows, maxPrograms)
	if err != nil {
		return nil, err
	}
	return &shardedForward{d: d, e: e}, nil
}

func (d *shardedDevice) newHead(name string, fn model.HeadFn, maxPrograms int) (headProgram, error) {
	e, err := d.m.NewHeadExec(name, fn, maxPrograms)
	if err != nil {
		return nil, err
	}
	return shardedHead{e}, nil
}

func (d *shardedDevice) zeroHidden(rows int) (hiddenStates, error) {
	t, err := d.m.ZeroHidden(rows)
	if err != nil {
		return nil, err
	}
	return shardedHidden(t), nil
}

type shardedHidden []*tensors.Tensor

func (h shardedHidden) Finalize() {
	for _, t := range h {
		t.FinalizeAll()
	}
}

type shardedForward struct {
	d *shardedDevice
	e *model.ShardedForwardExec
}

func (p *shardedForward) precompile(b *model.Batch) error { return p.e.Precompile(p.d.pools, b) }
func (p *shardedForward) run(b *model.Batch) (hiddenStates, error) {
	if p.d.pools == nil {
		return nil, errPoolsLost
	}
	t, err := p.e.Run(p.d.pools, b)
	if err != nil {
		return nil, err
	}
	return shardedHidden(t), nil
}
func (p *shardedForward) finalize() { p.e.Finalize() }

type shardedHead struct{ e *model.ShardedHeadExec }

func (p shardedHead) precompile(h hiddenStates, extra []any) error {
	return p.e.Precompile(h.(shardedHidden), extra...)
}
func (p shardedHead) run(h hiddenStates, extra []any) ([]*tensors.Tensor, error) {
	return p.e.Run(h.(shardedHidden), extra...)
}
func (p shardedHead) finalize() { p.e.Finalize() }

// poolBytes is what the KV pools of layout take on each device.
func poolBytes(cfg *model.Config, layout model.KVLayout, dev deviceModel) int64 {
	perHead := model.PoolBytes(cfg, layout, dev.dtype()) / int64(cfg.NumKeyValueHeads)
	return perHead * int64(dev.kvHeadsPerDevice())
}
