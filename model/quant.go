package model

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"strings"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/gomlx/gomlx/pkg/core/shapes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/tpuserve/tpuserve/model/quant"
)

// The per-layer Linears, in WeightSpecs order (their scales follow a layer's 13 tensors in
// this order).
var layerLinears = [...]int{wQ, wK, wV, wO, wGate, wUp, wDown}

// scaleSuffix turns a Linear's weight name into its scale's: compressed-tensors'
// `<module>.weight_scale`.
const scaleSuffix = "_scale"

// parseQuantization reads the quantization_config of a config.json (top level, or the
// text_config of a multimodal one) into the scheme the checkpoint declares.
func (c *Config) parseQuantization(top, text map[string]json.RawMessage) error {
	raw, ok := top["quantization_config"]
	if !ok {
		raw = text["quantization_config"]
	}
	s, err := quant.ParseConfig(raw)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrConfig, err)
	}
	c.Quantization = s
	return nil
}

// quantizedLinears says which of layer l's Linears cfg quantizes (indexed like WeightSpecs'
// per-layer kinds). A Linear is covered when the scheme covers it under any of the hub's
// three spellings of its name.
func quantizedLinears(cfg *Config, l int) (out [numLayerWeights]bool) {
	if !cfg.Quantization.Mode.Quantized() {
		return out
	}
	for _, k := range layerLinears {
		module := strings.TrimSuffix(fmt.Sprintf("layers.%d.%s", l, layerWeightNames[k]), ".weight")
		targeted, ignored := false, false
		for _, p := range checkpointPrefixes {
			targeted = targeted || cfg.Quantization.Targeted(p+module)
			ignored = ignored || cfg.Quantization.Ignored(p+module)
		}
		out[k] = targeted && !ignored
	}
	return out
}

// quantWeightDType is the device dtype of cfg's quantized weights: Int8, or Uint8 holding
// e4m3fn bit patterns.
func quantWeightDType(mode quant.Mode) dtypes.DType {
	if mode.IsFP8() {
		return dtypes.Uint8
	}
	return dtypes.Int8
}

// appendLayerQuantSpecs marks layer l's quantized weights (the last numLayerWeights specs)
// with their storage dtype and appends their scales [out, 1] (compute dtype).
func appendLayerQuantSpecs(cfg *Config, specs []WeightSpec, l int) []WeightSpec {
	q := quantizedLinears(cfg, l)
	base := len(specs) - numLayerWeights
	for _, k := range layerLinears {
		if !q[k] {
			continue
		}
		s := &specs[base+k]
		s.DType = quantWeightDType(cfg.Quantization.Mode)
		specs = append(specs, WeightSpec{Name: s.Name + scaleSuffix, Shape: []int{s.Shape[0], 1}})
	}
	return specs
}

// layerIndex locates one layer's tensors in the weight list: its 13 tensors start at
// start; scale[k] is the index of Linear k's scale, or -1 when k is not quantized.
type layerIndex struct {
	start int
	scale [numLayerWeights]int
}

func layerIndices(cfg *Config) []layerIndex {
	out := make([]layerIndex, cfg.NumHiddenLayers)
	next := 1
	for l := range out {
		out[l].start = next
		next += numLayerWeights
		q := quantizedLinears(cfg, l)
		for k := range out[l].scale {
			out[l].scale[k] = -1
			if q[k] {
				out[l].scale[k] = next
				next++
			}
		}
	}
	return out
}

// TensorSpec is one device tensor of a model in a quantization mode, for memory and
// sharding plans: its name, storage dtype and shape. ScaleOf names the weight a scale
// belongs to ("" for others); a scale [out, 1] follows its weight's axis 0.
type TensorSpec struct {
	Name    string
	DType   dtypes.DType
	Shape   []int
	ScaleOf string
}

// Bytes is the tensor's device size.
func (t TensorSpec) Bytes() int64 {
	n := int64(t.DType.Size())
	for _, d := range t.Shape {
		n *= int64(d)
	}
	return n
}

