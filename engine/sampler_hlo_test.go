package engine

import (
	"fmt"
	"strings"
	"testing"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/shapes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/tpuserve/tpuserve/internal/hlotest"
	"github.com/tpuserve/tpuserve/model"
)

// TestSamplerSPMDStableHLO checks one chip's sampler programs for 27B at TP=8 without a
// device (see internal/hlotest): their only collectives are the planned all-reduces of
// per-row values over the 8 chips — maxima and argmaxes, the top-k/top-p histograms, the
// softmax normaliser, the top-20 candidates — never anything of the vocabulary's size.
func TestSamplerSPMDStableHLO(t *testing.T) {
	const tp, n = 8, 64
	cfg, err := model.Preset("gemma3-27b")
	if err != nil {
		t.Fatal(err)
	}
	plan, err := model.NewShardingPlan(&cfg, tp, model.FormatBF16)
	if err != nil {
		t.Fatal(err)
	}
	bins := 1 << histogramDigits(cfg.VocabSize)
	levels := (selectionBits + histogramDigits(cfg.VocabSize) - 1) / histogramDigits(cfg.VocabSize)
	argmax := map[string]int{fmt.Sprintf("maximum tensor<%dxf32>", n): 1, fmt.Sprintf("minimum tensor<%dxi32>", n): 1}
	logprobs := map[string]int{
		fmt.Sprintf("maximum tensor<%dx1xf32>", n): 1, fmt.Sprintf("add tensor<%dx1xf32>", n): 1, fmt.Sprintf("add tensor<%dxf32>", n): 1,
		fmt.Sprintf("add tensor<%dx%dxi32>", n, tp*maxTopLogprobs): 1, fmt.Sprintf("add tensor<%dx%dxf32>", n, tp*maxTopLogprobs): 1,
	}
	filters := map[string]int{
		fmt.Sprintf("maximum tensor<%dx1xf32>", n): 1, fmt.Sprintf("add tensor<%dx1xf32>", n): 1,
		fmt.Sprintf("add tensor<%dx%dxf32>", n, bins): 2 * levels, // top-k's and top-p's histograms
	}
	sum := func(ms ...map[string]int) map[string]int {
		out := map[string]int{}
		for _, m := range ms {
			for k, v := range m {
				out[k] += v
			}
		}
		return out
	}
	for _, tc := range []struct {
		name string
		fn   model.VocabHeadFn
		in   []*tensors.Tensor
		want map[string]int
	}{
		{"sample", headSampler(samplerFeatures{}, cfg.TextVocabSize), samplerInputs(n, cfg.VocabSize, samplerFeatures{}), sum(argmax, argmax)},
		{"sample_scored", headSampler(scoredFeatures, cfg.TextVocabSize), samplerInputs(n, cfg.VocabSize, scoredFeatures), sum(argmax, argmax, logprobs)},
		{"sample_full", headSampler(fullFeatures, cfg.TextVocabSize), samplerInputs(n, cfg.VocabSize, fullFeatures), sum(argmax, argmax, filters, logprobs)},
		{"prompt_logprobs", headPromptLogprobs(cfg.TextVocabSize), []*tensors.Tensor{tensors.FromShape(shapes.Make(dtypes.Int32, n)), tensors.FromShape(shapes.Make(dtypes.Int32, n))}, logprobs},
	} {
		t.Run(tc.name, func(t *testing.T) {
			text := hlotest.SPMDProgram(t, tp, model.MeshAxisTP, "gemma3_"+tc.name, func(g *graph.Graph) []*graph.Node {
				return model.BuildSPMDHead(g, plan, dtypes.BFloat16, 256, tc.fn, func(g *graph.Graph) []*graph.Node {
					var in []*graph.Node
					for i, x := range tc.in {
						in = append(in, graph.Parameter(g, fmt.Sprintf("extra%d", i), x.Shape()))
					}
					return in
				})
			})
			got := map[string]int{}
			var bytes int64
			for _, c := range hlotest.Collectives(t, text) {
				if c.Kind != "all_reduce" || c.Groups != hlotest.AllDevices(tp) {
					t.Errorf("collective %+v: want all-reduces over the %d chips only", c, tp)
				}
				got[c.Reduction+" "+c.Operand]++
				bytes += hlotest.TensorBytes(t, strings.TrimSuffix(strings.TrimPrefix(c.Operand, "tensor<"), ">"))
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("collectives %v,\nwant        %v", got, tc.want)
			}
			t.Logf("%s: %d all-reduces, %d bytes for %d rows (%.0f per row; the [N, V] f32 logits would be %d per row)",
				tc.name, len(hlotest.Collectives(t, text)), bytes, n, float64(bytes)/n, 4*cfg.VocabSize)
		})
	}
}

// samplerInputs are the sampler's inputs for n rows (the runner's fixed list widths):
// the hidden-state rows, then buildSampler's.
func samplerInputs(n, vocab int, f samplerFeatures) []*tensors.Tensor {
	rows := &samplerRows{}
	rows.padFixed(n, vocab, listWidths{out: 512, prompt: 512, banned: maxBannedTokens, bias: MaxLogitBias}, f)
	in := []*tensors.Tensor{tensors.FromShape(shapes.Make(dtypes.Int32, n))}
	for _, x := range rows.inputs(f) {
		in = append(in, x.(*tensors.Tensor))
	}
	return in
}
