package plan

// Tensor parallelism, part 2: the per-chip memory plan.
//
// PlanMemory splits one chip's memory between the model's weights (its share under the
// ShardingPlan), the live activations of the largest step bucket the engine compiles, a
// compile/runtime workspace allowance, and the KV cache, which gets the rest. The KV budget
// is then cut into pages exactly as the engine does (kvcache.ConfigForBudget) to give the
// capacity in tokens and in sequences of a given length. The server hands
// MemoryPlan.KVBytesPerChip to the engine as its KV cache size (per device) and
// MemoryPlan.KVHeadsPerChip as the kv heads each device stores.
//
// The activation figure is an estimate from the shapes the step program (graph.go's
// Forward, plus the sampler's work on the logits) materialises, not a measurement: see
// StepActivations. Errors wrap ErrMemory (does not fit, with the numbers) or ErrSharding.
// Everything here is pure computation, safe for concurrent use.

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/tpuserve/tpuserve/kvcache"
	"github.com/tpuserve/tpuserve/model"
)

// ErrMemory is wrapped when a configuration does not fit in device memory; the message
// carries the numbers.
var ErrMemory = errors.New("does not fit in device memory")

// DefaultWorkspaceBytes is the per-chip allowance for what the activation estimate does not
// cover: XLA's own temporaries and fusion scratch, the compiled programs of every bucket,
// and the runtime's reserved memory. 1 GiB is about 6% of a 16 GiB v5e chip, close to the
// 10% that vLLM leaves by default (gpu_memory_utilization 0.9); measure and override
// (--workspace) once the program runs on the chip.
const DefaultWorkspaceBytes int64 = 1 << 30

// MemoryOptions configure PlanMemory. Zero fields take the documented defaults, which are
// the engine's.
type MemoryOptions struct {
	// TP is the tensor-parallel size (default 1).
	TP int `json:"tp"`
	// DeviceMemoryBytes is one chip's memory (required).
	DeviceMemoryBytes int64 `json:"device_memory_bytes"`
	// Format is the weight format (default bf16; int8 and fp8: quantized Linears). A cfg
	// with a quantization_config planned in bf16 or f32 keeps its quantized Linears.
	Format model.WeightFormat `json:"format"`
	// MaxModelLen defaults to min(8192, max_position_embeddings).
	MaxModelLen int `json:"max_model_len"`
	// MaxNumSeqs defaults to 256, MaxNumBatchedTokens to 8192.
	MaxNumSeqs          int `json:"max_num_seqs"`
	MaxNumBatchedTokens int `json:"max_num_batched_tokens"`
	// PageSize (positions per KV block) and SegmentLen (attention row length of prefill
	// steps) default to 16, as in the engine.
	PageSize   int `json:"page_size"`
	SegmentLen int `json:"segment_len"`
	// MinTokens is the smallest token bucket of the step set (default 32: accelerators) and
	// PromptLogprobRows its prompt-scoring rows (default 64), as StepOptions.
	MinTokens         int `json:"min_tokens"`
	PromptLogprobRows int `json:"prompt_logprob_rows"`
	// KVCacheDType is the KV cache's storage (--kv-cache-dtype): "auto" or "" (the compute
	// dtype), "int8" or "fp8" (1 byte per element plus a compute-dtype scale per position
	// and kv head: for bf16 and head_dim 128, 1.98× the tokens of a bf16 cache).
	KVCacheDType string `json:"kv_cache_dtype,omitempty"`
	// WorkspaceBytes defaults to DefaultWorkspaceBytes; a negative value means none.
	WorkspaceBytes int64 `json:"workspace_bytes"`
	// SeqLen is the sequence length the "sequences" capacity is given for (default
	// MaxModelLen).
	SeqLen int `json:"seq_len"`
	// SpecTokens is speculative decoding's K (0: off): the verify programs score K+1
	// positions per running sequence, so the sampler's rows grow K+1 times.
	SpecTokens int `json:"spec_tokens,omitempty"`
	// VisionWeightBytes and VisionActivationBytes are a vision model's tower on each chip
	// (replicated: vision.Config.WeightBytes) and the peak activations of its largest image
	// bucket (vision.Config.PeakActivationBytes); the tower runs before the step, so the
	// plan keeps the larger of its activations and the step's. 0: no images served.
	VisionWeightBytes     int64 `json:"vision_weight_bytes,omitempty"`
	VisionActivationBytes int64 `json:"vision_activation_bytes,omitempty"`
	// MaxImagesPerStep and ImageTokens are StepOptions' (a vision model serving images):
	// the step set then lists the vision programs and sizes the image inputs.
	MaxImagesPerStep int `json:"max_images_per_step,omitempty"`
	ImageTokens      int `json:"image_tokens,omitempty"`
}

