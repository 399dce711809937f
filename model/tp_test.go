package model_test

import (
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/tpuserve/tpuserve/internal/backendtest"
	"github.com/tpuserve/tpuserve/model"
)

// tpBackend returns the test backend when it can run tp chips (any single-device backend
// runs them on a virtual mesh; xla needs tp devices), else skips saying what it needs.
func tpBackend(t *testing.T, tp int) backends.Backend {
	t.Helper()
	b := backendtest.Backend(t)
	if err := model.CheckTPBackend(b, tp); err != nil {
		t.Skipf("needs >= %d devices on xla (TPUSERVE_BACKEND=xla:cpu XLA_FLAGS=--xla_force_host_platform_device_count=8), or the pure-Go backend's virtual mesh; here: %v", tp, err)
	}
	return b
}

func tensorMaxDiff(t *testing.T, a, b *tensors.Tensor) float64 {
	t.Helper()
	x, y := tensors.MustCopyFlatData[float32](a), tensors.MustCopyFlatData[float32](b)
	if len(x) != len(y) {
		t.Fatalf("logits sizes %d and %d", len(x), len(y))
	}
	d := 0.0
	for i := range x {
		d = math.Max(d, math.Abs(float64(x[i]-y[i])))
	}
	return d
}

// TestShardedForwardMatchesTP1 runs the HF fixture's sequences through the per-chip
// programs loaded shard by shard from the checkpoint — TP=2: kv heads split; TP=4: the 2 kv
// heads replicated; TP=8: q heads replicated too — and checks the logits against the plain
// TP=1 program and HF's.
func TestShardedForwardMatchesTP1(t *testing.T) {
	dir := filepath.Join("testdata", "gemma3-tiny")
	golden, ts := loadGolden(t, dir)
	plain := loadModel(t, dir, dtypes.Float32)
	want := make([]*tensors.Tensor, len(golden.Sequences))
	for i, ids := range golden.Sequences {
		var err error
		if want[i], err = plain.ForwardLogits(ids); err != nil {
			t.Fatal(err)
		}
	}
	for _, tp := range []int{2, 4, 8} {
		t.Run(fmt.Sprintf("tp%d", tp), func(t *testing.T) {
			b := tpBackend(t, tp)
			sharded, err := model.LoadShardedModel(b, model.LoadOptions{Model: dir, DType: dtypes.Float32, Progress: func(model.LoadProgress) {}}, tp)
			if err != nil {
				t.Fatal(err)
			}
			defer sharded.Close()
			for i, ids := range golden.Sequences {
				got, err := sharded.ForwardLogits(ids)
				if err != nil {
					t.Fatal(err)
				}
				d1 := tensorMaxDiff(t, got, want[i])
				if d1 > 1e-5 {
					t.Errorf("seq %d: max |TP=%d − TP=1| = %.2e", i, tp, d1)
				}
				dHF := tensorMaxDiff(t, got, ts[fmt.Sprintf("seq%d.logits_f32", i)])
				if dHF > 1e-3 {
					t.Errorf("seq %d: max |TP=%d − HF f32| = %.2e", i, tp, dHF)
				}
				t.Logf("seq %d (%d tokens): max |TP=%d − TP=1| = %.1e, − HF = %.1e", i, len(ids), tp, d1, dHF)
			}
		})
	}
}

// shardedDecoder runs one sequence through a sharded model's logits program: prefill,
// then one token per step, through donated pools.
type shardedDecoder struct {
	cfg    *model.Config
	layout model.KVLayout
	pools  *model.ShardedKVPools
	exec   *model.ShardedLogitsExec
	blocks []int32
}

func newShardedDecoder(t *testing.T, m *model.ShardedModel) *shardedDecoder {
	t.Helper()
	layout := model.KVLayout{PageSize: 4, NumGlobalPages: 24, NumSlidingPages: 24}
	pools, err := m.NewKVPools(layout)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pools.Finalize)
	exec, err := m.NewLogitsExec()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(exec.Finalize)
	blocks := make([]int32, 20)
	for i := range blocks {
		blocks[i] = int32(i + 1)
	}
	return &shardedDecoder{cfg: &m.Config, layout: layout, pools: pools, exec: exec, blocks: blocks}
}

