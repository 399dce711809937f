package bench

import (
	"fmt"
	"html"
	"io"
	"math"
	"slices"
	"strings"
	"time"
)

// Chart geometry, in SVG user units.
const (
	chartW, chartH             = 480, 300
	padL, padR, padT, padB     = 64, 16, 34, 44
	maxCDFPoints               = 800
	throughputBucketsPerRun    = 60
	minThroughputBucketSeconds = 0.05
)

// WriteChart writes a self-contained HTML page (inline SVG, no scripts, no external
// resources) with the CDFs of TTFT, TPOT, ITL and E2EL, output tokens per second over the
// run, requests in flight over the run, and the summary table.
func WriteChart(w io.Writer, r *Result) error {
	var b strings.Builder
	title := fmt.Sprintf("tpuserve bench: %s, %d prompts", r.ModelID, r.NumPrompts)
	b.WriteString("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\"/>\n")
	fmt.Fprintf(&b, "<title>%s</title>\n", html.EscapeString(title))
	b.WriteString(`<style>
body{font-family:system-ui,sans-serif;margin:24px;color:#222}
.grid{display:flex;flex-wrap:wrap;gap:16px}
table{border-collapse:collapse;margin-bottom:16px}
td,th{padding:2px 10px;text-align:right;border-bottom:1px solid #ddd}
th:first-child,td:first-child{text-align:left}
svg{background:#fff;border:1px solid #ccc}
</style>
</head>
<body>
`)
	fmt.Fprintf(&b, "<h1>%s</h1>\n", html.EscapeString(title))
	writeSummaryTable(&b, r)
	b.WriteString("<div class=\"grid\">\n")

	m := r.Metrics
	var ttfts, tpots, itls, e2els []float64
	for i, o := range r.Outputs {
		if !o.Success {
			continue
		}
		ttfts = append(ttfts, o.TTFT.Seconds()*1000)
		e2els = append(e2els, o.Latency.Seconds()*1000)
		if n := m.OutputLens[i]; n > 1 {
			tpots = append(tpots, (o.Latency-o.TTFT).Seconds()*1000/float64(n-1))
		}
		for _, d := range o.ITL {
			itls = append(itls, d.Seconds()*1000)
		}
	}
	cdf(&b, "CDF of time to first token", "TTFT (ms)", ttfts)
	cdf(&b, "CDF of time per output token", "TPOT (ms)", tpots)
	cdf(&b, "CDF of inter-token latency (per chunk)", "ITL (ms)", itls)
	cdf(&b, "CDF of end-to-end latency", "E2EL (ms)", e2els)
	tx, ty, cy := timelines(r)
	series(&b, "Output token throughput", "time since start (s)", "tokens/s", tx, ty)
	series(&b, "Requests in flight", "time since start (s)", "requests", tx, cy)
	b.WriteString("</div>\n</body>\n</html>\n")
	_, err := io.WriteString(w, b.String())
	return err
}

func writeSummaryTable(b *strings.Builder, r *Result) {
	m := r.Metrics
	b.WriteString("<table>\n<tr><th>metric</th><th>value</th></tr>\n")
	row := func(k string, v string) {
		fmt.Fprintf(b, "<tr><td>%s</td><td>%s</td></tr>\n", html.EscapeString(k), html.EscapeString(v))
	}
	rate := "inf"
	if !math.IsInf(r.RequestRate, 1) {
		rate = fmt.Sprintf("%.2f", r.RequestRate)
	}
	row("request rate (req/s)", rate)
	row("completed / failed", fmt.Sprintf("%d / %d", m.Completed, m.Failed))
	row("duration (s)", fmt.Sprintf("%.2f", r.Duration.Seconds()))
	row("request throughput (req/s)", fmt.Sprintf("%.2f", m.RequestThroughput))
	row("output throughput (tok/s)", fmt.Sprintf("%.2f", m.OutputThroughput))
	row("total token throughput (tok/s)", fmt.Sprintf("%.2f", m.TotalTokenThroughput))
	b.WriteString("</table>\n<table>\n<tr><th>latency (ms)</th><th>mean</th><th>median</th>")
	for _, p := range m.TTFT.Percentiles {
		fmt.Fprintf(b, "<th>p%s</th>", percentileWord(p.P))
	}
	b.WriteString("</tr>\n")
	for _, s := range []struct {
		n string
		s Summary
	}{{"TTFT", m.TTFT}, {"TPOT", m.TPOT}, {"ITL", m.ITL}, {"E2EL", m.E2EL}} {
		fmt.Fprintf(b, "<tr><td>%s</td><td>%.2f</td><td>%.2f</td>", s.n, s.s.Mean, s.s.Median)
		for _, p := range s.s.Percentiles {
			fmt.Fprintf(b, "<td>%.2f</td>", p.Value)
		}
		b.WriteString("</tr>\n")
	}
	b.WriteString("</table>\n")
}

