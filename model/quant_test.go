package model_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/tpuserve/tpuserve/internal/backendtest"
	"github.com/tpuserve/tpuserve/model"
	"github.com/tpuserve/tpuserve/model/quant"
)

// The round-2 quantized fixtures (testdata/PROVENANCE.md): the gemma3-tiny weights as
// compressed-tensors int8 W8A8 and FP8-dynamic checkpoints, with HF goldens of both
// semantics: logits_dyn (activations quantized per token) and logits_wonly (weight-only).
var quantFixtures = []struct {
	dir       string
	dyn, wonl string // --quantization of each semantics
}{
	{"gemma3-tiny-w8a8", "int8", "int8-weight-only"},
	{"gemma3-tiny-fp8", "fp8", "fp8-weight-only"},
}

type quantGolden struct {
	Sequences [][]int32 `json:"sequences"`
	Greedy    []struct {
		Prompt       []int32   `json:"prompt"`
		GreedyWOnly  []int32   `json:"greedy_wonly"`
		MarginsWOnly []float64 `json:"margins_wonly"`
		GreedyDyn    []int32   `json:"greedy_dyn"`
		MarginsDyn   []float64 `json:"margins_dyn"`
	} `json:"greedy"`
}

func loadQuantGolden(t testing.TB, dir string) (quantGolden, map[string]*tensors.Tensor) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, "golden.json"))
	if err != nil {
		t.Fatal(err)
	}
	var g quantGolden
	if err := json.Unmarshal(data, &g); err != nil {
		t.Fatal(err)
	}
	ts, err := model.ReadSafetensors(filepath.Join(dir, "golden.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	return g, ts
}

// loadQuant loads a checkpoint through model.Load with a --quantization value.
func loadQuant(t testing.TB, dir string, dtype dtypes.DType, quantization string) *model.Model {
	t.Helper()
	m, err := model.Load(backendtest.Backend(t), model.LoadOptions{Model: dir, DType: dtype, Quantization: quantization, Progress: func(model.LoadProgress) {}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	return m
}

// logitsDiff compares [T, V] logits: max and mean |Δ|, and (for margin > 0) the positions
// where the golden's top-1 margin exceeds it but the argmax differs.
func logitsDiff(got, want []float32, V int, margin float32) (maxD, meanD float64, checked, argmaxBad int) {
	for p := 0; p < len(want)/V; p++ {
		g, w := got[p*V:(p+1)*V], want[p*V:(p+1)*V]
		for j := range w {
			d := math.Abs(float64(g[j] - w[j]))
			maxD = math.Max(maxD, d)
			meanD += d
		}
		if margin > 0 {
			if wa, m := argmaxAndMargin(w); m > margin {
				checked++
				if ga, _ := argmaxAndMargin(g); ga != wa {
					argmaxBad++
				}
			}
		}
	}
	return maxD, meanD / float64(len(want)), checked, argmaxBad
}

// dynCheck is the fixture README's comparison with logits_dyn that holds for a correct
// implementation and fails without activation quantization.
func dynCheck(maxD, meanD float64) bool { return maxD <= 0.1 && meanD <= 0.005 }

// The documented rounding tie (fixture README): in gemma3-tiny-w8a8 sequence 3 one
// activation at position 18 sits on a tie; a float64 recompute of the reference flips it by
// one quantum, which moves the 22 later positions by up to 0.052 (mean 0.0051 over the
// sequence). There the check is: positions before the tie to float32 rounding, and the
// sequence within max 0.1, mean 0.0055 (the weight-only ablation is at mean ≥ 0.0128).
var dynTies = map[string]struct{ seq, pos int }{"gemma3-tiny-w8a8": {seq: 3, pos: 18}}

func TestQuantizedParityWithHuggingFace(t *testing.T) {
	for _, fx := range quantFixtures {
		dir := filepath.Join("testdata", fx.dir)
		golden, ts := loadQuantGolden(t, dir)
		for _, tc := range []struct {
			dtype     dtypes.DType
			flag, key string
		}{
			{dtypes.Float32, "", "logits_dyn"}, // the checkpoint's own semantics
			{dtypes.Float32, fx.wonl, "logits_wonly"},
			{dtypes.BFloat16, "", "logits_dyn"},
			{dtypes.BFloat16, fx.wonl, "logits_wonly"},
		} {
			t.Run(fmt.Sprintf("%s/%s/%s", fx.dir, tc.dtype, tc.key), func(t *testing.T) {
				m := loadQuant(t, dir, tc.dtype, tc.flag)
				if tc.flag == "" && m.Config.Quantization.Mode.String() != fx.dyn {
					t.Fatalf("checkpoint loaded as %s, want %s", m.Config.Quantization.Mode, fx.dyn)
				}
				V := m.Config.VocabSize
				for i, ids := range golden.Sequences {
					got, err := m.ForwardLogits(ids)
					if err != nil {
						t.Fatal(err)
					}
					want := flat32(t, ts[fmt.Sprintf("seq%d.%s", i, tc.key)])
					gotF := flat32(t, got)
					if len(gotF) != len(want) || len(want) != len(ids)*V {
						t.Fatalf("seq %d: logits size %d, want %d", i, len(gotF), len(want))
					}
					var margin float32
					if tc.dtype == dtypes.BFloat16 {
						margin = 0.3
					}
					maxD, meanD, checked, bad := logitsDiff(gotF, want, V, margin)
					t.Logf("seq %d (%d tokens): max |Δ| = %.2e, mean |Δ| = %.2e, argmax checked at %d", i, len(ids), maxD, meanD, checked)
					switch {
					case tc.dtype == dtypes.BFloat16:
						// bf16 compute against the f32 reference: a few tenths (the fixture README).
						// FP8-dynamic is the closest to it: its per-token e4m3 rounding of bf16
						// activations redraws a rounding noise that alone moves these logits by
						// up to 0.34 (the weight-only ablation); measured 0.46 at 5 tokens.
						tol := 0.5
						if maxD > tol || bad > 0 {
							t.Errorf("seq %d: bf16 max |Δ| %.3f (tol %g), %d of %d argmaxes differ where the margin > 0.3", i, maxD, tol, bad, checked)
						}
					case tc.key == "logits_wonly":
						if maxD > 1e-3 {
							t.Errorf("seq %d: weight-only max |Δ| %.2e > 1e-3", i, maxD)
						}
					default:
						if tie, ok := dynTies[fx.dir]; ok && tie.seq == i {
							before, _, _, _ := logitsDiff(gotF[:tie.pos*V], want[:tie.pos*V], V, 0)
							if before > 1e-5 || maxD > 0.1 || meanD > 0.0055 {
								t.Errorf("seq %d (documented tie at position %d): max |Δ| before it %.2e (tol 1e-5), overall max %.3f (tol 0.1), mean %.4f (tol 0.0055)", i, tie.pos, before, maxD, meanD)
							}
						} else if !dynCheck(maxD, meanD) {
							// An activation within float32 rounding of an int8/e4m3 rounding
							// boundary flips one quantum in any correct f32 implementation whose
							// summation order differs (the fixture README): every position before
							// the flip must agree to 1e-5, and the flip must come after the first
							// position (the ablation, without activation quantization, differs at
							// once), with the rest within the tie figures the README measured.
							pos := firstDivergence(gotF, want, V, 1e-4)
							before, _, _, _ := logitsDiff(gotF[:pos*V], want[:pos*V], V, 0)
							meanTol := 0.0055
							if strings.Contains(fx.dir, "fp8") {
								meanTol = 0.02 // the ablation's mean is 0.043–0.059
							}
							if pos == 0 || before > 1e-5 || maxD > 0.2 || meanD > meanTol {
								t.Errorf("seq %d: dynamic max |Δ| %.3f, mean %.4f; not a rounding tie (first divergence at %d, max before %.2e)", i, maxD, meanD, pos, before)
							} else {
								t.Logf("seq %d: an activation rounding tie at position %d (max |Δ| before it %.1e)", i, pos, before)
							}
						}
					}
				}
			})
		}
	}
}

// TestQuantizedAblation: running the W8A8 / FP8-dynamic checkpoints without activation
// quantization fails the logits_dyn check, so the check can fail.
func TestQuantizedAblation(t *testing.T) {
	for _, fx := range quantFixtures {
		t.Run(fx.dir, func(t *testing.T) {
			dir := filepath.Join("testdata", fx.dir)
			golden, ts := loadQuantGolden(t, dir)
			m := loadQuant(t, dir, dtypes.Float32, fx.wonl)
			failed := 0
			for i, ids := range golden.Sequences {
				got, err := m.ForwardLogits(ids)
				if err != nil {
					t.Fatal(err)
				}
				maxD, meanD, _, _ := logitsDiff(flat32(t, got), flat32(t, ts[fmt.Sprintf("seq%d.logits_dyn", i)]), m.Config.VocabSize, 0)
				if !dynCheck(maxD, meanD) {
					failed++
				}
				t.Logf("seq %d: weight-only vs logits_dyn: max |Δ| %.3f, mean %.4f", i, maxD, meanD)
			}
			if failed != len(golden.Sequences) {
				t.Errorf("without activation quantization the logits_dyn check failed on %d of %d sequences, want all", failed, len(golden.Sequences))
			}
		})
	}
}

// TestQuantizedGreedyMatchesHuggingFace decodes through the KV cache (prefill, then one
// token per step) in both semantics and compares with HF's greedy runs while the top-1
// margin is clear.
func TestQuantizedGreedyMatchesHuggingFace(t *testing.T) {
	for _, fx := range quantFixtures {
		dir := filepath.Join("testdata", fx.dir)
		golden, _ := loadQuantGolden(t, dir)
		for _, dyn := range []bool{true, false} {
			name, flag := "dyn", fx.dyn
			if !dyn {
				name, flag = "wonly", fx.wonl
			}
			t.Run(fx.dir+"/"+name, func(t *testing.T) {
				m := loadQuant(t, dir, dtypes.Float32, flag)
				for gi, run := range golden.Greedy {
					want, margins := run.GreedyDyn, run.MarginsDyn
					if !dyn {
						want, margins = run.GreedyWOnly, run.MarginsWOnly
					}
					d := newPagedDriver(t, m, 8, 64, uint64(gi))
					s := &drvSeq{tokens: append([]int32{}, run.Prompt...)}
					rows := d.step([]*drvSeq{s}, []int{len(run.Prompt)})[0]
					last := rows[len(rows)-1]
					compared := 0
					for step, w := range want {
						if margins[step] <= 1e-3 {
							t.Logf("run %d: stop comparing at step %d (HF margin %.2g)", gi, step, margins[step])
							break
						}
						got, _ := argmaxAndMargin(last)
						if int32(got) != w {
							t.Fatalf("run %d step %d: greedy token %d, HF %d (margin %.3g)", gi, step, got, w, margins[step])
						}
						compared++
						s.tokens = append(s.tokens, int32(got))
						last = d.step([]*drvSeq{s}, []int{1})[0][0]
					}
					t.Logf("run %d: %d of %d greedy tokens equal to HF", gi, compared, len(want))
					if compared == 0 {
						t.Errorf("run %d: nothing compared", gi)
					}
				}
			})
		}
	}
}

// hostWeights loads a checkpoint's host tensors (not on a device) in bf16 with a
// --quantization value.
func hostWeights(t *testing.T, dir, quantization string) (model.Config, *model.Weights) {
	t.Helper()
	cfg, err := model.LoadConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Quantization, err = quant.Resolve(cfg.Quantization, quantization)
	if err != nil {
		t.Fatal(err)
	}
	ck, err := model.OpenCheckpoint(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Close()
	w, err := model.LoadWeights(ck, &cfg, dtypes.BFloat16, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Finalize)
	return cfg, w
}

func sameTensors(t *testing.T, what string, a, b *model.Weights) {
	t.Helper()
	if len(a.Specs) != len(b.Specs) {
		t.Fatalf("%s: %d tensors vs %d", what, len(a.Specs), len(b.Specs))
	}
	quantized := 0
	for i := range a.Specs {
		ta, tb := a.Tensors[i], b.Tensors[i]
		if a.Specs[i].Name != b.Specs[i].Name || !ta.Shape().Equal(tb.Shape()) {
			t.Fatalf("%s: tensor %d is %s %s vs %s %s", what, i, a.Specs[i].Name, ta.Shape(), b.Specs[i].Name, tb.Shape())
		}
		var ba, bb []byte
		ta.ConstBytes(func(x []byte) { ba = bytes.Clone(x) })
		tb.ConstBytes(func(x []byte) { bb = bytes.Clone(x) })
		if !bytes.Equal(ba, bb) {
			diff := 0
			for j := range ba {
				if ba[j] != bb[j] {
					diff++
				}
			}
			t.Errorf("%s: tensor %s differs in %d of %d bytes", what, a.Specs[i].Name, diff, len(ba))
		}
		if ta.DType() == dtypes.Int8 || ta.DType() == dtypes.Uint8 {
			quantized++
		}
	}
	if quantized != 7*6 {
		t.Errorf("%s: %d quantized tensors, want 42", what, quantized)
	}
}

// TestQuantizeAtLoadReproducesFixtures: quantizing gemma3-tiny at load gives exactly the
// fixture checkpoints' tensors: int8 / e4m3 bytes, bf16 scales and the unquantized rest.
func TestQuantizeAtLoadReproducesFixtures(t *testing.T) {
	for _, fx := range quantFixtures {
		t.Run(fx.dir, func(t *testing.T) {
			_, atLoad := hostWeights(t, filepath.Join("testdata", "gemma3-tiny"), fx.dyn)
			_, ck := hostWeights(t, filepath.Join("testdata", fx.dir), "")
			sameTensors(t, fx.dir, atLoad, ck)
		})
	}
}

// TestQuantizeCheckpointRoundTrip: `tpuserve quantize`'s writer, loaded back, gives the
// same tensors as the fixture and the same logits as the quantize-at-load.
func TestQuantizeCheckpointRoundTrip(t *testing.T) {
	ids := []int32{2, 450, 319, 352, 499, 17, 9}
	for _, fx := range quantFixtures {
		t.Run(fx.dir, func(t *testing.T) {
			out := t.TempDir()
			mode, _ := quant.ParseMode(fx.dyn)
			src := filepath.Join("testdata", "gemma3-tiny")
			if err := model.QuantizeCheckpoint(src, out, mode, nil); err != nil {
				t.Fatal(err)
			}
			cfg, written := hostWeights(t, out, "")
			if cfg.Quantization.Mode != mode || !cfg.Quantization.Compressed {
				t.Fatalf("written config: %+v", cfg.Quantization)
			}
			_, fixture := hostWeights(t, filepath.Join("testdata", fx.dir), "")
			sameTensors(t, "written vs fixture", written, fixture)

			a, err := loadQuant(t, out, dtypes.Float32, "").ForwardLogits(ids)
			if err != nil {
				t.Fatal(err)
			}
			b, err := loadQuant(t, src, dtypes.Float32, fx.dyn).ForwardLogits(ids)
			if err != nil {
				t.Fatal(err)
			}
			fa, fb := flat32(t, a), flat32(t, b)
			for i := range fa {
				if fa[i] != fb[i] {
					t.Fatalf("logit %d: written checkpoint %v, quantize-at-load %v", i, fa[i], fb[i])
				}
			}
		})
	}
	if err := model.QuantizeCheckpoint(filepath.Join("testdata", "gemma3-tiny-w8a8"), t.TempDir(), quant.Int8, nil); !errors.Is(err, model.ErrConfig) {
		t.Errorf("quantizing a quantized checkpoint: %v", err)
	}
}

// TestQuantizedBatchIndependence: activations are quantized per token, so a sequence's
// W8A8 / FP8-dynamic logits do not depend on what shares its step (a per-tensor or
// per-batch scale would couple them and fail the mean check).
func TestQuantizedBatchIndependence(t *testing.T) {
	for _, fx := range quantFixtures {
		t.Run(fx.dir, func(t *testing.T) {
			m := loadQuant(t, filepath.Join("testdata", fx.dir), dtypes.Float32, "")
			golden, _ := loadQuantGolden(t, filepath.Join("testdata", fx.dir))
			target := golden.Sequences[3]
			alone := newPagedDriver(t, m, 8, 64, 1).step([]*drvSeq{{tokens: target}}, []int{len(target)})[0]
			other := golden.Sequences[4][:25]
			shared := newPagedDriver(t, m, 8, 64, 2).step([]*drvSeq{{tokens: other}, {tokens: target}}, []int{len(other), len(target)})[1]
			maxD, meanD := 0.0, 0.0
			for p := range alone {
				for j := range alone[p] {
					d := math.Abs(float64(alone[p][j] - shared[p][j]))
					maxD, meanD = math.Max(maxD, d), meanD+d
				}
			}
			meanD /= float64(len(alone) * len(alone[0]))
			if meanD > 0.001 {
				t.Errorf("alone vs sharing a step: max |Δ| %.3g, mean %.3g > 0.001", maxD, meanD)
			}
			t.Logf("alone vs sharing a step: max |Δ| %.3g, mean %.3g", maxD, meanD)
		})
	}
}

// firstDivergence is the first position whose logits differ by more than tol.
func firstDivergence(got, want []float32, V int, tol float64) int {
	for p := 0; p*V < len(want); p++ {
		for v := 0; v < V; v++ {
			if math.Abs(float64(got[p*V+v]-want[p*V+v])) > tol {
				return p
			}
		}
	}
	return len(want) / V
}
