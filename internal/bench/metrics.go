package bench

import (
	"math"
	"slices"
	"time"
)

// Metrics are a run's aggregate results, with vLLM's definitions (see the package doc).
type Metrics struct {
	Completed, Failed int
	// TotalInput and TotalOutput are tokens over completed requests.
	TotalInput, TotalOutput int
	// OutputLens holds each request's output tokens (0 for failed ones), in request order.
	OutputLens []int
	// Throughputs per second of the run's duration.
	RequestThroughput    float64
	RequestGoodput       float64
	OutputThroughput     float64
	TotalTokenThroughput float64
	// Latency distributions in milliseconds.
	TTFT, TPOT, ITL, E2EL Summary
	// MaxOutputTokensPerS is the busiest one-second bucket of token events, and
	// MaxConcurrentRequests the most requests in flight at once.
	MaxOutputTokensPerS   float64
	MaxConcurrentRequests int
}

// outputTokens is a completed request's output token count: the server's usage, or, if the
// server sent none, the number of chunks that carried a choice.
func outputTokens(o RequestOutput) int {
	if o.UsageReported {
		return o.OutputTokens
	}
	return 1 + len(o.ITL)
}

func seconds(d time.Duration) float64 { return d.Seconds() }

// ComputeMetrics aggregates request outputs over a run of the given duration, as vLLM's
// calculate_metrics does. goodput maps ttft/tpot/e2el to SLOs in milliseconds; a request
// is good when every given metric is at most its SLO (TPOT counts as 0 for requests with
// a single output token).
func ComputeMetrics(outs []RequestOutput, duration time.Duration, percentiles []float64, goodput map[string]float64) Metrics {
	var m Metrics
	var ttfts, tpots, allTPOTs, itls, e2els []float64
	m.OutputLens = make([]int, len(outs))
	for i, o := range outs {
		if !o.Success {
			m.Failed++
			continue
		}
		n := outputTokens(o)
		m.OutputLens[i] = n
		m.TotalInput += o.PromptLen
		tpot := 0.0
		if n > 1 {
			tpot = seconds(o.Latency-o.TTFT) / float64(n-1)
			tpots = append(tpots, tpot)
		}
		allTPOTs = append(allTPOTs, tpot)
		for _, d := range o.ITL {
			itls = append(itls, seconds(d))
		}
		ttfts = append(ttfts, seconds(o.TTFT))
		e2els = append(e2els, seconds(o.Latency))
		m.Completed++
	}
	for _, n := range m.OutputLens {
		m.TotalOutput += n
	}
	good := 0
	if len(goodput) > 0 {
		for i := range ttfts {
			ok := true
			if slo, has := goodput["ttft"]; has && ttfts[i] > slo/1000 {
				ok = false
			}
			if slo, has := goodput["tpot"]; has && allTPOTs[i] > slo/1000 {
				ok = false
			}
			if slo, has := goodput["e2el"]; has && e2els[i] > slo/1000 {
				ok = false
			}
			if ok {
				good++
			}
		}
	}
	dur := duration.Seconds()
	if dur > 0 {
		m.RequestThroughput = float64(m.Completed) / dur
		m.RequestGoodput = float64(good) / dur
		m.OutputThroughput = float64(m.TotalOutput) / dur
		m.TotalTokenThroughput = float64(m.TotalInput+m.TotalOutput) / dur
	}
	m.TTFT = summarize(ttfts, percentiles)
	m.TPOT = summarize(tpots, percentiles)
	m.ITL = summarize(itls, percentiles)
	m.E2EL = summarize(e2els, percentiles)
	m.MaxOutputTokensPerS, m.MaxConcurrentRequests = peaks(outs)
	return m
}

// peaks returns the busiest second's token events and the most requests in flight, over
// successful requests, as vLLM computes them (token times from start, TTFT and ITLs;
// half-open [start, start+latency) intervals).
func peaks(outs []RequestOutput) (float64, int) {
	var ok []RequestOutput
	for _, o := range outs {
		if o.Success {
			ok = append(ok, o)
		}
	}
	if len(ok) == 0 {
		return 0, 0
	}
	t0 := ok[0].Start
	tEnd := ok[0].Start.Add(ok[0].Latency)
	for _, o := range ok {
		if o.Start.Before(t0) {
			t0 = o.Start
		}
		if e := o.Start.Add(o.Latency); e.After(tEnd) {
			tEnd = e
		}
	}
	buckets := make([]float64, int(math.Ceil(tEnd.Sub(t0).Seconds()))+1)
	type event struct {
		t     time.Time
		delta int
	}
	var events []event
	for _, o := range ok {
		tok := o.Start.Add(o.TTFT)
		add := func(t time.Time) {
			if b := int(t.Sub(t0).Seconds()); b >= 0 && b < len(buckets) {
				buckets[b]++
			}
		}
		add(tok)
		for _, d := range o.ITL {
			tok = tok.Add(d)
			add(tok)
		}
		events = append(events, event{o.Start, 1}, event{o.Start.Add(o.Latency), -1})
	}
	slices.SortFunc(events, func(a, b event) int {
		if c := a.t.Compare(b.t); c != 0 {
			return c
		}
		return a.delta - b.delta // departures first
	})
	cur, peak := 0, 0
	for _, e := range events {
		cur += e.delta
		peak = max(peak, cur)
	}
	return slices.Max(buckets), peak
}
