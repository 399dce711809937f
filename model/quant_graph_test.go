package model

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/shapes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/tpuserve/tpuserve/model/quant"
)

// TestQuantRoundingOps: the graph's round-half-even and e4m3 rounding agree bit for bit with
// the host recipe (quant.Int8Value, quant.E4M3Bits) on ties, edges and random values.
func TestQuantRoundingOps(t *testing.T) {
	backend, err := NewBackend("go")
	if err != nil {
		t.Fatal(err)
	}
	vals := []float32{0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, 127.49, -127.5, 3.0000002, 1.0625, 1.1875, 17, 19, 232, 240, 448, 447.9, 460,
		1.0 / 1024, 3.0 / 1024, 15.5 / 1024, 1.0 / 64, -0.0009765625, 0.001953125 * 1.5, 300, -300, 7.5 / 512}
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 5000; i++ {
		vals = append(vals, float32((rng.Float64()*2-1)*math.Pow(2, rng.Float64()*20-11)))
	}
	for i := 0; i < 2000; i++ { // exact ties of e4m3 in every binade
		e := rng.IntN(15) - 6
		m := float64(8 + rng.IntN(8))
		vals = append(vals, float32((m+0.5)*math.Ldexp(1, e-3)), float32(rng.IntN(256)-128)+0.5)
	}
	exec, err := graph.NewExec(backend, func(x *graph.Node) (*graph.Node, *graph.Node) {
		return roundHalfEven(x), roundE4M3(x)
	})
	if err != nil {
		t.Fatal(err)
	}
	defer exec.Finalize()
	outs, err := exec.Exec(tensors.FromValue(vals))
	if err != nil {
		t.Fatal(err)
	}
	rne := tensors.MustCopyFlatData[float32](outs[0])
	e4 := tensors.MustCopyFlatData[float32](outs[1])
	bad := 0
	for i, v := range vals {
		if want := float32(math.RoundToEven(float64(v))); rne[i] != want && bad < 10 {
			t.Errorf("roundHalfEven(%v) = %v, want %v", v, rne[i], want)
			bad++
		}
		if want := quant.E4M3Value(quant.E4M3Bits(v)); e4[i] != want && bad < 10 {
			t.Errorf("roundE4M3(%v) = %v, want %v", v, e4[i], want)
			bad++
		}
	}
	_ = dtypes.Float32
}

// hostQuantLinear is the reference semantics in float64: y = (x_q · qᵀ) · s_x · s_w with
// x_q the per-row quantization of x (dynamic), or y = (x · qᵀ) · s_w (weight-only).
func hostQuantLinear(mode quant.Mode, x []float32, T, K int, qv []float32, s []float32, N int) []float64 {
	y := make([]float64, T*N)
	for t := 0; t < T; t++ {
		row := make([]float64, K)
		sx := 1.0
		amax := 0.0
		for k := 0; k < K; k++ {
			row[k] = float64(x[t*K+k])
			amax = math.Max(amax, math.Abs(row[k]))
		}
		if mode.Dynamic() {
			sx = amax / float64(mode.QMax())
			for k := range row {
				v := row[k] / sx
				if mode.IsFP8() {
					row[k] = float64(quant.E4M3Value(quant.E4M3Bits(float32(v))))
				} else {
					row[k] = float64(quant.Int8Value(float32(v)))
				}
			}
		}
		for n := 0; n < N; n++ {
			acc := 0.0
			for k := 0; k < K; k++ {
				acc += row[k] * float64(qv[n*K+k])
			}
			y[t*N+n] = acc * sx * float64(s[n])
		}
	}
	return y
}

// TestQuantizedLinear: the graph's quantized matmul in every mode against the float64
// reference, for a contraction long enough (K = 2100) to need the split int32 sum.
func TestQuantizedLinear(t *testing.T) {
	backend, err := NewBackend("go")
	if err != nil {
		t.Fatal(err)
	}
	const T, K, N = 5, 2100, 24
	rng := rand.New(rand.NewPCG(3, 4))
	x := make([]float32, T*K)
	for i := range x {
		x[i] = float32(rng.NormFloat64())
	}
	x[3] = 40 // an outlier sets row 0's scale
	w := make([]float32, N*K)
	for i := range w {
		w[i] = float32(rng.NormFloat64() / 40)
	}
	for _, mode := range []quant.Mode{quant.Int8, quant.Int8WeightOnly, quant.FP8, quant.FP8WeightOnly} {
		t.Run(mode.String(), func(t *testing.T) {
			var raw []byte
			var scales []float32
			var qv []float32
			wdt := dtypes.Int8
			if mode.IsFP8() {
				raw, scales, _ = quant.QuantizeFP8(w, N, K)
				wdt = dtypes.Uint8
				for _, b := range raw {
					qv = append(qv, quant.E4M3Value(b))
				}
			} else {
				q, s, _ := quant.QuantizeInt8(w, N, K)
				scales = s
				for _, v := range q {
					raw = append(raw, byte(v))
					qv = append(qv, float32(v))
				}
			}
			wt := tensors.FromShape(shapes.Make(wdt, N, K))
			wt.MutableBytes(func(b []byte) { copy(b, raw) })
			st := tensors.FromValue(scales)
			want := hostQuantLinear(mode, x, T, K, qv, scales, N)
			for _, dtype := range []dtypes.DType{dtypes.Float32, dtypes.BFloat16} {
				exec, err := graph.NewExec(backend, func(xn, wn, sn *graph.Node) *graph.Node {
					return graph.ConvertDType(QuantizedLinear(mode, graph.ConvertDType(xn, dtype), wn, sn), dtypes.Float32)
				})
				if err != nil {
					t.Fatal(err)
				}
				xt := tensors.FromFlatDataAndDimensions(x, T, K)
				out, err := exec.Exec(xt, wt, st)
				if err != nil {
					t.Fatal(err)
				}
				got := tensors.MustCopyFlatData[float32](out[0])
				tol := 1e-5
				if dtype == dtypes.BFloat16 {
					tol = 0.1 // bf16 activations (which also move x_q) and output
				}
				worst, rms := 0.0, 0.0
				for i := range want {
					worst = math.Max(worst, math.Abs(float64(got[i])-want[i]))
					rms += want[i] * want[i]
				}
				worst /= math.Sqrt(rms / float64(len(want))) // max |Δ| relative to the outputs' RMS
				if worst > tol {
					t.Errorf("%s: max |Δ| / rms(y) = %.2e > %g", dtype, worst, tol)
				}
				t.Logf("%s: max |Δ| / rms(y) = %.2e", dtype, worst)
				exec.Finalize()
			}
		})
	}
}
