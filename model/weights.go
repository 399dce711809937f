package model

import (
	"encoding/binary"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/gomlx/gomlx/pkg/core/shapes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/x448/float16"
)

// WeightSpec is one tensor the model needs: its canonical Hugging Face name (text layout,
// `model.*`) and its shape for a config.
type WeightSpec struct {
	Name  string
	Shape []int
	// DType is the storage dtype of a quantized weight (Int8, or Uint8 e4m3 bits);
	// InvalidDType (the zero value) means the compute dtype.
	DType dtypes.DType
}

// Per-layer tensor suffixes, in the order the graph consumes them.
const (
	wInputNorm = iota
	wQ
	wK
	wV
	wO
	wQNorm
	wKNorm
	wPostAttnNorm
	wPreFFNorm
	wPostFFNorm
	wGate
	wUp
	wDown
	numLayerWeights
)

var layerWeightNames = [numLayerWeights]string{
	"input_layernorm.weight", "self_attn.q_proj.weight", "self_attn.k_proj.weight",
	"self_attn.v_proj.weight", "self_attn.o_proj.weight", "self_attn.q_norm.weight",
	"self_attn.k_norm.weight", "post_attention_layernorm.weight",
	"pre_feedforward_layernorm.weight", "post_feedforward_layernorm.weight",
	"mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight",
}

// WeightSpecs lists every tensor of the text model in graph order: the embedding, each
// layer's 13 tensors (followed, when cfg.Quantization covers some of its Linears, by their
// scales `<linear>.weight_scale` [out, 1]; see quant.go), the final norm.
func WeightSpecs(c *Config) []WeightSpec {
	h, i, d := c.HiddenSize, c.IntermediateSize, c.HeadDim
	nh, kv := c.NumAttentionHeads, c.NumKeyValueHeads
	specs := []WeightSpec{{Name: "model.embed_tokens.weight", Shape: []int{c.VocabSize, h}}}
	for l := 0; l < c.NumHiddenLayers; l++ {
		shapesByKind := [numLayerWeights][]int{
			{h}, {nh * d, h}, {kv * d, h}, {kv * d, h}, {h, nh * d}, {d}, {d},
			{h}, {h}, {h}, {i, h}, {i, h}, {h, i},
		}
		for k := 0; k < numLayerWeights; k++ {
			specs = append(specs, WeightSpec{Name: fmt.Sprintf("model.layers.%d.%s", l, layerWeightNames[k]), Shape: shapesByKind[k]})
		}
		specs = appendLayerQuantSpecs(c, specs, l)
	}
	return append(specs, WeightSpec{Name: "model.norm.weight", Shape: []int{h}})
}

// checkpointPrefixes are the three layouts of Gemma 3 text weights on the hub: the text
// model, the multimodal model, and the multimodal model as newer transformers save it.
var checkpointPrefixes = []string{"model.", "language_model.model.", "model.language_model."}

// resolvePrefix finds the layout of a checkpoint by its embedding tensor's name.
func resolvePrefix(ck *Checkpoint) (string, error) {
	for _, p := range checkpointPrefixes {
		if _, ok := ck.Lookup(p + "embed_tokens.weight"); ok {
			return p, nil
		}
	}
	return "", fmt.Errorf("%w: tensor embed_tokens.weight not found in %s under any of the prefixes %s",
		ErrWeights, ck.Dir, strings.Join(checkpointPrefixes, ", "))
}

// Weights are the model's tensors in graph order (see WeightSpecs), in the compute dtype.
type Weights struct {
	Specs   []WeightSpec
	Tensors []*tensors.Tensor
}

