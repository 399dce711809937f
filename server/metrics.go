package server

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/tpuserve/tpuserve/engine"
)

// Metric names and buckets follow vLLM's (v1 engine) so that dashboards, the GKE HPA and
// the Inference Gateway work unchanged. Every series carries model_name and engine labels,
// as vLLM's do.

var (
	ttftBuckets = []float64{0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
		2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0}
	itlBuckets = []float64{0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
		5.0, 7.5, 10.0, 20.0, 40.0, 80.0}
	latencyBuckets = []float64{0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0,
		50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0}
	tokenBuckets = []float64{1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000}
	// iterationBuckets and nBuckets are vLLM's for vllm:iteration_tokens_total and
	// vllm:request_params_n.
	iterationBuckets = []float64{1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384}
	nBuckets         = []float64{1, 2, 5, 10, 20}
)

// buckets125 is vLLM's build_1_2_5_buckets: 1, 2, 5, 10, 20, 50, … up to max.
func buckets125(max int) []float64 {
	var out []float64
	for exp := 1; ; exp *= 10 {
		for _, m := range []int{1, 2, 5} {
			v := m * exp
			if v > max {
				return out
			}
			out = append(out, float64(v))
		}
	}
}

type metrics struct {
	reg *prometheus.Registry

	ttft, itl, e2e, queue, prefill, decode, inference prometheus.Observer
	promptTokensHist, genTokensHist                   prometheus.Observer
	promptTokens, genTokens                           prometheus.Counter
	success                                           *prometheus.CounterVec
	// vLLM's request-parameter and step histograms.
	iterationTokens, paramsN, paramsMaxTokens, maxGenTokens prometheus.Observer
}

// requestMetrics is what the server tracks about one engine request between events.
type requestMetrics struct {
	arrival    time.Time
	promptLen  int
	maxTokens  int
	firstToken time.Time
	lastToken  time.Time
}

func newMetrics(model string, maxModelLen int, eng func() Engine) *metrics {
	labels := prometheus.Labels{"model_name": model, "engine": "0"}
	reg := prometheus.NewRegistry()
	hist := func(name, help string, buckets []float64) prometheus.Observer {
		h := prometheus.NewHistogram(prometheus.HistogramOpts{Name: name, Help: help, Buckets: buckets, ConstLabels: labels})
		reg.MustRegister(h)
		return h
	}
	counter := func(name, help string) prometheus.Counter {
		c := prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help, ConstLabels: labels})
		reg.MustRegister(c)
		return c
	}
	m := &metrics{
		reg:              reg,
		ttft:             hist("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", ttftBuckets),
		itl:              hist("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", itlBuckets),
		e2e:              hist("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", latencyBuckets),
		queue:            hist("vllm:request_queue_time_seconds", "Histogram of time spent in WAITING phase for request.", latencyBuckets),
		prefill:          hist("vllm:request_prefill_time_seconds", "Histogram of time spent in PREFILL phase for request.", latencyBuckets),
		decode:           hist("vllm:request_decode_time_seconds", "Histogram of time spent in DECODE phase for request.", latencyBuckets),
		inference:        hist("vllm:request_inference_time_seconds", "Histogram of time spent in RUNNING phase for request.", latencyBuckets),
		promptTokensHist: hist("vllm:request_prompt_tokens", "Number of prefill tokens processed.", tokenBuckets),
		genTokensHist:    hist("vllm:request_generation_tokens", "Number of generation tokens processed.", tokenBuckets),
		promptTokens:     counter("vllm:prompt_tokens_total", "Number of prefill tokens processed."),
		genTokens:        counter("vllm:generation_tokens_total", "Number of generation tokens processed."),
		success: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "vllm:request_success_total",
			Help: "Count of successfully processed requests.", ConstLabels: labels}, []string{"finished_reason"}),
		iterationTokens: hist("vllm:iteration_tokens_total", "Histogram of number of tokens per engine_step.", iterationBuckets),
		paramsN:         hist("vllm:request_params_n", "Histogram of the n request parameter.", nBuckets),
		paramsMaxTokens: hist("vllm:request_params_max_tokens", "Histogram of the max_tokens request parameter.", buckets125(maxModelLen)),
		maxGenTokens: hist("vllm:request_max_num_generation_tokens", "Histogram of maximum number of requested generation tokens.",
			buckets125(maxModelLen)),
	}
	reg.MustRegister(m.success)
	for _, r := range []engine.FinishReason{engine.FinishStop, engine.FinishLength, engine.FinishAbort} {
		m.success.WithLabelValues(string(r)) // export zeros, as vLLM does
	}
	reg.MustRegister(newStatsCollector(eng, labels))
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// observeStep is the StepObserver callback: tokens computed in one engine step.
func (m *metrics) observeStep(tokens int) {
	if tokens > 0 {
		m.iterationTokens.Observe(float64(tokens))
	}
}

