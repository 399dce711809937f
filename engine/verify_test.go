package engine

import (
	"fmt"
	"math"
	"testing"

	"github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/tpuserve/tpuserve/internal/backendtest"
)

// runVerifier runs the verifier alone on logits [R·(K+1), V] with one proposal list for
// every row and rows' sampler parameters; it returns the emitted tokens [R][K+1] and counts.
func runVerifier(t *testing.T, f samplerFeatures, opt verifyOptions, logits []float32, R, K, V int, drafts []int32, rows *samplerRows) ([]int32, []int32) {
	t.Helper()
	return runShardedVerifier(t, 1, f, opt, logits, R, K, V, drafts, rows)
}

// runShardedVerifier is runVerifier with the logits split on the vocabulary over a
// virtual mesh of tp chips.
func runShardedVerifier(t *testing.T, tp int, f samplerFeatures, opt verifyOptions, logits []float32, R, K, V int, drafts []int32, rows *samplerRows) ([]int32, []int32) {
	t.Helper()
	v := buildVerifier(f, V, K, opt)
	exec, err := graph.NewExec(backendtest.Backend(t), func(in []*graph.Node) []*graph.Node { return v(splitVocab(in[0], tp), in[1:]) })
	if err != nil {
		t.Fatal(err)
	}
	defer exec.Finalize()
	vr := &verifyRows{rows: *rows}
	for range R {
		vr.drafts = append(vr.drafts, drafts)
	}
	pad := func(r *samplerRows, n int, f samplerFeatures) {
		r.padFixed(n, V, listWidths{out: 4, prompt: 4, banned: 1, bias: 1}, f)
	}
	args := append([]any{tensors.FromFlatDataAndDimensions(logits, R*(K+1), V)}, vr.inputs(R, K, f, pad)...)
	out, err := exec.Exec(args...)
	if err != nil {
		t.Fatal(err)
	}
	defer finalize(out)
	return tensors.MustCopyFlatData[int32](out[0]), tensors.MustCopyFlatData[int32](out[1])
}

// chiSquare is Pearson's statistic of counts against probabilities (cells with p = 0 must
// be empty: any draw there is reported as +Inf).
func chiSquare(counts []int, p []float64) float64 {
	n := 0
	for _, c := range counts {
		n += c
	}
	x := 0.0
	for v, c := range counts {
		e := p[v] * float64(n)
		switch {
		case e == 0 && c > 0:
			return math.Inf(1)
		case e > 0:
			x += (float64(c) - e) * (float64(c) - e) / e
		}
	}
	return x
}

// TestVerifierDistribution: speculative sampling on the device emits, at every position of
// the run, exactly the target's distribution — the first token over all draws, the second
// over the draws that accepted the first proposal (its distribution given the first), the
// bonus over those that accepted both — with temperature, and with top-k and a presence
// penalty that at position j counts the proposals before j as generated. On a vocabulary
// of 8 over 12,288 draws per case, against Pearson's χ² at df 7 with threshold 40
// (p ≈ 1e-6: a correct sampler fails by accident about once in a million runs). The
// ablation draws the token after a rejection from p instead of max(p − q, 0): the first
// position's distribution is then off by p(d)(1 − p(d)), and the test must see it.
func TestVerifierDistribution(t *testing.T) {
	const V, K, R, batches = 8, 2, 4096, 3
	// Position j's logits (the same for every row); proposals 3 then 5.
	base := [][]float32{
		{0.1, 1.2, -0.5, 0.9, 0.3, -1.0, 0.6, 0.0},
		{0.4, -0.2, 0.8, 0.5, 0.1, 1.1, -0.7, 0.2},
		{-0.3, 0.7, 0.2, 0.0, 1.0, 0.5, 0.4, -0.6},
	}
	drafts := []int32{3, 5}
	logits := make([]float32, 0, R*(K+1)*V)
	for range R {
		for j := 0; j <= K; j++ {
			logits = append(logits, base[j]...)
		}
	}
	type variant struct {
		name     string
		f        samplerFeatures
		temp     float32
		topK     int
		presence float32
		opt      verifyOptions
		wantFail bool
	}
	for _, tc := range []variant{
		{"temperature", verifyFeatures, 0.8, 0, 0, verifyOptions{}, false},
		{"top-k and presence penalty", verifyFullFeatures, 1.0, 6, 0.7, verifyOptions{}, false},
		{"ablation: residual from p", verifyFeatures, 0.8, 0, 0, verifyOptions{breakResidual: true}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			counts := make([][]int, K+1) // emitted token at position j, given the run reached j
			for j := range counts {
				counts[j] = make([]int, V)
			}
			for b := 0; b < batches; b++ {
				rows := &samplerRows{}
				p := DefaultSamplingParams()
				p.Temperature, p.TopK, p.PresencePenalty = tc.temp, tc.topK, tc.presence
				for r := 0; r < R; r++ {
					rows.addRow(&p, seedKey(int64(b*R+r)), 0, nil, nil, nil, logitBias{}, nil)
				}
				toks, num := runVerifier(t, tc.f, tc.opt, logits, R, K, V, drafts, rows)
				if b == 0 && !tc.wantFail {
					// The vocabulary split over two chips draws exactly the same tokens.
					toks2, num2 := runShardedVerifier(t, 2, tc.f, tc.opt, logits, R, K, V, drafts, rows)
					if fmt.Sprint(toks2, num2) != fmt.Sprint(toks, num) {
						t.Fatalf("two chips emitted other tokens than one")
					}
				}
				for r := 0; r < R; r++ {
					m := int(num[r])
					for j := 0; j < m; j++ {
						tok := toks[r*(K+1)+j]
						counts[j][tok]++
						if j < m-1 && tok != drafts[j] {
							t.Fatalf("row %d: emitted %v (count %d): an accepted position differs from the proposal", r, toks[r*(K+1):(r+1)*(K+1)], m)
						}
					}
					for j := m; j <= K; j++ {
						if toks[r*(K+1)+j] != -1 {
							t.Fatalf("row %d: emitted %v past the count %d", r, toks[r*(K+1):(r+1)*(K+1)], m)
						}
					}
				}
			}
			failed := false
			for j := 0; j <= K; j++ {
				z := make([]float64, V)
				for v := range z {
					z[v] = float64(base[j][v])
					for _, d := range drafts[:j] { // the proposals before j count as generated
						if int(d) == v {
							z[v] -= float64(tc.presence)
						}
					}
				}
				want := exactDistribution(z, float64(tc.temp), tc.topK, 1, 0)
				x := chiSquare(counts[j], want)
				t.Logf("position %d: χ² %.1f over %d draws; counts %v", j, x, sum(counts[j]), counts[j])
				if x > 40 {
					failed = true
					if !tc.wantFail {
						t.Errorf("position %d: χ² = %.1f > 40: emitted %v, want proportions %v", j, x, counts[j], fmt.Sprintf("%.3f", want))
					}
				}
			}
			if tc.wantFail && !failed {
				t.Errorf("the broken residual passed the test: it cannot tell")
			}
		})
	}
}

