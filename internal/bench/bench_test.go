package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// Per-request plans whose values differ between requests, so that means, medians, spreads
// and tails of every metric differ and a wrong statistic cannot pass by coincidence. TTFT
// spreads densely over 60..100 ms (dense, so one stalled request moves an order statistic
// by about one sample's spacing, not by a level). TPOT is 30..36 ms for three requests in
// four and 55..61 ms for the rest: the goodput threshold sits in that gap, where timing
// noise cannot move a request across it, and the gap lies near the 75th percentile, away
// from the 50th, 90th and 99th that are checked. Early EOS stops at 5, 7 or 9 tokens
// (max_tokens is 9..15): odd, so that with two tokens per chunk TPOT stays the per-token
// delay.
func variedPlan(chunkSize int) func(promptLen, maxTokens int, ignoreEOS bool) fakePlan {
	return func(promptLen, maxTokens int, ignoreEOS bool) fakePlan {
		out := maxTokens
		if !ignoreEOS {
			out = min(maxTokens, 5+2*(promptLen%3))
		}
		tpot := 30 * time.Millisecond
		if (promptLen/4)%4 == 0 {
			tpot = 55 * time.Millisecond
		}
		return fakePlan{
			TTFT:      60*time.Millisecond + time.Duration(promptLen%41)*time.Millisecond,
			TPOT:      tpot + time.Duration(promptLen%7)*time.Millisecond,
			Out:       out,
			ChunkSize: chunkSize,
		}
	}
}

// within reports whether got is within 5% of want.
func within(got, want float64) bool {
	return math.Abs(got-want) <= 0.05*math.Abs(want)
}

// deviations collects timing comparisons that missed; exact checks fail the test at once.
type deviations []string

func (d *deviations) add(format string, args ...any) { *d = append(*d, fmt.Sprintf(format, args...)) }

// mean compares a mean with the configured truth, unless the server itself missed its
// configured schedule by more than 2.5% (then only the recorded truth is meaningful).
func (d *deviations) mean(t *testing.T, name string, got Summary, configured, recorded []float64) {
	w := summarize(configured, nil).Mean
	if r := summarize(recorded, nil).Mean; math.Abs(r-w) > 0.025*w {
		t.Logf("%s: the server ran %.1f%% off its configured delays (machine busy); compared with what it did instead", name, 100*(r-w)/w)
		return
	}
	if !within(got.Mean, w) {
		d.add("%s mean = %.3f ms, truth %.3f ms", name, got.Mean, w)
	}
}

// summary compares every statistic of a metric with the truth.
func (d *deviations) summary(t *testing.T, name string, got Summary, wantSeconds []float64, ps []float64) {
	want := summarize(wantSeconds, ps)
	if got.N != want.N {
		t.Fatalf("%s: %d samples, server produced %d", name, got.N, want.N)
	}
	check := func(stat string, g, w float64) {
		if !within(g, w) {
			d.add("%s %s = %.3f ms, truth %.3f ms (off by %.1f%%)", name, stat, g, w, 100*(g-w)/w)
		}
	}
	check("mean", got.Mean, want.Mean)
	check("median", got.Median, want.Median)
	check("std", got.Std, want.Std)
	for i := range ps {
		check("p"+percentileWord(ps[i]), got.Percentiles[i].Value, want.Percentiles[i].Value)
	}
}

// maxAttempts bounds reruns of a timed run whose numbers a busy machine disturbed: the
// client reads a chunk late when the OS deschedules it between the server's write and its
// read, which no bookkeeping can see. A bench with a systematic error misses on every
// attempt; a correct one needs a single quiet run.
const maxAttempts = 4

// TestMetricsMatchTheServersTruth runs the benchmark against a server with known delays and
// checks every reported metric against what the server did (within 5%), the means also
// against what it was configured to do, and token counts exactly.
func TestMetricsMatchTheServersTruth(t *testing.T) {
	cases := []struct {
		name      string
		chunkSize int
		ignoreEOS bool
		n, conc   int
		rate      float64
	}{
		{"one token per chunk, ignore_eos, capped concurrency", 1, true, 40, 8, math.Inf(1)},
		{"two tokens per chunk, early EOS, paced", 2, false, 32, 0, 16},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for attempt := 1; ; attempt++ {
				dev := accuracyRun(t, tc.chunkSize, tc.ignoreEOS, tc.n, tc.conc, tc.rate)
				if len(dev) == 0 {
					return
				}
				if attempt == maxAttempts {
					for _, d := range dev {
						t.Error(d)
					}
					return
				}
				t.Logf("attempt %d: %d timing deviations, retrying: %q", attempt, len(dev), dev)
			}
		})
	}
}

