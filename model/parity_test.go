package model_test

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/tpuserve/tpuserve/internal/backendtest"
	"github.com/tpuserve/tpuserve/model"
)

type goldenRun struct {
	Sequences [][]int32 `json:"sequences"`
	Greedy    []struct {
		Prompt  []int32   `json:"prompt"`
		Greedy  []int32   `json:"greedy_f32"`
		Margins []float64 `json:"top1_margins"`
	} `json:"greedy"`
}

func loadGolden(t *testing.T, dir string) (goldenRun, map[string]*tensors.Tensor) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, "golden.json"))
	if err != nil {
		t.Fatal(err)
	}
	var g goldenRun
	if err := json.Unmarshal(data, &g); err != nil {
		t.Fatal(err)
	}
	ts, err := model.ReadSafetensors(filepath.Join(dir, "golden.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	return g, ts
}

// loadModel loads a checkpoint directory onto the test backend in dtype.
func loadModel(t testing.TB, dir string, dtype dtypes.DType) *model.Model {
	t.Helper()
	cfg, err := model.LoadConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	ck, err := model.OpenCheckpoint(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Close()
	w, err := model.LoadWeights(ck, &cfg, dtype, nil)
	if err != nil {
		t.Fatal(err)
	}
	m, err := model.New(backendtest.Backend(t), cfg, w)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	return m
}

func flat32(t testing.TB, x *tensors.Tensor) []float32 {
	t.Helper()
	return tensors.MustCopyFlatData[float32](x)
}

func argmaxAndMargin(row []float32) (int, float32) {
	best, second := 0, -1
	for i, v := range row {
		if v > row[best] {
			second, best = best, i
		} else if i != best && (second < 0 || v > row[second]) {
			second = i
		}
	}
	return best, row[best] - row[second]
}

func TestParityWithHuggingFace(t *testing.T) {
	for _, fixture := range []string{"gemma3-tiny", "gemma3-tiny-mm"} {
		dir := filepath.Join("testdata", fixture)
		golden, ts := loadGolden(t, dir)
		for _, dtype := range []dtypes.DType{dtypes.Float32, dtypes.BFloat16} {
			t.Run(fmt.Sprintf("%s/%s", fixture, dtype), func(t *testing.T) {
				m := loadModel(t, dir, dtype)
				V := m.Config.VocabSize
				for i, ids := range golden.Sequences {
					got, err := m.ForwardLogits(ids)
					if err != nil {
						t.Fatal(err)
					}
					gotF := flat32(t, got)
					want := flat32(t, ts[fmt.Sprintf("seq%d.logits_f32", i)])
					if len(gotF) != len(want) || len(want) != len(ids)*V {
						t.Fatalf("seq %d: logits size %d, want %d", i, len(gotF), len(want))
					}
					maxDiff, argmaxChecked := 0.0, 0
					for p := range ids {
						g, w := gotF[p*V:(p+1)*V], want[p*V:(p+1)*V]
						for j := range w {
							maxDiff = math.Max(maxDiff, math.Abs(float64(g[j]-w[j])))
						}
						if dtype == dtypes.BFloat16 {
							wa, margin := argmaxAndMargin(w)
							if margin > 0.3 {
								argmaxChecked++
								if ga, _ := argmaxAndMargin(g); ga != wa {
									t.Errorf("seq %d pos %d: bf16 argmax %d, HF f32 argmax %d (margin %.3f)", i, p, ga, wa, margin)
								}
							}
						}
					}
					tol := 1e-3
					if dtype == dtypes.BFloat16 {
						tol = 0.5
					}
					if maxDiff > tol {
						t.Errorf("seq %d (%d tokens): max |logits − HF f32| = %.6f > %g", i, len(ids), maxDiff, tol)
					}
					t.Logf("seq %d (%d tokens): max |Δ| = %.2e, argmax checked at %d positions", i, len(ids), maxDiff, argmaxChecked)
				}
			})
		}
	}
}