// step runs tokens[from:to] and returns the logits of its last position.
func (d *shardedDecoder) step(t *testing.T, tokens []int32, from, to int) []float32 {
	t.Helper()
	chunk := model.SeqChunk{Tokens: tokens[from:to], StartPos: from, GlobalBlocks: d.blocks, SlidingBlocks: d.blocks}
	shape := model.NeededShape(d.cfg, d.layout, []model.SeqChunk{chunk}, 4)
	batch, err := model.BuildBatch(d.cfg, d.layout, []model.SeqChunk{chunk}, shape)
	if err != nil {
		t.Fatal(err)
	}
	logits, err := d.exec.Run(d.pools, batch)
	if err != nil {
		t.Fatal(err)
	}
	defer logits.FinalizeAll()
	return tensors.MustCopyFlatData[float32](logits)[:d.cfg.VocabSize]
}

// TestShardedGreedyMatchesHuggingFace decodes HF's greedy runs through the KV cache at
// TP=2 and TP=8 and compares every token while HF's top-1 margin is clear.
func TestShardedGreedyMatchesHuggingFace(t *testing.T) {
	dir := filepath.Join("testdata", "gemma3-tiny")
	golden, _ := loadGolden(t, dir)
	for _, tp := range []int{2, 8} {
		t.Run(fmt.Sprintf("tp%d", tp), func(t *testing.T) {
			b := tpBackend(t, tp)
			m, err := model.LoadShardedModel(b, model.LoadOptions{Model: dir, DType: dtypes.Float32, Progress: func(model.LoadProgress) {}}, tp)
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			for gi, run := range golden.Greedy {
				d := newShardedDecoder(t, m)
				tokens := append([]int32{}, run.Prompt...)
				last := d.step(t, tokens, 0, len(tokens))
				compared := 0
				for step, want := range run.Greedy {
					if run.Margins[step] <= 1e-3 {
						break
					}
					got, _ := argmaxAndMargin(last)
					if int32(got) != want {
						t.Fatalf("run %d step %d: greedy token %d at TP=%d, HF %d (margin %.3g)", gi, step, got, tp, want, run.Margins[step])
					}
					compared++
					tokens = append(tokens, int32(got))
					last = d.step(t, tokens, len(tokens)-1, len(tokens))
				}
				if compared == 0 {
					t.Fatalf("run %d: no token compared", gi)
				}
				t.Logf("run %d: %d greedy tokens at TP=%d equal to HF", gi, compared, tp)
			}
		})
	}
}

