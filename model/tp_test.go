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

// tpBackend returns the test backend when it can run tp chips, else skips saying what the
// test needs.
func tpBackend(t *testing.T, tp int) backends.Backend {
	t.Helper()
	b := backendtest.Backend(t)
	if err := model.CheckTPBackend(b, tp); err != nil {
		t.Skipf("needs an xla backend with >= %d devices: a TPU (TPUSERVE_BACKEND=xla:tpu) or the PJRT CPU plugin with a device count "+
			"(TPUSERVE_BACKEND=xla:cpu XLA_FLAGS=--xla_force_host_platform_device_count=8); here: %v", tp, err)
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

// TestShardedForwardMatchesTP1 runs the HF fixture's sequences through the sharded program
// loaded shard by shard from the checkpoint (TP=2: kv heads split; TP=4: the 2 kv heads
// replicated on a 2×2 mesh) and checks the logits against the plain TP=1 program and HF's.
func TestShardedForwardMatchesTP1(t *testing.T) {
	dir := filepath.Join("testdata", "gemma3-tiny")
	golden, ts := loadGolden(t, dir)
	for _, tp := range []int{2, 4} {
		t.Run(fmt.Sprintf("tp%d", tp), func(t *testing.T) {
			b := tpBackend(t, tp)
			plain := loadModel(t, dir, dtypes.Float32)
			sharded, err := model.LoadShardedModel(b, model.LoadOptions{Model: dir, DType: dtypes.Float32, Progress: func(model.LoadProgress) {}}, tp)
			if err != nil {
				t.Fatal(err)
			}
			defer sharded.Close()
			for i, ids := range golden.Sequences {
				want, err := plain.ForwardLogits(ids)
				if err != nil {
					t.Fatal(err)
				}
				got, err := sharded.ForwardLogits(ids)
				if err != nil {
					t.Fatal(err)
				}
				if d := tensorMaxDiff(t, got, want); d > 1e-4 {
					t.Errorf("seq %d: max |TP=%d − TP=1| = %.2e", i, tp, d)
				}
				if d := tensorMaxDiff(t, got, ts[fmt.Sprintf("seq%d.logits_f32", i)]); d > 1e-3 {
					t.Errorf("seq %d: max |TP=%d − HF f32| = %.2e", i, tp, d)
				}
			}
		})
	}
}

// TestShardedStepsMatchTP1 runs a chunked prefill and decode steps through donated pools
// on both paths: the sharded pools must be updated in place on every chip.
func TestShardedStepsMatchTP1(t *testing.T) {
	const tp = 2
	b := tpBackend(t, tp)
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
	w2, err := model.RandomWeights(&cfg, dtypes.Float32, 5)
	if err != nil {
		t.Fatal(err)
	}
	sharded, err := model.NewShardedModel(b, cfg, tp, w2)
	if err != nil {
		t.Fatal(err)
	}
	defer sharded.Close()
	layout := model.KVLayout{PageSize: 4, NumGlobalPages: 12, NumSlidingPages: 12}
	pp, err := plain.NewKVPools(layout)
	if err != nil {
		t.Fatal(err)
	}
	defer pp.Finalize()
	sp, err := sharded.NewKVPools(layout)
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Finalize()
	pe, err := plain.NewStepExec(0, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pe.Finalize()
	se, err := sharded.NewStepExec(0, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer se.Finalize()
	tokens := []int32{2, 100, 2000, 30000, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22}
	blocks := []int32{1, 2, 3, 4, 5, 6}
	for _, step := range [][2]int{{0, 8}, {8, 14}, {14, 15}, {15, 16}, {16, 17}} {
		chunk := model.SeqChunk{Tokens: tokens[step[0]:step[1]], StartPos: step[0], GlobalBlocks: blocks, SlidingBlocks: blocks}
		shape := model.NeededShape(&cfg, layout, []model.SeqChunk{chunk}, 4)
		batch, err := model.BuildBatch(&cfg, layout, []model.SeqChunk{chunk}, shape)
		if err != nil {
			t.Fatal(err)
		}
		want, err := pe.Run(pp, batch)
		if err != nil {
			t.Fatal(err)
		}
		got, err := se.Run(sp, batch)
		if err != nil {
			t.Fatal(err)
		}
		if d := tensorMaxDiff(t, got[0], want[0]); d > 1e-4 {
			t.Errorf("step %v: max |TP=%d − TP=1| = %.2e", step, tp, d)
		}
	}
}

// TestCompileSharded27B builds and compiles 27B's TP=8 step program from shapes alone.
func TestCompileSharded27B(t *testing.T) {
	b := tpBackend(t, 8)
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

// TestShardedNeedsXLA runs everywhere: the pure-Go backend has one device and no SPMD.
func TestShardedNeedsXLA(t *testing.T) {
	goBackend, err := model.NewBackend("go")
	if err != nil {
		t.Fatal(err)
	}
	cfg := preset(t, "tiny")
	w, err := model.RandomWeights(&cfg, dtypes.Float32, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Finalize()
	if _, err := model.NewShardedModel(goBackend, cfg, 2, w); !errors.Is(err, model.ErrBackend) || !strings.Contains(err.Error(), "needs the xla backend") {
		t.Errorf("NewShardedModel on %s: %v, want ErrBackend", goBackend.Name(), err)
	}
	if _, err := model.LoadShardedModel(goBackend, model.LoadOptions{Model: "tiny", DType: dtypes.Float32}, 2); !errors.Is(err, model.ErrBackend) {
		t.Errorf("LoadShardedModel on %s: %v, want ErrBackend", goBackend.Name(), err)
	}
	layout := model.KVLayout{PageSize: 16, NumGlobalPages: 4, NumSlidingPages: 4}
	if err := model.CompileShardedStep(goBackend, &cfg, 2, dtypes.Float32, layout, model.BatchShape{T: 1, B: 1, Q: 1, EG: 1, ES: 3, N: 1}); !errors.Is(err, model.ErrBackend) {
		t.Errorf("CompileShardedStep on %s: %v, want ErrBackend", goBackend.Name(), err)
	}
}
