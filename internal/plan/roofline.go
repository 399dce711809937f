package plan

// Tensor parallelism, part 4: roofline targets.
//
// Roofline turns a MemoryPlan into the floors a chip's published ceilings allow: decode
// step time from the bytes each chip must stream (its weights plus its share of the
// batch's KV) over HBM bandwidth, or from FLOPs where that is larger; prefill tokens/s
// from FLOPs; and the all-reduce traffic per step over ICI. They are targets for TPU
// measurements, not predictions: no overlap, latency or kernel efficiency is modelled.

import (
	"fmt"

	"github.com/tpuserve/tpuserve/model"
)

// Chip is an accelerator's published ceilings.
type Chip struct {
	Name string `json:"name"`
	// HBMBytes is the memory per chip; HBMBytesPerSec its bandwidth.
	HBMBytes       int64   `json:"hbm_bytes"`
	HBMBytesPerSec float64 `json:"hbm_bytes_per_sec"`
	// BF16FLOPS and Int8OPS are the matrix units' peaks per chip.
	BF16FLOPS float64 `json:"bf16_flops"`
	Int8OPS   float64 `json:"int8_ops"`
	// ICIBytesPerSec is the bidirectional inter-chip interconnect bandwidth per chip.
	ICIBytesPerSec float64 `json:"ici_bytes_per_sec"`
	Source         string  `json:"source"`
}

// TPUv5e is one Cloud TPU v5e chip as Google's v5e documentation lists it: 197 TFLOP/s
// bf16, 393 TOPS int8 (the brief's 394 rounds the same figure), 16 GB HBM2 at 819 GB/s,
// 400 GB/s bidirectional ICI per chip (1,600 Gbps, 4 ports), 2-D torus.
var TPUv5e = Chip{
	Name: "TPU v5e", HBMBytes: 16 << 30, HBMBytesPerSec: 819e9, BF16FLOPS: 197e12, Int8OPS: 393e12, ICIBytesPerSec: 400e9,
	Source: "Cloud TPU v5e documentation (cloud.google.com/tpu/docs/v5e): key chip specifications",
}

// RooflineOptions choose the operating points.
type RooflineOptions struct {
	Chip Chip
	// DecodeContext is the context length of every decoding sequence (default 2048).
	DecodeContext int
	// PromptLen is the prompt length prefill is averaged over (default 2048).
	PromptLen int
	// Batches are the decode batch sizes (default 1, 8, 32, 64, 128, 256).
	Batches []int
}

// DecodePoint is the decode floor at one batch size.
type DecodePoint struct {
	Batch int `json:"batch"`
	// BytesPerChip is what each chip streams per step: its weights and its share of every
	// sequence's KV at DecodeContext.
	BytesPerChip int64 `json:"bytes_per_chip"`
	// FLOPsPerChip is each chip's matrix work per step.
	FLOPsPerChip float64 `json:"flops_per_chip"`
	// MemoryMS and ComputeMS are the two floors; StepMS the larger. Each sequence gets one
	// token per step, so StepMS is also the ms/token a sequence sees, and TokensPerSec the
	// slice's total.
	MemoryMS     float64 `json:"memory_ms"`
	ComputeMS    float64 `json:"compute_ms"`
	StepMS       float64 `json:"step_ms"`
	TokensPerSec float64 `json:"tokens_per_sec"`
	// AllReduceBytes is the payload all-reduced per step (2 per layer after o_proj and
	// down_proj, 1 for the vocab-parallel embedding lookup): (2·layers+1)·batch·H·b; each
	// chip sends and receives 2(N−1)/N of it in a ring all-reduce, ICIMS at half the
	// bidirectional ICI bandwidth (one direction).
	AllReduceBytes  int64   `json:"all_reduce_bytes"`
	ICIBytesPerChip int64   `json:"ici_bytes_per_chip"`
	ICIMS           float64 `json:"ici_ms"`
	// FitsKV says whether the plan's pools hold Batch sequences of DecodeContext.
	FitsKV bool `json:"fits_kv"`
}

// RooflineResult is the roofline of one plan.
type RooflineResult struct {
	Chip          Chip               `json:"chip"`
	TP            int                `json:"tp"`
	Format        model.WeightFormat `json:"format"`
	DecodeContext int                `json:"decode_context"`
	PromptLen     int                `json:"prompt_len"`
	// WeightOnlyMS is the decode floor of one token with no KV at all: weight bytes per
	// chip / HBM bandwidth.
	WeightOnlyMS float64       `json:"weight_only_ms"`
	Decode       []DecodePoint `json:"decode"`
	// PrefillFLOPsPerToken is the whole model's work per prompt token (all chips), averaged
	// over PromptLen causal positions; PrefillTokensPerSec the slice's floor at the bf16
	// peak and PrefillTokensPerSecInt8 at the int8 peak (which needs int8 activations too).
	PrefillFLOPsPerToken    float64 `json:"prefill_flops_per_token"`
	PrefillTokensPerSec     float64 `json:"prefill_tokens_per_sec"`
	PrefillTokensPerSecInt8 float64 `json:"prefill_tokens_per_sec_int8"`
	// PrefillAllReduceBytesPerToken is the all-reduce payload per prompt token.
	PrefillAllReduceBytesPerToken int64 `json:"prefill_all_reduce_bytes_per_token"`
	// From the memory plan.
	Memory                 MemoryOptions `json:"memory_options"`
	ActivationBytesPerChip int64         `json:"activation_bytes_per_chip"`
	WeightBytesPerChip     int64         `json:"weight_bytes_per_chip"`
	KVBytesPerChip         int64         `json:"kv_bytes_per_chip"`
	KVTokens               int           `json:"kv_tokens"`
	SeqLen                 int           `json:"seq_len"`
	SeqsAtLen              int           `json:"seqs_at_len"`
}

