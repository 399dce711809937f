package bench

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"
	"time"
)

// Result is one benchmark run: its settings, per-request outputs and metrics.
type Result struct {
	Date           time.Time
	ModelID        string
	NumPrompts     int
	RequestRate    float64
	Burstiness     float64
	MaxConcurrency int
	Duration       time.Duration
	// Start is when the measured run began; Outputs' Start times are relative to it in JSON.
	Start       time.Time
	Outputs     []RequestOutput
	Percentiles []float64
	Goodput     map[string]float64
	Metrics     Metrics
}

// kv is one key of an ordered JSON object.
type kv struct {
	k string
	v any
}

// percentileWord is how vLLM names a percentile in keys: p99, p99.9.
func percentileWord(p float64) string {
	if p == math.Trunc(p) {
		return strconv.Itoa(int(p))
	}
	return strconv.FormatFloat(p, 'f', -1, 64)
}

// MarshalJSON writes the result with vLLM's key names and order (vllm bench serve
// --save-result), so tools written for vLLM's files read these too. Times are in seconds,
// latency statistics in milliseconds.
func (r *Result) MarshalJSON() ([]byte, error) {
	m := r.Metrics
	var rate any = r.RequestRate
	if math.IsInf(r.RequestRate, 1) {
		rate = "inf"
	}
	var burst any = r.Burstiness
	if math.IsInf(r.Burstiness, 1) {
		burst = "inf"
	}
	var maxConc any
	if r.MaxConcurrency > 0 {
		maxConc = r.MaxConcurrency
	}
	var goodput any
	if len(r.Goodput) > 0 {
		goodput = m.RequestGoodput
	}
	n := len(r.Outputs)
	inputLens := make([]int, n)
	ttfts := make([]float64, n)
	itls := make([][]float64, n)
	latencies := make([]float64, n)
	startTimes := make([]float64, n)
	queueTimes := make([]float64, n)
	texts := make([]string, n)
	errs := make([]string, n)
	for i, o := range r.Outputs {
		inputLens[i] = o.PromptLen
		ttfts[i] = o.TTFT.Seconds()
		itls[i] = make([]float64, len(o.ITL))
		for j, d := range o.ITL {
			itls[i][j] = d.Seconds()
		}
		latencies[i] = o.Latency.Seconds()
		if !o.Start.IsZero() {
			startTimes[i] = o.Start.Sub(r.Start).Seconds()
		}
		queueTimes[i] = o.QueueTime.Seconds()
		texts[i] = o.GeneratedText
		errs[i] = o.Error
	}
	fields := []kv{
		{"date", r.Date.Format("20060102-150405")},
		{"endpoint_type", "openai"},
		{"backend", "openai"},
		{"label", nil},
		{"model_id", r.ModelID},
		{"tokenizer_id", nil},
		{"num_prompts", r.NumPrompts},
		{"request_rate", rate},
		{"burstiness", burst},
		{"max_concurrency", maxConc},
		{"duration", r.Duration.Seconds()},
		{"completed", m.Completed},
		{"failed", m.Failed},
		{"total_input_tokens", m.TotalInput},
		{"total_output_tokens", m.TotalOutput},
		{"request_throughput", m.RequestThroughput},
		{"request_goodput", goodput},
		{"output_throughput", m.OutputThroughput},
		{"total_token_throughput", m.TotalTokenThroughput},
		{"input_lens", inputLens},
		{"output_lens", m.OutputLens},
		{"ttfts", ttfts},
		{"itls", itls},
		{"latencies", latencies},
		{"start_times", startTimes},
		{"queue_times", queueTimes},
		{"generated_texts", texts},
		{"errors", errs},
		{"max_output_tokens_per_s", m.MaxOutputTokensPerS},
		{"max_concurrent_requests", m.MaxConcurrentRequests},
	}
	for _, s := range []struct {
		name string
		sum  Summary
	}{{"ttft", m.TTFT}, {"tpot", m.TPOT}, {"itl", m.ITL}, {"e2el", m.E2EL}} {
		fields = append(fields,
			kv{"mean_" + s.name + "_ms", s.sum.Mean},
			kv{"median_" + s.name + "_ms", s.sum.Median},
			kv{"std_" + s.name + "_ms", s.sum.Std})
		for _, p := range s.sum.Percentiles {
			fields = append(fields, kv{"p" + percentileWord(p.P) + "_" + s.name + "_ms", p.Value})
		}
	}
	var buf bytes.Buffer
	buf.WriteByte('{')
	for i, f := range fields {
		if i > 0 {
			buf.WriteByte(',')
		}
		k, _ := json.Marshal(f.k)
		buf.Write(k)
		buf.WriteByte(':')
		v, err := json.Marshal(f.v)
		if err != nil {
			return nil, fmt.Errorf("bench: encode %s: %w", f.k, err)
		}
		buf.Write(v)
	}
	buf.WriteByte('}')
	return buf.Bytes(), nil
}

