package vision

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/gomlx/gomlx/pkg/core/shapes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/tpuserve/tpuserve/model"
)

// Weights are the tower's and projector's tensors in WeightSpecs order, in the compute dtype.
type Weights struct {
	Specs   []WeightSpec
	Tensors []*tensors.Tensor
}

// Bytes is the total size of the tensors.
func (w *Weights) Bytes() int64 {
	var n int64
	for _, t := range w.Tensors {
		if t != nil {
			n += int64(t.Shape().Memory())
		}
	}
	return n
}

// Finalize frees the tensors (host and device).
func (w *Weights) Finalize() {
	for _, t := range w.Tensors {
		if t != nil {
			t.FinalizeAll()
		}
	}
}

// checkpointPrefixes are the layouts of the image tensors on the hub: transformers < 4.52
// saves `vision_tower.*` / `multi_modal_projector.*` at the top, newer versions under `model.`.
var checkpointPrefixes = []string{"", "model."}

func resolvePrefix(ck *model.Checkpoint) (string, error) {
	for _, p := range checkpointPrefixes {
		if _, ok := ck.Lookup(p + TowerPrefix + "embeddings.patch_embedding.weight"); ok {
			return p, nil
		}
	}
	return "", fmt.Errorf("%w: tensor %sembeddings.patch_embedding.weight not found in %s (with or without the model. prefix): not a multimodal checkpoint",
		model.ErrWeights, TowerPrefix, ck.Dir)
}

// LoadWeights reads and shape-checks every tower and projector tensor of cfg from ck,
// converting to dtype (Float32 or BFloat16). Errors wrap model.ErrWeights and name the
// tensor and file.
func LoadWeights(ck *model.Checkpoint, cfg *Config, dtype dtypes.DType) (*Weights, error) {
	if dtype != dtypes.Float32 && dtype != dtypes.BFloat16 {
		return nil, fmt.Errorf("%w: compute dtype %s not supported (want float32 or bfloat16)", ErrConfig, dtype)
	}
	prefix, err := resolvePrefix(ck)
	if err != nil {
		return nil, err
	}
	specs := WeightSpecs(cfg)
	w := &Weights{Specs: specs, Tensors: make([]*tensors.Tensor, len(specs))}
	for i, s := range specs {
		name := prefix + s.Name
		info, ok := ck.Lookup(name)
		if !ok {
			w.Finalize()
			return nil, fmt.Errorf("%w: tensor %s is missing from %s", model.ErrWeights, name, ck.Dir)
		}
		if !slices.Equal(info.Shape, s.Shape) {
			w.Finalize()
			return nil, fmt.Errorf("%w: tensor %s in %s has shape %v, the config needs %v", model.ErrWeights, name, info.File, info.Shape, s.Shape)
		}
		raw, err := ck.Bytes(name)
		if err != nil {
			w.Finalize()
			return nil, err
		}
		t := tensors.FromShape(shapes.Make(dtype, s.Shape...))
		var convErr error
		if err := t.MutableBytes(func(dst []byte) { convErr = model.ConvertTensorBytes(dst, dtype, raw, info.DType) }); err != nil {
			convErr = err
		}
		if convErr != nil {
			w.Finalize()
			return nil, fmt.Errorf("tensor %s in %s: %w", name, info.File, convErr)
		}
		w.Tensors[i] = t
	}
	return w, nil
}

// RandomWeights makes seeded random weights of cfg's shapes (for benchmarks and tests of
// shapes without a checkpoint): normal, std 1/√fan_in for matrices and the patch
// embedding, 0.02 for the position embedding and biases, 1 ± 0.1 for LayerNorm scales,
// ±0.1 for the (zero-centred) RMSNorm scale; rounded through bfloat16 as checkpoints are.
func RandomWeights(cfg *Config, dtype dtypes.DType, seed uint64) (*Weights, error) {
	if dtype != dtypes.Float32 && dtype != dtypes.BFloat16 {
		return nil, fmt.Errorf("%w: compute dtype %s not supported (want float32 or bfloat16)", ErrConfig, dtype)
	}
	specs := WeightSpecs(cfg)
	w := &Weights{Specs: specs, Tensors: make([]*tensors.Tensor, len(specs))}
	for i, s := range specs {
		rng := rand.New(rand.NewPCG(seed, uint64(i)))
		n := 1
		for _, d := range s.Shape {
			n *= d
		}
		mean, std := 0.0, 0.02
		switch {
		case strings.Contains(s.Name, "layer_norm") || strings.Contains(s.Name, "layernorm"):
			if strings.HasSuffix(s.Name, ".weight") {
				mean, std = 1, 0.1
			}
		case strings.Contains(s.Name, "mm_soft_emb_norm"):
			std = 0.1
		case strings.HasSuffix(s.Name, "patch_embedding.weight"):
			std = 1 / math.Sqrt(float64(n/s.Shape[0]))
		case strings.HasSuffix(s.Name, "mm_input_projection_weight"):
			std = 1 / math.Sqrt(float64(s.Shape[0]))
		case len(s.Shape) == 2 && !strings.Contains(s.Name, "position_embedding"):
			std = 1 / math.Sqrt(float64(s.Shape[1]))
		}
		t := tensors.FromShape(shapes.Make(dtype, s.Shape...))
		err := t.MutableBytes(func(dst []byte) {
			for j := 0; j < n; j++ {
				bits := bf16Bits(float32(mean + std*rng.NormFloat64()))
				if dtype == dtypes.BFloat16 {
					binary.LittleEndian.PutUint16(dst[2*j:], bits)
				} else {
					binary.LittleEndian.PutUint32(dst[4*j:], uint32(bits)<<16)
				}
			}
		})
		if err != nil {
			w.Finalize()
			return nil, fmt.Errorf("vision: random tensor %s: %w", s.Name, err)
		}
		w.Tensors[i] = t
	}
	return w, nil
}

// bf16Bits rounds to nearest even (PyTorch's .to(torch.bfloat16)).
func bf16Bits(f float32) uint16 {
	b := math.Float32bits(f)
	if f != f {
		return uint16(b>>16) | 0x40
	}
	b += 0x7fff + (b>>16)&1
	return uint16(b >> 16)
}