// NamedBytes is one line of an estimate.
type NamedBytes struct {
	Name  string `json:"name"`
	Bytes int64  `json:"bytes"`
}

// ActivationEstimate is the live device memory of one step of a bucket, per chip.
type ActivationEstimate struct {
	// Kind is "decode" or "prefill"; Shape is the bucket.
	Kind  string           `json:"kind"`
	Shape model.BatchShape `json:"shape"`
	// Items are the tensors counted; Phase names the largest transient phase
	// (attention, mlp or logits) whose items join the persistent ones in Peak.
	Items []NamedBytes `json:"items"`
	Phase string       `json:"phase"`
	Peak  int64        `json:"peak_bytes"`
}

// MemoryPlan is the per-chip memory split and the KV capacity it gives.
type MemoryPlan struct {
	Options  MemoryOptions       `json:"options"`
	Sharding *model.ShardingPlan `json:"-"`

	WeightBytes        int64 `json:"weight_bytes"`
	WeightBytesPerChip int64 `json:"weight_bytes_per_chip"`
	// Activations is the estimate of the step-set member with the most live memory (a step
	// program or the sampler program with the most rows).
	Activations ActivationEstimate `json:"activations"`
	// Programs is the size of the closed program set compiled at start-up.
	Programs       int   `json:"programs"`
	WorkspaceBytes int64 `json:"workspace_bytes"`
	// KVBytesPerChip is the KV cache budget to give the engine (per device).
	KVBytesPerChip int64 `json:"kv_bytes_per_chip"`
	KVHeadsPerChip int   `json:"kv_heads_per_chip"`
	// GlobalBlocks and SlidingBlocks are the engine's block counts for that budget (null
	// block included); KVPoolBytesPerChip is what those pools allocate (≤ the budget).
	GlobalBlocks       int   `json:"global_blocks"`
	SlidingBlocks      int   `json:"sliding_blocks"`
	KVPoolBytesPerChip int64 `json:"kv_pool_bytes_per_chip"`
	// KVTokens is how many token positions the global group holds (every token of a
	// sequence needs one; the sliding group needs only the window).
	KVTokens int `json:"kv_tokens"`
	// SeqLen, the KV of one sequence of that length per chip, and how many such sequences
	// the pools hold at once (page-granular, with the engine's split between the groups)
	// and the budget would hold if it were split exactly for them.
	SeqLen            int   `json:"seq_len"`
	SeqKVBytesPerChip int64 `json:"seq_kv_bytes_per_chip"`
	SeqsAtLen         int   `json:"seqs_at_len"`
	SeqsAtLenByBytes  int64 `json:"seqs_at_len_by_bytes"`
}

// SeqKVBytes is the KV cache of one sequence of length L on one chip holding kvHeads kv
// heads, with elemBytes per element: K and V for every position of each global layer and
// for the last sliding_window positions of each sliding layer. For 27B in bf16 at TP=1
// (16 kv heads) it is 80 KiB·L + 416 KiB·min(L, 1024).
func SeqKVBytes(cfg *model.Config, L, kvHeads, elemBytes int) int64 {
	return seqKVBytes(cfg, L, kvHeads, int64(cfg.HeadDim)*int64(elemBytes))
}