// WriteJSON writes the result JSON to path.
func (r *Result) WriteJSON(path string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("bench: write result: %w", err)
	}
	return nil
}

// Report writes the human-readable summary laid out like vLLM's.
func (r *Result) Report(w io.Writer) error {
	m := r.Metrics
	var b strings.Builder
	line := func(label string, v any) {
		switch x := v.(type) {
		case float64:
			fmt.Fprintf(&b, "%-40s %-10.2f\n", label, x)
		default:
			fmt.Fprintf(&b, "%-40s %-10v\n", label, x)
		}
	}
	header := func(title string, fill byte) {
		pad := 50 - len(title)
		left := pad / 2
		fmt.Fprintf(&b, "%s%s%s\n", strings.Repeat(string(fill), left), title, strings.Repeat(string(fill), pad-left))
	}
	header(" Serving Benchmark Result ", '=')
	line("Successful requests:", m.Completed)
	line("Failed requests:", m.Failed)
	if r.MaxConcurrency > 0 {
		line("Maximum request concurrency:", r.MaxConcurrency)
	}
	if !math.IsInf(r.RequestRate, 1) {
		line("Request rate configured (RPS):", r.RequestRate)
	}
	line("Benchmark duration (s):", r.Duration.Seconds())
	line("Total input tokens:", m.TotalInput)
	line("Total generated tokens:", m.TotalOutput)
	line("Request throughput (req/s):", m.RequestThroughput)
	if len(r.Goodput) > 0 {
		line("Request goodput (req/s):", m.RequestGoodput)
	}
	line("Output token throughput (tok/s):", m.OutputThroughput)
	line("Peak output token throughput (tok/s):", m.MaxOutputTokensPerS)
	line("Peak concurrent requests:", float64(m.MaxConcurrentRequests))
	line("Total token throughput (tok/s):", m.TotalTokenThroughput)
	for _, s := range []struct {
		name, title string
		sum         Summary
	}{
		{"TTFT", "Time to First Token", m.TTFT},
		{"TPOT", "Time per Output Token (excl. 1st token)", m.TPOT},
		{"ITL", "Inter-token Latency", m.ITL},
		{"E2EL", "End-to-end Latency", m.E2EL},
	} {
		header(s.title, '-')
		line("Mean "+s.name+" (ms):", s.sum.Mean)
		line("Median "+s.name+" (ms):", s.sum.Median)
		for _, p := range s.sum.Percentiles {
			line("P"+percentileWord(p.P)+" "+s.name+" (ms):", p.Value)
		}
	}
	b.WriteString(strings.Repeat("=", 50) + "\n")
	if m.Failed > 0 {
		shown := 0
		for _, o := range r.Outputs {
			if !o.Success && shown < 10 {
				fmt.Fprintf(&b, "error: %s\n", o.Error)
				shown++
			}
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// FileSummary is the part of a result JSON file (tpuserve's or vLLM's) that other tools
// read: throughputs and token totals.
type FileSummary struct {
	ModelID              string  `json:"model_id"`
	Duration             float64 `json:"duration"`
	Completed            int     `json:"completed"`
	TotalInputTokens     int     `json:"total_input_tokens"`
	TotalOutputTokens    int     `json:"total_output_tokens"`
	RequestThroughput    float64 `json:"request_throughput"`
	OutputThroughput     float64 `json:"output_throughput"`
	TotalTokenThroughput float64 `json:"total_token_throughput"`
	MeanTTFTMs           float64 `json:"mean_ttft_ms"`
	MeanTPOTMs           float64 `json:"mean_tpot_ms"`
	P99TTFTMs            float64 `json:"p99_ttft_ms"`
	P99TPOTMs            float64 `json:"p99_tpot_ms"`
}

// ReadFileSummary reads a result JSON file and checks that it has what cost reports need.
func ReadFileSummary(path string) (FileSummary, error) {
	var s FileSummary
	b, err := os.ReadFile(path)
	if err != nil {
		return s, fmt.Errorf("bench: result-json: %w", err)
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return s, fmt.Errorf("bench: result-json %s: %w", path, err)
	}
	if s.Completed <= 0 || s.Duration <= 0 || s.OutputThroughput <= 0 {
		return s, fmt.Errorf("bench: result-json %s: needs completed > 0, duration > 0 and output_throughput > 0 (got %d, %v, %v)",
			path, s.Completed, s.Duration, s.OutputThroughput)
	}
	return s, nil
}
