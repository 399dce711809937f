package model

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/tpuserve/tpuserve/model/quant"
)

// TestEncodeE4M3: the graph's e4m3 encoder gives the host codec's bit pattern for every
// finite e4m3fn value but -0 (which it writes as +0: both decode to 0) and for the e4m3
// rounding of random values.
func TestEncodeE4M3(t *testing.T) {
	backend, err := NewBackend("go")
	if err != nil {
		t.Fatal(err)
	}
	table := quant.E4M3Table()
	var vals []float32
	var want []uint8
	for b := 0; b < 256; b++ {
		if b == 0x7f || b == 0xff || b == 0x80 { // NaN, NaN, -0
			continue
		}
		vals = append(vals, table[b])
		want = append(want, uint8(b))
	}
	rng := rand.New(rand.NewPCG(3, 4))
	for i := 0; i < 3000; i++ {
		v := float32((rng.Float64()*2 - 1) * math.Pow(2, rng.Float64()*22-12))
		vals = append(vals, v)
		want = append(want, quant.E4M3Bits(v))
	}
	exec, err := graph.NewExec(backend, func(x *graph.Node) *graph.Node { return encodeE4M3(roundE4M3(x)) })
	if err != nil {
		t.Fatal(err)
	}
	defer exec.Finalize()
	outs, err := exec.Exec(tensors.FromValue(vals))
	if err != nil {
		t.Fatal(err)
	}
	got := tensors.MustCopyFlatData[uint8](outs[0])
	bad := 0
	for i, v := range vals {
		if got[i] != want[i] && !(want[i] == 0x80 && got[i] == 0) {
			if bad++; bad <= 10 {
				t.Errorf("encodeE4M3(%v) = %#x, want %#x", v, got[i], want[i])
			}
		}
	}
}

// TestQuantizeKV: per (token, head) quantization against a host reference (scale =
// max|x|/qmax rounded to the scale dtype, then the recipe's rounding), and the dequantized
// values within half a quantum (int8) or half an e4m3 step (fp8) of x (or the clamp's cut
// where a bf16 scale rounded down puts |x/s| past qmax).
func TestQuantizeKV(t *testing.T) {
	backend, err := NewBackend("go")
	if err != nil {
		t.Fatal(err)
	}
	const T, KV, D = 5, 3, 32
	rng := rand.New(rand.NewPCG(5, 6))
	x := make([]float32, T*KV*D)
	for i := range x {
		x[i] = float32(rng.NormFloat64() * math.Pow(2, float64(i/(KV*D))-2)) // tokens of different ranges
	}
	for d := 0; d < D; d++ {
		x[(1*KV+2)*D+d] = 0 // an all-zero head
	}
	for _, tc := range []struct {
		mode  quant.Mode
		scale dtypes.DType
	}{{quant.Int8, dtypes.Float32}, {quant.Int8, dtypes.BFloat16}, {quant.FP8, dtypes.Float32}, {quant.FP8, dtypes.BFloat16}} {
		t.Run(tc.mode.String()+"/"+tc.scale.String(), func(t *testing.T) {
			exec, err := graph.NewExec(backend, func(xn *graph.Node) (*graph.Node, *graph.Node, *graph.Node) {
				q, s := quantizeKV(tc.mode, xn, tc.scale)
				return q, graph.ConvertDType(s, dtypes.Float32), dequantizeKV(q, s, dtypes.Float32)
			})
			if err != nil {
				t.Fatal(err)
			}
			defer exec.Finalize()
			outs, err := exec.Exec(tensors.FromFlatDataAndDimensions(x, T, KV, D))
			if err != nil {
				t.Fatal(err)
			}
			scales := tensors.MustCopyFlatData[float32](outs[1])
			deq := tensors.MustCopyFlatData[float32](outs[2])
			var qv []byte
			if tc.mode.IsFP8() {
				qv = tensors.MustCopyFlatData[uint8](outs[0])
			} else {
				for _, v := range tensors.MustCopyFlatData[int8](outs[0]) {
					qv = append(qv, byte(v))
				}
			}
			for r := 0; r < T*KV; r++ {
				row := x[r*D : (r+1)*D]
				amax := float32(0)
				for _, v := range row {
					amax = max(amax, float32(math.Abs(float64(v))))
				}
				if amax == 0 {
					amax = 1
				}
				s := amax / tc.mode.QMax()
				if tc.scale == dtypes.BFloat16 {
					// The graph's float32 → bf16 conversion decides the last bit; the
					// scale must be a bf16 value next to amax/qmax, and the values are
					// quantized by that stored scale.
					if bits := math.Float32bits(scales[r]); bits&0xffff != 0 || math.Abs(float64(scales[r]/s-1)) > 1.0/128 {
						t.Fatalf("row %d: scale %v is not a bf16 neighbour of %v", r, scales[r], s)
					}
					s = scales[r]
				}
				if scales[r] != s {
					t.Fatalf("row %d: scale %v, want %v", r, scales[r], s)
				}
				for d, v := range row {
					i := r*D + d
					var want byte
					var step float64
					if tc.mode.IsFP8() {
						want = quant.E4M3Bits(v / s)
						step = math.Abs(float64(quant.E4M3Value(want))) / 8 // e4m3 has 3 mantissa bits
					} else {
						want = byte(int8(max(-128, min(127, math.RoundToEven(float64(v/s))))))
						step = 1
					}
					if qv[i] != want && !(want == 0x80 && qv[i] == 0) {
						t.Fatalf("row %d elem %d: x %v / s %v stored %#x, want %#x", r, d, v, s, qv[i], want)
					}
					// Half a step, or what the clamp at qmax cuts off where a rounded-down
					// bf16 scale puts |x/s| past qmax.
					bound := math.Max((step/2+1e-6)*float64(s)*1.01, math.Abs(float64(v))-float64(tc.mode.QMax()*s)+1e-6)
					if e := math.Abs(float64(deq[i] - v)); e > bound {
						t.Fatalf("row %d elem %d: dequantized %v, x %v (|Δ| %g > half a step %g)", r, d, deq[i], v, e, step/2*float64(s))
					}
				}
			}
		})
	}
}