// TestShardedStepsMatchTP1 runs a chunked prefill and decode steps of the tiny preset
// through donated pools at TP=1 and on 2, 4 and 8 chips: the pools must be updated in place
// on every chip.
func TestShardedStepsMatchTP1(t *testing.T) {
	b := backendtest.Backend(t)
	cfg := preset(t, "tiny")
	w1, err := model.RandomWeights(&cfg, dtypes.Float32, 5)
	if err != nil {
		t.Fatal(err)
	}
	plain, err := model.New(b, cfg, w1)
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	layout := model.KVLayout{PageSize: 4, NumGlobalPages: 12, NumSlidingPages: 12}
	tokens := []int32{2, 100, 2000, 30000, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22}
	blocks := []int32{1, 2, 3, 4, 5, 6}
	steps := [][2]int{{0, 8}, {8, 14}, {14, 15}, {15, 16}}
	batches := make([]*model.Batch, len(steps))
	want := make([]*tensors.Tensor, len(steps))
	pp, err := plain.NewKVPools(layout)
	if err != nil {
		t.Fatal(err)
	}
	defer pp.Finalize()
	pe, err := plain.NewStepExec(0, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pe.Finalize()
	for i, step := range steps {
		chunk := model.SeqChunk{Tokens: tokens[step[0]:step[1]], StartPos: step[0], GlobalBlocks: blocks, SlidingBlocks: blocks}
		shape := model.NeededShape(&cfg, layout, []model.SeqChunk{chunk}, 4)
		if batches[i], err = model.BuildBatch(&cfg, layout, []model.SeqChunk{chunk}, shape); err != nil {
			t.Fatal(err)
		}
		out, err := pe.Run(pp, batches[i])
		if err != nil {
			t.Fatal(err)
		}
		want[i] = out[0]
	}
	for _, tp := range []int{2, 4, 8} {
		t.Run(fmt.Sprintf("tp%d", tp), func(t *testing.T) {
			b := tpBackend(t, tp)
			w2, err := model.RandomWeights(&cfg, dtypes.Float32, 5)
			if err != nil {
				t.Fatal(err)
			}
			sharded, err := model.NewShardedModel(b, cfg, tp, w2)
			if err != nil {
				t.Fatal(err)
			}
			defer sharded.Close()
			sp, err := sharded.NewKVPools(layout)
			if err != nil {
				t.Fatal(err)
			}
			defer sp.Finalize()
			se, err := sharded.NewLogitsExec()
			if err != nil {
				t.Fatal(err)
			}
			defer se.Finalize()
			for i, batch := range batches {
				got, err := se.Run(sp, batch)
				if err != nil {
					t.Fatal(err)
				}
				if d := tensorMaxDiff(t, got, want[i]); d > 1e-5 {
					t.Errorf("step %v: max |TP=%d − TP=1| = %.2e", steps[i], tp, d)
				}
			}
		})
	}
}

// TestCompileSharded27B builds and compiles 27B's TP=8 per-chip program from shapes alone
// (it needs an xla backend with 8 devices).
func TestCompileSharded27B(t *testing.T) {
	b := backendtest.Backend(t)
	if b.Name() != "xla" || b.NumDevices() < 8 {
		t.Skipf("needs an xla backend with 8 devices (TPUSERVE_BACKEND=xla:cpu XLA_FLAGS=--xla_force_host_platform_device_count=8); here %s with %d", b.Name(), b.NumDevices())
	}
	cfg := preset(t, "gemma3-27b")
	layout := model.KVLayout{PageSize: 16, NumGlobalPages: 64, NumSlidingPages: 64}
	for _, s := range []model.BatchShape{
		{T: 8, B: 8, Q: 1, EG: 32, ES: 8 * model.SlidingPagesPerRow(&cfg, 16, 1), N: 8},
		{T: 64, B: 4, Q: 16, EG: 16, ES: 4 * model.SlidingPagesPerRow(&cfg, 16, 16), N: 1},
	} {
		if err := model.CompileShardedStep(b, &cfg, 8, dtypes.BFloat16, layout, s); err != nil {
			t.Errorf("bucket %+v: %v", s, err)
		}
	}
}

// TestShardedBadSizes: a TP size the plan cannot split is a start-up error with the numbers.
func TestShardedBadSizes(t *testing.T) {
	b := backendtest.Backend(t)
	cfg := preset(t, "tiny")
	w, err := model.RandomWeights(&cfg, dtypes.Float32, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Finalize()
	for _, tc := range []struct {
		tp   int
		want string
	}{
		{3, "tensor-parallel size 3 neither divides nor is a multiple of the 4 attention heads"},
		{128, "tensor-parallel size 128 does not divide model.layers.*.self_attn.o_proj.weight [64 64]: 4 attention heads × head_dim 16 over 128 chips"},
		{0, "tensor-parallel size must be >= 1, got 0"},
	} {
		if _, err := model.NewShardedModel(b, cfg, tc.tp, w); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("TP=%d: %v, want an error containing %q", tc.tp, err, tc.want)
		}
	}
	if _, err := model.LoadShardedModel(b, model.LoadOptions{Model: "tiny", DType: dtypes.Float32, Quantization: "int8"}, 2); !errors.Is(err, model.ErrConfig) {
		t.Errorf("quantized weights with TP=2: %v, want ErrConfig", err)
	}
}