// Bytes is the total size of the tensors.
func (w *Weights) Bytes() int64 {
	var n int64
	for _, t := range w.Tensors {
		n += int64(t.Shape().Memory())
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

// LoadProgress is reported while weights load.
type LoadProgress struct {
	Bytes, TotalBytes int64
	Elapsed           time.Duration
}

// GBPerSecond is the load rate so far.
func (p LoadProgress) GBPerSecond() float64 {
	if p.Elapsed <= 0 {
		return 0
	}
	return float64(p.Bytes) / 1e9 / p.Elapsed.Seconds()
}

// LoadWeights reads and shape-checks every tensor of cfg from ck, converting to dtype
// (Float32 or BFloat16). progress, if not nil, is called about once a second and at the end.
func LoadWeights(ck *Checkpoint, cfg *Config, dtype dtypes.DType, progress func(LoadProgress)) (*Weights, error) {
	if dtype != dtypes.Float32 && dtype != dtypes.BFloat16 {
		return nil, fmt.Errorf("%w: compute dtype %s not supported (want float32 or bfloat16)", ErrConfig, dtype)
	}
	prefix, err := resolvePrefix(ck)
	if err != nil {
		return nil, err
	}
	specs := WeightSpecs(cfg)
	infos := make([]TensorInfo, len(specs))
	var total int64
	for i, s := range specs {
		name := prefix + strings.TrimPrefix(s.Name, "model.")
		if s.DType != dtypes.InvalidDType || isScaleSpec(s) {
			info, err := checkQuantSpec(ck, prefix, cfg, s)
			if err != nil {
				return nil, err
			}
			infos[i] = info
			total += info.End - info.Begin
			continue
		}
		info, ok := ck.Lookup(name)
		if !ok {
			return nil, fmt.Errorf("%w: tensor %s is missing from %s", ErrWeights, name, ck.Dir)
		}
		if !slices.Equal(info.Shape, s.Shape) {
			return nil, fmt.Errorf("%w: tensor %s in %s has shape %v, the config needs %v", ErrWeights, name, info.File, info.Shape, s.Shape)
		}
		if err := checkUnquantized(ck, name, info); err != nil {
			return nil, err
		}
		switch info.DType {
		case "BF16", "F16", "F32":
		default:
			return nil, fmt.Errorf("%w: tensor %s in %s has dtype %s (want BF16, F16 or F32)", ErrWeights, name, info.File, info.DType)
		}
		infos[i] = info
		total += info.End - info.Begin
	}
	w := &Weights{Specs: specs, Tensors: make([]*tensors.Tensor, len(specs))}
	start := time.Now()
	var done int64
	lastReport := start
	pendingScales := map[string][]float32{}
	for i, s := range specs {
		name := prefix + strings.TrimPrefix(s.Name, "model.")
		if s.DType != dtypes.InvalidDType || isScaleSpec(s) {
			t, err := loadQuantTensor(ck, name, infos[i], s, cfg, dtype, pendingScales)
			if err != nil {
				w.Finalize()
				return nil, err
			}
			w.Tensors[i] = t
			done += infos[i].End - infos[i].Begin
			continue
		}
		raw, err := ck.Bytes(name)
		if err != nil {
			w.Finalize()
			return nil, err
		}
		t := tensors.FromShape(shapes.Make(dtype, s.Shape...))
		if err := t.MutableBytes(func(dst []byte) { convertInto(dst, dtype, raw, infos[i].DType) }); err != nil {
			w.Finalize()
			return nil, fmt.Errorf("%w: tensor %s: %w", ErrWeights, name, err)
		}
		w.Tensors[i] = t
		done += int64(len(raw))
		if progress != nil && (time.Since(lastReport) > time.Second || i == len(specs)-1) {
			lastReport = time.Now()
			progress(LoadProgress{Bytes: done, TotalBytes: total, Elapsed: time.Since(start)})
		}
	}
	return w, nil
}

// LogProgress is a progress callback that logs with slog.
func LogProgress(p LoadProgress) {
	slog.Info("loading weights", "bytes", p.Bytes, "total", p.TotalBytes,
		"percent", fmt.Sprintf("%.0f", 100*float64(p.Bytes)/math.Max(1, float64(p.TotalBytes))),
		"GB/s", fmt.Sprintf("%.2f", p.GBPerSecond()))
}

// convertInto converts little-endian src of srcType ("BF16", "F16", "F32") into dst of
// dtype, splitting the work across CPUs for large tensors.
func convertInto(dst []byte, dtype dtypes.DType, src []byte, srcType string) {
	srcSize := dtypeSize(srcType)
	n := len(src) / srcSize
	if (dtype == dtypes.BFloat16 && srcType == "BF16") || (dtype == dtypes.Float32 && srcType == "F32") {
		parallelChunks(n, func(lo, hi int) { copy(dst[lo*srcSize:hi*srcSize], src[lo*srcSize:hi*srcSize]) })
		return
	}
	parallelChunks(n, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			var f float32
			switch srcType {
			case "BF16":
				f = math.Float32frombits(uint32(binary.LittleEndian.Uint16(src[2*i:])) << 16)
			case "F16":
				f = float16.Frombits(binary.LittleEndian.Uint16(src[2*i:])).Float32()
			case "F32":
				f = math.Float32frombits(binary.LittleEndian.Uint32(src[4*i:]))
			}
			if dtype == dtypes.Float32 {
				binary.LittleEndian.PutUint32(dst[4*i:], math.Float32bits(f))
			} else {
				binary.LittleEndian.PutUint16(dst[2*i:], float32ToBF16Bits(f))
			}
		}
	})
}

