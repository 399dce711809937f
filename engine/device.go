package engine

import (
	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/tpuserve/tpuserve/model"
)

// deviceModel is the model on its device(s) with its KV pools: the plain single-device
// model, or the tensor-parallel one. The runner drives either the same way.
type deviceModel interface {
	config() *model.Config
	dtype() dtypes.DType
	// kvHeadsPerDevice is how many kv heads each device's pools hold.
	kvHeadsPerDevice() int
	allocPools(layout model.KVLayout) error
	freePools()
	newProgram(numExtra int, post model.PostFn) (program, error)
}

// program is one compiled step program bound to the device's current pools.
type program interface {
	precompile(b *model.Batch, extra []any) error
	run(b *model.Batch, extra []any) ([]*tensors.Tensor, error)
	finalize()
}

// stepExec is what model.StepExec (pools P = *model.KVPools) and model.ShardedStepExec
// (P = *model.ShardedKVPools) have in common.
type stepExec[P any] interface {
	Precompile(pools P, b *model.Batch, extra ...any) error
	Run(pools P, b *model.Batch, extra ...any) ([]*tensors.Tensor, error)
	Finalize()
}

// poolDevice is a deviceModel over either kind of model: its pools are P and its programs
// stepExec[P].
type poolDevice[P interface{ Finalize() }] struct {
	cfg      *model.Config
	dt       dtypes.DType
	kvHeads  int
	newPools func(model.KVLayout) (P, error)
	newExec  func(numExtra int, post model.PostFn) (stepExec[P], error)
	pools    P
	hasPools bool
}

// plainDevice is a model.Model on one device.
func plainDevice(m *model.Model) deviceModel {
	return &poolDevice[*model.KVPools]{
		cfg: &m.Config, dt: m.DType, kvHeads: m.Config.NumKeyValueHeads, newPools: m.NewKVPools,
		newExec: func(n int, post model.PostFn) (stepExec[*model.KVPools], error) { return m.NewStepExec(n, post) },
	}
}

// shardedDevice is a model.ShardedModel split over the devices of an xla backend.
func shardedDevice(m *model.ShardedModel) deviceModel {
	return &poolDevice[*model.ShardedKVPools]{
		cfg: &m.Config, dt: m.DType, kvHeads: m.Plan.KVHeadsPerChip, newPools: m.NewKVPools,
		newExec: func(n int, post model.PostFn) (stepExec[*model.ShardedKVPools], error) { return m.NewStepExec(n, post) },
	}
}

func (d *poolDevice[P]) config() *model.Config { return d.cfg }
func (d *poolDevice[P]) dtype() dtypes.DType   { return d.dt }
func (d *poolDevice[P]) kvHeadsPerDevice() int { return d.kvHeads }

func (d *poolDevice[P]) freePools() {
	if d.hasPools {
		d.pools.Finalize()
		d.hasPools = false
	}
}

func (d *poolDevice[P]) allocPools(l model.KVLayout) error {
	pools, err := d.newPools(l)
	if err != nil {
		return err
	}
	d.freePools()
	d.pools, d.hasPools = pools, true
	return nil
}

func (d *poolDevice[P]) newProgram(numExtra int, post model.PostFn) (program, error) {
	e, err := d.newExec(numExtra, post)
	if err != nil {
		return nil, err
	}
	return &boundProgram[P]{d: d, e: e}, nil
}

// boundProgram runs a program on its device's current pools (replaced after a failed step).
type boundProgram[P interface{ Finalize() }] struct {
	d *poolDevice[P]
	e stepExec[P]
}

func (p *boundProgram[P]) precompile(b *model.Batch, extra []any) error {
	return p.e.Precompile(p.d.pools, b, extra...)
}

func (p *boundProgram[P]) run(b *model.Batch, extra []any) ([]*tensors.Tensor, error) {
	return p.e.Run(p.d.pools, b, extra...)
}

func (p *boundProgram[P]) finalize() { p.e.Finalize() }

// poolBytes is what the KV pools of layout take on each device.
func poolBytes(cfg *model.Config, layout model.KVLayout, dev deviceModel) int64 {
	perHead := model.PoolBytes(cfg, layout, dev.dtype()) / int64(cfg.NumKeyValueHeads)
	return perHead * int64(dev.kvHeadsPerDevice())
}