func sum(xs []int) int {
	n := 0
	for _, x := range xs {
		n += x
	}
	return n
}

// TestVerifierGreedy: greedy rows accept while the proposal is the argmax and emit the
// argmax after the run; positions past a row's proposal count are ignored.
func TestVerifierGreedy(t *testing.T) {
	const V, K = 8, 3
	base := [][]float32{
		{0, 0, 0, 5, 0, 0, 0, 0}, // argmax 3
		{0, 0, 0, 0, 0, 4, 0, 0}, // argmax 5
		{0, 6, 0, 0, 0, 0, 0, 0}, // argmax 1
		{0, 0, 0, 0, 0, 0, 7, 0}, // argmax 6
	}
	for _, tc := range []struct {
		drafts []int32
		num    int
		want   []int32
	}{
		{[]int32{3, 5, 1}, 3, []int32{3, 5, 1, 6}}, // all accepted, bonus argmax
		{[]int32{3, 2, 1}, 3, []int32{3, 5, -1, -1}},
		{[]int32{4, 5, 1}, 3, []int32{3, -1, -1, -1}},
		{[]int32{3, 5, 0}, 2, []int32{3, 5, 1, -1}}, // only two proposals count
	} {
		var logits []float32
		for _, b := range base {
			logits = append(logits, b...)
		}
		rows := &samplerRows{}
		p := DefaultSamplingParams()
		p.Temperature = 0
		rows.addRow(&p, 1, 0, nil, nil, nil, logitBias{}, nil)
		for _, tp := range []int{1, 2} {
			v := buildVerifier(verifyFeatures, V, K, verifyOptions{})
			exec, err := graph.NewExec(backendtest.Backend(t), func(in []*graph.Node) []*graph.Node { return v(splitVocab(in[0], tp), in[1:]) })
			if err != nil {
				t.Fatal(err)
			}
			vr := &verifyRows{rows: *rows, drafts: [][]int32{tc.drafts[:tc.num]}}
			pad := func(r *samplerRows, n int, f samplerFeatures) { r.padFixed(n, V, listWidths{1, 1, 1, 1}, f) }
			out, err := exec.Exec(append([]any{tensors.FromFlatDataAndDimensions(logits, K+1, V)}, vr.inputs(1, K, verifyFeatures, pad)...)...)
			if err != nil {
				t.Fatal(err)
			}
			got := tensors.MustCopyFlatData[int32](out[0])
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("TP=%d, drafts %v (%d): emitted %v, want %v", tp, tc.drafts, tc.num, got, tc.want)
			}
			finalize(out)
			exec.Finalize()
		}
	}
}
