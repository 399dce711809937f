package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/tpuserve/tpuserve/internal/plan"
	"github.com/tpuserve/tpuserve/model"
	"github.com/tpuserve/tpuserve/model/quant"
	"github.com/tpuserve/tpuserve/model/vision"
)

func init() {
	register("plan", "print the tensor-parallel sharding and per-chip memory plan (KV capacity, roofline) of a model", runPlan)
}

// planOutput is what --json writes.
type planOutput struct {
	Model    string                 `json:"model"`
	Config   model.Config           `json:"config"`
	Sharding *model.ShardingPlan    `json:"sharding,omitempty"`
	Memory   *plan.MemoryPlan       `json:"memory,omitempty"`
	Error    string                 `json:"error,omitempty"`
	Roofline []*plan.RooflineResult `json:"roofline,omitempty"`
	// Programs is the closed set of programs the engine compiles at start-up.
	Programs []plan.Program `json:"programs,omitempty"`
}

func runPlan(args []string, _ io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("plan", flag.ContinueOnError)
	fs.SetOutput(stderr)
	modelSpec := fs.String("model", "gemma3-27b", "checkpoint directory (its config.json) or a preset: "+strings.Join(model.PresetNames(), ", "))
	tp := fs.Int("tp", 1, "tensor-parallel size: chips the model is split across")
	fs.IntVar(tp, "tensor-parallel-size", 1, "same as --tp")
	deviceMem := fs.String("device-memory", "16GiB", "memory of one chip (16GiB: a TPU v5e chip); binary units GiB/MiB, decimal GB/MB")
	dtype := fs.String("dtype", "bf16", "compute dtype: bf16 or f32 (int8 and fp8 are kept as spellings of --quantization int8/fp8)")
	quantFlag := fs.String("quantization", "", "weights: none, int8 (int8-weight-only, w8a8) or fp8 (fp8-dynamic, fp8-weight-only): 1 byte per Linear parameter and bf16 per-row scales, embedding, norms, KV and activations bf16; the plan shows the KV capacity it frees (default: the checkpoint's quantization_config, else none)")
	kvDType := fs.String("kv-cache-dtype", "auto", "KV cache storage: auto (the compute dtype), int8 or fp8 (1 byte per element and a scale per position and kv head: about twice the tokens of bf16)")
	maxModelLen := fs.Int("max-model-len", 0, "longest sequence (default min(8192, the model's max positions))")
	maxSeqs := fs.Int("max-num-seqs", 128, "most sequences running at once (the v5e-8 production setting)")
	maxBatched := fs.Int("max-num-batched-tokens", 2048, "most tokens in one step (the v5e-8 production setting)")
	pageSize := fs.Int("page-size", 16, "positions per KV block")
	minTokens := fs.Int("min-token-bucket", 32, "smallest token bucket of the program set (32 on TPU/GPU, 1 on the CPU)")
	workspace := fs.String("workspace", "1GiB", "per-chip allowance for XLA temporaries, compiled programs and the runtime")
	seqLen := fs.Int("seq-len", 0, "sequence length the capacity in sequences is given for (default --max-model-len)")
	asJSON := fs.Bool("json", false, "write the plan as JSON")
	roofline := fs.Bool("roofline", false, "print the TPU v5e roofline of the plan, for bf16 and int8 weights whatever --dtype, as markdown tables (instead of the plan)")
	tensors := fs.Bool("tensors", false, "list every tensor (default: one line per kind of layer tensor)")
	maxImages := fs.Int("max-images-per-step", 4, "a vision checkpoint: most images one step encodes, as serve's flag (the replicated tower's weights and this bucket's activations on every chip); 0 plans it text-only")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	cfg, err := planConfig(*modelSpec)
	if err != nil {
		return err
	}
	format, err := model.ParseWeightFormat(*dtype)
	if err != nil {
		return fmt.Errorf("--dtype: %w", err)
	}
	if *quantFlag != "" {
		mode, err := quant.ParseMode(*quantFlag)
		if err != nil {
			return fmt.Errorf("--quantization: %w", err)
		}
		switch {
		case !mode.Quantized():
			cfg.Quantization = quant.Scheme{} // plan the checkpoint unquantized
			if format.QuantMode().Quantized() {
				return fmt.Errorf("--quantization none contradicts --dtype %s", *dtype)
			}
		case format == model.FormatF32:
			return fmt.Errorf("--quantization %s: quantized weights are planned with bf16 compute (scales, embedding, KV), not --dtype %s", *quantFlag, *dtype)
		case format.QuantMode().Quantized() && format != model.QuantizedFormat(mode):
			return fmt.Errorf("--quantization %s contradicts --dtype %s", *quantFlag, *dtype)
		default:
			format = model.QuantizedFormat(mode)
		}
	}
	mem, err := plan.ParseByteSize(*deviceMem)
	if err != nil {
		return fmt.Errorf("--device-memory: %w", err)
	}
	ws, err := plan.ParseByteSize(*workspace)
	if err != nil {
		return fmt.Errorf("--workspace: %w", err)
	}
	if ws == 0 {
		ws = -1 // an explicit 0: PlanMemory's 0 means the default, a negative value none
	}
	opts := plan.MemoryOptions{
		TP: *tp, DeviceMemoryBytes: mem, Format: format, MaxModelLen: *maxModelLen, MaxNumSeqs: *maxSeqs,
		MaxNumBatchedTokens: *maxBatched, PageSize: *pageSize, WorkspaceBytes: ws, SeqLen: *seqLen, MinTokens: *minTokens,
		KVCacheDType: *kvDType,
	}
	if err := planVisionTower(*modelSpec, &cfg, format, *maxImages, &opts); err != nil {
		return err
	}
	var roofs []*plan.RooflineResult
	if *roofline {
		if roofs, err = planRooflines(&cfg, opts); err != nil {
			return err
		}
		if !*asJSON {
			if len(roofs) == 0 {
				return fmt.Errorf("roofline: neither bf16 nor int8 weights fit: %w", plan.ErrMemory)
			}
			writeRoofline(stdout, *modelSpec, roofs)
			return nil
		}
	}
	mp, planErr := plan.PlanMemory(&cfg, opts)
	if planErr != nil && mp == nil {
		return planErr
	}
	if *asJSON {
		out := planOutput{Model: *modelSpec, Config: cfg, Sharding: mp.Sharding, Memory: mp, Roofline: roofs}
		if set, err := mp.Options.StepSet(&cfg); err == nil {
			out.Programs = set.Programs()
		}
		if planErr != nil {
			out.Error = planErr.Error()
		}
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(out); err != nil {
			return err
		}
		return planErr
	}
	var base *plan.MemoryPlan
	if format.QuantMode().Quantized() || cfg.Quantization.Mode.Quantized() {
		// The same options with bf16 weights: what quantization frees for the KV cache.
		bcfg := cfg
		bcfg.Quantization = quant.Scheme{}
		bo := opts
		bo.Format = model.FormatBF16
		base, _ = plan.PlanMemory(&bcfg, bo) // a bf16 model that does not fit still has its weight bytes
	}
	writePlan(stdout, *modelSpec, &cfg, mp, base, *tensors)
	return planErr
}

