// Package server is what users and services talk to: an OpenAI-compatible HTTP API (gin),
// a gRPC streaming API and Prometheus metrics, over an Engine and a Tokenizer defined here
// as interfaces (the integrator adapts the engine and tokenizer packages to them).
//
// # HTTP
//
// POST /v1/completions (prompt as string, [string], [int] or [[int]]), POST
// /v1/chat/completions (text content as a string or as parts; message.refusal null and
// system_fingerprint as OpenAI sends them), both with SSE streaming ("data: {json}" …
// "data: [DONE]", stream_options.include_usage and vLLM's continuous_usage_stats); POST
// /v1/responses (responses.go: the Responses API for text, the same chat prompt, named SSE
// events with sequence numbers, no stored state); GET /v1/models (and /v1/models/{id}) with
// vLLM's root and max_model_len; GET /health, /ping, /version, /metrics; POST /tokenize and
// /detokenize as vLLM has them (behind the API key, with 1 MiB bodies and a token limit).
// The routes of non-generative models (/v1/embeddings, /v1/audio/*, /v1/images/*, rerank,
// score, pooling, classify) answer 400 "The model does not support … API", as vLLM's.
//
// The HTTP server closes idle connections (IdleTimeout), cuts bodies not received within
// BodyReadTimeout (408), refuses headers over MaxHeaderBytes (431) and POST bodies that are
// not Content-Type application/json (415: no cross-site form posts); a missing type is
// refused too, as vLLM's validate_json_request does.
//
// # Validation
//
// samplingParams validates the sampling parameters of every endpoint, HTTP and gRPC: ranges,
// the generation defaults (Config.Defaults, vLLM's --generation-config) for what a request
// leaves out, priority (a 400 unless Config.PriorityScheduling, as vLLM's fcfs), and
// checkChoices bounds prompts × n by the engine's capacity (a request that can never be
// admitted is a 400, not a 429 to retry forever). One accumulator per choice (choice.go)
// collects text, tokens, logprobs, finish and the typed stop reason for the non-streaming,
// SSE and gRPC answers. Parameters are OpenAI's plus vLLM's extras (top_k, min_p,
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
// honour (suffix, tools on /v1/responses, echo with logprobs while streaming, content parts
// other than text and image_url, custom chat templates) are refused with a 400 naming them, never ignored.
//
// Images (images.go): chat content parts {"type":"image_url","image_url":{"url":…,
// "detail":…}} with a data:image/…;base64 URL, or an http(s) URL whose host is in
// AllowedMediaDomains (fetched within MediaFetchTimeout and MaxImageBytes, redirects only
// to allowed hosts); at most MaxImagesPerPrompt per prompt (--limit-mm-per-prompt). Each
// is preprocessed by Config.Images, the rendered prompt expanded as Gemma3Processor does,
// and the images go with the engine request; usage.prompt_tokens counts the soft tokens.
// gRPC takes GenerateRequest.images (encoded bytes). Corrupt base64, bytes that are not an
// image, unsupported formats, oversize images, too many images, disallowed hosts and any
// image for a model without Config.Images (a text-only checkpoint) are 400s naming the
// content part (messages[i].content[j], or images[k] over gRPC).
//
// Prompt scoring: vLLM's prompt_logprobs (completions and chat) returns, per prompt
// position after the first, the prompt token's logprob and the top alternatives; echo with
// logprobs on completions covers the echoed prompt the same way (first token null), and
// echo with max_tokens 0 scores the prompt without generating. logit_bias (token id →
// bias in [-100, 100], at most engine.MaxLogitBias entries) is applied on the device.
//
// Structured outputs: response_format json_object / json_schema, vLLM's structured_outputs
// {json, regex, choice, grammar} and the older guided_* fields compile through
// Config.Grammars (a grammar.Cache over the tokenizer's vocabulary) into an
// engine.SamplingParams.Grammar, which the engine enforces with a per-row bitmask on the
// device. At most one constraint per request; one that does not compile, or uses a keyword
// the grammar engine cannot enforce, is a 400 naming the field (and the keyword).
//
// Tool calling (tools.go, toolparse.go): chat completions take tools, tool_choice (none,
// auto, required, a named function) and parallel_tool_calls. Gemma 3 has no tool tokens:
// the tools are described in the first user turn (the tokenizer's ToolTemplater, vLLM's
// Gemma 3 recipe) and the model answers with a JSON list [{"name", "arguments"}] — JSON
// rather than vLLM's pythonic calls, see tools.go for why. "required" and named tools
// compile that list's JSON Schema (each tool's parameters as its arguments) into the
// request's grammar, so a valid call is guaranteed; "auto" parses an unconstrained answer.
// Calls come back as message.tool_calls (content null, finish_reason "tool_calls") or, when
// streaming, as OpenAI's tool-call deltas (id and name first, then the arguments as they
// grow); role "tool" messages and assistant tool_calls render back into the prompt.
//
// # gRPC
//
// The TpuserveEngine service (proto/enginepb/engine.proto, modelled on vLLM's
// vllm_engine.proto): Generate (server stream of chunks, then one complete or error per
// sample), Abort, GetModelInfo, HealthCheck; plus grpc.health.v1. Validation is the HTTP
// API's (SamplingParams' constraint oneof is the structured_outputs field, its errors
// naming sampling_params.json_schema and so on); errors before the stream starts are gRPC
// statuses (InvalidArgument,
// ResourceExhausted, Unavailable, …). A request message that does not decode is
// InvalidArgument; server reflection is registered; an engine error ends the stream with an
// error message and the error's status.
//
// # Metrics
//
// /metrics serves vLLM's metric names (vllm:num_requests_running, …_waiting,
// vllm:kv_cache_usage_perc and the deprecated vllm:gpu_cache_usage_perc from Engine.Stats at
// scrape time; histograms of TTFT, inter-token latency, e2e latency, queue, prefill and
// decode time; counters of prompt and generation tokens and of finished requests by
// finished_reason; vllm:request_params_n, vllm:request_params_max_tokens,
// vllm:request_max_num_generation_tokens, and vllm:iteration_tokens_total from an Engine
// that implements StepObserver), labelled model_name and engine, from a registry of the
// Server's own; OpenMetrics when the scraper asks for it. Inter-token latency is per token
// from Event.TokenTimes when the engine stamps them.
//
// # Lifecycle and concurrency
//
// New validates the Config; the Engine may come later (SetEngine): Listen binds the ports
// first, and until SetEngine /health answers 503, gRPC health NOT_SERVING and generation
// requests 503. Serve listens (if Listen was not called) and blocks until its context is
// cancelled, then stops accepting, lets in-flight requests finish within ShutdownTimeout
// and aborts the rest; health watches and other idle gRPC streams are ended once the
// requests have drained, without waiting for the timeout. Each HTTP or gRPC request runs on its own goroutine;
// its context (cancelled when the client goes away, or on the hard stop of a shutdown) is
// the context its engine requests are submitted with, so a disconnect aborts them at the
// engine's next step. Requests with several choices use one forwarding goroutine per choice;
// every handler drains its engine streams before returning. Server methods are safe for
// concurrent use.
package server