// SeqKVBytesFor is SeqKVBytes for cfg's KV cache setting in compute dtype: with
// cfg.KVCache (int8/fp8) 1 byte per element plus one scale per position and kv head.
func SeqKVBytesFor(cfg *model.Config, L, kvHeads int, compute dtypes.DType) int64 {
	elem, scale := model.KVElementBytes(cfg, compute)
	return seqKVBytes(cfg, L, kvHeads, int64(cfg.HeadDim*elem+scale))
}

func seqKVBytes(cfg *model.Config, L, kvHeads int, headBytes int64) int64 {
	perLayerToken := 2 * int64(kvHeads) * headBytes
	return perLayerToken * (int64(cfg.NumGlobalLayers())*int64(L) + int64(cfg.NumSlidingLayers())*int64(min(L, cfg.SlidingWindow)))
}

func (o *MemoryOptions) setDefaults(cfg *model.Config) error {
	if o.TP == 0 {
		o.TP = 1
	}
	if o.Format == "" {
		o.Format = model.FormatBF16
	}
	if o.MaxModelLen == 0 {
		o.MaxModelLen = min(8192, cfg.MaxPositionEmbeddings)
	}
	if o.MaxNumSeqs == 0 {
		o.MaxNumSeqs = 256
	}
	if o.MaxNumBatchedTokens == 0 {
		o.MaxNumBatchedTokens = 8192
	}
	if o.PageSize == 0 {
		o.PageSize = 16
	}
	if o.SegmentLen == 0 {
		o.SegmentLen = 16
	}
	if o.MinTokens == 0 {
		o.MinTokens = 32 // DefaultMinTokens on accelerators
	}
	if o.PromptLogprobRows == 0 {
		o.PromptLogprobRows = 64
	}
	switch {
	case o.WorkspaceBytes == 0:
		o.WorkspaceBytes = DefaultWorkspaceBytes
	case o.WorkspaceBytes < 0:
		o.WorkspaceBytes = 0
	}
	if o.SeqLen == 0 {
		o.SeqLen = o.MaxModelLen
	}
	for _, f := range []struct {
		name string
		v    int64
	}{
		{"DeviceMemoryBytes (--device-memory)", o.DeviceMemoryBytes}, {"MaxModelLen (--max-model-len)", int64(o.MaxModelLen)},
		{"MaxNumSeqs (--max-num-seqs)", int64(o.MaxNumSeqs)}, {"MaxNumBatchedTokens (--max-num-batched-tokens)", int64(o.MaxNumBatchedTokens)},
		{"PageSize", int64(o.PageSize)}, {"SegmentLen", int64(o.SegmentLen)}, {"SeqLen", int64(o.SeqLen)},
	} {
		if f.v <= 0 {
			return fmt.Errorf("%w: MemoryOptions.%s must be > 0, got %d", model.ErrConfig, f.name, f.v)
		}
	}
	if o.MaxModelLen > cfg.MaxPositionEmbeddings {
		return fmt.Errorf("%w: MemoryOptions.MaxModelLen (--max-model-len) %d exceeds the model's max_position_embeddings %d",
			model.ErrConfig, o.MaxModelLen, cfg.MaxPositionEmbeddings)
	}
	if o.MaxNumBatchedTokens < o.MaxNumSeqs {
		return fmt.Errorf("%w: MemoryOptions.MaxNumBatchedTokens (--max-num-batched-tokens) %d must be >= MaxNumSeqs (--max-num-seqs) %d",
			model.ErrConfig, o.MaxNumBatchedTokens, o.MaxNumSeqs)
	}
	return nil
}