// accuracyRun is one timed run; it fails the test on exact mismatches and returns the
// timing deviations.
func accuracyRun(t *testing.T, chunkSize int, ignoreEOS bool, n, conc int, rate float64) deviations {
	t.Helper()
	ps := []float64{50, 90, 99}
	goodput := map[string]float64{"tpot": 46}
	var dev deviations
	fake := newFakeServer(t, "fake-gemma", variedPlan(chunkSize))
	reqs, err := RandomDataset(RandomOptions{
		NumPrompts: n, InputLen: 100, OutputLen: 12, RangeRatio: 0.25,
		TokenLo: DefaultTokenLo, TokenHi: DefaultTokenHi,
	}, rand.New(rand.NewPCG(1, 2)))
	if err != nil {
		t.Fatal(err)
	}
	var progress bytes.Buffer
	wallStart := time.Now()
	res, err := Run(context.Background(), Config{
		BaseURL: fake.srv.URL, RequestRate: rate, MaxConcurrency: conc,
		IgnoreEOS: ignoreEOS, Percentiles: ps, Goodput: goodput, Seed: 7,
		Progress: &progress,
	}, reqs)
	wall := time.Since(wallStart).Seconds()
	if err != nil {
		t.Fatal(err)
	}
	if res.ModelID != "fake-gemma" {
		t.Errorf("model %q, want the server's first model", res.ModelID)
	}
	m := res.Metrics
	if m.Completed != n || m.Failed != 0 {
		for _, o := range res.Outputs {
			if !o.Success {
				t.Logf("error: %s", o.Error)
			}
		}
		t.Fatalf("completed %d, failed %d", m.Completed, m.Failed)
	}
	recs, _ := fake.snapshot()
	rec, plan := recordedTruth(recs), plannedTruth(recs)

	// Token counts: exactly the server's usage.
	if m.TotalOutput != rec.out || m.TotalInput != rec.in {
		t.Errorf("tokens in/out %d/%d, server's usage %d/%d", m.TotalInput, m.TotalOutput, rec.in, rec.out)
	}
	gotLens := slices.Clone(m.OutputLens)
	slices.Sort(gotLens)
	slices.Sort(rec.usage)
	if !slices.Equal(gotLens, rec.usage) {
		t.Errorf("output lens %v, server's usage %v", gotLens, rec.usage)
	}
	if !ignoreEOS {
		sumMax := 0
		for _, r := range reqs {
			sumMax += r.ExpectedOutputLen
		}
		if sumMax == rec.out {
			t.Fatalf("the EOS case generated max_tokens everywhere; it tests nothing")
		}
	}

	dev.summary(t, "TTFT", m.TTFT, rec.ttft, ps)
	dev.summary(t, "TPOT", m.TPOT, rec.tpot, ps)
	dev.summary(t, "ITL", m.ITL, rec.itl, ps)
	dev.summary(t, "E2EL", m.E2EL, rec.e2el, ps)
	// Means against the configured delays too, wherever the server kept its schedule
	// (on a loaded machine its sleeps overrun; the checks above still hold).
	dev.mean(t, "TTFT vs configured", m.TTFT, plan.ttft, rec.ttft)
	dev.mean(t, "TPOT vs configured", m.TPOT, plan.tpot, rec.tpot)
	dev.mean(t, "ITL vs configured", m.ITL, plan.itl, rec.itl)
	dev.mean(t, "E2EL vs configured", m.E2EL, plan.e2el, rec.e2el)

	// Throughputs against the wall clock around the run.
	for _, th := range []struct {
		name      string
		got, want float64
	}{
		{"request throughput", m.RequestThroughput, float64(n) / wall},
		{"output throughput", m.OutputThroughput, float64(rec.out) / wall},
		{"total token throughput", m.TotalTokenThroughput, float64(rec.in+rec.out) / wall},
	} {
		if !within(th.got, th.want) {
			dev.add("%s %.2f/s, truth %.2f/s", th.name, th.got, th.want)
		}
	}
	// Goodput: requests whose TPOT, as the server produced it, meets the SLO.
	good, planGood := 0, 0
	for i := range rec.allTPOT {
		if rec.allTPOT[i] <= 0.046 {
			good++
		}
		if plan.allTPOT[i] <= 0.046 {
			planGood++
		}
	}
	if planGood == 0 || planGood == n {
		t.Fatalf("goodput SLO passes %d of %d planned requests; pick a threshold that splits them", planGood, n)
	}
	if !within(m.RequestGoodput, float64(good)/wall) {
		dev.add("goodput %.3f req/s, truth %d good requests / %.2fs = %.3f", m.RequestGoodput, good, wall, float64(good)/wall)
	}
	if conc > 0 && m.MaxConcurrentRequests > conc {
		t.Errorf("%d requests in flight at once, cap %d", m.MaxConcurrentRequests, conc)
	}
	if !strings.Contains(progress.String(), fmt.Sprintf("%d/%d", n, n)) {
		t.Errorf("progress bar never reached %d/%d: %q", n, n, progress.String())
	}

	// The result JSON carries vLLM's keys with the same numbers.
	b, err := json.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	for key, want := range map[string]float64{
		"completed":           float64(m.Completed),
		"total_output_tokens": float64(rec.out),
		"mean_ttft_ms":        m.TTFT.Mean,
		"p99_itl_ms":          m.ITL.Percentiles[2].Value,
		"median_e2el_ms":      m.E2EL.Median,
		"p90_tpot_ms":         m.TPOT.Percentiles[1].Value,
		"output_throughput":   m.OutputThroughput,
		"request_goodput":     m.RequestGoodput,
	} {
		if v, ok := got[key].(float64); !ok || v != want {
			t.Errorf("result JSON %s = %v, want %v", key, got[key], want)
		}
	}
	return dev
}