// QuantizedTensorSpecs lists the device tensors of cfg when its Linears run in mode (every
// decoder Linear covered, the embedding and norms not, as tpuserve quantizes at load) with
// compute dtype compute, in weight-list order: for each quantized Linear, its weight in
// Int8 (Uint8 e4m3 bits for FP8) [out, in] and, after the layer's 13 tensors, its scale
// [out, 1] in the compute dtype. For a checkpoint's own selection set cfg.Quantization and
// call WeightSpecs.
func QuantizedTensorSpecs(cfg *Config, mode quant.Mode, compute dtypes.DType) []TensorSpec {
	c := *cfg
	c.Quantization = quant.AtLoad(mode)
	return tensorSpecs(WeightSpecs(&c), compute)
}

// tensorSpecs turns weight specs into device tensor specs: a spec without a storage dtype
// is in compute, a scale names its weight.
func tensorSpecs(specs []WeightSpec, compute dtypes.DType) []TensorSpec {
	out := make([]TensorSpec, len(specs))
	for i, s := range specs {
		dt := s.DType
		if dt == dtypes.InvalidDType {
			dt = compute
		}
		out[i] = TensorSpec{Name: s.Name, DType: dt, Shape: slices.Clone(s.Shape)}
		if strings.HasSuffix(s.Name, scaleSuffix) {
			out[i].ScaleOf = strings.TrimSuffix(s.Name, scaleSuffix)
		}
	}
	return out
}

// isScaleSpec reports whether spec s is a quantized Linear's scale.
func isScaleSpec(s WeightSpec) bool { return strings.HasSuffix(s.Name, scaleSuffix) }

// checkQuantSpec validates the checkpoint tensor behind a quantized weight or a scale spec
// and returns its description (for a quantize-at-load, the unquantized weight's).
func checkQuantSpec(ck *Checkpoint, prefix string, cfg *Config, s WeightSpec) (TensorInfo, error) {
	name := prefix + strings.TrimPrefix(s.Name, "model.")
	scheme := cfg.Quantization
	if isScaleSpec(s) {
		if !scheme.Compressed {
			return TensorInfo{}, nil // computed by the quantize-at-load of its weight
		}
		info, ok := ck.Lookup(name)
		if !ok {
			return TensorInfo{}, fmt.Errorf("%w: scale %s is missing from %s (quantization_config covers %s)", ErrWeights, name, ck.Dir, strings.TrimSuffix(name, scaleSuffix))
		}
		if !slices.Equal(info.Shape, s.Shape) && !slices.Equal(info.Shape, s.Shape[:1]) {
			return TensorInfo{}, fmt.Errorf("%w: scale %s in %s has shape %v, want %v (one per output channel)", ErrWeights, name, info.File, info.Shape, s.Shape)
		}
		switch info.DType {
		case "BF16", "F16", "F32":
		default:
			return TensorInfo{}, fmt.Errorf("%w: scale %s in %s has dtype %s (want BF16, F16 or F32)", ErrWeights, name, info.File, info.DType)
		}
		return info, nil
	}
	info, ok := ck.Lookup(name)
	if !ok {
		return TensorInfo{}, fmt.Errorf("%w: tensor %s is missing from %s", ErrWeights, name, ck.Dir)
	}
	if !slices.Equal(info.Shape, s.Shape) {
		return TensorInfo{}, fmt.Errorf("%w: tensor %s in %s has shape %v, the config needs %v", ErrWeights, name, info.File, info.Shape, s.Shape)
	}
	want := scheme.Mode.SafetensorsDType()
	if scheme.Compressed {
		if info.DType != want {
			return TensorInfo{}, fmt.Errorf("%w: tensor %s in %s has dtype %s, quantization_config (%s) needs %s", ErrWeights, name, info.File, info.DType, scheme.Mode, want)
		}
		return info, nil
	}
	switch info.DType {
	case "BF16", "F16", "F32":
	default:
		return TensorInfo{}, fmt.Errorf("%w: tensor %s in %s has dtype %s: a quantized tensor where config.json has no quantization_config (want BF16, F16 or F32 to quantize at load)", ErrWeights, name, info.File, info.DType)
	}
	if _, ok := ck.Lookup(name + scaleSuffix); ok {
		return TensorInfo{}, fmt.Errorf("%w: tensor %s%s in %s: a quantization scale where config.json has no quantization_config", ErrWeights, name, scaleSuffix, ck.Dir)
	}
	return info, nil
}

