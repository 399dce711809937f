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

// plainDevice is a model.Model on one device.
type plainDevice struct {
	m     *model.Model
	pools *model.KVPools
}

func (d *plainDevice) config() *model.Config { return &d.m.Config }
func (d *plainDevice) dtype() dtypes.DType   { return d.m.DType }
func (d *plainDevice) kvHeadsPerDevice() int { return d.m.Config.NumKeyValueHeads }
func (d *plainDevice) freePools()            { d.pools.Finalize() }
func (d *plainDevice) allocPools(l model.KVLayout) error {
	pools, err := d.m.NewKVPools(l)
	if err != nil {
		return err
	}
	if d.pools != nil {
		d.pools.Finalize()
	}
	d.pools = pools
	return nil
}
func (d *plainDevice) newProgram(numExtra int, post model.PostFn) (program, error) {
	e, err := d.m.NewStepExec(numExtra, post)
	if err != nil {
		return nil, err
	}
	return &plainProgram{d: d, e: e}, nil
}

type plainProgram struct {
	d *plainDevice
	e *model.StepExec
}

func (p *plainProgram) precompile(b *model.Batch, extra []any) error {
	return p.e.Precompile(p.d.pools, b, extra...)
}
func (p *plainProgram) run(b *model.Batch, extra []any) ([]*tensors.Tensor, error) {
	return p.e.Run(p.d.pools, b, extra...)
}
func (p *plainProgram) finalize() { p.e.Finalize() }

// shardedDevice is a model.ShardedModel split over the devices of an xla backend.
type shardedDevice struct {
	m     *model.ShardedModel
	pools *model.ShardedKVPools
}

func (d *shardedDevice) config() *model.Config { return &d.m.Config }
func (d *shardedDevice) dtype() dtypes.DType   { return d.m.DType }
func (d *shardedDevice) kvHeadsPerDevice() int { return d.m.Plan.KVHeadsPerChip }
func (d *shardedDevice) freePools()            { d.pools.Finalize() }
func (d *shardedDevice) allocPools(l model.KVLayout) error {
	pools, err := d.m.NewKVPools(l)
	if err != nil {
		return err
	}
	if d.pools != nil {
		d.pools.Finalize()
	}
	d.pools = pools
	return nil
}
func (d *shardedDevice) newProgram(numExtra int, post model.PostFn) (program, error) {
	e, err := d.m.NewStepExec(numExtra, post)
	if err != nil {
		return nil, err
	}
	return &shardedProgram{d: d, e: e}, nil
}

type shardedProgram struct {
	d *shardedDevice
	e *model.ShardedStepExec
}

func (p *shardedProgram) precompile(b *model.Batch, extra []any) error {
	return p.e.Precompile(p.d.pools, b, extra...)
}
func (p *shardedProgram) run(b *model.Batch, extra []any) ([]*tensors.Tensor, error) {
	return p.e.Run(p.d.pools, b, extra...)
}
func (p *shardedProgram) finalize() { p.e.Finalize() }

// poolBytes is what the KV pools of layout take on each device.
func poolBytes(cfg *model.Config, layout model.KVLayout, dev deviceModel) int64 {
	perHead := model.PoolBytes(cfg, layout, dev.dtype()) / int64(cfg.NumKeyValueHeads)
	return perHead * int64(dev.kvHeadsPerDevice())
}
