package plan_test

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/tpuserve/tpuserve/internal/plan"
	"github.com/tpuserve/tpuserve/model"
)

const gib = int64(1) << 30

// TestSeqKVBytes checks the sliding-window rule against the project brief's gemma3.md (shared docs):
// 27B bf16 KV per sequence = 80 KiB·L + 416 KiB·min(L, 1024): 0.56 GiB at 2k, 1.03 GiB at
// 8k, 10.4 GiB at 128k (62 GiB if the local layers kept everything); per chip ÷ kv shards.
func TestSeqKVBytes(t *testing.T) {
	cfg := preset(t, "gemma3-27b")
	const kib = 1024
	for _, tc := range []struct {
		L       int
		docGiB  float64 // gemma3.md's figure, where it gives one
		docPrec float64
	}{
		{1, 0, 0}, {1023, 0, 0}, {1024, 0, 0}, {1025, 0, 0},
		{2048, 0.56, 0.005}, {8192, 1.03, 0.005}, {131072, 10.4, 0.05},
	} {
		t.Run(fmt.Sprint(tc.L), func(t *testing.T) {
			got := plan.SeqKVBytes(&cfg, tc.L, cfg.NumKeyValueHeads, 2)
			if want := int64(80*kib*tc.L + 416*kib*min(tc.L, 1024)); got != want {
				t.Errorf("L=%d: %d bytes, want 80 KiB·L + 416 KiB·min(L,1024) = %d", tc.L, got, want)
			}
			if tc.docGiB > 0 {
				if g := float64(got) / float64(gib); math.Abs(g-tc.docGiB) > tc.docPrec {
					t.Errorf("L=%d: %.3f GiB, gemma3.md says %.2f", tc.L, g, tc.docGiB)
				}
			}
			for _, tp := range []int{2, 4, 8} {
				p, err := model.NewShardingPlan(&cfg, tp, model.FormatBF16)
				if err != nil {
					t.Fatal(err)
				}
				if chip := plan.SeqKVBytes(&cfg, tc.L, p.KVHeadsPerChip, 2); chip*int64(tp) != got {
					t.Errorf("TP=%d: %d bytes per chip × %d != %d", tp, chip, tp, got)
				}
			}
		})
	}
	all := cfg
	all.SlidingWindow = 1 << 20 // the local layers keep everything
	if g := float64(plan.SeqKVBytes(&all, 131072, 16, 2)) / float64(gib); g != 62 {
		t.Errorf("128k without the window: %.2f GiB, gemma3.md says 62", g)
	}
}