// niceStep returns a 1-2-5 step giving about n ticks over span.
func niceStep(span float64, n int) float64 {
	if span <= 0 {
		return 1
	}
	raw := span / float64(n)
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, f := range []float64{1, 2, 5, 10} {
		if f*mag >= raw {
			return f * mag
		}
	}
	return 10 * mag
}

// axes draws the frame, ticks and labels of a panel for x in [0, xMax] and y in [0, yMax]
// and returns the mapping to SVG coordinates.
func axes(b *strings.Builder, title, xLabel, yLabel string, xMax, yMax float64, yStep float64) (fx, fy func(float64) float64) {
	plotW := float64(chartW - padL - padR)
	plotH := float64(chartH - padT - padB)
	fx = func(x float64) float64 { return padL + x/xMax*plotW }
	fy = func(y float64) float64 { return padT + plotH - y/yMax*plotH }
	fmt.Fprintf(b, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" role=\"img\">\n", chartW, chartH, chartW, chartH)
	fmt.Fprintf(b, "<title>%s</title>\n", html.EscapeString(title))
	fmt.Fprintf(b, "<text x=\"%d\" y=\"20\" font-size=\"14\" font-weight=\"bold\">%s</text>\n", padL, html.EscapeString(title))
	xs := niceStep(xMax, 5)
	for x := 0.0; x <= xMax*1.0001; x += xs {
		X := fx(x)
		fmt.Fprintf(b, "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#eee\"/>", X, padT, X, fy(0))
		fmt.Fprintf(b, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"11\" text-anchor=\"middle\">%s</text>\n", X, fy(0)+14, tick(x, xs))
	}
	for y := 0.0; y <= yMax*1.0001; y += yStep {
		Y := fy(y)
		fmt.Fprintf(b, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#eee\"/>", padL, Y, fx(xMax), Y)
		fmt.Fprintf(b, "<text x=\"%d\" y=\"%.1f\" font-size=\"11\" text-anchor=\"end\">%s</text>\n", padL-4, Y+4, tick(y, yStep))
	}
	fmt.Fprintf(b, "<rect x=\"%d\" y=\"%d\" width=\"%.0f\" height=\"%.0f\" fill=\"none\" stroke=\"#444\"/>\n", padL, padT, plotW, plotH)
	fmt.Fprintf(b, "<text x=\"%.1f\" y=\"%d\" font-size=\"12\" text-anchor=\"middle\">%s</text>\n", padL+plotW/2, chartH-8, html.EscapeString(xLabel))
	fmt.Fprintf(b, "<text x=\"14\" y=\"%.1f\" font-size=\"12\" text-anchor=\"middle\" transform=\"rotate(-90 14 %.1f)\">%s</text>\n", padT+plotH/2, padT+plotH/2, html.EscapeString(yLabel))
	return fx, fy
}

func tick(v, step float64) string {
	if step >= 1 {
		return fmt.Sprintf("%.0f", v)
	}
	digits := int(math.Ceil(-math.Log10(step)))
	return fmt.Sprintf("%.*f", digits, v)
}

// cdf draws the empirical CDF of xs (a step function, down-sampled to quantiles when long).
func cdf(b *strings.Builder, title, xLabel string, xs []float64) {
	if len(xs) == 0 {
		noData(b, title)
		return
	}
	sorted := slices.Clone(xs)
	slices.Sort(sorted)
	xMax := sorted[len(sorted)-1] * 1.05
	if xMax <= 0 {
		xMax = 1
	}
	fx, fy := axes(b, title, xLabel, "fraction of samples", xMax, 1, 0.2)
	var pts []string
	n := len(sorted)
	add := func(x, y float64) { pts = append(pts, fmt.Sprintf("%.1f,%.1f", fx(x), fy(y))) }
	add(sorted[0], 0)
	if n <= maxCDFPoints {
		for i, x := range sorted {
			add(x, float64(i)/float64(n))
			add(x, float64(i+1)/float64(n))
		}
	} else {
		prev := 0.0
		for k := 1; k <= maxCDFPoints; k++ {
			q := float64(k) / maxCDFPoints
			x := percentileSorted(sorted, q*100)
			add(x, prev)
			add(x, q)
			prev = q
		}
	}
	fmt.Fprintf(b, "<polyline class=\"cdf\" fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"1.5\" points=\"%s\"/>\n</svg>\n", strings.Join(pts, " "))
}

func noData(b *strings.Builder, title string) {
	fmt.Fprintf(b, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" role=\"img\">\n", chartW, chartH, chartW, chartH)
	fmt.Fprintf(b, "<title>%s</title>\n<text x=\"%d\" y=\"20\" font-size=\"14\" font-weight=\"bold\">%s</text>\n", html.EscapeString(title), padL, html.EscapeString(title))
	fmt.Fprintf(b, "<text x=\"%d\" y=\"%d\" font-size=\"12\" text-anchor=\"middle\">no data</text>\n</svg>\n", chartW/2, chartH/2)
}

// series draws a step series: ys[i] holds over [xs[i], xs[i+1]).
func series(b *strings.Builder, title, xLabel, yLabel string, xs, ys []float64) {
	if len(xs) < 2 {
		noData(b, title)
		return
	}
	yMax := slices.Max(ys) * 1.1
	if yMax <= 0 {
		yMax = 1
	}
	fx, fy := axes(b, title, xLabel, yLabel, xs[len(xs)-1], yMax, niceStep(yMax, 5))
	var pts []string
	for i := 0; i+1 < len(xs); i++ {
		pts = append(pts, fmt.Sprintf("%.1f,%.1f %.1f,%.1f", fx(xs[i]), fy(ys[i]), fx(xs[i+1]), fy(ys[i])))
	}
	fmt.Fprintf(b, "<polyline class=\"series\" fill=\"none\" stroke=\"#d62728\" stroke-width=\"1.5\" points=\"%s\"/>\n</svg>\n", strings.Join(pts, " "))
}

// timelines buckets token events and requests in flight over the run. It returns bucket
// edges (seconds since the run started, one more than buckets), output tokens per second
// in each bucket, and the mean number of requests in flight in each bucket.
func timelines(r *Result) (edges, tokPerS, inFlight []float64) {
	end := r.Duration.Seconds()
	if end <= 0 {
		return nil, nil, nil
	}
	width := math.Max(end/throughputBucketsPerRun, minThroughputBucketSeconds)
	n := int(math.Ceil(end / width))
	edges = make([]float64, n+1)
	for i := range edges {
		edges[i] = float64(i) * width
	}
	tokPerS = make([]float64, n)
	inFlight = make([]float64, n)
	at := func(t time.Time) float64 { return t.Sub(r.Start).Seconds() }
	for i, o := range r.Outputs {
		if !o.Success {
			continue
		}
		// Each chunk gets an equal share of the request's output tokens, so the series
		// integrates to the output token count even when chunks bundle several tokens.
		chunks := 1 + len(o.ITL)
		perChunk := float64(r.Metrics.OutputLens[i]) / float64(chunks)
		t := o.Start.Add(o.TTFT)
		put := func(t time.Time) {
			if k := int(at(t) / width); k >= 0 && k < n {
				tokPerS[k] += perChunk / width
			}
		}
		put(t)
		for _, d := range o.ITL {
			t = t.Add(d)
			put(t)
		}
		// Time in flight per bucket, as a fraction of the bucket.
		s, e := at(o.Start), at(o.Start.Add(o.Latency))
		for k := max(int(s/width), 0); k < n && float64(k)*width < e; k++ {
			lo, hi := math.Max(s, float64(k)*width), math.Min(e, float64(k+1)*width)
			if hi > lo {
				inFlight[k] += (hi - lo) / width
			}
		}
	}
	return edges, tokPerS, inFlight
}