// observe records one event of a request: token counts and inter-token latency as they
// arrive, and on the final event the request's latencies (from the engine's timestamps
// where it gives them, else the server's). Inter-token latency is per token: from
// Event.TokenTimes when the engine stamps each token, else from the events' arrival
// (several tokens in one event then count as one gap).
func (m *metrics) observe(rm *requestMetrics, ev *engine.Event) {
	now := time.Now()
	if n := len(ev.TokenIDs); n > 0 {
		m.genTokens.Add(float64(n))
		if len(ev.TokenTimes) == n {
			for _, t := range ev.TokenTimes {
				if rm.firstToken.IsZero() {
					rm.firstToken = t
				} else {
					m.itl.Observe(max(0, t.Sub(rm.lastToken).Seconds()))
				}
				rm.lastToken = t
			}
		} else {
			if rm.firstToken.IsZero() {
				rm.firstToken = now
			} else {
				m.itl.Observe(now.Sub(rm.lastToken).Seconds())
			}
			rm.lastToken = now
		}
	}
	if !ev.Finished || ev.Err != nil {
		return
	}
	m.success.WithLabelValues(string(ev.FinishReason)).Inc()
	if rm.maxTokens > 0 {
		m.paramsMaxTokens.Observe(float64(rm.maxTokens))
	}
	prompt := ev.NumPromptTokens
	if prompt == 0 {
		prompt = rm.promptLen
	}
	m.promptTokens.Add(float64(prompt))
	m.promptTokensHist.Observe(float64(prompt))
	m.genTokensHist.Observe(float64(ev.NumOutputTokens))

	em := ev.Metrics
	arrival := em.ArrivalTime
	if arrival.IsZero() {
		arrival = rm.arrival
	}
	first := em.FirstTokenTime
	if first.IsZero() {
		first = rm.firstToken
	}
	finished := em.FinishedTime
	if finished.IsZero() {
		finished = now
	}
	if !first.IsZero() {
		m.ttft.Observe(first.Sub(arrival).Seconds())
	}
	m.e2e.Observe(finished.Sub(arrival).Seconds())
	if sched := em.FirstScheduledTime; !sched.IsZero() {
		m.queue.Observe(sched.Sub(arrival).Seconds())
		m.inference.Observe(finished.Sub(sched).Seconds())
		if !first.IsZero() {
			m.prefill.Observe(first.Sub(sched).Seconds())
		}
	}
	if !first.IsZero() {
		m.decode.Observe(finished.Sub(first).Seconds())
	}
}

// statsCollector turns Engine.Stats into gauges and counters at scrape time.
type statsCollector struct {
	eng                                  func() Engine
	running, waiting, kvUsage, gpuUsage  *prometheus.Desc
	prefixQueries, prefixHits, preempted *prometheus.Desc
	stepPrograms, servingCompilations    *prometheus.Desc
	// Speculative decoding (vLLM's spec_decode counters; zeros when it is off).
	specDrafts, specDraftTokens, specAccepted, specAcceptedPerPos *prometheus.Desc
}

