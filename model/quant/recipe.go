package quant

import (
	"fmt"
	"math"
)

// BF16Round rounds f to the nearest bfloat16 (ties to even), as PyTorch's
// .to(torch.bfloat16) does, and returns it as a float32.
func BF16Round(f float32) float32 {
	return math.Float32frombits(uint32(BF16Bits(f)) << 16)
}

// BF16Bits is the bfloat16 bit pattern nearest to f (ties to even; NaN stays NaN).
func BF16Bits(f float32) uint16 {
	b := math.Float32bits(f)
	if f != f {
		return uint16(b>>16) | 0x40
	}
	b += 0x7fff + (b>>16)&1
	return uint16(b >> 16)
}

// RowScale is the recipe's scale of one output row: bf16(max|w| / qmax), the division in
// float32. A row of zeros gets scale 0 (and all-zero values).
func RowScale(row []float32, qmax float32) float32 {
	var amax float32
	for _, v := range row {
		amax = max(amax, float32(math.Abs(float64(v))))
	}
	return BF16Round(amax / qmax)
}

// QuantizeInt8 quantizes w [rows, cols] (row-major, PyTorch Linear layout [out, in]) per
// output row: scale = bf16(max|w| / 127), q = clamp(round_half_even(w / scale), -128, 127),
// the division by the bf16-rounded scale in float32. The scales are bf16 values.
func QuantizeInt8(w []float32, rows, cols int) (q []int8, scales []float32, err error) {
	if rows*cols != len(w) || rows <= 0 || cols <= 0 {
		return nil, nil, fmt.Errorf("%w: %d values for a [%d, %d] weight", ErrInvalid, len(w), rows, cols)
	}
	q = make([]int8, len(w))
	scales = make([]float32, rows)
	for r := 0; r < rows; r++ {
		row := w[r*cols : (r+1)*cols]
		s := RowScale(row, 127)
		scales[r] = s
		if s == 0 {
			continue
		}
		for c, v := range row {
			q[r*cols+c] = Int8Value(v / s)
		}
	}
	return q, scales, nil
}

// Int8Value is clamp(round_half_even(v), -128, 127) (NaN gives 0).
func Int8Value(v float32) int8 {
	r := math.RoundToEven(float64(v))
	switch {
	case r != r:
		return 0
	case r > 127:
		return 127
	case r < -128:
		return -128
	}
	return int8(r)
}

// QuantizeFP8 quantizes w [rows, cols] per output row to e4m3: scale = bf16(max|w| / 448),
// bits = e4m3(w / scale) rounded to nearest even, the division in float32.
func QuantizeFP8(w []float32, rows, cols int) (bits []uint8, scales []float32, err error) {
	if rows*cols != len(w) || rows <= 0 || cols <= 0 {
		return nil, nil, fmt.Errorf("%w: %d values for a [%d, %d] weight", ErrInvalid, len(w), rows, cols)
	}
	bits = make([]uint8, len(w))
	scales = make([]float32, rows)
	for r := 0; r < rows; r++ {
		row := w[r*cols : (r+1)*cols]
		s := RowScale(row, 448)
		scales[r] = s
		if s == 0 {
			continue
		}
		for c, v := range row {
			bits[r*cols+c] = E4M3Bits(v / s)
		}
	}
	return bits, scales, nil
}

// E4M3Max is the largest finite float8 e4m3fn value.
const E4M3Max = 448

// E4M3Bits rounds f to the nearest float8 e4m3fn value (ties to even) and returns its bit
// pattern. Magnitudes beyond 448 saturate to ±448 (as vLLM clamps before its cast; PyTorch's
// plain cast would give NaN from 464 on); NaN gives 0x7f.
func E4M3Bits(f float32) uint8 {
	if f != f {
		return 0x7f
	}
	var sign uint8
	if math.Signbit(float64(f)) {
		sign = 0x80
	}
	a := math.Abs(float64(f))
	if a < 1.0/64 { // subnormal range: quantum 2^-9
		m := math.RoundToEven(a * 512)
		if m >= 8 {
			return sign | 0x08 // rounds up to the smallest normal, 2^-6
		}
		return sign | uint8(m)
	}
	frac, exp := math.Frexp(a)       // a = frac·2^exp, frac in [0.5, 1)
	e := exp - 1                     // a = 1.f · 2^e
	m := math.RoundToEven(frac * 16) // 8 ≤ m ≤ 16: 3 mantissa bits plus the implicit one
	if m == 16 {
		m, e = 8, e+1
	}
	if e > 8 || (e == 8 && m > 14) {
		return sign | 0x7e
	}
	return sign | uint8(e+7)<<3 | (uint8(m) - 8)
}

// E4M3Value decodes a float8 e4m3fn bit pattern.
func E4M3Value(b uint8) float32 {
	sign := float32(1)
	if b&0x80 != 0 {
		sign = -1
	}
	e, m := int(b>>3)&0xf, float64(b&7)
	switch {
	case e == 15 && m == 7:
		return float32(math.NaN())
	case e == 0:
		return sign * float32(math.Ldexp(m, -9))
	}
	return sign * float32(math.Ldexp(8+m, e-10))
}

// E4M3Table is E4M3Value for every bit pattern (what the graph's decode gathers from).
func E4M3Table() [256]float32 {
	var t [256]float32
	for i := range t {
		t[i] = E4M3Value(uint8(i))
	}
	return t
}
