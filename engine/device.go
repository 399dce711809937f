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
	newHead(name string, fn model.VocabHeadFn, maxPrograms int) (headProgram, error)
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

// forwardExec and headExec are what model.ForwardExec / model.HeadExec (pools P =
// *model.KVPools, hidden states Hd = *tensors.Tensor) and their sharded versions (P =
// *model.ShardedKVPools, Hd = []*tensors.Tensor) have in common.
type forwardExec[P, Hd any] interface {
	Precompile(pools P, b *model.Batch) error
	Run(pools P, b *model.Batch) (Hd, error)
	Finalize()
}

type headExec[Hd any] interface {
	Precompile(hidden Hd, extra ...any) error
	Run(hidden Hd, extra ...any) ([]*tensors.Tensor, error)
	Finalize()
}

// modelDevice is a deviceModel over either kind of model: the plain one on one device or
// the tensor-parallel one; only the constructors differ (plainDevice, shardedDevice).
type modelDevice[P interface{ Finalize() }, Hd any] struct {
	cfg        *model.Config
	dt         dtypes.DType
	kvHeads    int
	newPools   func(model.KVLayout) (P, error)
	newFwd     func(rows, maxPrograms int) (forwardExec[P, Hd], error)
	newHd      func(name string, fn model.VocabHeadFn, maxPrograms int) (headExec[Hd], error)
	zero       func(rows int) (Hd, error)
	freeHidden func(Hd)
	pools      P
	hasPools   bool
}

func newPlainDevice(m *model.Model) deviceModel {
	return &modelDevice[*model.KVPools, *tensors.Tensor]{
		cfg: &m.Config, dt: m.DType, kvHeads: m.Config.NumKeyValueHeads, newPools: m.NewKVPools,
		newFwd: func(rows, n int) (forwardExec[*model.KVPools, *tensors.Tensor], error) {
			return m.NewForwardExec(rows, n)
		},
		newHd: func(name string, fn model.VocabHeadFn, n int) (headExec[*tensors.Tensor], error) {
			return m.NewVocabHeadExec(name, fn, n)
		},
		zero: m.ZeroHidden, freeHidden: func(t *tensors.Tensor) { t.FinalizeAll() },
	}
}

func newShardedDevice(m *model.ShardedModel) deviceModel {
	return &modelDevice[*model.ShardedKVPools, []*tensors.Tensor]{
		cfg: &m.Config, dt: m.DType, kvHeads: m.Plan.KVHeadsPerChip, newPools: m.NewKVPools,
		newFwd: func(rows, n int) (forwardExec[*model.ShardedKVPools, []*tensors.Tensor], error) {
			return m.NewForwardExec(rows, n)
		},
		newHd: func(name string, fn model.VocabHeadFn, n int) (headExec[[]*tensors.Tensor], error) {
			return m.NewHeadExec(name, fn, n)
		},
		zero: m.ZeroHidden, freeHidden: func(ts []*tensors.Tensor) {
			for _, t := range ts {
				t.FinalizeAll()
			}
		},
	}
}

func (d *modelDevice[P, Hd]) config() *model.Config { return d.cfg }
func (d *modelDevice[P, Hd]) dtype() dtypes.DType   { return d.dt }
func (d *modelDevice[P, Hd]) kvHeadsPerDevice() int { return d.kvHeads }

func (d *modelDevice[P, Hd]) allocPools(l model.KVLayout) error {
	// Free first: the memory plan sizes the pools to the byte, so both cannot coexist.
	d.freePools()
	p, err := d.newPools(l)
	if err != nil {
		return err
	}
	d.pools, d.hasPools = p, true
	return nil
}

func (d *modelDevice[P, Hd]) freePools() {
	if d.hasPools {
		d.pools.Finalize()
		d.hasPools = false
	}
}

func (d *modelDevice[P, Hd]) newForward(rows, maxPrograms int) (forwardProgram, error) {
	e, err := d.newFwd(rows, maxPrograms)
	if err != nil {
		return nil, err
	}
	return &boundForward[P, Hd]{d: d, e: e}, nil
}

func (d *modelDevice[P, Hd]) newHead(name string, fn model.VocabHeadFn, maxPrograms int) (headProgram, error) {
	e, err := d.newHd(name, fn, maxPrograms)
	if err != nil {
		return nil, err
	}
	return boundHead[Hd]{e}, nil
}

func (d *modelDevice[P, Hd]) zeroHidden(rows int) (hiddenStates, error) {
	h, err := d.zero(rows)
	if err != nil {
		return nil, err
	}
	return deviceHidden[Hd]{h: h, free: d.freeHidden}, nil
}

// deviceHidden is a step's hidden states with how to free them.
type deviceHidden[Hd any] struct {
	h    Hd
	free func(Hd)
}

func (h deviceHidden[Hd]) Finalize() { h.free(h.h) }

// boundForward runs the step program on its device's current pools (replaced after a
// failed step).
type boundForward[P interface{ Finalize() }, Hd any] struct {
	d *modelDevice[P, Hd]
	e forwardExec[P, Hd]
}

func (p *boundForward[P, Hd]) precompile(b *model.Batch) error { return p.e.Precompile(p.d.pools, b) }
func (p *boundForward[P, Hd]) run(b *model.Batch) (hiddenStates, error) {
	if !p.d.hasPools {
		return nil, errPoolsLost
	}
	h, err := p.e.Run(p.d.pools, b)
	if err != nil {
		return nil, err
	}
	return deviceHidden[Hd]{h: h, free: p.d.freeHidden}, nil
}
func (p *boundForward[P, Hd]) finalize() { p.e.Finalize() }

type boundHead[Hd any] struct{ e headExec[Hd] }

func (p boundHead[Hd]) precompile(h hiddenStates, extra []any) error {
	return p.e.Precompile(h.(deviceHidden[Hd]).h, extra...)
}
func (p boundHead[Hd]) run(h hiddenStates, extra []any) ([]*tensors.Tensor, error) {
	return p.e.Run(h.(deviceHidden[Hd]).h, extra...)
}
func (p boundHead[Hd]) finalize() { p.e.Finalize() }

// poolBytes is what the KV pools of layout take on each device.
func poolBytes(cfg *model.Config, layout model.KVLayout, dev deviceModel) int64 {
	perHead := model.PoolBytes(cfg, layout, dev.dtype()) / int64(cfg.NumKeyValueHeads)
	return perHead * int64(dev.kvHeadsPerDevice())
}