// TestPlanMemory runs every size at TP 1/2/4/8 on a chip large enough for all of them
// and checks that the split adds up and agrees with the engine's own sizing code.
func TestPlanMemory(t *testing.T) {
	for _, name := range []string{"gemma3-1b", "gemma3-4b", "gemma3-12b", "gemma3-27b"} {
		cfg := preset(t, name)
		var prevWeights int64
		for _, tp := range []int{1, 2, 4, 8} {
			t.Run(fmt.Sprintf("%s/tp%d", name, tp), func(t *testing.T) {
				opts := plan.MemoryOptions{TP: tp, DeviceMemoryBytes: 144 * gib, MaxNumSeqs: 64, MaxNumBatchedTokens: 2048}
				p, err := plan.PlanMemory(&cfg, opts)
				if name == "gemma3-1b" && tp == 8 {
					if !errors.Is(err, model.ErrSharding) {
						t.Fatalf("1B at TP=8: %v, want ErrSharding", err)
					}
					return
				}
				if err != nil {
					t.Fatal(err)
				}
				if sum := p.WeightBytesPerChip + p.Activations.Peak + p.WorkspaceBytes + p.KVBytesPerChip; sum != opts.DeviceMemoryBytes {
					t.Errorf("weights + activations + workspace + KV = %d, device has %d", sum, opts.DeviceMemoryBytes)
				}
				if p.WorkspaceBytes != plan.DefaultWorkspaceBytes || p.Options.MaxModelLen != min(8192, cfg.MaxPositionEmbeddings) {
					t.Errorf("defaults not applied: %+v", p.Options)
				}
				layout := model.KVLayout{PageSize: 16, NumGlobalPages: p.GlobalBlocks, NumSlidingPages: p.SlidingBlocks}
				kvShards := int64(cfg.NumKeyValueHeads / p.KVHeadsPerChip)
				if full := model.PoolBytes(&cfg, layout, dtypes.BFloat16); p.KVPoolBytesPerChip*kvShards != full {
					t.Errorf("pools %d bytes per chip × %d kv shards, PoolBytes of the layout is %d", p.KVPoolBytesPerChip, kvShards, full)
				}
				if p.KVPoolBytesPerChip > p.KVBytesPerChip {
					t.Errorf("pools %d bytes exceed the budget %d", p.KVPoolBytesPerChip, p.KVBytesPerChip)
				}
				if p.KVTokens != (p.GlobalBlocks-1)*16 {
					t.Errorf("KV tokens %d from %d global blocks of 16", p.KVTokens, p.GlobalBlocks)
				}
				L := p.SeqLen
				if need := p.SeqsAtLen * ((L + 15) / 16); need > p.GlobalBlocks-1 {
					t.Errorf("%d sequences of %d need %d global blocks, there are %d", p.SeqsAtLen, L, need, p.GlobalBlocks-1)
				}
				if by := p.KVBytesPerChip / plan.SeqKVBytes(&cfg, L, p.KVHeadsPerChip, 2); by != p.SeqsAtLenByBytes || int64(p.SeqsAtLen) > by+1 {
					t.Errorf("sequences at %d: %d from blocks, %d by bytes (want %d)", L, p.SeqsAtLen, p.SeqsAtLenByBytes, by)
				}
				if prevWeights != 0 && p.WeightBytesPerChip >= prevWeights {
					t.Errorf("weights per chip %d did not shrink from %d", p.WeightBytesPerChip, prevWeights)
				}
				prevWeights = p.WeightBytesPerChip
			})
		}
	}
}

// Test27BOnV5e8 is the production case: 27B bf16 at TP=8 on 16 GiB chips. gemma3.md says
// a v5e-8 holds the 54 GB of weights and about 55–60 GB of KV before activations; with
// steps sized for 64 sequences and 2048-token chunks the largest program's activations
// (a deep-context chunk in rows of 16 queries: its keys and the per-entry query and value
// buffers) leave about 45 GB. With vLLM's GPU defaults (256 sequences, 8192-token steps)
// the gather-based attention's activations take most of the room (the figure the plan
// exists to show).
func Test27BOnV5e8(t *testing.T) {
	cfg := preset(t, "gemma3-27b")
	tuned, err := plan.PlanMemory(&cfg, plan.MemoryOptions{TP: 8, DeviceMemoryBytes: 16 * gib, MaxNumSeqs: 64, MaxNumBatchedTokens: 2048})
	if err != nil {
		t.Fatal(err)
	}
	if total := float64(tuned.KVBytesPerChip*8) / 1e9; total < 40 || total > 65 {
		t.Errorf("KV for the v5e-8: %.1f GB, want 40–65 (gemma3.md: 55–60 before activations)", total)
	}
	if tuned.KVHeadsPerChip != 2 || tuned.Activations.Kind != "step" {
		t.Errorf("kv heads per chip %d, largest bucket %s", tuned.KVHeadsPerChip, tuned.Activations.Kind)
	}
	// vLLM's GPU defaults (256 sequences, 8192-token steps): the largest step's rows of 16
	// queries, room for every sequence's partial row, each gathering 8192 positions of K
	// and V, leave no room for a KV cache on a 16 GiB chip.
	defaults, err := plan.PlanMemory(&cfg, plan.MemoryOptions{TP: 8, DeviceMemoryBytes: 16 * gib})
	if !errors.Is(err, plan.ErrMemory) || defaults == nil || defaults.Activations.Peak < 8*gib {
		t.Errorf("default buckets: err %v, plan %+v", err, defaults)
	}
	int8, err := plan.PlanMemory(&cfg, plan.MemoryOptions{TP: 8, DeviceMemoryBytes: 16 * gib, Format: model.FormatInt8, MaxNumSeqs: 64, MaxNumBatchedTokens: 2048})
	if err != nil {
		t.Fatal(err)
	}
	if gained := int8.KVBytesPerChip - tuned.KVBytesPerChip; gained != tuned.WeightBytesPerChip-int8.WeightBytesPerChip {
		t.Errorf("int8 weights free %d bytes of KV, the weights shrank by %d", gained, tuned.WeightBytesPerChip-int8.WeightBytesPerChip)
	}
}