// StepSet is the closed program set the engine compiles for these options (the plan sizes
// activations from its largest members).
func (o MemoryOptions) StepSet(cfg *model.Config) (*StepSet, error) {
	return NewStepSet(cfg, StepOptions{
		MaxNumSeqs: o.MaxNumSeqs, MaxNumBatchedTokens: o.MaxNumBatchedTokens, MaxModelLen: o.MaxModelLen,
		PageSize: o.PageSize, SegmentLen: o.SegmentLen, MinTokens: o.MinTokens, PromptLogprobRows: o.PromptLogprobRows,
		SpecTokens:       o.SpecTokens,
		MaxImagesPerStep: o.MaxImagesPerStep, ImageTokens: o.ImageTokens,
	})
}

// SamplerActivations estimates the live memory of the sampler program with the most rows:
// the logits [rows, V/N] f32 and the full sampler's temporaries (penalty counts and
// perturbed logits), ×4.
func SamplerActivations(cfg *model.Config, sp *model.ShardingPlan, rows int) ActivationEstimate {
	vc := int64(cfg.VocabSize / sp.TP)
	b := 4 * int64(rows) * vc * 4
	return ActivationEstimate{Kind: "sampler", Shape: model.BatchShape{N: rows}, Peak: b, Phase: "logits",
		Items: []NamedBytes{{"logits + sampler temporaries [rows, V/N] f32 x4", b}}}
}

// StepActivations estimates the live memory of one step of bucket s on one chip. It counts
// the tensors graph.go's Forward materialises, with heads, kv heads, the intermediate size
// and the vocabulary divided as the plan splits them (b = compute dtype bytes):
//
//	persistent (all layers): hidden states [T, H]·b ×3 (residual, normed input, branch
//	  output), the global and sliding masks [E, Q, S] (bool), RoPE tables, step inputs;
//	attention (one layer): q/k/v [T, heads·D]·b ×2 (before and after RoPE), the gathered
//	  K and V pages [E, S, kvHeads, D]·b, the queries per entry [E, Q, heads, D]·b, scores
//	  [E, heads, Q, S] in f32 plus the probabilities in b, the weighted values per entry
//	  [E, heads, Q, D] in f32, the row sums and the output on the grid and per token;
//	mlp (one layer): gate, up and their product [T, I/N]·b;
//	logits (after the layers): [N, V/N] f32 ×3 (logits and two sampler temporaries);
//
// with E the larger of the global and sliding entry lists and S the keys per entry. Peak is the
// persistent part plus the largest phase. It is an upper bound of the live set as the
// graph is written (XLA may fuse some of it away), not a measurement.
func StepActivations(cfg *model.Config, plan *model.ShardingPlan, s model.BatchShape, pageSize int) ActivationEstimate {
	b := int64(plan.Format.ComputeBytes())
	T, B, Q, N := int64(s.T), int64(s.B), int64(s.Q), int64(s.N)
	H, D := int64(cfg.HiddenSize), int64(cfg.HeadDim)
	heads, kvh := int64(plan.HeadsPerChip), int64(plan.KVHeadsPerChip)
	S := int64(pageSize * model.PagesPerEntry) // keys per entry
	E := int64(max(s.EG, s.ES))
	ic := int64(cfg.IntermediateSize / plan.TP)
	vc := int64(cfg.VocabSize / plan.TP)
	persistent := []NamedBytes{
		{"hidden states [T, H] x3", 3 * T * H * b},
		{"attention masks [E, Q, S] global+sliding", int64(s.EG+s.ES) * Q * S},
		{"rope tables [T, D] x4", 4 * T * D * b},
		{"step inputs (int32)", 4 * (5*T + B*Q + (2+model.PagesPerEntry)*int64(s.EG+s.ES) + N)},
	}
	attention := []NamedBytes{
		{"q/k/v [T, heads*D] x2", 2 * T * (heads + 2*kvh) * D * b},
		{"gathered K+V pages [E, S, kvHeads, D] x2", 2 * E * S * kvh * D * b},
		{"queries per entry [E, Q, heads, D]", E * Q * heads * D * b},
		{"scores f32 + probs [E, heads, Q, S]", E * heads * Q * S * (4 + b)},
		{"weighted values per entry [E, heads, Q, D] f32", E * heads * Q * D * 4},
		{"row sums and output [B+1, heads, Q, D] f32 + [B*Q + T, heads*D]", (B+1)*heads*Q*D*4 + (B*Q+T)*heads*D*b},
	}
	mlp := []NamedBytes{{"mlp gate/up/product [T, I/N] x3", 3 * T * ic * b}}
	if mode := plan.Format.QuantMode(); mode.IsFP8() || (!mode.Quantized() && cfg.Quantization.Mode.IsFP8()) {
		// FP8 weights are decoded by a table gather, which XLA does not fuse into the dot:
		// the largest Linear shard (gate or up) is materialised in the compute dtype. int8
		// weights widen by a convert that fuses into the dot's operand: nothing to count.
		mlp = append(mlp, NamedBytes{"fp8 gate/up shard decoded [I/N, H] (table gather, not fused)", ic * H * b})
	}
	logits := []NamedBytes{{"logits + sampler [N, V/N] f32 x3", 3 * N * vc * 4}}
	sum := func(items []NamedBytes) int64 {
		var n int64
		for _, it := range items {
			n += it.Bytes
		}
		return n
	}
	e := ActivationEstimate{Shape: s}
	e.Items = append(e.Items, persistent...)
	e.Items = append(e.Items, attention...)
	e.Items = append(e.Items, mlp...)
	e.Items = append(e.Items, logits...)
	phase, peak := "attention", sum(attention)
	if m := sum(mlp); m > peak {
		phase, peak = "mlp", m
	}
	if l := sum(logits); l > peak {
		phase, peak = "logits", l
	}
	e.Phase = phase
	e.Peak = sum(persistent) + peak
	return e
}

