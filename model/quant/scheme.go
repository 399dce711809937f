package quant

import (
	"bytes"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strings"
)

// Scheme is what a model quantizes and how.
type Scheme struct {
	// Mode is how the covered Linears run.
	Mode Mode
	// Targets and Ignore select the covered Linears as compressed-tensors does: a module is
	// covered when some target matches it and no ignore entry does. An entry matches the
	// module's class ("Linear": every Linear), its full name, or, spelled "re:PATTERN", a
	// regular expression anchored at the start of the name (Python's re.match).
	Targets, Ignore []string
	// Compressed is true when the checkpoint stores the covered weights already quantized
	// (config.json has a quantization_config); false when they are quantized at load.
	Compressed bool
}

// DefaultTargets and DefaultIgnore are the selection of a quantize-at-load and of the
// checkpoints tpuserve writes: every decoder Linear, not the (tied) output projection.
var (
	DefaultTargets = []string{"Linear"}
	DefaultIgnore  = []string{"lm_head"}
)

// AtLoad is the scheme of quantizing an unquantized checkpoint at load with mode.
func AtLoad(mode Mode) Scheme {
	if mode == None {
		return Scheme{}
	}
	return Scheme{Mode: mode, Targets: slices.Clone(DefaultTargets), Ignore: slices.Clone(DefaultIgnore)}
}

// Quantizes reports whether the Linear module (its full checkpoint name without
// ".weight", e.g. "model.layers.3.mlp.down_proj") is covered: targeted and not ignored.
// Patterns were checked by ParseConfig; one that does not compile matches nothing.
func (s Scheme) Quantizes(module string) bool {
	return s.Mode != None && s.Targeted(module) && !s.Ignored(module)
}

// Targeted reports whether some target matches module.
func (s Scheme) Targeted(module string) bool { return matchesAny(s.Targets, module) }

// Ignored reports whether some ignore entry matches module.
func (s Scheme) Ignored(module string) bool { return matchesAny(s.Ignore, module) }

func matchesAny(list []string, module string) bool {
	for _, p := range list {
		if matches(p, module) {
			return true
		}
	}
	return false
}

func matches(pattern, module string) bool {
	if pattern == "Linear" || pattern == module {
		return true
	}
	if re, ok := strings.CutPrefix(pattern, "re:"); ok {
		r, err := regexp.Compile("^(?:" + re + ")")
		return err == nil && r.MatchString(module)
	}
	return false
}

// Resolve applies a --quantization flag to the scheme a checkpoint declares: "" keeps it;
// on an unquantized checkpoint any mode quantizes at load; on a compressed one only the
// same weight type is possible (W8A8 ↔ int8 weight-only, FP8-dynamic ↔ FP8 weight-only).
func Resolve(checkpoint Scheme, flag string) (Scheme, error) {
	if strings.TrimSpace(flag) == "" {
		return checkpoint, nil
	}
	mode, err := ParseMode(flag)
	if err != nil {
		return Scheme{}, err
	}
	if !checkpoint.Compressed {
		return AtLoad(mode), nil
	}
	if mode == None || mode.IsFP8() != checkpoint.Mode.IsFP8() {
		return Scheme{}, fmt.Errorf("%w: --quantization %s on a checkpoint that stores %s weights (quantization_config): only %s or %s can run it",
			ErrUnsupported, mode, checkpoint.Mode.SafetensorsDType(), checkpoint.Mode, checkpoint.Mode.WeightOnly())
	}
	out := checkpoint
	out.Targets, out.Ignore = slices.Clone(checkpoint.Targets), slices.Clone(checkpoint.Ignore)
	out.Mode = mode
	return out, nil
}

// compressed-tensors' quantization_config, as far as tpuserve reads it.
type ctConfig struct {
	QuantMethod        string                     `json:"quant_method"`
	Format             string                     `json:"format"`
	QuantizationStatus string                     `json:"quantization_status"`
	ConfigGroups       map[string]json.RawMessage `json:"config_groups"`
	Ignore             []string                   `json:"ignore"`
	KVCacheScheme      json.RawMessage            `json:"kv_cache_scheme"`
	SparsityConfig     json.RawMessage            `json:"sparsity_config"`
	TransformConfig    json.RawMessage            `json:"transform_config"`
}

type ctGroup struct {
	Targets           []string        `json:"targets"`
	Weights           json.RawMessage `json:"weights"`
	InputActivations  json.RawMessage `json:"input_activations"`
	OutputActivations json.RawMessage `json:"output_activations"`
	Format            *string         `json:"format"`
}

