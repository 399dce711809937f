package model

import (
	"fmt"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
)

// ConvertTensorBytes converts the little-endian bytes of a safetensors tensor of dtype
// srcType ("BF16", "F16" or "F32") into dst in dtype (Float32 or BFloat16), rounding to
// nearest even as PyTorch's .to() does. dst must hold exactly the converted elements.
// It is the conversion LoadWeights uses, exported for other packages' checkpoint readers
// (the vision tower).
func ConvertTensorBytes(dst []byte, dtype dtypes.DType, src []byte, srcType string) error {
	switch srcType {
	case "BF16", "F16", "F32":
	default:
		return fmt.Errorf("%w: source dtype %s not supported (want BF16, F16 or F32)", ErrWeights, srcType)
	}
	if dtype != dtypes.Float32 && dtype != dtypes.BFloat16 {
		return fmt.Errorf("%w: target dtype %s not supported (want float32 or bfloat16)", ErrWeights, dtype)
	}
	n := len(src) / dtypeSize(srcType)
	if len(src)%dtypeSize(srcType) != 0 || len(dst) != n*dtype.Size() {
		return fmt.Errorf("%w: converting %d bytes of %s into %d bytes of %s: sizes do not match", ErrWeights, len(src), srcType, len(dst), dtype)
	}
	convertInto(dst, dtype, src, srcType)
	return nil
}
