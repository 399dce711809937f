// Package engine runs continuous batching over the model: a scheduler that returns a plain
// per-step plan, a step runner that executes one compiled program per step (forward, KV
// write and sampling on the device), and an output processor that appends tokens, checks
// stops, detokenizes incrementally and pushes events to each request's stream.
//
// The device is the plain model or the tensor-parallel one (deviceModel): the sampler
// programs are written over logits split on the vocabulary (model.VocabShards), so the same
// code samples on one chip or reduces across N (per-row maxima, sums and histograms, top-20
// candidates; never the [N, V] logits), with Gumbel noise keyed by the global token id.
//
// Ownership: the scheduler decides and never touches tensors; kvcache allocates blocks; the
// model builds graphs; the engine's step loop is the only goroutine that touches the device.
//
// Concurrency: Submit may be called from any goroutine. Each request gets its own buffered
// event channel, closed after the final event. Cancelling the request's context aborts it at
// the next step and frees its blocks.
package engine
