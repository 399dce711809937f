// Package server is what users and services talk to: an OpenAI-compatible HTTP API (gin),
// a gRPC streaming API and Prometheus metrics, over an Engine and a Tokenizer defined here
// as interfaces (the integrator adapts the engine and tokenizer packages to them).
//
// # HTTP
//
// POST /v1/completions (prompt as string, [string], [int] or [[int]]), POST
// /v1/chat/completions (text content as a string or as parts), both with SSE streaming
// ("data: {json}" … "data: [DONE]", stream_options.include_usage and vLLM's
// continuous_usage_stats); GET /v1/models (and /v1/models/{id}) with vLLM's root and
// max_model_len; GET /health, /ping, /version, /metrics; POST /tokenize and /detokenize as
// vLLM has them. Parameters are OpenAI's plus vLLM's extras (top_k, min_p,
// repetition_penalty, ignore_eos, min_tokens, skip_special_tokens,
// include_stop_str_in_output, return_tokens_as_token_ids, stop_token_ids, priority,
// truncate_prompt_tokens, add_special_tokens, add_generation_prompt). n > 1 and batched
// prompts become one engine request per choice (choice index = prompt × n + sample), with
// seeds derived per choice (choice 0 keeps the request's seed).
//
// # Errors
//
// Every error is OpenAI's {"error":{"message","type","param","code"}}: 400 for a malformed
// body or any invalid parameter (range-checked, named in param), token ids outside the
// vocabulary and prompts longer than MaxModelLen (with the counts); 401 for a wrong API
// key (only /v1/*, as vLLM); 404 for an unknown model; 413 for a body over
// MaxRequestBodyBytes; 429 with Retry-After when the Engine says ErrQueueFull; 503 while
// shutting down; 500 for anything else, with the cause logged and not sent. Engines report
// those conditions by wrapping the sentinels in errors.go. Parameters the engine cannot
// honour (logit_bias, suffix, prompt_logprobs, tools, echo with logprobs, non-text
// content parts, custom chat templates) are refused with a 400 naming them, never ignored.
//
// # gRPC
//
// The TpuserveEngine service (proto/enginepb/engine.proto, modelled on vLLM's
// vllm_engine.proto): Generate (server stream of chunks, then one complete or error per
// sample), Abort, GetModelInfo, HealthCheck; plus grpc.health.v1. Validation is the HTTP
// API's; errors before the stream starts are gRPC statuses (InvalidArgument,
// ResourceExhausted, Unavailable, …).
//
// # Metrics
//
// /metrics serves vLLM's metric names (vllm:num_requests_running, …_waiting,
// vllm:kv_cache_usage_perc and the deprecated vllm:gpu_cache_usage_perc from Engine.Stats at
// scrape time; histograms of TTFT, inter-token latency, e2e latency, queue, prefill and
// decode time; counters of prompt and generation tokens and of finished requests by
// finished_reason), labelled model_name and engine, from a registry of the Server's own.
//
// # Lifecycle and concurrency
//
// New validates the Config; Serve listens (or uses injected listeners) and blocks until its
// context is cancelled, then stops accepting, lets in-flight requests finish within
// ShutdownTimeout and aborts the rest. Each HTTP or gRPC request runs on its own goroutine;
// its context (cancelled when the client goes away, or on the hard stop of a shutdown) is
// the context its engine requests are submitted with, so a disconnect aborts them at the
// engine's next step. Requests with several choices use one forwarding goroutine per choice;
// every handler drains its engine streams before returning. Server methods are safe for
// concurrent use.
package server
