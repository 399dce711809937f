package bench

import (
	"math"
	"slices"
)

// Percentile is one requested percentile of a metric, in milliseconds.
type Percentile struct {
	P     float64 // 0..100
	Value float64
}

// Summary is the distribution of one latency metric, in milliseconds.
type Summary struct {
	Mean, Median, Std float64
	Percentiles       []Percentile
	// N is how many samples it summarises; 0 means every value above is 0, as in vLLM.
	N int
}

// summarize computes mean, median, population standard deviation and the percentiles of
// xs (seconds) in milliseconds. Like numpy over `xs or 0`, an empty sample gives zeros.
func summarize(xs []float64, ps []float64) Summary {
	s := Summary{N: len(xs)}
	if len(xs) == 0 {
		for _, p := range ps {
			s.Percentiles = append(s.Percentiles, Percentile{P: p})
		}
		return s
	}
	sorted := slices.Clone(xs)
	slices.Sort(sorted)
	var sum float64
	for _, x := range sorted {
		sum += x
	}
	mean := sum / float64(len(sorted))
	var ss float64
	for _, x := range sorted {
		ss += (x - mean) * (x - mean)
	}
	s.Mean = mean * 1000
	s.Std = math.Sqrt(ss/float64(len(sorted))) * 1000
	s.Median = percentileSorted(sorted, 50) * 1000
	for _, p := range ps {
		s.Percentiles = append(s.Percentiles, Percentile{P: p, Value: percentileSorted(sorted, p) * 1000})
	}
	return s
}

// percentileSorted is numpy's default ("linear") percentile of an ascending sample.
func percentileSorted(sorted []float64, p float64) float64 {
	n := len(sorted)
	if n == 0 {
		return 0
	}
	rank := p / 100 * float64(n-1)
	lo := int(math.Floor(rank))
	hi := int(math.Ceil(rank))
	if lo < 0 {
		lo = 0
	}
	if hi >= n {
		hi = n - 1
	}
	return sorted[lo] + (sorted[hi]-sorted[lo])*(rank-float64(lo))
}

// PercentileOf returns the p-th percentile (0..100) of xs with numpy's linear interpolation.
func PercentileOf(xs []float64, p float64) float64 {
	sorted := slices.Clone(xs)
	slices.Sort(sorted)
	return percentileSorted(sorted, p)
}
