package model_test

import (
	"fmt"
	"sync"
	"testing"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/tpuserve/tpuserve/internal/backendtest"
	"github.com/tpuserve/tpuserve/model"
)

var benchModels sync.Map // preset/dtype → *model.Model

func benchModel(b *testing.B, preset string, dtype dtypes.DType) *model.Model {
	key := preset + dtype.String()
	if m, ok := benchModels.Load(key); ok {
		return m.(*model.Model)
	}
	cfg, err := model.Preset(preset)
	if err != nil {
		b.Fatal(err)
	}
	w, err := model.RandomWeights(&cfg, dtype, 1)
	if err != nil {
		b.Fatal(err)
	}
	m, err := model.New(backendtest.Backend(b), cfg, w)
	if err != nil {
		b.Fatal(err)
	}
	benchModels.Store(key, m)
	return m
}

// BenchmarkPrefill: one sequence as one chunk (128 tokens; 16 for the 1B shape, whose
// matmuls take seconds on this backend); reports tokens/s.
func BenchmarkPrefill(b *testing.B) {
	for _, tc := range []struct {
		preset string
		dtype  dtypes.DType
		n      int
	}{{"tiny", dtypes.Float32, 128}, {"gemma3-1b", dtypes.Float32, 16}} {
		b.Run(fmt.Sprintf("%s/%s/tokens=%d", tc.preset, tc.dtype, tc.n), func(b *testing.B) {
			m := benchModel(b, tc.preset, tc.dtype)
			n := tc.n
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

// BenchmarkDecode: one decode step of `batch` sequences at context 128 (16 for the 1B
// shape); reports ms/step.
func BenchmarkDecode(b *testing.B) {
	for _, tc := range []struct {
		preset string
		dtype  dtypes.DType
		batch  int
	}{{"tiny", dtypes.Float32, 1}, {"tiny", dtypes.Float32, 8}, {"tiny", dtypes.Float32, 32}, {"gemma3-1b", dtypes.Float32, 1}} {
		b.Run(fmt.Sprintf("%s/%s/batch=%d", tc.preset, tc.dtype, tc.batch), func(b *testing.B) {
			ctx := 128
			if tc.preset != "tiny" {
				ctx = 16 // the 1B shape's prefill takes minutes on this backend
			}
			benchDecode(b, benchModel(b, tc.preset, tc.dtype), tc.batch, 16*(tc.batch*9+2), ctx)
		})
	}
}

// BenchmarkDecodePoolSize: the same decode step with KV pools of growing size. With the
// pools donated the step updates them in place, so its time must not grow with the pools.
func BenchmarkDecodePoolSize(b *testing.B) {
	for _, pages := range []int{256, 4096, 32768} {
		b.Run(fmt.Sprintf("pages=%d", pages), func(b *testing.B) {
			m := benchModel(b, "tiny", dtypes.Float32)
			b.ReportMetric(float64(model.PoolBytes(&m.Config, model.KVLayout{PageSize: 16, NumGlobalPages: pages, NumSlidingPages: pages}, m.DType))/(1<<20), "pool-MiB")
			benchDecode(b, m, 8, pages, 128)
		})
	}
}

func benchDecode(b *testing.B, m *model.Model, batch, pages, ctx int) {
	d := newPagedDriver(b, m, 16, pages, 2)
	seqs := make([]*drvSeq, batch)
	counts := make([]int, batch)
	for i := range seqs {
		toks := make([]int32, ctx+1)
		for j := range toks {
			toks[j] = int32(2 + (i*31+j*7)%1000)
		}
		seqs[i] = &drvSeq{tokens: toks}
		counts[i] = ctx
	}
	d.step(seqs, counts) // prefill the context
	for i := range counts {
		counts[i] = 1
	}
	d.step(seqs, counts) // compile the decode bucket
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for _, s := range seqs {
			s.done = ctx // re-run the same decode position
		}
		d.step(seqs, counts)
	}
	b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N), "ms/step")
}

// BenchmarkLoadWeights: loading a bf16 checkpoint (1B-shaped embedding and 2 layers, ~0.7 GB)
// from the page cache, to bf16 (the serving path: a straight copy) and to f32.
func BenchmarkLoadWeights(b *testing.B) {
	cfg, err := model.Preset("gemma3-1b")
	if err != nil {
		b.Fatal(err)
	}
	cfg.NumHiddenLayers, cfg.LayerTypes = 2, cfg.LayerTypes[:2]
	w, err := model.RandomWeights(&cfg, dtypes.BFloat16, 1)
	if err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	if err := model.WriteCheckpoint(dir, &cfg, w, "model.", 2); err != nil {
		b.Fatal(err)
	}
	bytes := w.Bytes()
	w.Finalize()
	for _, dtype := range []dtypes.DType{dtypes.BFloat16, dtypes.Float32} {
		b.Run(dtype.String(), func(b *testing.B) {
			b.SetBytes(bytes)
			for i := 0; i < b.N; i++ {
				ck, err := model.OpenCheckpoint(dir)
				if err != nil {
					b.Fatal(err)
				}
				lw, err := model.LoadWeights(ck, &cfg, dtype, nil)
				if err != nil {
					b.Fatal(err)
				}
				ck.Close()
				lw.Finalize()
			}
		})
	}
}