// TestStepActivations recomputes the estimate of one small bucket by hand.
func TestStepActivations(t *testing.T) {
	cfg := preset(t, "tiny") // H 64, I 128, 4 heads, 2 kv heads, D 16, V 262208
	p, err := model.NewShardingPlan(&cfg, 2, model.FormatBF16)
	if err != nil {
		t.Fatal(err)
	}
	s := model.BatchShape{T: 32, B: 2, Q: 16, EG: 8, ES: 6, N: 2}
	e := plan.StepActivations(&cfg, p, s, 16)
	items := map[string]int64{}
	for _, it := range e.Items {
		items[it.Name] = it.Bytes
	}
	E, S := int64(8), int64(16*model.PagesPerEntry) // the global list is the longer one
	want := map[string]int64{
		"hidden states [T, H] x3":                  3 * 32 * 64 * 2,
		"gathered K+V pages [E, S, kvHeads, D] x2": 2 * E * S * 1 * 16 * 2,
		"queries per entry [E, Q, heads, D]":       E * 16 * 2 * 16 * 2,
		"scores f32 + probs [E, heads, Q, S]":      E * 2 * 16 * S * 6,
		"mlp gate/up/product [T, I/N] x3":          3 * 32 * 64 * 2,
		"logits + sampler [N, V/N] f32 x3":         3 * 2 * 131104 * 4,
		"attention masks [E, Q, S] global+sliding": (8 + 6) * 16 * S,
		"q/k/v [T, heads*D] x2":                    2 * 32 * (2 + 2) * 16 * 2,
		"rope tables [T, D] x4":                    4 * 32 * 16 * 2,
		"step inputs (int32)":                      4 * (5*32 + 32 + (2+model.PagesPerEntry)*(8+6) + 2),
	}
	for name, w := range want {
		if items[name] != w {
			t.Errorf("%s: %d bytes, want %d", name, items[name], w)
		}
	}
	persistent := want["hidden states [T, H] x3"] + want["attention masks [E, Q, S] global+sliding"] + want["rope tables [T, D] x4"] + want["step inputs (int32)"]
	if e.Phase != "logits" || e.Peak != persistent+want["logits + sampler [N, V/N] f32 x3"] {
		t.Errorf("peak %d in phase %s, want %d in logits (tiny's vocabulary dominates)", e.Peak, e.Phase, persistent+want["logits + sampler [N, V/N] f32 x3"])
	}
}

// TestPlanActivationsFromStepSet: the plan sizes activations from the step set's
// largest step members, with the hidden states left for the sampler, and counts the set.
func TestPlanActivationsFromStepSet(t *testing.T) {
	cfg := preset(t, "gemma3-27b")
	o := plan.MemoryOptions{TP: 8, DeviceMemoryBytes: 16 << 30, MaxModelLen: 8192, MaxNumSeqs: 128, MaxNumBatchedTokens: 2048, PageSize: 16}
	p, err := plan.PlanMemory(&cfg, o)
	if err != nil {
		t.Fatal(err)
	}
	set, err := p.Options.StepSet(&cfg)
	if err != nil {
		t.Fatal(err)
	}
	if p.Programs != len(set.Programs()) || p.Programs > 48 {
		t.Errorf("plan counts %d programs, the set has %d (budget 48)", p.Programs, len(set.Programs()))
	}
	if want := (model.BatchShape{T: 2048, B: 256, Q: 16, EG: 256 * 128, ES: 256 * 17}); p.Activations.Kind != "step" || p.Activations.Shape != want {
		t.Errorf("activations from %s %+v, want step %+v", p.Activations.Kind, p.Activations.Shape, want)
	}
}

