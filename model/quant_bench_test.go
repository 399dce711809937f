package model_test

import (
	"fmt"
	"testing"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/tpuserve/tpuserve/internal/backendtest"
	"github.com/tpuserve/tpuserve/model"
	"github.com/tpuserve/tpuserve/model/quant"
)

// quantBenchModes are measured in one run against the bf16 baseline.
var quantBenchModes = []quant.Mode{quant.None, quant.Int8WeightOnly, quant.Int8}

// quantBenchModel is the 1B shape with seeded random bf16 weights, quantized at load with
// mode (the recipe of a checkpoint load). Models are kept for the run (one per mode).
func quantBenchModel(b *testing.B, mode quant.Mode) *model.Model {
	key := "quant/gemma3-1b/" + mode.String()
	if m, ok := benchModels.Load(key); ok {
		return m.(*model.Model)
	}
	cfg, err := model.Preset("gemma3-1b")
	if err != nil {
		b.Fatal(err)
	}
	w, err := model.RandomWeights(&cfg, dtypes.BFloat16, 1)
	if err != nil {
		b.Fatal(err)
	}
	if mode != quant.None {
		if cfg, w, err = model.QuantizeWeights(cfg, w, quant.AtLoad(mode)); err != nil {
			b.Fatal(err)
		}
	}
	m, err := model.New(backendtest.Backend(b), cfg, w)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(m.Weights.Bytes())/(1<<20), "weight-MiB")
	benchModels.Store(key, m)
	return m
}

// BenchmarkQuantizedPrefill: the 1B shape in bf16 compute, one 16-token sequence as one
// chunk, bf16 weights vs int8 weight-only vs W8A8; reports tokens/s. Slow on the pure-Go
// backend: run with -benchtime 1x.
func BenchmarkQuantizedPrefill(b *testing.B) {
	for _, mode := range quantBenchModes {
		b.Run(fmt.Sprintf("gemma3-1b/bf16/%s/tokens=16", mode), func(b *testing.B) {
			m := quantBenchModel(b, mode)
			const n = 16
			d := newPagedDriver(b, m, 16, 64, 1)
			tokens := make([]int32, n)
			for i := range tokens {
				tokens[i] = int32(2 + i*7)
			}
			d.stepNoLogits(&drvSeq{tokens: tokens}, n) // compile
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				d.stepNoLogits(&drvSeq{tokens: tokens, global: d.lastGlobal, sliding: d.lastSliding}, n)
			}
			b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "tokens/s")
		})
	}
}

// BenchmarkQuantizedDecode: one decode step of one sequence at context 16, the 1B shape in
// bf16 compute, per weight format; reports ms/step.
func BenchmarkQuantizedDecode(b *testing.B) {
	for _, mode := range quantBenchModes {
		b.Run(fmt.Sprintf("gemma3-1b/bf16/%s/batch=1", mode), func(b *testing.B) {
			benchDecode(b, quantBenchModel(b, mode), 1, 16*11, 16)
		})
	}
}
