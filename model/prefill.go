package model

import (
	"fmt"

	"github.com/gomlx/gomlx/pkg/core/tensors"
)

// ContiguousChunk lays out one whole sequence starting at position 0 on pages 1, 2, … of
// both groups (a plain contiguous allocation), for one-off runs such as ForwardLogits.
func ContiguousChunk(tokens []int32, pageSize int, allLogits bool) SeqChunk {
	n := (len(tokens) + pageSize - 1) / pageSize
	blocks := make([]int32, n)
	for i := range blocks {
		blocks[i] = int32(i + 1)
	}
	return SeqChunk{Tokens: tokens, GlobalBlocks: blocks, SlidingBlocks: blocks, AllLogits: allLogits}
}

// onePrefill lays tokens out as one sequence, one prefill chunk, on just enough pages,
// with at least imageRows image-embedding rows.
func onePrefill(cfg *Config, tokens []int32, images []ChunkImage, imageRows int) (KVLayout, *Batch, error) {
	const pageSize = 16
	if len(tokens) == 0 {
		return KVLayout{}, nil, fmt.Errorf("%w: no tokens", ErrInput)
	}
	chunk := ContiguousChunk(tokens, pageSize, true)
	chunk.Images = images
	pages := len(chunk.GlobalBlocks) + 1
	layout := KVLayout{PageSize: pageSize, NumGlobalPages: pages, NumSlidingPages: pages}
	shape := NeededShape(cfg, layout, []SeqChunk{chunk}, 0)
	if cfg.Vision {
		shape.M = max(shape.M, imageRows)
	}
	batch, err := BuildBatch(cfg, layout, []SeqChunk{chunk}, shape)
	return layout, batch, err
}

// ForwardLogits runs tokens as one sequence, one prefill chunk, on fresh pools and returns
// the float32 logits of every position, [T, V].
func (m *Model) ForwardLogits(tokens []int32) (*tensors.Tensor, error) {
	return m.ForwardLogitsImages(tokens, nil, nil)
}

// ForwardLogitsImages is ForwardLogits with images (a vision model): the soft tokens of
// each image (positions in tokens, sorted) take rows of embeds [M, H] (the image features
// in the compute dtype, on the host or the device; nil without images).
func (m *Model) ForwardLogitsImages(tokens []int32, images []ChunkImage, embeds *tensors.Tensor) (*tensors.Tensor, error) {
	if len(images) > 0 && !m.Config.Vision {
		return nil, fmt.Errorf("%w: the model has no vision tower (a text-only config): it takes no images", ErrInput)
	}
	rows := 0
	if embeds != nil {
		if d := embeds.Shape().Dimensions; len(d) == 2 {
			rows = d[0]
		}
	}
	layout, batch, err := onePrefill(&m.Config, tokens, images, rows)
	if err != nil {
		return nil, err
	}
	batch.ImageEmbeds = embeds
	pools, err := m.NewKVPools(layout)
	if err != nil {
		return nil, err
	}
	defer pools.Finalize()
	exec, err := m.NewStepExec(0, nil)
	if err != nil {
		return nil, err
	}
	defer exec.Finalize()
	outs, err := exec.Run(pools, batch)
	if err != nil {
		return nil, err
	}
	return outs[0], nil
}
