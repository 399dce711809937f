// Package plan owns the serving plan that is fixed before the first request: the closed set
// of step programs (StepSet: every step shape the engine may run, enumerated from the
// serving configuration and compiled at start-up), the per-chip memory plan (PlanMemory:
// weights, the activations of the largest programs in the set, workspace, KV cache) and the
// TPU roofline (Roofline). The tensor-parallel sharding plan itself (model.ShardingPlan,
// which axis each tensor splits on) stays beside the weights in model/, which the sharded
// program needs; this package reads it.
//
// Everything here is plain computation over model.Config and the serving options: no
// device, no graph, safe for concurrent use. Errors wrap model.ErrConfig (bad options, with
// the field), ErrMemory (does not fit, with the numbers) or model.ErrSharding.
package plan