type ctArgs struct {
	NumBits        *int            `json:"num_bits"`
	Type           string          `json:"type"`
	Symmetric      *bool           `json:"symmetric"`
	Strategy       string          `json:"strategy"`
	Dynamic        json.RawMessage `json:"dynamic"`
	GroupSize      json.RawMessage `json:"group_size"`
	BlockStructure json.RawMessage `json:"block_structure"`
	Actorder       json.RawMessage `json:"actorder"`
}

func isNull(raw json.RawMessage) bool {
	t := bytes.TrimSpace(raw)
	return len(t) == 0 || string(t) == "null"
}

const field = "quantization_config"

// ParseConfig reads a config.json's quantization_config (raw JSON). A null or absent one
// (nil raw) is Scheme{}. Anything but compressed-tensors int8 / FP8 per-channel symmetric
// weights with dynamic per-token symmetric activations of the same type, or none, is
// refused with an error naming the field.
func ParseConfig(raw json.RawMessage) (Scheme, error) {
	if isNull(raw) {
		return Scheme{}, nil
	}
	var c ctConfig
	if err := json.Unmarshal(raw, &c); err != nil {
		return Scheme{}, fmt.Errorf("%w: field %s: %w", ErrInvalid, field, err)
	}
	if c.QuantMethod != "compressed-tensors" {
		return Scheme{}, fmt.Errorf("%w: field %s.quant_method %q (tpuserve reads compressed-tensors only)", ErrUnsupported, field, c.QuantMethod)
	}
	if c.QuantizationStatus != "" && c.QuantizationStatus != "compressed" {
		return Scheme{}, fmt.Errorf("%w: field %s.quantization_status %q (want compressed: the weights stored quantized)", ErrUnsupported, field, c.QuantizationStatus)
	}
	for _, f := range []struct {
		name string
		raw  json.RawMessage
	}{{"kv_cache_scheme", c.KVCacheScheme}, {"sparsity_config", c.SparsityConfig}, {"transform_config", c.TransformConfig}} {
		if !isNull(f.raw) && string(bytes.TrimSpace(f.raw)) != "{}" {
			return Scheme{}, fmt.Errorf("%w: field %s.%s is set (not supported)", ErrUnsupported, field, f.name)
		}
	}
	if len(c.ConfigGroups) != 1 {
		return Scheme{}, fmt.Errorf("%w: field %s.config_groups has %d groups (tpuserve runs exactly one)", ErrUnsupported, field, len(c.ConfigGroups))
	}
	var gname string
	for k := range c.ConfigGroups {
		gname = k
	}
	gfield := fmt.Sprintf("%s.config_groups.%s", field, gname)
	var g ctGroup
	if err := json.Unmarshal(c.ConfigGroups[gname], &g); err != nil {
		return Scheme{}, fmt.Errorf("%w: field %s: %w", ErrInvalid, gfield, err)
	}
	format := c.Format
	if g.Format != nil && *g.Format != "" {
		if format != "" && format != *g.Format {
			return Scheme{}, fmt.Errorf("%w: field %s.format %q differs from %s.format %q", ErrInvalid, gfield, *g.Format, field, format)
		}
		format = *g.Format
	}
	var wantType string
	switch format {
	case "int-quantized":
		wantType = "int"
	case "float-quantized":
		wantType = "float"
	default:
		return Scheme{}, fmt.Errorf("%w: field %s.format %q (want int-quantized or float-quantized)", ErrUnsupported, field, format)
	}
	if len(g.Targets) == 0 {
		return Scheme{}, fmt.Errorf("%w: field %s.targets is empty", ErrInvalid, gfield)
	}
	for i, list := range [][]string{g.Targets, c.Ignore} {
		name := gfield + ".targets"
		if i == 1 {
			name = field + ".ignore"
		}
		for _, p := range list {
			if re, ok := strings.CutPrefix(p, "re:"); ok {
				if _, err := regexp.Compile("^(?:" + re + ")"); err != nil {
					return Scheme{}, fmt.Errorf("%w: field %s: pattern %q: %w", ErrInvalid, name, p, err)
				}
			}
		}
	}
	if isNull(g.Weights) {
		return Scheme{}, fmt.Errorf("%w: field %s.weights is missing", ErrInvalid, gfield)
	}
	if err := checkArgs(g.Weights, gfield+".weights", wantType, "channel", false); err != nil {
		return Scheme{}, err
	}
	if !isNull(g.OutputActivations) {
		return Scheme{}, fmt.Errorf("%w: field %s.output_activations is set (not supported)", ErrUnsupported, gfield)
	}
	dynamic := !isNull(g.InputActivations)
	if dynamic {
		if err := checkArgs(g.InputActivations, gfield+".input_activations", wantType, "token", true); err != nil {
			return Scheme{}, err
		}
	}
	s := Scheme{Targets: g.Targets, Ignore: c.Ignore, Compressed: true}
	switch {
	case wantType == "int" && dynamic:
		s.Mode = Int8
	case wantType == "int":
		s.Mode = Int8WeightOnly
	case dynamic:
		s.Mode = FP8
	default:
		s.Mode = FP8WeightOnly
	}
	if s.Quantizes("lm_head") {
		return Scheme{}, fmt.Errorf("%w: field %s.ignore does not list lm_head: the output projection is the tied embedding, which tpuserve keeps unquantized", ErrUnsupported, field)
	}
	return s, nil
}