func TestPlanMemoryErrors(t *testing.T) {
	c27 := preset(t, "gemma3-27b")
	for _, tc := range []struct {
		name string
		opts plan.MemoryOptions
		is   error
		want []string
	}{
		{"27B on one chip", plan.MemoryOptions{TP: 1, DeviceMemoryBytes: 16 * gib}, plan.ErrMemory,
			[]string{"weights 50.3 GiB", "the device has 16.0 GiB", "TP=1"}},
		{"no device memory", plan.MemoryOptions{TP: 8}, model.ErrConfig, []string{"--device-memory"}},
		{"too long", plan.MemoryOptions{TP: 8, DeviceMemoryBytes: 16 * gib, MaxModelLen: 200000}, model.ErrConfig,
			[]string{"--max-model-len", "200000", "131072"}},
		{"batch below seqs", plan.MemoryOptions{TP: 8, DeviceMemoryBytes: 16 * gib, MaxNumSeqs: 512, MaxNumBatchedTokens: 256}, model.ErrConfig,
			[]string{"--max-num-batched-tokens", "--max-num-seqs"}},
		{"bad tp", plan.MemoryOptions{TP: 5, DeviceMemoryBytes: 16 * gib}, model.ErrSharding, []string{"q_proj"}},
		// Room for the weights but not one 128k sequence (10.4 GiB, 1.3 GiB per chip).
		{"KV too small", plan.MemoryOptions{TP: 8, DeviceMemoryBytes: 10 * gib, MaxModelLen: 131072, MaxNumSeqs: 1, MaxNumBatchedTokens: 16, SegmentLen: 16},
			plan.ErrMemory, []string{"one sequence of max model length 131072 needs 1.30 GiB per chip"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := plan.PlanMemory(&c27, tc.opts)
			if err == nil || !errors.Is(err, tc.is) {
				t.Fatalf("got %v, want %v", err, tc.is)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			if errors.Is(err, plan.ErrMemory) && (p == nil || p.WeightBytesPerChip == 0) {
				t.Errorf("ErrMemory without the partial plan: %+v", p)
			}
		})
	}
}

func TestParseByteSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		err  bool
	}{
		{"16GiB", 16 << 30, false}, {"16Gi", 16 << 30, false}, {"16 GiB", 16 << 30, false}, {"16gib", 16 << 30, false},
		{"16GB", 16e9, false}, {"16G", 16e9, false}, {"1.5GiB", 3 << 29, false}, {"512MiB", 512 << 20, false},
		{"1024", 1024, false}, {"80KB", 80000, false}, {"1TiB", 1 << 40, false},
		{"", 0, true}, {"GiB", 0, true}, {"16XB", 0, true}, {"-1GiB", 0, true}, {"1e30TiB", 0, true},
	} {
		got, err := plan.ParseByteSize(tc.in)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("ParseByteSize(%q) = %d, %v; want %d (error %v)", tc.in, got, err, tc.want, tc.err)
		}
		if err != nil && !errors.Is(err, model.ErrConfig) {
			t.Errorf("ParseByteSize(%q): %v is not ErrConfig", tc.in, err)
		}
	}
	for n, want := range map[int64]string{512: "512 B", 1536: "1.50 KiB", 16 << 30: "16.0 GiB", 6754706944: "6.29 GiB", 200 << 20: "200 MiB"} {
		if got := plan.FormatBytes(n); got != want {
			t.Errorf("FormatBytes(%d) = %q, want %q", n, got, want)
		}
	}
}