// planConfig resolves --model: a directory with config.json wins over a preset name.
func planConfig(spec string) (model.Config, error) {
	if st, err := os.Stat(spec); err == nil && st.IsDir() {
		return model.LoadConfig(spec)
	}
	for _, n := range model.PresetNames() {
		if n == spec {
			return model.Preset(spec)
		}
	}
	return model.Config{}, fmt.Errorf("--model %q is neither a checkpoint directory nor a preset (%s)", spec, strings.Join(model.PresetNames(), ", "))
}

// planVisionTower adds a vision checkpoint's tower to opts as serve does (planVision): it
// is replicated, so its weights (in the compute dtype, as vision.LoadEncoder loads them) and
// its largest bucket's activations count on every chip.
func planVisionTower(spec string, cfg *model.Config, format model.WeightFormat, maxImages int, opts *plan.MemoryOptions) error {
	if !cfg.Vision || maxImages <= 0 {
		return nil
	}
	vcfg, err := vision.LoadConfig(spec)
	if err != nil {
		return err
	}
	dtype := dtypes.BFloat16
	if format == model.FormatF32 {
		dtype = dtypes.Float32
	}
	opts.VisionWeightBytes = vcfg.WeightBytes(dtype)
	opts.VisionActivationBytes = vcfg.PeakActivationBytes(maxImages, dtype)
	opts.MaxImagesPerStep, opts.ImageTokens = maxImages, vcfg.MMTokensPerImage
	return nil
}