// checkArgs accepts 8-bit symmetric quantization of type want with strategy, static
// (weights) or dynamic (activations), and refuses everything else by field.
func checkArgs(raw json.RawMessage, name, want, strategy string, dynamic bool) error {
	var a ctArgs
	if err := json.Unmarshal(raw, &a); err != nil {
		return fmt.Errorf("%w: field %s: %w", ErrInvalid, name, err)
	}
	if a.NumBits == nil || *a.NumBits != 8 {
		got := "missing"
		if a.NumBits != nil {
			got = fmt.Sprint(*a.NumBits)
		}
		return fmt.Errorf("%w: field %s.num_bits is %s (want 8)", ErrUnsupported, name, got)
	}
	if a.Type != want {
		return fmt.Errorf("%w: field %s.type %q (the format needs %q)", ErrUnsupported, name, a.Type, want)
	}
	if a.Symmetric == nil || !*a.Symmetric {
		return fmt.Errorf("%w: field %s.symmetric must be true (asymmetric quantization is not supported)", ErrUnsupported, name)
	}
	if a.Strategy != strategy {
		return fmt.Errorf("%w: field %s.strategy %q (want %q)", ErrUnsupported, name, a.Strategy, strategy)
	}
	d := strings.TrimSpace(string(a.Dynamic))
	if d == "" || d == "null" {
		d = "false"
	}
	if d != fmt.Sprint(dynamic) {
		what := "static (dynamic: true is needed: per-token scales computed on the fly)"
		if !dynamic {
			what = "dynamic (weights need dynamic: false)"
		}
		return fmt.Errorf("%w: field %s.dynamic is %s: %s", ErrUnsupported, name, d, what)
	}
	for _, f := range []struct {
		n   string
		raw json.RawMessage
	}{{"group_size", a.GroupSize}, {"block_structure", a.BlockStructure}, {"actorder", a.Actorder}} {
		if !isNull(f.raw) {
			return fmt.Errorf("%w: field %s.%s is set (%s): only per-%s scales are supported", ErrUnsupported, name, f.n, bytes.TrimSpace(f.raw), strategy)
		}
	}
	return nil
}

// ConfigJSON is s as a compressed-tensors quantization_config (what tpuserve quantize
// writes into config.json); nil for None.
func (s Scheme) ConfigJSON() map[string]any {
	if s.Mode == None {
		return nil
	}
	typ, format := "int", "int-quantized"
	if s.Mode.IsFP8() {
		typ, format = "float", "float-quantized"
	}
	args := func(strategy string, dynamic bool, observer any) map[string]any {
		return map[string]any{"num_bits": 8, "type": typ, "symmetric": true, "strategy": strategy,
			"dynamic": dynamic, "group_size": nil, "observer": observer}
	}
	group := map[string]any{"targets": orDefault(s.Targets, DefaultTargets), "weights": args("channel", false, "minmax"),
		"input_activations": nil, "output_activations": nil}
	if s.Mode.Dynamic() {
		group["input_activations"] = args("token", true, nil)
	}
	return map[string]any{
		"quant_method": "compressed-tensors", "format": format, "quantization_status": "compressed",
		"config_groups": map[string]any{"group_0": group}, "ignore": orDefault(s.Ignore, DefaultIgnore),
		"kv_cache_scheme": nil,
	}
}

func orDefault(v, d []string) []string {
	if len(v) == 0 {
		v = d
	}
	return slices.Clone(v)
}
