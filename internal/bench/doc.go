// Package bench is the load generator behind `tpuserve bench`: it measures an OpenAI
// compatible server the way vLLM's `vllm bench serve --backend openai` does, so numbers from
// tpuserve and from vLLM (H100 baseline) can be compared line by line.
//
// What it owns:
//   - datasets: vLLM's random dataset as token-id prompts (no tokenizer needed; the
//     /v1/completions API accepts token-id arrays) and ShareGPT JSON files;
//   - the arrival process: Poisson (burstiness 1) or Gamma inter-arrival times, rescaled so
//     that n requests span n/rate seconds exactly as vLLM does, with an optional cap on
//     requests in flight;
//   - the streaming client: POST /v1/completions with stream=true and
//     stream_options.include_usage=true, timing each server-sent event that carries a choice;
//   - the metrics, with vLLM's definitions: TTFT (first choice chunk), ITL (gap between
//     consecutive choice chunks, per chunk), E2EL (last choice chunk), TPOT =
//     (E2EL − TTFT)/(output tokens − 1) over requests with more than one output token,
//     output tokens from the server's usage; mean, median, standard deviation (population)
//     and percentiles (linear interpolation, as numpy); request, output and total token
//     throughput; goodput against ttft/tpot/e2el SLOs;
//   - the result JSON with vLLM's key names, a text report laid out like vLLM's, a progress
//     bar, and a self-contained HTML chart (inline SVG) of latency CDFs and throughput.
//
// Errors: Run returns an error (wrapping ErrConfig for bad settings) only when the run
// cannot happen: bad configuration, no model name obtainable, or a failed readiness check.
// A request that fails during the run is counted in Result.Failed with its error text,
// as vLLM does, and never aborts the run.
//
// Concurrency: Run starts one goroutine per request and waits for all of them before it
// returns; cancelling its context aborts requests in flight (they count as failed). A Config
// is read-only during Run. Progress may be written to from many goroutines (it locks).
package bench
