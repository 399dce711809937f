// Package engine runs continuous batching over the model: a scheduler that returns a plain
// per-step plan, a step runner that executes one compiled program per step (forward, KV
// write and sampling on the device), and an output processor that appends tokens, checks
// stops, detokenizes incrementally and pushes events to each request's stream.
//
// Ownership: the scheduler decides and never touches tensors; kvcache allocates blocks; the
// model builds graphs; the engine's step loop is the only goroutine that touches the device.
//
// Concurrency: Submit may be called from any goroutine. Each request gets its own buffered
// event channel, closed after the final event. Cancelling the request's context aborts it at
// the next step and frees its blocks.
package engine