// TestPlanMemoryQuantized: 27B with int8 (and fp8) weights at TP 4 (a v5e-4) and 8. The
// plan's weight bytes per chip are the tensors' bytes (model.QuantizedTensorSpecs: 1 byte
// per quantized parameter, the bf16 scales — split with column-parallel weights, whole on
// every chip for row-parallel ones — and the bf16 embedding and norms), summed here from
// the spec list, and every byte the weights shrink by goes to the KV cache. At TP 4 bf16
// weights leave no room at all; int8 leaves a KV cache.
func TestPlanMemoryQuantized(t *testing.T) {
	cfg := preset(t, "gemma3-27b")
	for _, tc := range []struct {
		format model.WeightFormat
		tp     int
	}{{model.FormatInt8, 4}, {model.FormatInt8, 8}, {model.FormatFP8, 8}} {
		t.Run(fmt.Sprintf("%s/tp%d", tc.format, tc.tp), func(t *testing.T) {
			opts := plan.MemoryOptions{TP: tc.tp, DeviceMemoryBytes: 16 * gib, MaxNumSeqs: 64, MaxNumBatchedTokens: 2048, MaxModelLen: 4096}
			bf, bfErr := plan.PlanMemory(&cfg, opts)
			opts.Format = tc.format
			q, err := plan.PlanMemory(&cfg, opts)
			if err != nil {
				t.Fatal(err)
			}
			var want, scales int64
			for _, s := range model.QuantizedTensorSpecs(&cfg, tc.format.QuantMode(), dtypes.BFloat16) {
				b := s.Bytes()
				switch {
				case len(s.Shape) == 1:
				case s.ScaleOf != "" && (strings.HasSuffix(s.ScaleOf, "o_proj.weight") || strings.HasSuffix(s.ScaleOf, "down_proj.weight")):
					scales += b
				default:
					b /= int64(tc.tp)
					if s.ScaleOf != "" {
						scales += b
					}
				}
				want += b
			}
			if q.WeightBytesPerChip != want {
				t.Errorf("weights %d bytes per chip, the tensors sum to %d", q.WeightBytesPerChip, want)
			}
			if scales == 0 {
				t.Errorf("no scale bytes counted")
			}
			freed := bf.WeightBytesPerChip - q.WeightBytesPerChip
			if bfErr == nil {
				if gained := q.KVBytesPerChip - bf.KVBytesPerChip; gained != freed-(q.Activations.Peak-bf.Activations.Peak) {
					t.Errorf("KV gained %d, weights freed %d (activations %+d)", gained, freed, q.Activations.Peak-bf.Activations.Peak)
				}
			} else if !errors.Is(bfErr, plan.ErrMemory) {
				t.Fatal(bfErr)
			}
			t.Logf("27B %s TP=%d: weights %.2f GiB/chip (scales %.2f MiB), bf16 %.2f GiB (fits: %v); KV %.2f GiB/chip, %d tokens, %d sequences of 4096",
				tc.format, tc.tp, float64(q.WeightBytesPerChip)/float64(gib), float64(scales)/(1<<20), float64(bf.WeightBytesPerChip)/float64(gib),
				bfErr == nil, float64(q.KVBytesPerChip)/float64(gib), q.KVTokens, q.SeqsAtLen)
			if tc.tp == 4 && (bfErr == nil || q.SeqsAtLen < 1) {
				t.Errorf("TP 4: bf16 error %v (want ErrMemory), int8 holds %d sequences of 4096", bfErr, q.SeqsAtLen)
			}
		})
	}
}

