package vision

import (
	"fmt"

	"github.com/tpuserve/tpuserve/model"
)

// Span is one image's soft tokens in a prompt: positions [Start, Start+Len) hold
// image_token_index and attend to each other bidirectionally (HF's token_type_ids groups).
type Span struct{ Start, Len int }

// ImageSpans finds the image placeholder runs in ids and checks their layout: each run of
// image_token_index is exactly mm_tokens_per_image long, preceded by boi_token_index and
// followed by eoi_token_index. The spans come in prompt order, which is the order the
// images' features are spliced in. Errors wrap ErrInput and give the position.
func (c *Config) ImageSpans(ids []int32) ([]Span, error) {
	var spans []Span
	img, boi, eoi := int32(c.ImageTokenID), int32(c.BOITokenID), int32(c.EOITokenID)
	for i := 0; i < len(ids); {
		if ids[i] != img {
			i++
			continue
		}
		start := i
		for i < len(ids) && ids[i] == img {
			i++
		}
		n := i - start
		if n != c.MMTokensPerImage {
			return nil, fmt.Errorf("%w: %d image tokens at position %d, an image takes exactly %d", ErrInput, n, start, c.MMTokensPerImage)
		}
		if start == 0 || ids[start-1] != boi {
			return nil, fmt.Errorf("%w: image tokens at position %d are not preceded by the start-of-image token %d", ErrInput, start, boi)
		}
		if i == len(ids) || ids[i] != eoi {
			return nil, fmt.Errorf("%w: image tokens at position %d are not followed by the end-of-image token %d", ErrInput, start, eoi)
		}
		spans = append(spans, Span{Start: start, Len: n})
	}
	return spans, nil
}

// ChunkImages are the image spans of ids as the model's step input lays them out
// (model.SeqChunk.Images): image k of the prompt (k from 0) reads rows
// [(firstImage+k)·T, …) of the image embeddings, T = mm_tokens_per_image, as EncodeRows
// leaves them for images firstImage, firstImage+1, ….
func (c *Config) ChunkImages(ids []int32, firstImage int) ([]model.ChunkImage, error) {
	spans, err := c.ImageSpans(ids)
	if err != nil {
		return nil, err
	}
	out := make([]model.ChunkImage, len(spans))
	for k, sp := range spans {
		out[k] = model.ChunkImage{Pos: sp.Start, Len: sp.Len, Row: (firstImage + k) * c.MMTokensPerImage}
	}
	return out, nil
}