// checkUnquantized refuses a quantized tensor (or a scale) where the config quantizes none.
func checkUnquantized(ck *Checkpoint, name string, info TensorInfo) error {
	if info.DType == "I8" || strings.HasPrefix(info.DType, "F8") {
		return fmt.Errorf("%w: tensor %s in %s has dtype %s: a quantized tensor where the config says it is not quantized", ErrWeights, name, info.File, info.DType)
	}
	if _, ok := ck.Lookup(name + scaleSuffix); ok && strings.HasSuffix(name, "proj.weight") {
		return fmt.Errorf("%w: tensor %s%s in %s: a quantization scale where the config says %s is not quantized", ErrWeights, name, scaleSuffix, ck.Dir, name)
	}
	return nil
}

// loadQuantTensor makes the host tensor of a quantized weight or scale spec: copied from a
// compressed checkpoint, or (quantize at load) computed from the unquantized weight, whose
// scale is kept in pending for the scale spec that follows.
func loadQuantTensor(ck *Checkpoint, name string, info TensorInfo, s WeightSpec, cfg *Config, dtype dtypes.DType, pending map[string][]float32) (*tensors.Tensor, error) {
	mode := cfg.Quantization.Mode
	if isScaleSpec(s) {
		var scales []float32
		if cfg.Quantization.Compressed {
			raw, err := ck.Bytes(name)
			if err != nil {
				return nil, err
			}
			scales = toFloat32s(raw, info.DType)
		} else {
			scales = pending[strings.TrimSuffix(s.Name, scaleSuffix)]
			delete(pending, strings.TrimSuffix(s.Name, scaleSuffix))
		}
		if len(scales) != s.Shape[0] {
			return nil, fmt.Errorf("%w: scale %s: %d values for %d output channels", ErrWeights, name, len(scales), s.Shape[0])
		}
		for r, v := range scales {
			if !(v >= 0) || math.IsInf(float64(v), 0) {
				return nil, fmt.Errorf("%w: scale %s[%d] is %v (want finite and ≥ 0)", ErrWeights, name, r, v)
			}
		}
		return floatTensor(scales, dtype, s.Shape), nil
	}
	raw, err := ck.Bytes(name)
	if err != nil {
		return nil, err
	}
	t := tensors.FromShape(shapes.Make(quantWeightDType(mode), s.Shape...))
	if cfg.Quantization.Compressed {
		if err := t.MutableBytes(func(dst []byte) { copy(dst, raw) }); err != nil {
			return nil, fmt.Errorf("%w: tensor %s: %w", ErrWeights, name, err)
		}
		return t, nil
	}
	values, scales, err := quantizeRows(toFloat32s(raw, info.DType), s.Shape[0], s.Shape[1], mode)
	if err != nil {
		return nil, fmt.Errorf("%w: tensor %s: %w", ErrWeights, name, err)
	}
	pending[s.Name] = scales
	if err := t.MutableBytes(func(dst []byte) { copy(dst, values) }); err != nil {
		return nil, fmt.Errorf("%w: tensor %s: %w", ErrWeights, name, err)
	}
	return t, nil
}

// quantizeRows applies the recipe of mode and returns the weight's bytes and its scales.
func quantizeRows(w []float32, rows, cols int, mode quant.Mode) ([]byte, []float32, error) {
	if mode.IsFP8() {
		return quant.QuantizeFP8(w, rows, cols)
	}
	q, s, err := quant.QuantizeInt8(w, rows, cols)
	if err != nil {
		return nil, nil, err
	}
	b := make([]byte, len(q))
	for i, v := range q {
		b[i] = byte(v)
	}
	return b, s, nil
}

// toFloat32s decodes little-endian BF16/F16/F32 values.
func toFloat32s(raw []byte, srcType string) []float32 {
	n := len(raw) / dtypeSize(srcType)
	out := make([]float32, n)
	buf := make([]byte, 4*n)
	convertInto(buf, dtypes.Float32, raw, srcType)
	for i := range out {
		out[i] = math.Float32frombits(binary.LittleEndian.Uint32(buf[4*i:]))
	}
	return out
}

