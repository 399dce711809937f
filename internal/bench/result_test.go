package bench

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"io"
	"math"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// syntheticResult is a small finished run with known numbers.
func syntheticResult() *Result {
	ms := func(v float64) time.Duration { return time.Duration(v * float64(time.Millisecond)) }
	start := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	var outs []RequestOutput
	for i := 0; i < 30; i++ {
		itl := make([]time.Duration, 9)
		for k := range itl {
			itl[k] = ms(20 + float64(i%5))
		}
		outs = append(outs, RequestOutput{
			Success: true, PromptLen: 100 + i, OutputTokens: 10, UsageReported: true,
			Start: start.Add(ms(float64(100 * i))), QueueTime: ms(1),
			TTFT: ms(50 + float64(i)), ITL: itl, Latency: ms(50 + float64(i) + 9*(20+float64(i%5))),
			GeneratedText: "ok",
		})
	}
	outs = append(outs, RequestOutput{Error: "HTTP 503: overloaded", PromptLen: 100, Start: start})
	r := &Result{
		Date: start, ModelID: "gemma-3-27b-it", NumPrompts: len(outs), RequestRate: math.Inf(1),
		Burstiness: 1, Duration: 3500 * time.Millisecond, Start: start, Outputs: outs,
		Percentiles: []float64{50, 99}, Goodput: map[string]float64{"ttft": 70},
	}
	r.Metrics = ComputeMetrics(outs, r.Duration, r.Percentiles, r.Goodput)
	return r
}