// TestPlanMemoryKVCacheDType: an int8 or fp8 KV cache (1 byte per element plus a bf16 scale
// per position and kv head) about doubles the capacity of the same budget: one sequence's
// KV shrinks by exactly 2·128 / (128 + 2) for 27B (head_dim 128), the sequences the bytes
// hold grow by as much, and the token capacity at least doubles (the engine's split gives
// the global group every block past the sliding group's cap). Weights and activations do
// not change.
func TestPlanMemoryKVCacheDType(t *testing.T) {
	cfg := preset(t, "gemma3-27b")
	opts := plan.MemoryOptions{TP: 8, DeviceMemoryBytes: 16 * gib, MaxNumSeqs: 64, MaxNumBatchedTokens: 2048, MaxModelLen: 4096}
	bf, err := plan.PlanMemory(&cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	for _, dt := range []string{"int8", "fp8"} {
		t.Run(dt, func(t *testing.T) {
			o := opts
			o.KVCacheDType = dt
			q, err := plan.PlanMemory(&cfg, o)
			if err != nil {
				t.Fatal(err)
			}
			if q.KVBytesPerChip != bf.KVBytesPerChip || q.WeightBytesPerChip != bf.WeightBytesPerChip {
				t.Errorf("budget %d vs %d, weights %d vs %d: the KV dtype moved them", q.KVBytesPerChip, bf.KVBytesPerChip, q.WeightBytesPerChip, bf.WeightBytesPerChip)
			}
			if q.SeqKVBytesPerChip*256 != bf.SeqKVBytesPerChip*130 {
				t.Errorf("one sequence: %d bytes, bf16 %d: want ×130/256", q.SeqKVBytesPerChip, bf.SeqKVBytesPerChip)
			}
			if r := float64(q.SeqsAtLenByBytes) / float64(bf.SeqsAtLenByBytes); r < 1.9 || r > 2.0 {
				t.Errorf("sequences by bytes %d vs %d (×%.2f), want ×1.97", q.SeqsAtLenByBytes, bf.SeqsAtLenByBytes, r)
			}
			if q.KVTokens < 2*bf.KVTokens || q.KVPoolBytesPerChip > q.KVBytesPerChip {
				t.Errorf("tokens %d vs bf16 %d (want ≥ 2×), pools %d of a %d budget", q.KVTokens, bf.KVTokens, q.KVPoolBytesPerChip, q.KVBytesPerChip)
			}
			if q.Sharding.KVPool.BytesPerChip != 2*(128+2) || q.Sharding.KVPool.DType == "" {
				t.Errorf("KV pool slot: %d bytes per chip (dtype %q), want 2 kv heads × (128 + 2)", q.Sharding.KVPool.BytesPerChip, q.Sharding.KVPool.DType)
			}
			t.Logf("27B TP=8, %s KV: %d tokens (bf16 %d), %d sequences of 4096 by bytes (bf16 %d), %s per sequence (bf16 %s)",
				dt, q.KVTokens, bf.KVTokens, q.SeqsAtLenByBytes, bf.SeqsAtLenByBytes, plan.FormatBytes(q.SeqKVBytesPerChip), plan.FormatBytes(bf.SeqKVBytesPerChip))
		})
	}
	o := opts
	o.KVCacheDType = "int4"
	if _, err := plan.PlanMemory(&cfg, o); err == nil || !strings.Contains(err.Error(), "--kv-cache-dtype") {
		t.Errorf("int4: %v", err)
	}
}

// TestPlanMemoryVision: a vision tower's replicated weights and its activations (when
// larger than the step's) come out of the KV budget.
func TestPlanMemoryVision(t *testing.T) {
	cfg, err := model.Preset("gemma3-4b")
	if err != nil {
		t.Fatal(err)
	}
	opts := plan.MemoryOptions{DeviceMemoryBytes: 32 << 30, MaxModelLen: 4096, MaxNumSeqs: 8, MaxNumBatchedTokens: 512}
	text, err := plan.PlanMemory(&cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	opts.VisionWeightBytes, opts.VisionActivationBytes = 840<<20, text.Activations.Peak+(1<<30)
	vis, err := plan.PlanMemory(&cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := text.KVBytesPerChip-vis.KVBytesPerChip, opts.VisionWeightBytes+(1<<30); got != want {
		t.Errorf("the tower took %d bytes of KV budget, want %d (weights + the activations beyond the step's)", got, want)
	}
	if vis.Activations.Kind != "vision" {
		t.Errorf("activations %q, want the vision bucket's", vis.Activations.Kind)
	}
}
