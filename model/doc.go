// Package model owns Gemma 3 itself: hub config.json parsing (Config, presets), memory-
// mapped safetensors checkpoints in the three hub layouts (Checkpoint, LoadWeights), seeded
// random weights (RandomWeights), the forward pass as a gomlx graph over a flat batch of new
// tokens with paged K/V pools (Forward, Batch, StepExec), backends (NewBackend), and tensor
// parallelism: the sharding plan and the sharded program (sharding.go, tp.go). The step-
// shape set, the memory plan and the roofline live in internal/plan.
//
// Quantized weights (quant.go, quant_graph.go, quant_write.go; docs/quantization.md):
// compressed-tensors int8 W8A8 / FP8-dynamic checkpoints and quantize-at-load
// (LoadOptions.Quantization) keep each covered Linear as 1 byte per parameter plus a scale
// per output row (WeightSpecs lists the scales after each layer's tensors), and Forward runs
// those Linears with QuantizedLinear. The formats and the recipe are package quant's.
//
// Image input (a config with a vision_config: Config.Vision): every step program takes
// three more inputs (StepNodes.ImageRow, ImageSpan, ImageEmbeds; Batch's fields of the same
// names, BatchShape.M rows of embeddings): the image features replace the soft tokens'
// embeddings after the √hidden scale (spliceImages), and image tokens see the keys of
// their image mask beyond causality, OR-ed onto the causal and sliding masks inside the
// page-entry attention (Config.ImageMaskWindow: transformers 4.53's windowed rule, the
// fixtures' reference, or per image). Chunks list their images (SeqChunk.Images); an
// image group (ImageGroups) must run by the step that reads it. The tower itself is
// package vision's; the model never imports it.
//
// The math follows docs/gemma3.md (Hugging Face transformers is the reference). The graph
// takes page tables and slot indices as inputs; which pages a sequence owns is kvcache's
// business, and which sequences run in a step is the engine's. The model never schedules.
//
// Lifecycle: Load (or New with weights) puts the weights on a device for the model's life;
// NewKVPools allocates the pools; NewStepExec builds a program that is compiled once per
// bucket shape (BatchShape) and cached. StepExec.Run donates the pools, so the K/V writes
// are in place, and replaces them with the updated ones.
//
// Errors: configuration problems wrap ErrConfig and name the field; checkpoint problems wrap
// ErrWeights and name the tensor and file; bad step inputs (token ids, positions, pages) wrap
// ErrInput; backend creation ErrBackend; sharding ErrSharding. Graph
// building panics only inside gomlx's graph functions, which StepExec turns into errors.
//
// Concurrency: a Model's weights are read-only and may be shared; a StepExec and its KVPools
// belong to one goroutine (the engine's step loop).
package model
