package model

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"sort"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/gomlx/gomlx/pkg/core/shapes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
)

var safetensorsDTypes = map[string]dtypes.DType{
	"F32": dtypes.Float32, "BF16": dtypes.BFloat16, "F16": dtypes.Float16,
	"I32": dtypes.Int32, "I64": dtypes.Int64, "F64": dtypes.Float64,
	"I8": dtypes.Int8, "U8": dtypes.Uint8,
}

// f8E4M3Code is the safetensors dtype of float8 e4m3fn, held in Uint8 host tensors as bit
// patterns (gomlx has no Go type for it): read as Uint8, written with WriteSafetensorsAs.
const f8E4M3Code = "F8_E4M3"

// ReadSafetensors reads every tensor of one safetensors file into host tensors (for small
// files: golden data, the forward command's output).
func ReadSafetensors(path string) (map[string]*tensors.Tensor, error) {
	sf, err := openSafetensors(path)
	if err != nil {
		return nil, err
	}
	defer sf.close()
	out := make(map[string]*tensors.Tensor, len(sf.tensors))
	for name, info := range sf.tensors {
		dt, ok := safetensorsDTypes[info.DType]
		if info.DType == f8E4M3Code {
			dt, ok = dtypes.Uint8, true
		}
		if !ok {
			return nil, fmt.Errorf("%w: %s: tensor %s has unsupported dtype %s", ErrWeights, path, name, info.DType)
		}
		t := tensors.FromShape(shapes.Make(dt, info.Shape...))
		raw := sf.bytes(info)
		if err := t.MutableBytes(func(dst []byte) { copy(dst, raw) }); err != nil {
			return nil, fmt.Errorf("%w: %s: tensor %s: %w", ErrWeights, path, name, err)
		}
		out[name] = t
	}
	return out, nil
}

// WriteSafetensors writes named host tensors to path in the safetensors format.
func WriteSafetensors(path string, named map[string]*tensors.Tensor) error {
	return WriteSafetensorsAs(path, named, nil)
}

// WriteSafetensorsAs is WriteSafetensors with the safetensors dtype of some tensors given
// by name (e.g. "F8_E4M3" for a Uint8 tensor of e4m3 bit patterns).
func WriteSafetensorsAs(path string, named map[string]*tensors.Tensor, codes map[string]string) (err error) {
	names := make([]string, 0, len(named))
	for n := range named {
		names = append(names, n)
	}
	sort.Strings(names)
	header := map[string]any{"__metadata__": map[string]string{"format": "pt", "writer": "tpuserve"}}
	var offset int64
	for _, n := range names {
		t := named[n]
		var code string
		for k, dt := range safetensorsDTypes {
			if dt == t.DType() {
				code = k
			}
		}
		if c, ok := codes[n]; ok {
			if dtypeSize(c) != t.DType().Size() {
				return fmt.Errorf("%w: tensor %s: dtype %s cannot be written as %s", ErrWeights, n, t.DType(), c)
			}
			code = c
		}
		if code == "" {
			return fmt.Errorf("%w: tensor %s: dtype %s cannot be written", ErrWeights, n, t.DType())
		}
		size := int64(t.Shape().Memory())
		header[n] = map[string]any{"dtype": code, "shape": t.Shape().Dimensions, "data_offsets": []int64{offset, offset + size}}
		offset += size
	}
	hdr, err := json.Marshal(header)
	if err != nil {
		return err
	}
	for len(hdr)%8 != 0 {
		hdr = append(hdr, ' ')
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}()
	w := bufio.NewWriterSize(f, 1<<20)
	var lenBuf [8]byte
	binary.LittleEndian.PutUint64(lenBuf[:], uint64(len(hdr)))
	if _, err := w.Write(lenBuf[:]); err != nil {
		return err
	}
	if _, err := w.Write(hdr); err != nil {
		return err
	}
	for _, n := range names {
		var werr error
		if err := named[n].ConstBytes(func(data []byte) { _, werr = w.Write(data) }); err != nil {
			return err
		}
		if werr != nil {
			return werr
		}
	}
	return w.Flush()
}
