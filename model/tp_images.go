package model

import (
	"fmt"
	"slices"
	"sync"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/pkg/core/shapes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
)

// Image inputs of the sharded step programs. The vision tower is replicated, not split:
// its features [M, H] are a replicated input of every chip's step (each chip splices the
// whole image rows into its copy of the embeddings, forwardChips).

// shardedImageZeros are the image input of steps without images, kept on each device by M
// so that a text step transfers nothing.
type shardedImageZeros struct {
	mu  sync.Mutex
	byM map[imageZerosKey]*tensors.Tensor
}

type imageZerosKey struct {
	m   int
	dev backends.DeviceNum
}

func (z *shardedImageZeros) finalize() {
	z.mu.Lock()
	defer z.mu.Unlock()
	for _, t := range z.byM {
		t.FinalizeAll()
	}
	z.byM = nil
}

// checkImageEmbeds checks b's image input against its shape; stepArgs calls it before it
// donates the pools, so that a bad input never loses them.
func (m *ShardedModel) checkImageEmbeds(b *Batch) error {
	M, H := b.Shape.M, m.Config.HiddenSize
	if M == 0 {
		return fmt.Errorf("%w: the model takes image inputs, the batch shape has no image rows (M = 0)", ErrInput)
	}
	if emb := b.ImageEmbeds; emb != nil && (!slices.Equal(emb.Shape().Dimensions, []int{M, H}) || emb.DType() != m.DType) {
		return fmt.Errorf("%w: image embeddings are %s, the step wants [%d, %d] of %s", ErrInput, emb.Shape(), M, H, m.DType)
	}
	return nil
}

// imageEmbedsFor is the image-embedding input of b for device d's program instance (the
// whole mesh's on a virtual mesh): b.ImageEmbeds, checked — as it is on a virtual mesh (one
// graph on device 0, where the tower ran), a copy for device d on xla (a tensor lives on
// one device) — or zeros kept on the device. owned says the caller frees the tensor.
func (m *ShardedModel) imageEmbedsFor(d int, b *Batch) (t *tensors.Tensor, owned bool, err error) {
	if err := m.checkImageEmbeds(b); err != nil {
		return nil, false, err
	}
	M, H := b.Shape.M, m.Config.HiddenSize
	if emb := b.ImageEmbeds; emb != nil {
		if m.Virtual {
			return emb, false, nil
		}
		c, err := emb.LocalClone()
		if err != nil {
			return nil, false, fmt.Errorf("%w: image embeddings for chip %d: %w", ErrInput, d, err)
		}
		return c, true, nil
	}
	z := &m.zeros
	z.mu.Lock()
	defer z.mu.Unlock()
	key := imageZerosKey{m: M, dev: m.device(d)}
	if t, ok := z.byM[key]; ok {
		return t, false, nil
	}
	t = tensors.FromShape(shapes.Make(m.DType, M, H))
	if err := t.MaterializeOnDevice(m.Backend, false, key.dev); err != nil {
		return nil, false, fmt.Errorf("model: zero image embeddings on chip %d: %w", d, err)
	}
	t.FinalizeLocal()
	if z.byM == nil {
		z.byM = map[imageZerosKey]*tensors.Tensor{}
	}
	z.byM[key] = t
	return t, false, nil
}
