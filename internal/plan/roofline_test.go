package plan_test

import (
	"math"
	"testing"

	"github.com/tpuserve/tpuserve/internal/plan"
	"github.com/tpuserve/tpuserve/model"
)

// TestRoofline27BV5e8 recomputes the headline floors of 27B at TP=8 on v5e by hand.
func TestRoofline27BV5e8(t *testing.T) {
	cfg := preset(t, "gemma3-27b")
	opts := plan.MemoryOptions{TP: 8, DeviceMemoryBytes: 16 * gib, MaxNumSeqs: 64, MaxNumBatchedTokens: 2048}
	bf, err := plan.PlanMemory(&cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	opts.Format = model.FormatInt8
	i8, err := plan.PlanMemory(&cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	rb, err := plan.Roofline(&cfg, bf, plan.RooflineOptions{Chip: plan.TPUv5e})
	if err != nil {
		t.Fatal(err)
	}
	ri, err := plan.Roofline(&cfg, i8, plan.RooflineOptions{Chip: plan.TPUv5e})
	if err != nil {
		t.Fatal(err)
	}
	near := func(name string, got, want, rel float64) {
		t.Helper()
		if math.Abs(got-want) > rel*math.Abs(want) {
			t.Errorf("%s = %g, want %g (±%g%%)", name, got, want, 100*rel)
		}
	}
	// 6.75 GB of bf16 weights per chip at 819 GB/s.
	near("bf16 weight-only ms/token", rb.WeightOnlyMS, float64(bf.WeightBytesPerChip)/819e9*1e3, 1e-12)
	near("bf16 weight-only ms/token", rb.WeightOnlyMS, 8.25, 0.01)
	// int8: 1 byte per Linear parameter plus bf16 scales, and the embedding (the tied lm_head,
	// read whole by every decode step) kept in bf16: 2·262208·5376/8 B = 336 MiB per chip of
	// the 3.31 GiB.
	near("int8 weight-only ms/token", ri.WeightOnlyMS, float64(i8.WeightBytesPerChip)/819e9*1e3, 1e-12)
	near("int8 weight-only ms/token", ri.WeightOnlyMS, 4.34, 0.01)
	// Batch 1 at 2k: weights + one sequence's KV share (0.5625 GiB / 8).
	d1 := rb.Decode[0]
	near("batch-1 bytes per chip", float64(d1.BytesPerChip), float64(bf.WeightBytesPerChip)+0.5625*float64(gib)/8, 1e-12)
	if d1.StepMS != d1.MemoryMS || d1.ComputeMS > d1.MemoryMS/10 {
		t.Errorf("batch-1 decode should be memory-bound: memory %.3f ms, compute %.3f ms", d1.MemoryMS, d1.ComputeMS)
	}
	// 125 all-reduces (2 per layer + the embedding) of [1, 5376] bf16; a ring sends 2·7/8 of it.
	if d1.AllReduceBytes != 125*5376*2 || d1.ICIBytesPerChip != 2*7*125*5376*2/8 {
		t.Errorf("batch-1 all-reduce %d bytes, %d per chip over ICI", d1.AllReduceBytes, d1.ICIBytesPerChip)
	}
	near("batch-1 ICI ms", d1.ICIMS, float64(d1.ICIBytesPerChip)/200e9*1e3, 1e-12)
	// Prefill: 2 FLOPs per projection weight (~25.6 G of them) per token, at 8 × 197 TFLOP/s.
	if f := rb.PrefillFLOPsPerToken; f < 2*25.5e9 || f > 2*26.5e9 {
		t.Errorf("prefill FLOPs per token %.3g, want about 2 × 25.6e9 plus attention", f)
	}
	near("prefill tokens/s", rb.PrefillTokensPerSec, 8*197e12/rb.PrefillFLOPsPerToken, 1e-12)
	near("int8 prefill tokens/s", ri.PrefillTokensPerSecInt8, 8*393e12/ri.PrefillFLOPsPerToken, 1e-12)
	for i, p := range rb.Decode {
		if i > 0 && (p.TokensPerSec <= rb.Decode[i-1].TokensPerSec || p.StepMS < rb.Decode[i-1].StepMS) {
			t.Errorf("batch %d: %.0f tokens/s in %.2f ms after %.0f in %.2f", p.Batch, p.TokensPerSec, p.StepMS, rb.Decode[i-1].TokensPerSec, rb.Decode[i-1].StepMS)
		}
		if q := ri.Decode[i]; q.MemoryMS >= p.MemoryMS {
			t.Errorf("batch %d: int8 memory floor %.2f ms not below bf16 %.2f", p.Batch, q.MemoryMS, p.MemoryMS)
		}
	}
	if _, err := plan.Roofline(&cfg, bf, plan.RooflineOptions{}); err == nil {
		t.Error("a chip without ceilings accepted")
	}
}
