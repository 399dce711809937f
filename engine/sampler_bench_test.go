package engine

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/tpuserve/tpuserve/internal/backendtest"
	"github.com/tpuserve/tpuserve/model"
)

// BenchmarkSamplerShards runs the plain and the full sampler program alone on 16 rows of
// the real 262208-token vocabulary, on one chip (the baseline) and split over a virtual
// mesh of 8 (every chip's columns side by side plus the cross-chip reductions, on this
// CPU): the virtual mesh's overhead, and with the one-chip rows the sampler's cost at TP=1.
func BenchmarkSamplerShards(b *testing.B) {
	const n, vocab, textVocab = 16, 262208, 262144
	rng := rand.New(rand.NewPCG(3, 4))
	logits := make([]float32, n*vocab)
	for i := range logits {
		logits[i] = float32(rng.NormFloat64() * 3)
	}
	for _, f := range []struct {
		name string
		f    samplerFeatures
	}{{"plain", samplerFeatures{}}, {"full", fullFeatures}} {
		for _, tp := range []int{1, 8} {
			b.Run(fmt.Sprintf("%s/tp%d", f.name, tp), func(b *testing.B) {
				sampler := buildSampler(f.f, textVocab)
				exec, err := graph.NewExec(backendtest.Backend(b), func(in []*graph.Node) []*graph.Node {
					g := in[0].Graph()
					w := vocab / tp
					lg := &model.VocabShards{Mesh: model.VirtualMesh(tp), Width: w, Vocab: vocab}
					for c := 0; c < tp; c++ {
						lg.Parts = append(lg.Parts, graph.Slice(in[0], graph.AxisRange(), graph.AxisRange(c*w, (c+1)*w)))
						lg.Offsets = append(lg.Offsets, graph.Const(g, int32(c*w)))
						lg.Index = append(lg.Index, graph.Const(g, int32(c)))
					}
					return sampler(lg, in[1:])
				})
				if err != nil {
					b.Fatal(err)
				}
				defer exec.Finalize()
				rows := uniformRows(n, 1, 5)
				for i := range rows.TopP {
					rows.TopP[i], rows.TopK[i] = 0.9, 50
				}
				rows.padFixed(n, vocab, listWidths{out: 64, prompt: 64, banned: 4, bias: 4}, f.f)
				args := append([]any{tensors.FromFlatDataAndDimensions(logits, n, vocab)}, rows.inputs(f.f)...)
				if _, err := exec.Exec(args...); err != nil { // compile outside the loop
					b.Fatal(err)
				}
				for b.Loop() {
					outs, err := exec.Exec(args...)
					if err != nil {
						b.Fatal(err)
					}
					finalize(outs)
				}
			})
		}
	}
}