// PlanMemory splits one chip's memory for cfg under opts. On ErrMemory the returned plan is
// filled as far as the computation got (weights, activations, workspace, and the KV budget
// when it is positive) so that a caller can show the numbers; on other errors it is nil.
func PlanMemory(cfg *model.Config, opts MemoryOptions) (*MemoryPlan, error) {
	if err := opts.setDefaults(cfg); err != nil {
		return nil, err
	}
	kvMode, err := model.ParseKVCacheDType(opts.KVCacheDType)
	if err != nil {
		return nil, fmt.Errorf("MemoryOptions.KVCacheDType (--kv-cache-dtype): %w", err)
	}
	c := *cfg
	c.KVCache = kvMode
	cfg = &c
	sp, err := model.NewShardingPlan(cfg, opts.TP, opts.Format)
	if err != nil {
		return nil, err
	}
	p := &MemoryPlan{
		Options: opts, Sharding: sp, WeightBytes: sp.WeightBytes, WeightBytesPerChip: sp.WeightBytesPerChip,
		WorkspaceBytes: opts.WorkspaceBytes, KVHeadsPerChip: sp.KVHeadsPerChip, SeqLen: opts.SeqLen,
	}
	set, err := opts.StepSet(cfg)
	if err != nil {
		return nil, err
	}
	p.Programs = len(set.Programs())
	p.Activations = SamplerActivations(cfg, sp, max(opts.MaxNumSeqs*(set.SpecTokens()+1), set.MaxPromptRows()))
	for _, s := range set.LargestSteps() {
		e := StepActivations(cfg, sp, s, opts.PageSize)
		e.Kind = "step"
		e.Items = append(e.Items, NamedBytes{"hidden states left for the sampler [Tmax, H]", int64(set.MaxTokens()) * int64(cfg.HiddenSize) * int64(opts.Format.ComputeBytes())})
		e.Peak += e.Items[len(e.Items)-1].Bytes
		if e.Peak > p.Activations.Peak {
			p.Activations = e
		}
	}
	compute := opts.Format.ComputeDType()
	elem, scale := model.KVElementBytes(cfg, compute)
	p.SeqKVBytesPerChip = SeqKVBytesFor(cfg, opts.SeqLen, sp.KVHeadsPerChip, compute)
	if opts.VisionActivationBytes > p.Activations.Peak {
		p.Activations = ActivationEstimate{Kind: "vision", Peak: opts.VisionActivationBytes,
			Items: []NamedBytes{{"vision tower, largest image bucket", opts.VisionActivationBytes}}}
	}
	p.WeightBytesPerChip += opts.VisionWeightBytes
	fixed := p.WeightBytesPerChip + p.Activations.Peak + p.WorkspaceBytes
	p.KVBytesPerChip = opts.DeviceMemoryBytes - fixed
	if p.KVBytesPerChip <= 0 {
		p.KVBytesPerChip = 0
		return p, fmt.Errorf("%w: %s per chip before any KV cache: weights %s + activations %s (largest %s bucket %s) + workspace %s, the device has %s (TP=%d, %s)",
			ErrMemory, FormatBytes(fixed), FormatBytes(p.WeightBytesPerChip), FormatBytes(p.Activations.Peak),
			p.Activations.Kind, shapeString(p.Activations.Shape), FormatBytes(p.WorkspaceBytes), FormatBytes(opts.DeviceMemoryBytes), opts.TP, opts.Format)
	}
	p.SeqsAtLenByBytes = p.KVBytesPerChip / p.SeqKVBytesPerChip
	spec := kvcache.MemorySpec{
		PageSize: opts.PageSize, NumGlobalLayers: cfg.NumGlobalLayers(), NumSlidingLayers: cfg.NumSlidingLayers(),
		KVHeads: sp.KVHeadsPerChip, HeadDim: cfg.HeadDim, DTypeBytes: elem, ScaleBytes: scale, SlidingWindow: cfg.SlidingWindow,
		MaxNumSeqs: opts.MaxNumSeqs, MaxNumBatchedTokens: opts.MaxNumBatchedTokens, MaxModelLen: opts.MaxModelLen,
	}
	kv, err := kvcache.ConfigForBudget(p.KVBytesPerChip, spec)
	if err != nil {
		return p, fmt.Errorf("%w: KV budget %s per chip (device %s − weights %s − activations %s − workspace %s): %w",
			ErrMemory, FormatBytes(p.KVBytesPerChip), FormatBytes(opts.DeviceMemoryBytes), FormatBytes(p.WeightBytesPerChip),
			FormatBytes(p.Activations.Peak), FormatBytes(p.WorkspaceBytes), err)
	}
	p.GlobalBlocks, p.SlidingBlocks = kv.NumGlobalBlocks, kv.NumSlidingBlocks
	gB, sB := spec.BlockBytes()
	p.KVPoolBytesPerChip = int64(p.GlobalBlocks)*gB + int64(p.SlidingBlocks)*sB
	ps := opts.PageSize
	if cfg.NumGlobalLayers() > 0 {
		p.KVTokens = (p.GlobalBlocks - 1) * ps
	} else {
		p.KVTokens = (p.SlidingBlocks - 1) * ps
	}
	p.SeqsAtLen = seqsAtLen(cfg, p.GlobalBlocks, p.SlidingBlocks, ps, opts.SeqLen)
	if need := seqsAtLen(cfg, p.GlobalBlocks, p.SlidingBlocks, ps, opts.MaxModelLen); need < 1 {
		return p, fmt.Errorf("%w: KV budget %s per chip (device %s − weights %s − activations %s − workspace %s) holds %d tokens in %d global and %d sliding blocks; one sequence of max model length %d needs %s per chip",
			ErrMemory, FormatBytes(p.KVBytesPerChip), FormatBytes(opts.DeviceMemoryBytes), FormatBytes(p.WeightBytesPerChip),
			FormatBytes(p.Activations.Peak), FormatBytes(p.WorkspaceBytes), p.KVTokens, p.GlobalBlocks, p.SlidingBlocks,
			opts.MaxModelLen, FormatBytes(SeqKVBytesFor(cfg, opts.MaxModelLen, sp.KVHeadsPerChip, compute)))
	}
	return p, nil
}

