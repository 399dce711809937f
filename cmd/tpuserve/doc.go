// Command tpuserve is the project's one binary. Subcommands:
//
//	serve       the OpenAI-compatible HTTP API and gRPC over the engine (default: the tiny demo model)
//	forward     one sequence through the model, logits [T, V] written as safetensors
//	tokenize    text to Gemma 3 token ids; detokenize: ids to text
//	plan        the tensor-parallel sharding and per-chip memory plan
//	deploy      Kubernetes manifests for GKE (--target tpu|gpu|cpu)
//	bench       a load generator measuring what `vllm bench serve` measures
//	cost        $ per 1M tokens from a bench result and an hourly price
//	version     the build's version
//
// Each subcommand lives in its own file and registers itself in init (main.go's register).
// Flags of serve also read TPUSERVE_<FLAG> from the environment when not given.
package main
