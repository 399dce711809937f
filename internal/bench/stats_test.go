package bench

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// Expected values are numpy's (np.percentile with the default linear method, np.std with
// ddof=0), worked out by hand for this sample.
func TestSummarizeMatchesNumpy(t *testing.T) {
	xs := []float64{0.012, 0.003, 0.044, 0.021, 0.009, 0.030, 0.017} // seconds
	ps := []float64{0, 1, 25, 50, 90, 99, 99.9, 100}
	want := []float64{3, 3.36, 10.5, 17, 35.6, 43.16, 43.916, 44}
	s := summarize(xs, ps)
	near := func(a, b float64) bool { return math.Abs(a-b) < 1e-9 }
	if !near(s.Mean, 19.428571428571427) || !near(s.Std, 12.860317068487884) || !near(s.Median, 17) || s.N != 7 {
		t.Errorf("mean %v std %v median %v n %d", s.Mean, s.Std, s.Median, s.N)
	}
	for i, p := range s.Percentiles {
		if p.P != ps[i] || !near(p.Value, want[i]) {
			t.Errorf("p%v = %v, want %v", p.P, p.Value, want[i])
		}
	}
	if !slices.Equal(xs, []float64{0.012, 0.003, 0.044, 0.021, 0.009, 0.030, 0.017}) {
		t.Errorf("summarize reordered its input")
	}
	empty := summarize(nil, []float64{99})
	if empty.Mean != 0 || empty.Percentiles[0].Value != 0 || empty.N != 0 {
		t.Errorf("empty sample %+v, want zeros as numpy over [0]", empty)
	}
}

// ksStatistic is the Kolmogorov–Smirnov distance between the sample and the CDF.
func ksStatistic(xs []float64, cdf func(float64) float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	n := float64(len(s))
	d := 0.0
	for i, x := range s {
		f := cdf(x)
		d = math.Max(d, math.Max(f-float64(i)/n, float64(i+1)/n-f))
	}
	return d
}

// ksCritical is the KS critical value at α = 0.001 (two-sided, asymptotic).
func ksCritical(n int) float64 {
	return math.Sqrt(-0.5*math.Log(0.001/2)) / math.Sqrt(float64(n))
}

func TestGammaDistribution(t *testing.T) {
	const n = 20000
	rng := rand.New(rand.NewPCG(42, 43))
	cases := []struct {
		shape, scale float64
		cdf          func(x float64) float64
	}{
		{1, 0.1, func(x float64) float64 { return 1 - math.Exp(-x/0.1) }},
		{2, 0.05, func(x float64) float64 { y := x / 0.05; return 1 - math.Exp(-y)*(1+y) }},
		{3, 0.5, func(x float64) float64 { y := x / 0.5; return 1 - math.Exp(-y)*(1+y+y*y/2) }},
		// Gamma(1/2, θ) is θ·χ²₁/2, whose CDF is erf(√(x/θ)).
		{0.5, 0.2, func(x float64) float64 { return math.Erf(math.Sqrt(x / 0.2)) }},
	}
	for _, tc := range cases {
		xs := make([]float64, n)
		var sum, sq float64
		for i := range xs {
			xs[i] = Gamma(rng, tc.shape, tc.scale)
			sum += xs[i]
			sq += xs[i] * xs[i]
		}
		mean := sum / n
		variance := sq/n - mean*mean
		wantMean, wantVar := tc.shape*tc.scale, tc.shape*tc.scale*tc.scale
		// Five standard errors of the mean: fails by chance with probability ~1e-6.
		if se := math.Sqrt(wantVar / n); math.Abs(mean-wantMean) > 5*se {
			t.Errorf("shape %v: mean %v, want %v ± %v", tc.shape, mean, wantMean, 5*se)
		}
		if math.Abs(variance-wantVar) > 0.1*wantVar {
			t.Errorf("shape %v: variance %v, want %v", tc.shape, variance, wantVar)
		}
		if d, crit := ksStatistic(xs, tc.cdf), ksCritical(n); d > crit {
			t.Errorf("shape %v: KS D = %.4f > %.4f", tc.shape, d, crit)
		}
	}
	// Power: shape-2 samples are not exponential with the same mean.
	xs := make([]float64, n)
	for i := range xs {
		xs[i] = Gamma(rng, 2, 0.05)
	}
	if d := ksStatistic(xs, func(x float64) float64 { return 1 - math.Exp(-x/0.1) }); d <= ksCritical(n) {
		t.Errorf("KS cannot tell Gamma(2) from an exponential of the same mean (D = %.4f)", d)
	}
}