// planRooflines plans bf16 and int8 weights with the same options and computes their
// v5e rooflines; a format that does not fit is left out with a note in the table.
func planRooflines(cfg *model.Config, opts plan.MemoryOptions) ([]*plan.RooflineResult, error) {
	var out []*plan.RooflineResult
	for _, f := range []model.WeightFormat{model.FormatBF16, model.FormatInt8} {
		o := opts
		o.Format = f
		p, err := plan.PlanMemory(cfg, o)
		if err != nil {
			if errors.Is(err, plan.ErrMemory) {
				continue
			}
			return nil, err
		}
		r, err := plan.Roofline(cfg, p, plan.RooflineOptions{Chip: plan.TPUv5e})
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

// writePlan writes plan p; base, when given, is the same plan with bf16 weights, to show
// what quantized weights free.
func writePlan(w io.Writer, name string, cfg *model.Config, p *plan.MemoryPlan, base *plan.MemoryPlan, allTensors bool) {
	o := p.Options
	sp := p.Sharding
	mesh := make([]string, len(sp.MeshAxisNames))
	for i, a := range sp.MeshAxisNames {
		mesh[i] = fmt.Sprintf("%s=%d", a, sp.MeshAxisSizes[i])
	}
	weights := string(o.Format) + " weights"
	if m := cfg.Quantization.Mode; m.Quantized() && !o.Format.QuantMode().Quantized() {
		weights = fmt.Sprintf("%s weights (the checkpoint's %s Linears)", o.Format, m)
	}
	if m := sp.Config().KVCache; m.Quantized() {
		weights += fmt.Sprintf(", %s KV cache", model.KVCacheDTypeName(m))
	}
	fmt.Fprintf(w, "plan: %s, %s, TP=%d (mesh %s), %s per chip\n", name, weights, o.TP, strings.Join(mesh, " × "), plan.FormatBytes(o.DeviceMemoryBytes))
	fmt.Fprintf(w, "model: %.2f B parameters, %d layers (%d global, %d sliding, window %d), %d heads, %d kv heads, head dim %d, vocabulary %d\n",
		float64(cfg.NumParams())/1e9, cfg.NumHiddenLayers, cfg.NumGlobalLayers(), cfg.NumSlidingLayers(), cfg.SlidingWindow,
		cfg.NumAttentionHeads, cfg.NumKeyValueHeads, cfg.HeadDim, cfg.VocabSize)
	rep := ""
	if sp.KVReplicas > 1 {
		rep = fmt.Sprintf(" (fewer kv heads than chips: each kv head on %d chips)", sp.KVReplicas)
	}
	if sp.QReplicas > 1 {
		rep += fmt.Sprintf(" (fewer heads than chips: each head on %d chips, each taking 1/%d of its o_proj columns)", sp.QReplicas, sp.QReplicas)
	}
	fmt.Fprintf(w, "per chip: %d heads, %d kv heads%s\n\n", sp.HeadsPerChip, sp.KVHeadsPerChip, rep)

	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "tensor\tshape\tsplit\taxis\tshards\tper chip\tall chips")
	rows := map[string]int{}
	var order []string
	var perKind = map[string][2]int64{}
	var first = map[string]model.TensorPlan{}
	for _, t := range sp.Weights {
		key := t.Name
		if !allTensors && strings.HasPrefix(t.Name, "model.layers.") {
			parts := strings.SplitN(t.Name, ".", 4)
			key = "model.layers.*." + parts[3]
		}
		if _, ok := rows[key]; !ok {
			order = append(order, key)
			first[key] = t
		}
		rows[key]++
		v := perKind[key]
		perKind[key] = [2]int64{v[0] + t.BytesPerChip, v[1] + t.BytesPerChip*int64(o.TP)}
	}
	for _, key := range order {
		t := first[key]
		label := key
		if n := rows[key]; n > 1 {
			label = fmt.Sprintf("%s ×%d", key, n)
		}
		axis := "-"
		if t.Axis >= 0 {
			axis = fmt.Sprintf("%d (%s)", t.Axis, strings.Join(t.MeshAxes, ","))
		}
		fmt.Fprintf(tw, "%s\t%v\t%s\t%s\t%d\t%s\t%s\n", label, t.Shape, t.Split, axis, t.Shards,
			plan.FormatBytes(perKind[key][0]), plan.FormatBytes(perKind[key][1]))
	}
	kvAxis := "-"
	if sp.KVPool.Axis >= 0 {
		kvAxis = fmt.Sprintf("%d (%s)", sp.KVPool.Axis, strings.Join(sp.KVPool.MeshAxes, ","))
	}
	fmt.Fprintf(tw, "KV pools (K and V per layer) ×%d\t[pages %d %d %d]\t%s\t%s\t%d\t%s\t%s\n", 2*cfg.NumHiddenLayers, o.PageSize, cfg.NumKeyValueHeads, cfg.HeadDim,
		sp.KVPool.Split, kvAxis, sp.KVPool.Shards, plan.FormatBytes(p.KVPoolBytesPerChip), plan.FormatBytes(p.KVPoolBytesPerChip*int64(o.TP)))
	tw.Flush()

	fmt.Fprintf(w, "\nmemory per chip\n")
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "  weights\t%s\t(%s for the model)\n", plan.FormatBytes(p.WeightBytesPerChip), plan.FormatBytes(p.WeightBytes))
	a := p.Activations
	fmt.Fprintf(tw, "  activations\t%s\tlargest of %d programs: %s T=%d B=%d Q=%d EG=%d ES=%d, peak in %s\n", plan.FormatBytes(a.Peak), p.Programs, a.Kind,
		a.Shape.T, a.Shape.B, a.Shape.Q, a.Shape.EG, a.Shape.ES, a.Phase)
	for _, it := range a.Items {
		if it.Bytes*50 >= a.Peak { // the items that matter
			fmt.Fprintf(tw, "    %s\t%s\t\n", it.Name, plan.FormatBytes(it.Bytes))
		}
	}
	fmt.Fprintf(tw, "  workspace\t%s\tallowance (--workspace)\n", plan.FormatBytes(p.WorkspaceBytes))
	fmt.Fprintf(tw, "  KV cache\t%s\t(%s on %d chips; pools allocate %s)\n", plan.FormatBytes(p.KVBytesPerChip),
		plan.FormatBytes(p.KVBytesPerChip*int64(o.TP)), o.TP, plan.FormatBytes(p.KVPoolBytesPerChip))
	fmt.Fprintf(tw, "  device\t%s\t\n", plan.FormatBytes(o.DeviceMemoryBytes))
	tw.Flush()

	if p.GlobalBlocks == 0 {
		return
	}
	fmt.Fprintf(w, "\nKV capacity (max model len %d, %d sequences, %d tokens per step)\n", o.MaxModelLen, o.MaxNumSeqs, o.MaxNumBatchedTokens)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "  blocks\t%d global + %d sliding of %d positions (null blocks included)\n", p.GlobalBlocks, p.SlidingBlocks, o.PageSize)
	fmt.Fprintf(tw, "  tokens\t%d\n", p.KVTokens)
	fmt.Fprintf(tw, "  KV of one sequence of %d\t%s per chip (%s in all)\n", p.SeqLen, plan.FormatBytes(p.SeqKVBytesPerChip),
		plan.FormatBytes(plan.SeqKVBytesFor(sp.Config(), p.SeqLen, cfg.NumKeyValueHeads, o.Format.ComputeDType())))
	fmt.Fprintf(tw, "  sequences of %d\t%d at once in the engine's pools; %d if the budget were split for this length\n", p.SeqLen, p.SeqsAtLen, p.SeqsAtLenByBytes)
	tw.Flush()
	if base != nil {
		fmt.Fprintf(w, "\nquantized weights free %s per chip for the KV cache (bf16 weights: %s per chip, ",
			plan.FormatBytes(base.WeightBytesPerChip-p.WeightBytesPerChip), plan.FormatBytes(base.WeightBytesPerChip))
		if base.GlobalBlocks == 0 {
			fmt.Fprintf(w, "which leave no KV cache)\n")
		} else {
			fmt.Fprintf(w, "KV %s, %d tokens, %d sequences of %d): %+d tokens, %+d sequences\n", plan.FormatBytes(base.KVBytesPerChip),
				base.KVTokens, base.SeqsAtLen, p.SeqLen, p.KVTokens-base.KVTokens, p.SeqsAtLen-base.SeqsAtLen)
		}
	}
}

