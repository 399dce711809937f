package model_test

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/gomlx/gomlx/pkg/core/shapes"
	"github.com/gomlx/gomlx/pkg/core/tensors"

	"github.com/tpuserve/tpuserve/internal/backendtest"
	"github.com/tpuserve/tpuserve/model"
)

// TestShardedImageEmbedsChecked: a sharded vision model's step refuses image embeddings of
// the wrong shape with ErrInput naming them (not a failed device call), and a step without
// images runs on the zero embeddings kept on the device, twice the same.
func TestShardedImageEmbedsChecked(t *testing.T) {
	dir := filepath.Join("vision", "testdata", "gemma3-tiny-vision")
	m, err := model.LoadShardedModel(backendtest.Backend(t), model.LoadOptions{Model: dir, DType: dtypes.Float32, Progress: func(model.LoadProgress) {}}, 2)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	if !m.Config.Vision {
		t.Fatal("the fixture's config has no vision_config")
	}
	d := newShardedDecoder(t, m)
	tokens := []int32{2, 17, 42, 99}
	chunk := model.SeqChunk{Tokens: tokens, GlobalBlocks: d.blocks, SlidingBlocks: d.blocks}
	shape := model.NeededShape(d.cfg, d.layout, []model.SeqChunk{chunk}, 4)
	batch, err := model.BuildBatch(d.cfg, d.layout, []model.SeqChunk{chunk}, shape)
	if err != nil {
		t.Fatal(err)
	}
	bad := tensors.FromShape(shapes.Make(dtypes.Float32, shape.M+1, m.Config.HiddenSize))
	defer bad.FinalizeAll()
	batch.ImageEmbeds = bad
	if _, err := d.exec.Run(d.pools, batch); !errors.Is(err, model.ErrInput) || !strings.Contains(err.Error(), "image embeddings") {
		t.Fatalf("image embeddings of the wrong shape: %v, want ErrInput naming them", err)
	}
	if p := d.pools.Shards[0][0]; p == nil || !p.Ok() {
		t.Fatal("the refused step lost the pools")
	}
	batch.ImageEmbeds = nil
	a := d.step(t, tokens, 0, len(tokens))
	b := d.step(t, tokens, 0, len(tokens))
	for i := range a {
		if a[i] != b[i] {
			t.Fatalf("logit %d: %v then %v", i, a[i], b[i])
		}
	}
}
