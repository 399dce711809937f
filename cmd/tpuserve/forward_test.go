package main

import (
	"bytes"
	"math"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/tpuserve/tpuserve/internal/reference"
	"github.com/tpuserve/tpuserve/model"
)

// TestForwardUnseenCheckpoints writes random checkpoints of shapes the HF fixtures do not
// have (pattern 6, 2:1 GQA, query_pre_attn_scalar ≠ head_dim, window 8, head_dim 12) in
// each hub layout, runs `tpuserve forward` on them and checks the logits against the
// independent float64 reference.
func TestForwardUnseenCheckpoints(t *testing.T) {
	cfg := model.DefaultConfig()
	cfg.VocabSize, cfg.TextVocabSize, cfg.HiddenSize, cfg.IntermediateSize, cfg.NumHiddenLayers = 300, 300, 48, 96, 7
	cfg.NumAttentionHeads, cfg.NumKeyValueHeads, cfg.HeadDim, cfg.QueryPreAttnScalar = 4, 2, 12, 20
	cfg.SlidingWindow, cfg.SlidingWindowPattern, cfg.RopeScalingFactor, cfg.MaxPositionEmbeddings = 8, 6, 4, 512
	cfg.LayerTypes = nil
	hub, err := model.HubConfig(&cfg, false)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err = model.ParseConfig(hub) // fills layer_types from the pattern
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.NumGlobalLayers(); got != 1 || !cfg.IsGlobal(5) {
		t.Fatalf("pattern 6 over 7 layers: %d global layers, layer 5 global=%v", got, cfg.IsGlobal(5))
	}
	rng := rand.New(rand.NewPCG(3, 4))
	ids := []int32{2}
	for len(ids) < 30 {
		ids = append(ids, int32(3+rng.IntN(cfg.VocabSize-3)))
	}
	idStrs := make([]string, len(ids))
	for i, id := range ids {
		idStrs[i] = strconv.Itoa(int(id))
	}
	for _, layout := range []struct {
		prefix string
		shards int
	}{{"model.", 1}, {"language_model.model.", 2}, {"model.language_model.", 3}} {
		t.Run(layout.prefix, func(t *testing.T) {
			w, err := model.RandomWeights(&cfg, dtypes.Float32, 11)
			if err != nil {
				t.Fatal(err)
			}
			dir := t.TempDir()
			if err := model.WriteCheckpoint(dir, &cfg, w, layout.prefix, layout.shards); err != nil {
				t.Fatal(err)
			}
			want := reference.Forward(&cfg, w.Tensors, ids)
			out := filepath.Join(dir, "logits.safetensors")
			var stdout, stderr bytes.Buffer
			code := run([]string{"forward", "--model", dir, "--tokens", strings.Join(idStrs, ","), "--out", out}, nil, &stdout, &stderr)
			if code != 0 {
				t.Fatalf("forward exited %d: %s", code, stderr.String())
			}
			got, err := model.ReadSafetensors(out)
			if err != nil {
				t.Fatal(err)
			}
			logits := got["logits"]
			if logits == nil || !slices.Equal(logits.Shape().Dimensions, []int{len(ids), cfg.VocabSize}) {
				t.Fatalf("output tensor logits: %v", logits)
			}
			flat := tensors.MustCopyFlatData[float32](logits)
			maxDiff := 0.0
			for p := range ids {
				for v := 0; v < cfg.VocabSize; v++ {
					maxDiff = math.Max(maxDiff, math.Abs(float64(flat[p*cfg.VocabSize+v])-want[p][v]))
				}
			}
			if maxDiff > 1e-4 {
				t.Errorf("max |forward − reference| = %.3g > 1e-4", maxDiff)
			}
			t.Logf("max |Δ| = %.2g", maxDiff)
		})
	}
}

func TestForwardFlagErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"forward", "--tokens", "1,2"}, "--tokens and --out are required"},
		{[]string{"forward", "--tokens", "1,x", "--out", "/tmp/none"}, `"x" is not a token id`},
		{[]string{"forward", "--tokens", "1", "--out", "/tmp/none", "--dtype", "f8"}, `dtype "f8"`},
		{[]string{"forward", "--tokens", "1", "--out", "/tmp/none", "--backend", "tpu"}, `unknown backend "tpu"`},
		{[]string{"forward", "--tokens", "1", "--out", "/tmp/none", "--model", "/nonexistent"}, "no such file"},
	} {
		var stdout, stderr bytes.Buffer
		if code := run(tc.args, nil, &stdout, &stderr); code == 0 || !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("%v: exit %d, stderr %q, want it to contain %q", tc.args, code, stderr.String(), tc.want)
		}
	}
}