// writeRoofline writes the rooflines as markdown tables.
func writeRoofline(w io.Writer, name string, rs []*plan.RooflineResult) {
	r0 := rs[0]
	ch := r0.Chip
	fmt.Fprintf(w, "Roofline: %s on %d × %s (TP=%d). Ceilings per chip: %.0f GB/s HBM, %.0f TFLOP/s bf16, %.0f TOPS int8, %.0f GB/s ICI (bidirectional); %s.\n\n",
		name, r0.TP, ch.Name, r0.TP, ch.HBMBytesPerSec/1e9, ch.BF16FLOPS/1e12, ch.Int8OPS/1e12, ch.ICIBytesPerSec/1e9, ch.Source)
	fmt.Fprintf(w, "| weights | weights/chip | decode floor, weights only (ms/token) | decode floor, batch 1 @ %d (ms/token) | prefill floor, %d-token prompts (tokens/s) | all-reduce per decode token (KiB; per chip over ICI) | KV/chip | KV tokens | sequences of %d |\n",
		r0.DecodeContext, r0.PromptLen, r0.SeqLen)
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|")
	for _, r := range rs {
		prefill := fmt.Sprintf("%.0f", r.PrefillTokensPerSec)
		if r.Format == model.FormatInt8 {
			prefill += fmt.Sprintf(" (%.0f at the int8 peak, w8a8)", r.PrefillTokensPerSecInt8)
		}
		d1 := r.Decode[0]
		fmt.Fprintf(w, "| %s | %s | %.2f | %.2f | %s | %.0f; %.0f | %s | %d | %d |\n", r.Format, plan.FormatBytes(r.WeightBytesPerChip),
			r.WeightOnlyMS, d1.StepMS, prefill, float64(d1.AllReduceBytes)/1024/float64(d1.Batch), float64(d1.ICIBytesPerChip)/1024/float64(d1.Batch),
			plan.FormatBytes(r.KVBytesPerChip), r.KVTokens, r.SeqsAtLen)
	}
	m := r0.Memory
	fmt.Fprintf(w, "\nKV per chip = %s device − weights − activations of the largest bucket (%s for bf16; --max-num-seqs %d, --max-num-batched-tokens %d, --max-model-len %d) − %s workspace.\n",
		plan.FormatBytes(m.DeviceMemoryBytes), plan.FormatBytes(r0.ActivationBytesPerChip), m.MaxNumSeqs, m.MaxNumBatchedTokens, m.MaxModelLen, plan.FormatBytes(m.WorkspaceBytes))
	for _, r := range rs {
		fmt.Fprintf(w, "\nDecode floors, %s weights, every sequence at context %d:\n\n", r.Format, r.DecodeContext)
		fmt.Fprintln(w, "| batch | bytes/chip/step | memory floor (ms) | compute floor (ms) | step floor = ms/token (ms) | tokens/s (slice) | all-reduce payload (MiB) | ICI floor (ms) | fits the KV pools |")
		fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|")
		for _, p := range r.Decode {
			fits := "yes"
			if !p.FitsKV {
				fits = "no"
			}
			fmt.Fprintf(w, "| %d | %s | %.2f | %.2f | %.2f | %.0f | %.2f | %.3f | %s |\n", p.Batch, plan.FormatBytes(p.BytesPerChip),
				p.MemoryMS, p.ComputeMS, p.StepMS, p.TokensPerSec, float64(p.AllReduceBytes)/(1<<20), p.ICIMS, fits)
		}
	}
}