func TestSchedule(t *testing.T) {
	rng := func() *rand.Rand { return rand.New(rand.NewPCG(5, 6)) }
	const n, rate = 20000, 10.0
	poisson, err := Schedule(n, rate, 1, rng())
	if err != nil {
		t.Fatal(err)
	}
	// vLLM rescales so the last request goes out at n/rate.
	if got, want := poisson[n-1], time.Duration(n/rate*float64(time.Second)); absDur(got-want) > time.Microsecond {
		t.Errorf("last send at %v, want %v", got, want)
	}
	gaps := make([]float64, n)
	prev := time.Duration(0)
	for i, d := range poisson {
		if d < prev {
			t.Fatalf("send %d at %v before send %d at %v", i, d, i-1, prev)
		}
		gaps[i] = (d - prev).Seconds()
		prev = d
	}
	expCDF := func(x float64) float64 { return 1 - math.Exp(-rate*x) }
	if d, crit := ksStatistic(gaps, expCDF), ksCritical(n); d > crit {
		t.Errorf("Poisson schedule gaps: KS D = %.4f > %.4f", d, crit)
	}
	// Given the last arrival, Poisson arrival times are uniform order statistics.
	T := poisson[n-1].Seconds()
	var u []float64
	for _, d := range poisson[:n-1] {
		u = append(u, d.Seconds()/T)
	}
	if d, crit := ksStatistic(u, func(x float64) float64 { return x }), ksCritical(n-1); d > crit {
		t.Errorf("Poisson arrival times are not uniform given the last: KS D = %.4f > %.4f", d, crit)
	}

	// burstiness +Inf: evenly spaced at 1/rate — and the exponential test rejects it.
	even, _ := Schedule(n, rate, math.Inf(1), rng())
	for i, d := range even {
		if want := time.Duration(float64(i+1) / rate * float64(time.Second)); absDur(d-want) > time.Microsecond {
			t.Fatalf("even send %d at %v, want %v", i, d, want)
		}
	}
	evenGaps := make([]float64, n)
	for i := range evenGaps {
		evenGaps[i] = 1 / rate
	}
	if d := ksStatistic(evenGaps, expCDF); d <= ksCritical(n) {
		t.Errorf("KS check accepts even spacing as Poisson (D = %.4f)", d)
	}

	// Burstiness 4: Gamma gaps with coefficient of variation 1/√4.
	bursty, _ := Schedule(n, rate, 4, rng())
	var sum, sq float64
	prev = 0
	for _, d := range bursty {
		g := (d - prev).Seconds()
		sum += g
		sq += g * g
		prev = d
	}
	mean := sum / n
	cv := math.Sqrt(sq/n-mean*mean) / mean
	if math.Abs(cv-0.5) > 0.02 {
		t.Errorf("burstiness 4: coefficient of variation %.3f, want 0.5", cv)
	}

	all, _ := Schedule(5, math.Inf(1), 1, rng())
	if !slices.Equal(all, make([]time.Duration, 5)) {
		t.Errorf("infinite rate: %v, want all at 0", all)
	}
	a, _ := Schedule(100, 3, 1, rand.New(rand.NewPCG(9, 9)))
	b, _ := Schedule(100, 3, 1, rand.New(rand.NewPCG(9, 9)))
	if !slices.Equal(a, b) {
		t.Errorf("same seed, different schedules")
	}
	for _, bad := range []struct {
		n        int
		rate, bu float64
	}{{0, 1, 1}, {5, 0, 1}, {5, -1, 1}, {5, 1, 0}, {5, math.NaN(), 1}} {
		if _, err := Schedule(bad.n, bad.rate, bad.bu, rng()); err == nil {
			t.Errorf("Schedule(%d, %v, %v) accepted", bad.n, bad.rate, bad.bu)
		}
	}
}

