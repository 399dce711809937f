package quant

import (
	"errors"
	"fmt"
	"strings"
)

var (
	// ErrUnsupported is wrapped by errors about quantization configurations tpuserve does
	// not run.
	ErrUnsupported = errors.New("unsupported quantization")
	// ErrInvalid is wrapped by errors about malformed quantization configurations or flags.
	ErrInvalid = errors.New("invalid quantization")
)

// Mode is how the quantized Linears of a model run.
type Mode int

const (
	// None: unquantized weights in the compute dtype.
	None Mode = iota
	// Int8 is W8A8: int8 weights per output channel and int8 activations quantized per
	// token on the fly (compressed-tensors int-quantized with dynamic input_activations).
	Int8
	// Int8WeightOnly is W8A16: int8 weights, dequantized next to the matmul.
	Int8WeightOnly
	// FP8 is FP8-dynamic: e4m3 weights per output channel and e4m3 activations per token.
	FP8
	// FP8WeightOnly: e4m3 weights, dequantized next to the matmul.
	FP8WeightOnly
)

var modeNames = map[Mode]string{
	None: "none", Int8: "int8", Int8WeightOnly: "int8-weight-only", FP8: "fp8", FP8WeightOnly: "fp8-weight-only",
}

// String is the flag spelling of m.
func (m Mode) String() string {
	if s, ok := modeNames[m]; ok {
		return s
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// ModeNames lists the spellings ParseMode accepts, in Mode order.
func ModeNames() []string {
	return []string{"none", "int8", "int8-weight-only", "fp8", "fp8-weight-only"}
}

// ParseMode reads a --quantization value: none, int8 (W8A8), int8-weight-only (also
// w8a16), fp8 (FP8-dynamic; also fp8-dynamic) or fp8-weight-only.
func ParseMode(s string) (Mode, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "none", "":
		return None, nil
	case "int8", "w8a8":
		return Int8, nil
	case "int8-weight-only", "w8a16":
		return Int8WeightOnly, nil
	case "fp8", "fp8-dynamic":
		return FP8, nil
	case "fp8-weight-only":
		return FP8WeightOnly, nil
	}
	return None, fmt.Errorf("%w: --quantization %q (want one of %s)", ErrInvalid, s, strings.Join(ModeNames(), ", "))
}

// Quantized reports whether m stores weights in 8 bits.
func (m Mode) Quantized() bool { return m != None }

// Dynamic reports whether m quantizes activations per token (W8A8 / FP8-dynamic).
func (m Mode) Dynamic() bool { return m == Int8 || m == FP8 }

// IsFP8 reports whether m's weights are e4m3.
func (m Mode) IsFP8() bool { return m == FP8 || m == FP8WeightOnly }

// WeightOnly is m without activation quantization.
func (m Mode) WeightOnly() Mode {
	switch m {
	case Int8:
		return Int8WeightOnly
	case FP8:
		return FP8WeightOnly
	}
	return m
}

// QMax is the largest magnitude of m's values: 127 for int8, 448 for e4m3 (0 for None).
func (m Mode) QMax() float32 {
	switch {
	case m == None:
		return 0
	case m.IsFP8():
		return 448
	}
	return 127
}

// SafetensorsDType is the safetensors dtype of m's weights: "I8" or "F8_E4M3" ("" for None).
func (m Mode) SafetensorsDType() string {
	switch {
	case m == None:
		return ""
	case m.IsFP8():
		return "F8_E4M3"
	}
	return "I8"
}