// seqsAtLen is how many sequences of length L the block pools hold at once: each needs
// ceil(L/page) global blocks and, for the sliding layers, the blocks covering its window
// (at most ceil(window/page)+1 when the window is not page-aligned). Null blocks excluded.
func seqsAtLen(cfg *model.Config, global, sliding, pageSize, L int) int {
	n := math.MaxInt
	if cfg.NumGlobalLayers() > 0 {
		n = min(n, (global-1)/((L+pageSize-1)/pageSize))
	}
	if cfg.NumSlidingLayers() > 0 {
		per := min((L+pageSize-1)/pageSize, (cfg.SlidingWindow+pageSize-1)/pageSize+1)
		n = min(n, (sliding-1)/per)
	}
	return n
}

func shapeString(s model.BatchShape) string {
	return fmt.Sprintf("T=%d B=%d Q=%d EG=%d ES=%d", s.T, s.B, s.Q, s.EG, s.ES)
}

// FormatBytes writes n in binary units with three significant digits (e.g. "6.29 GiB").
func FormatBytes(n int64) string {
	v := float64(n)
	for _, u := range []string{"B", "KiB", "MiB", "GiB", "TiB"} {
		if math.Abs(v) < 1024 || u == "TiB" {
			switch {
			case u == "B":
				return fmt.Sprintf("%d B", n)
			case math.Abs(v) >= 100:
				return fmt.Sprintf("%.0f %s", v, u)
			case math.Abs(v) >= 10:
				return fmt.Sprintf("%.1f %s", v, u)
			}
			return fmt.Sprintf("%.2f %s", v, u)
		}
		v /= 1024
	}
	return ""
}