func TestResultJSONHasVLLMKeys(t *testing.T) {
	r := syntheticResult()
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"completed": 30.0, "failed": 1.0, "total_input_tokens": float64(30*100 + 29*30/2),
		"total_output_tokens": 300.0, "request_throughput": 30 / 3.5, "output_throughput": 300 / 3.5,
		"total_token_throughput": float64(30*100+29*30/2+300) / 3.5, "request_rate": "inf",
		"burstiness": 1.0, "max_concurrency": nil, "model_id": "gemma-3-27b-it", "duration": 3.5,
		"request_goodput": 21 / 3.5, // TTFT 50..70 ms of 50..79 ms pass the 70 ms SLO
	}
	for k, v := range want {
		if f, ok := v.(float64); ok {
			if g, ok := got[k].(float64); !ok || math.Abs(g-f) > 1e-9 {
				t.Errorf("%s = %v, want %v", k, got[k], v)
			}
		} else if got[k] != v {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
	for _, m := range []string{"ttft", "tpot", "itl", "e2el"} {
		for _, s := range []string{"mean", "median", "std", "p50", "p99"} {
			if _, ok := got[s+"_"+m+"_ms"].(float64); !ok {
				t.Errorf("no %s_%s_ms", s, m)
			}
		}
	}
	for _, k := range []string{"input_lens", "output_lens", "ttfts", "itls", "latencies", "start_times", "generated_texts", "errors"} {
		if l, ok := got[k].([]any); !ok || len(l) != 31 {
			t.Errorf("%s: %v", k, got[k])
		}
	}
	if !bytes.HasPrefix(b, []byte(`{"date":"20261127-120000","endpoint_type":"openai"`)) {
		t.Errorf("key order: %.80s", b)
	}
	if got["errors"].([]any)[30] != "HTTP 503: overloaded" {
		t.Errorf("errors %v", got["errors"])
	}

	path := filepath.Join(t.TempDir(), "r.json")
	if err := r.WriteJSON(path); err != nil {
		t.Fatal(err)
	}
	s, err := ReadFileSummary(path)
	if err != nil {
		t.Fatal(err)
	}
	if s.Completed != 30 || s.TotalOutputTokens != 300 || math.Abs(s.OutputThroughput-300/3.5) > 1e-9 || s.ModelID != "gemma-3-27b-it" {
		t.Errorf("summary %+v", s)
	}
}

func TestReport(t *testing.T) {
	var b bytes.Buffer
	if err := syntheticResult().Report(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"============ Serving Benchmark Result ============",
		"Successful requests:                     30",
		"Failed requests:                         1",
		"Request goodput (req/s):                 6.00",
		"Mean TTFT (ms):                          64.50",
		"P99 E2EL (ms):",
		"error: HTTP 503: overloaded",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
}

func TestChartIsSelfContained(t *testing.T) {
	var b bytes.Buffer
	if err := WriteChart(&b, syntheticResult()); err != nil {
		t.Fatal(err)
	}
	page := b.String()
	for _, banned := range []string{"<script", "src=", "href=", "@import", "url("} {
		if strings.Contains(strings.ToLower(page), banned) {
			t.Errorf("chart contains %q", banned)
		}
	}
	if n := strings.Count(page, "http"); n != strings.Count(page, `xmlns="http://www.w3.org/2000/svg"`) {
		t.Errorf("chart references %d URLs besides the SVG namespace", n-strings.Count(page, "xmlns"))
	}
	if n := strings.Count(page, "<svg"); n != 6 {
		t.Errorf("%d panels, want 6", n)
	}
	// Well-formed (XHTML-compatible) markup.
	dec := xml.NewDecoder(strings.NewReader(page))
	for {
		_, err := dec.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("chart is not well-formed: %v", err)
		}
	}
	// Each CDF runs left to right and bottom to top, from 0 to 1.
	re := regexp.MustCompile(`class="cdf"[^>]*points="([^"]*)"`)
	cdfs := re.FindAllStringSubmatch(page, -1)
	if len(cdfs) != 4 {
		t.Fatalf("%d CDF curves, want 4", len(cdfs))
	}
	for i, m := range cdfs {
		pts := strings.Fields(m[1])
		var px, py float64 = -1, math.Inf(1)
		for _, p := range pts {
			xy := strings.Split(p, ",")
			x, _ := strconv.ParseFloat(xy[0], 64)
			y, _ := strconv.ParseFloat(xy[1], 64)
			if x < px || y > py {
				t.Fatalf("CDF %d goes back at %s", i, p)
			}
			px, py = x, y
		}
		first := strings.Split(pts[0], ",")
		if y, _ := strconv.ParseFloat(first[1], 64); y != chartH-padB {
			t.Errorf("CDF %d starts at y=%v, want the axis (%d)", i, y, chartH-padB)
		}
		if py != padT {
			t.Errorf("CDF %d ends at y=%v, want the top (%d)", i, py, padT)
		}
	}
}

// The token series integrates to the output tokens; the in-flight series to the summed
// latencies.
func TestTimelines(t *testing.T) {
	r := syntheticResult()
	edges, tok, inFlight := timelines(r)
	var tokens, busy, latencies float64
	for i := range tok {
		w := edges[i+1] - edges[i]
		tokens += tok[i] * w
		busy += inFlight[i] * w
	}
	for _, o := range r.Outputs {
		latencies += o.Latency.Seconds()
	}
	if math.Abs(tokens-float64(r.Metrics.TotalOutput)) > 1e-6 {
		t.Errorf("token series integrates to %v, want %d", tokens, r.Metrics.TotalOutput)
	}
	if math.Abs(busy-latencies) > 1e-6 {
		t.Errorf("in-flight series integrates to %v s, want %v s", busy, latencies)
	}
}

func TestProgress(t *testing.T) {
	var b bytes.Buffer
	p := newProgress(&b, 3)
	for i := 0; i < 3; i++ {
		p.add()
	}
	p.finish()
	if !strings.Contains(b.String(), "   3/3 |") || !strings.Contains(b.String(), "100%") {
		t.Errorf("progress %q", b.String())
	}
	newProgress(nil, 3).add() // disabled: no panic, no output
}

func TestParseGoodput(t *testing.T) {
	got, err := ParseGoodput([]string{"ttft:500 tpot:50", "e2el:1000.5"})
	if err != nil || got["ttft"] != 500 || got["tpot"] != 50 || got["e2el"] != 1000.5 {
		t.Fatalf("%v %v", got, err)
	}
	for _, bad := range []string{"itl:5", "ttft", "ttft:-1", "ttft:fast", "tpot:NaN"} {
		if _, err := ParseGoodput([]string{bad}); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