// TestPoissonArrivalsOnTheWire checks the send times the server saw: their mean gap is
// 1/rate and the gaps are exponential (Kolmogorov–Smirnov at α = 0.001; evenly spaced
// sends, the obvious bug, give D ≈ 0.63 against a critical value near 0.15).
func TestPoissonArrivalsOnTheWire(t *testing.T) {
	for attempt := 1; ; attempt++ {
		dev := poissonRun(t)
		if len(dev) == 0 {
			return
		}
		if attempt == maxAttempts {
			for _, d := range dev {
				t.Error(d)
			}
			return
		}
		t.Logf("attempt %d: %q; retrying", attempt, dev)
	}
}

func poissonRun(t *testing.T) deviations {
	const n, rate = 160, 40.0
	var dev deviations
	fake := newFakeServer(t, "fake", func(int, int, bool) fakePlan {
		return fakePlan{TTFT: time.Millisecond, TPOT: time.Millisecond, Out: 2, ChunkSize: 1}
	})
	reqs, err := RandomDataset(RandomOptions{NumPrompts: n, InputLen: 8, OutputLen: 2, TokenLo: 10, TokenHi: 500}, rand.New(rand.NewPCG(3, 4)))
	if err != nil {
		t.Fatal(err)
	}
	res, err := Run(context.Background(), Config{BaseURL: fake.srv.URL, Model: "fake", RequestRate: rate, Seed: 11}, reqs)
	if err != nil {
		t.Fatal(err)
	}
	if res.Metrics.Completed != n {
		t.Fatalf("completed %d of %d", res.Metrics.Completed, n)
	}
	_, arrived := fake.snapshot()
	slices.SortFunc(arrived, func(a, b time.Time) int { return a.Compare(b) })
	gaps := make([]float64, 0, n-1)
	for i := 1; i < len(arrived); i++ {
		gaps = append(gaps, arrived[i].Sub(arrived[i-1]).Seconds())
	}
	mean := 0.0
	for _, g := range gaps {
		mean += g
	}
	mean /= float64(len(gaps))
	if !within(mean, 1/rate) {
		dev.add("mean inter-arrival %.4fs, want %.4fs", mean, 1/rate)
	}
	d := ksStatistic(gaps, func(x float64) float64 { return 1 - math.Exp(-rate*x) })
	if crit := ksCritical(len(gaps)); d > crit {
		dev.add("inter-arrival times are not exponential: KS D = %.3f > %.3f", d, crit)
	}
	// The same statistic rejects evenly spaced sends: the check has power.
	even := make([]float64, len(gaps))
	for i := range even {
		even[i] = 1 / rate
	}
	if d := ksStatistic(even, func(x float64) float64 { return 1 - math.Exp(-rate*x) }); d <= ksCritical(len(even)) {
		t.Errorf("KS check cannot tell even spacing from Poisson (D = %.3f)", d)
	}
	return dev
}

func TestRunRefusesBadConfig(t *testing.T) {
	reqs := []SampleRequest{{Prompt: []int{1, 2}, PromptLen: 2, ExpectedOutputLen: 1}}
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"no url", Config{}, "base-url"},
		{"bad url", Config{BaseURL: "localhost:8000"}, "base-url"},
		{"chat endpoint", Config{BaseURL: "http://x", Endpoint: "/v1/chat/completions"}, "endpoint"},
		{"negative rate", Config{BaseURL: "http://x", Model: "m", RequestRate: -1}, "request-rate"},
		{"negative burstiness", Config{BaseURL: "http://x", Model: "m", Burstiness: -2}, "burstiness"},
		{"negative concurrency", Config{BaseURL: "http://x", MaxConcurrency: -1}, "max-concurrency"},
		{"percentile", Config{BaseURL: "http://x", Percentiles: []float64{101}}, "percentiles"},
		{"goodput key", Config{BaseURL: "http://x", Goodput: map[string]float64{"itl": 1}}, "goodput"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Run(context.Background(), tc.cfg, reqs)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one naming %s", err, tc.want)
			}
		})
	}
}

func TestReadyCheckFailsOnABrokenServer(t *testing.T) {
	fake := newFakeServer(t, "right-name", variedPlan(1))
	reqs := []SampleRequest{{Prompt: []int{5, 6, 7}, PromptLen: 3, ExpectedOutputLen: 2}}
	_, err := Run(context.Background(), Config{BaseURL: fake.srv.URL, Model: "wrong-name", ReadyTimeout: 300 * time.Millisecond}, reqs)
	if err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("err = %v, want the initial test request's HTTP 404", err)
	}
}