func newStatsCollector(eng func() Engine, labels prometheus.Labels) *statsCollector {
	d := func(name, help string) *prometheus.Desc { return prometheus.NewDesc(name, help, nil, labels) }
	return &statsCollector{
		eng:           eng,
		running:       d("vllm:num_requests_running", "Number of requests in model execution batches."),
		waiting:       d("vllm:num_requests_waiting", "Number of requests waiting to be processed."),
		kvUsage:       d("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage."),
		gpuUsage:      d("vllm:gpu_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage (deprecated name of vllm:kv_cache_usage_perc)."),
		prefixQueries: d("vllm:prefix_cache_queries_total", "Prefix cache queries, in terms of number of queried tokens."),
		prefixHits:    d("vllm:prefix_cache_hits_total", "Prefix cache hits, in terms of number of cached tokens."),
		preempted:     d("vllm:num_preemptions_total", "Cumulative number of preemptions from the engine."),
		stepPrograms:  d("tpuserve:step_programs", "Device programs compiled (the closed step set is compiled before serving)."),
		servingCompilations: d("tpuserve:serving_compilations_total",
			"Programs compiled while serving; anything but 0 is a bug (logged as an error)."),
		specDrafts:      d("vllm:spec_decode_num_drafts_total", "Number of spec decoding drafts."),
		specDraftTokens: d("vllm:spec_decode_num_draft_tokens_total", "Number of draft tokens."),
		specAccepted:    d("vllm:spec_decode_num_accepted_tokens_total", "Number of accepted tokens."),
		specAcceptedPerPos: prometheus.NewDesc("vllm:spec_decode_num_accepted_tokens_per_pos_total",
			"Accepted tokens per draft position.", []string{"position"}, labels),
	}
}

func (c *statsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.running, c.waiting, c.kvUsage, c.gpuUsage, c.prefixQueries, c.prefixHits, c.preempted, c.stepPrograms, c.servingCompilations,
		c.specDrafts, c.specDraftTokens, c.specAccepted, c.specAcceptedPerPos} {
		ch <- d
	}
}

func (c *statsCollector) Collect(ch chan<- prometheus.Metric) {
	var st engine.Stats
	if eng := c.eng(); eng != nil { // zeros while the model loads
		st = eng.Stats()
	}
	ch <- prometheus.MustNewConstMetric(c.running, prometheus.GaugeValue, float64(st.NumRunning))
	ch <- prometheus.MustNewConstMetric(c.waiting, prometheus.GaugeValue, float64(st.NumWaiting))
	ch <- prometheus.MustNewConstMetric(c.kvUsage, prometheus.GaugeValue, st.KVCacheUsage)
	ch <- prometheus.MustNewConstMetric(c.gpuUsage, prometheus.GaugeValue, st.KVCacheUsage)
	ch <- prometheus.MustNewConstMetric(c.prefixQueries, prometheus.CounterValue, float64(st.PrefixCacheQueries))
	ch <- prometheus.MustNewConstMetric(c.prefixHits, prometheus.CounterValue, float64(st.PrefixCacheHits))
	ch <- prometheus.MustNewConstMetric(c.preempted, prometheus.CounterValue, float64(st.NumPreemptions))
	ch <- prometheus.MustNewConstMetric(c.stepPrograms, prometheus.GaugeValue, float64(st.StepPrograms))
	ch <- prometheus.MustNewConstMetric(c.servingCompilations, prometheus.CounterValue, float64(st.ServingCompilations))
	ch <- prometheus.MustNewConstMetric(c.specDrafts, prometheus.CounterValue, float64(st.Spec.NumDrafts))
	ch <- prometheus.MustNewConstMetric(c.specDraftTokens, prometheus.CounterValue, float64(st.Spec.NumDraftTokens))
	ch <- prometheus.MustNewConstMetric(c.specAccepted, prometheus.CounterValue, float64(st.Spec.NumAcceptedTokens))
	for i, n := range st.Spec.AcceptedPerPos {
		ch <- prometheus.MustNewConstMetric(c.specAcceptedPerPos, prometheus.CounterValue, float64(n), strconv.Itoa(i))
	}
}