func absDur(d time.Duration) time.Duration {
	if d < 0 {
		return -d
	}
	return d
}

func TestComputeMetricsDefinitions(t *testing.T) {
	ms := func(v float64) time.Duration { return time.Duration(v * float64(time.Millisecond)) }
	t0 := time.Unix(1000, 0)
	outs := []RequestOutput{
		// 5 tokens in 3 chunks: TPOT uses usage (5), ITL has one entry per chunk gap.
		{Success: true, PromptLen: 10, OutputTokens: 5, UsageReported: true, Start: t0,
			TTFT: ms(100), ITL: []time.Duration{ms(40), ms(60)}, Latency: ms(200)},
		// One output token: no TPOT sample, TPOT 0 for goodput.
		{Success: true, PromptLen: 20, OutputTokens: 1, UsageReported: true, Start: t0.Add(ms(50)),
			TTFT: ms(300), Latency: ms(300)},
		{Success: false, Error: "boom", PromptLen: 99, Start: t0},
		// No usage: chunks are counted (1 + 2 ITLs = 3 tokens).
		{Success: true, PromptLen: 5, Start: t0.Add(ms(1500)), TTFT: ms(50), ITL: []time.Duration{ms(10), ms(10)}, Latency: ms(70)},
	}
	m := ComputeMetrics(outs, 2*time.Second, []float64{99}, map[string]float64{"ttft": 150, "tpot": 30})
	if m.Completed != 3 || m.Failed != 1 || m.TotalInput != 35 || m.TotalOutput != 9 {
		t.Fatalf("counts %+v", m)
	}
	if !slices.Equal(m.OutputLens, []int{5, 1, 0, 3}) {
		t.Errorf("output lens %v", m.OutputLens)
	}
	// TPOT samples: (200-100)/4 = 25 ms and (70-50)/2 = 10 ms.
	if m.TPOT.N != 2 || math.Abs(m.TPOT.Mean-17.5) > 1e-9 {
		t.Errorf("TPOT %+v", m.TPOT)
	}
	if m.ITL.N != 4 || math.Abs(m.ITL.Mean-30) > 1e-9 {
		t.Errorf("ITL %+v", m.ITL)
	}
	if math.Abs(m.E2EL.Mean-190) > 1e-9 || math.Abs(m.TTFT.Median-100) > 1e-9 {
		t.Errorf("E2EL %+v TTFT %+v", m.E2EL, m.TTFT)
	}
	// Good: request 0 (ttft 100, tpot 25) and request 3 (ttft 50, tpot 10); request 1's
	// TTFT of 300 ms misses.
	if m.RequestGoodput != 1 || m.RequestThroughput != 1.5 || m.OutputThroughput != 4.5 || m.TotalTokenThroughput != 22 {
		t.Errorf("throughputs %v %v %v %v", m.RequestGoodput, m.RequestThroughput, m.OutputThroughput, m.TotalTokenThroughput)
	}
	// Requests 0 and 1 overlap; request 3 starts after both ended.
	if m.MaxConcurrentRequests != 2 {
		t.Errorf("max concurrency %d", m.MaxConcurrentRequests)
	}
	// Second 0 holds request 0's 3 chunks and request 1's one; second 1 request 3's 3.
	if m.MaxOutputTokensPerS != 4 {
		t.Errorf("max output tokens/s %v", m.MaxOutputTokensPerS)
	}
}
