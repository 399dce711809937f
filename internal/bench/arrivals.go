package bench

import (
	"fmt"
	"math"
	"math/rand/v2"
	"time"
)

// Schedule returns when each of n requests is sent, as offsets from the start of the run,
// exactly as vLLM's get_request computes them: inter-arrival times drawn from a Gamma
// distribution with shape burstiness and mean 1/rate (burstiness 1 is a Poisson process;
// below 1 burstier, above 1 more regular, +Inf evenly spaced), accumulated, then rescaled so
// that the last request is sent at n/rate — which keeps the offered load of runs with
// different seeds identical. rate +Inf sends everything at once.
func Schedule(n int, rate, burstiness float64, rng *rand.Rand) ([]time.Duration, error) {
	if n <= 0 {
		return nil, fmt.Errorf("%w: num-prompts: %d must be positive", ErrConfig, n)
	}
	if !(rate > 0) {
		return nil, fmt.Errorf("%w: request-rate: %v must be positive (inf for no pacing)", ErrConfig, rate)
	}
	if !(burstiness > 0) {
		return nil, fmt.Errorf("%w: burstiness: %v must be positive", ErrConfig, burstiness)
	}
	out := make([]time.Duration, n)
	if math.IsInf(rate, 1) {
		return out, nil
	}
	cum := make([]float64, n)
	var t float64
	for i := range cum {
		var gap float64
		if math.IsInf(burstiness, 1) {
			gap = 1 / rate
		} else {
			gap = Gamma(rng, burstiness, 1/(rate*burstiness))
		}
		t += gap
		cum[i] = t
	}
	if last := cum[n-1]; last > 0 {
		f := float64(n) / rate / last
		for i := range cum {
			cum[i] *= f
		}
	}
	for i, c := range cum {
		out[i] = time.Duration(c * float64(time.Second))
	}
	return out, nil
}

// Gamma draws from the Gamma distribution with the given shape and scale (mean
// shape·scale) by Marsaglia and Tsang's method; shape 1 is an exponential draw.
func Gamma(rng *rand.Rand, shape, scale float64) float64 {
	if shape == 1 {
		return rng.ExpFloat64() * scale
	}
	if shape < 1 {
		// Gamma(a) = Gamma(a+1) · U^(1/a).
		u := 1 - rng.Float64() // (0, 1]
		return Gamma(rng, shape+1, scale) * math.Pow(u, 1/shape)
	}
	d := shape - 1.0/3
	c := 1 / math.Sqrt(9*d)
	for {
		x := rng.NormFloat64()
		v := 1 + c*x
		if v <= 0 {
			continue
		}
		v = v * v * v
		u := rng.Float64()
		if u < 1-0.0331*x*x*x*x {
			return d * v * scale
		}
		if math.Log(u) < 0.5*x*x+d*(1-v+math.Log(v)) {
			return d * v * scale
		}
	}
}