// ParseByteSize parses a memory size: a plain number of bytes, or a number with a binary
// suffix (Ki, Mi, Gi, Ti, optionally followed by B) or a decimal one (K, M, G, T, optionally
// followed by B): "16GiB" = 16·2³⁰, "16Gi" likewise, "16GB" = 16·10⁹.
func ParseByteSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	if t == "" {
		return 0, fmt.Errorf("%w: empty memory size", model.ErrConfig)
	}
	i := len(t)
	for i > 0 && (t[i-1] < '0' || t[i-1] > '9') && t[i-1] != '.' {
		i--
	}
	num, unit := strings.TrimSpace(t[:i]), strings.TrimSpace(t[i:])
	mult := map[string]float64{
		"": 1, "B": 1,
		"K": 1e3, "KB": 1e3, "M": 1e6, "MB": 1e6, "G": 1e9, "GB": 1e9, "T": 1e12, "TB": 1e12,
		"KI": 1 << 10, "KIB": 1 << 10, "MI": 1 << 20, "MIB": 1 << 20, "GI": 1 << 30, "GIB": 1 << 30,
		"TI": 1 << 40, "TIB": 1 << 40,
	}[strings.ToUpper(unit)]
	if mult == 0 {
		return 0, fmt.Errorf("%w: memory size %q: unknown unit %q (want B, KiB, MiB, GiB, TiB, KB, MB, GB or TB)", model.ErrConfig, s, unit)
	}
	v, err := strconv.ParseFloat(num, 64)
	if err != nil || v < 0 || math.IsInf(v, 0) || math.IsNaN(v) {
		return 0, fmt.Errorf("%w: memory size %q is not a non-negative number with a unit", model.ErrConfig, s)
	}
	if v*mult > math.MaxInt64/2 {
		return 0, fmt.Errorf("%w: memory size %q is too large", model.ErrConfig, s)
	}
	return int64(math.Round(v * mult)), nil
}