// float32ToBF16Bits rounds to nearest even, as PyTorch's .to(torch.bfloat16) does.
func float32ToBF16Bits(f float32) uint16 {
	b := math.Float32bits(f)
	if f != f { // NaN stays a quiet NaN
		return uint16(b>>16) | 0x40
	}
	b += 0x7fff + (b>>16)&1
	return uint16(b >> 16)
}

func parallelChunks(n int, fn func(lo, hi int)) {
	const minChunk = 1 << 16
	workers := runtime.GOMAXPROCS(0)
	if n < 2*minChunk || workers < 2 {
		fn(0, n)
		return
	}
	chunk := (n + workers - 1) / workers
	var wg sync.WaitGroup
	for lo := 0; lo < n; lo += chunk {
		hi := min(n, lo+chunk)
		wg.Add(1)
		go func() { defer wg.Done(); fn(lo, hi) }()
	}
	wg.Wait()
}

// RandomWeights makes seeded random weights for any config, drawn as the reference
// fixtures were (normal; std 0.3 for norms, 0.05 for the embedding, 1/√fan_in otherwise)
// and rounded through bfloat16 as real checkpoints are stored. The same seed and config
// always give the same weights, whatever the dtype.
func RandomWeights(cfg *Config, dtype dtypes.DType, seed uint64) (*Weights, error) {
	if dtype != dtypes.Float32 && dtype != dtypes.BFloat16 {
		return nil, fmt.Errorf("%w: compute dtype %s not supported (want float32 or bfloat16)", ErrConfig, dtype)
	}
	specs := WeightSpecs(cfg)
	w := &Weights{Specs: specs, Tensors: make([]*tensors.Tensor, len(specs))}
	var wg sync.WaitGroup
	sem := make(chan struct{}, runtime.GOMAXPROCS(0))
	for i, s := range specs {
		std := 1 / math.Sqrt(float64(s.Shape[len(s.Shape)-1]))
		switch {
		case strings.Contains(s.Name, "norm"):
			std = 0.3
		case strings.Contains(s.Name, "embed_tokens"):
			std = 0.05
		}
		t := tensors.FromShape(shapes.Make(dtype, s.Shape...))
		w.Tensors[i] = t
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			rng := rand.New(rand.NewPCG(seed, uint64(i)))
			_ = t.MutableBytes(func(dst []byte) {
				n := t.Shape().Size()
				for j := 0; j < n; j++ {
					bits := float32ToBF16Bits(float32(rng.NormFloat64() * std))
					if dtype == dtypes.BFloat16 {
						binary.LittleEndian.PutUint16(dst[2*j:], bits)
					} else {
						binary.LittleEndian.PutUint32(dst[4*j:], uint32(bits)<<16)
					}
				}
			})
		}()
	}
	wg.Wait()
	return w, nil
}
