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
// Speculative decoding (Config.Speculative): the scheduler gives a decode up to K
// proposals (prompt lookup, speculate.go; or slots a draft model fills on the device,
// draft.go), the step computes their K/V with the rest of the batch, a verify head program
// accepts on the device (verify.go), and UpdateFromOutputSpec commits the accepted run only.
// Images (Config.Vision, a vision model): a Request carries preprocessed images
// (Request.Images, one per placeholder run of its prompt). The step that first computes an
// image's tokens encodes it on the device with the step set's vision program (images of a
// step batched, features left on the device as the step's image-embedding input); the
// scheduler never ends a chunk inside an image group and puts at most MaxImagesPerStep
// images in a step; prefix-cache blocks that hold any of a group's positions hash its
// images' content hashes (kvcache.ContentKey), so a repeated image reuses them and another
// image with the same placeholder ids never does. With a sharded model (Config.Sharded)
// the tower is replicated, not split: it runs on the sharded model's backend and its
// features are a replicated input of every chip's step program.
//
// Concurrency: Submit may be called from any goroutine. Each request gets its own buffered
// event channel, closed after the final event. Cancelling the request's context aborts it at
// the next step and frees its blocks.
package engine