// layerMatmulParams is the number of weights of one layer's projections.
func layerMatmulParams(c *model.Config) int64 {
	h, i, d := int64(c.HiddenSize), int64(c.IntermediateSize), int64(c.HeadDim)
	return h*d*int64(2*c.NumAttentionHeads+2*c.NumKeyValueHeads) + 3*h*i
}

// attentionFLOPs is the work of one token's attention at position pos (0-based) over all
// layers: QKᵀ and PV, 2·2·heads·D per key, for pos+1 keys on global layers and at most the
// window on sliding ones.
func attentionFLOPs(c *model.Config, pos int) float64 {
	per := 4 * float64(c.NumAttentionHeads*c.HeadDim)
	return per * (float64(c.NumGlobalLayers())*float64(pos+1) + float64(c.NumSlidingLayers())*float64(min(pos+1, c.SlidingWindow)))
}

// Roofline computes the floors of plan on opts.Chip.
func Roofline(cfg *model.Config, plan *MemoryPlan, opts RooflineOptions) (*RooflineResult, error) {
	if plan == nil || plan.Sharding == nil {
		return nil, fmt.Errorf("%w: roofline needs a memory plan", model.ErrConfig)
	}
	if opts.DecodeContext == 0 {
		opts.DecodeContext = 2048
	}
	if opts.PromptLen == 0 {
		opts.PromptLen = 2048
	}
	if len(opts.Batches) == 0 {
		opts.Batches = []int{1, 8, 32, 64, 128, 256}
	}
	ch := opts.Chip
	if ch.HBMBytesPerSec <= 0 || ch.BF16FLOPS <= 0 || ch.ICIBytesPerSec <= 0 {
		return nil, fmt.Errorf("%w: chip %q needs HBM bandwidth, bf16 peak and ICI bandwidth", model.ErrConfig, ch.Name)
	}
	tp := plan.Sharding.TP
	n := float64(tp)
	b := int64(plan.Options.Format.ComputeBytes())
	H := int64(cfg.HiddenSize)
	collectives := int64(2*cfg.NumHiddenLayers + 1)
	r := &RooflineResult{
		Chip: ch, TP: tp, Format: plan.Options.Format, DecodeContext: opts.DecodeContext, PromptLen: opts.PromptLen,
		Memory: plan.Options, ActivationBytesPerChip: plan.Activations.Peak,
		WeightBytesPerChip: plan.WeightBytesPerChip, KVBytesPerChip: plan.KVBytesPerChip, KVTokens: plan.KVTokens,
		SeqLen: plan.SeqLen, SeqsAtLen: plan.SeqsAtLen,
		WeightOnlyMS:                  float64(plan.WeightBytesPerChip) / ch.HBMBytesPerSec * 1e3,
		PrefillAllReduceBytesPerToken: collectives * H * b,
	}
	// Matrix work per token: every layer's projections and the tied output projection.
	matmul := 2 * float64(int64(cfg.NumHiddenLayers)*layerMatmulParams(cfg)+int64(cfg.VocabSize)*H)
	seqKV := SeqKVBytesFor(plan.Sharding.Config(), opts.DecodeContext, plan.KVHeadsPerChip, plan.Options.Format.ComputeDType())
	fitSeqs := 0
	if plan.GlobalBlocks > 0 {
		fitSeqs = seqsAtLen(cfg, plan.GlobalBlocks, plan.SlidingBlocks, plan.Options.PageSize, opts.DecodeContext)
	}
	for _, batch := range opts.Batches {
		p := DecodePoint{Batch: batch, FitsKV: batch <= fitSeqs}
		p.BytesPerChip = plan.WeightBytesPerChip + int64(batch)*seqKV
		p.FLOPsPerChip = float64(batch) * (matmul + attentionFLOPs(cfg, opts.DecodeContext-1)) / n
		p.MemoryMS = float64(p.BytesPerChip) / ch.HBMBytesPerSec * 1e3
		p.ComputeMS = p.FLOPsPerChip / ch.BF16FLOPS * 1e3
		p.StepMS = max(p.MemoryMS, p.ComputeMS)
		p.TokensPerSec = float64(batch) / p.StepMS * 1e3
		p.AllReduceBytes = collectives * int64(batch) * H * b
		if tp > 1 {
			p.ICIBytesPerChip = 2 * int64(tp-1) * p.AllReduceBytes / int64(tp)
			p.ICIMS = float64(p.ICIBytesPerChip) / (ch.ICIBytesPerSec / 2) * 1e3
		}
		r.Decode = append(r.Decode, p)
	}
	// Prefill: only the last prompt token needs logits; attention averaged over positions.
	var attn float64
	for pos := 0; pos < opts.PromptLen; pos++ {
		attn += attentionFLOPs(cfg, pos)
	}
	layers := 2 * float64(int64(cfg.NumHiddenLayers)*layerMatmulParams(cfg))
	r.PrefillFLOPsPerToken = layers + attn/float64(opts.PromptLen) + 2*float64(int64(cfg.VocabSize)*H)/float64(opts.PromptLen)
	r.PrefillTokensPerSec = n * ch.BF16FLOPS / r.PrefillFLOPsPerToken
	r.PrefillTokensPerSecInt8 = n * ch.Int8OPS / r.PrefillFLOPsPerToken
	return r, nil
}