// floatTensor makes a host tensor of dtype (Float32 or BFloat16) from values.
func floatTensor(values []float32, dtype dtypes.DType, shape []int) *tensors.Tensor {
	t := tensors.FromShape(shapes.Make(dtype, shape...))
	_ = t.MutableBytes(func(dst []byte) {
		for i, v := range values {
			if dtype == dtypes.BFloat16 {
				binary.LittleEndian.PutUint16(dst[2*i:], float32ToBF16Bits(v))
			} else {
				binary.LittleEndian.PutUint32(dst[4*i:], math.Float32bits(v))
			}
		}
	})
	return t
}

// hostFloat32s reads a Float32 or BFloat16 host tensor as float32 values.
func hostFloat32s(t *tensors.Tensor) []float32 {
	var out []float32
	_ = t.ConstBytes(func(b []byte) {
		src := "F32"
		if t.DType() == dtypes.BFloat16 {
			src = "BF16"
		}
		out = toFloat32s(b, src)
	})
	return out
}

// QuantizeWeights quantizes unquantized host weights of cfg (e.g. RandomWeights) at load
// with scheme (quant.AtLoad(mode)) and returns the config and weights of the quantized model
// (the same recipe as loading a checkpoint with LoadOptions.Quantization). w is consumed.
func QuantizeWeights(cfg Config, w *Weights, scheme quant.Scheme) (Config, *Weights, error) {
	if cfg.Quantization.Mode.Quantized() {
		return Config{}, nil, fmt.Errorf("%w: the weights are already quantized (%s)", ErrWeights, cfg.Quantization.Mode)
	}
	if scheme.Compressed {
		return Config{}, nil, fmt.Errorf("%w: QuantizeWeights needs an at-load scheme", ErrConfig)
	}
	if len(w.Tensors) != len(WeightSpecs(&cfg)) {
		return Config{}, nil, fmt.Errorf("%w: %d weight tensors, the config needs %d", ErrWeights, len(w.Tensors), len(WeightSpecs(&cfg)))
	}
	byName := map[string]*tensors.Tensor{}
	for i, s := range w.Specs {
		byName[s.Name] = w.Tensors[i]
	}
	dtype := w.Tensors[0].DType()
	qcfg := cfg
	qcfg.Quantization = scheme
	specs := WeightSpecs(&qcfg)
	out := &Weights{Specs: specs, Tensors: make([]*tensors.Tensor, len(specs))}
	pending := map[string][]float32{}
	for i, s := range specs {
		switch {
		case isScaleSpec(s):
			out.Tensors[i] = floatTensor(pending[strings.TrimSuffix(s.Name, scaleSuffix)], dtype, s.Shape)
		case s.DType != dtypes.InvalidDType:
			src := byName[s.Name]
			values, scales, err := quantizeRows(hostFloat32s(src), s.Shape[0], s.Shape[1], scheme.Mode)
			if err != nil {
				return Config{}, nil, fmt.Errorf("%w: tensor %s: %w", ErrWeights, s.Name, err)
			}
			pending[s.Name] = scales
			t := tensors.FromShape(shapes.Make(s.DType, s.Shape...))
			_ = t.MutableBytes(func(dst []byte) { copy(dst, values) })
			out.Tensors[i] = t
			src.FinalizeAll()
		default:
			out.Tensors[i] = byName[s.Name]
		}
	}
	return qcfg, out, nil
}

// resolveQuantization applies a LoadOptions.Quantization override to the scheme the
// checkpoint declares.
func (c *Config) resolveQuantization(flag string) error {
	s, err := quant.Resolve(c.Quantization, flag)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrConfig, err)
	}
	c.Quantization = s
	if s.Mode.Quantized() {
		how := "quantize at load"
		if s.Compressed {
			how = "checkpoint"
		}
		slog.Info("quantized weights", "mode", s.Mode.String(), "from", how, "targets", s.Targets, "ignore", s.Ignore)
	}
	return nil
}

// quantizePreset quantizes a preset's random weights at load as flag asks.
func quantizePreset(cfg Config, w *Weights, flag string) (Config, *Weights, error) {
	mode, err := quant.ParseMode(flag)
	if err != nil {
		return Config{}, nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	if mode == quant.None {
		return cfg, w, nil
	}
	slog.Info("quantized weights", "mode", mode.String(), "from", "quantize at load")
	return QuantizeWeights(cfg, w, quant.AtLoad(mode))
}
