package engine

import (
	"crypto/sha256"
	"fmt"

	"github.com/tpuserve/tpuserve/kvcache"
	"github.com/tpuserve/tpuserve/model"
)

// Image is one image of a request, preprocessed: Pixels [3, S, S] as vision.Processor
// leaves them (a pan-and-scan crop is an image of its own) and Hash, their content hash
// (vision.Preprocessed.Hash), which keys the prefix cache.
type Image struct {
	Pixels []float32
	Hash   [32]byte
}

// imagePlan is where a request's images sit in its prompt: each image's soft tokens, the
// groups of positions that must run in one step (model.ImageGroups: each image, or the
// images the windowed mask links), and the prefix-cache keys (one per group: a block that
// holds any of a group's positions depends on all of its images).
type imagePlan struct {
	images []model.ChunkImage // Row: the image's index in the request
	groups []imageGroup
	keys   []kvcache.ContentKey
}

// imageGroup is positions [start, end) holding images [first, first+count) of the request.
type imageGroup struct{ start, end, first, count int }

// planImages checks a request's images against its prompt's placeholder runs and lays out
// its image plan (nil for a request without images). Errors wrap ErrInvalidRequest.
func (e *Engine) planImages(req *Request) (*imagePlan, error) {
	if e.vision == nil {
		if len(req.Images) > 0 {
			return nil, fmt.Errorf("%w: the model takes no images (no vision tower is loaded)", ErrInvalidRequest)
		}
		return nil, nil
	}
	vcfg := e.vision.Config()
	chunks, err := vcfg.ChunkImages(req.PromptIDs, 0)
	if err != nil {
		return nil, fmt.Errorf("%w: prompt: %w", ErrInvalidRequest, err)
	}
	if len(chunks) != len(req.Images) {
		return nil, fmt.Errorf("%w: the prompt has %d image placeholder runs, the request %d images", ErrInvalidRequest, len(chunks), len(req.Images))
	}
	if len(chunks) == 0 {
		return nil, nil
	}
	per := vcfg.NumChannels * vcfg.ImageSize * vcfg.ImageSize
	for i, im := range req.Images {
		if len(im.Pixels) != per {
			return nil, fmt.Errorf("%w: image %d has %d pixel values, want %d", ErrInvalidRequest, i, len(im.Pixels), per)
		}
	}
	p := &imagePlan{images: chunks}
	for k := range p.images {
		p.images[k].Row = k
	}
	maxTokens := min(e.sched.maxChunk, e.cfg.Scheduler.MaxNumBatchedTokens)
	next := 0
	for _, g := range model.ImageGroups(e.mcfg.ImageMaskWindow, chunks) {
		grp := imageGroup{start: g[0], end: g[1], first: next}
		h := sha256.New()
		for next < len(chunks) && chunks[next].Pos < g[1] {
			h.Write(req.Images[next].Hash[:])
			next++
			grp.count++
		}
		if grp.count > e.maxImages {
			return nil, fmt.Errorf("%w: images %d..%d attend to each other and must run in one step, a step takes at most %d images",
				ErrInvalidRequest, grp.first, grp.first+grp.count-1, e.maxImages)
		}
		if g[1]-g[0] > maxTokens {
			return nil, fmt.Errorf("%w: the image tokens at positions %d..%d must run in one step, a step runs at most %d tokens",
				ErrInvalidRequest, g[0], g[1]-1, maxTokens)
		}
		key := kvcache.ContentKey{Start: g[0], End: g[1]}
		copy(key.Hash[:], h.Sum(nil))
		p.groups = append(p.groups, grp)
		p.keys = append(p.keys, key)
	}
	return p, nil
}

// cutImages shortens a chunk of r from start with n tokens so that it never ends inside an
// image group and holds at most *budget images, which it takes from the budget. It returns
// the new n (0: r cannot run this step).
func cutImages(r *seqState, start, n int, budget *int) int {
	p := r.images
	if p == nil || n == 0 {
		return n
	}
	end, used := start+n, 0
	for _, g := range p.groups {
		if g.end <= start || g.start >= end {
			continue
		}
		if end < g.end || used+g.count > *budget {
			end = max(start, g.start)
			break
		}
		used += g.count
	}
	if end == start {
		return 0
	}
	*budget -= used
	return end - start
}

// stepImages are the images of one chunk's step, positions [start, end): every image of a
// group the chunk touches (an image before the chunk start, served by the prefix cache,
// is encoded again: its keys are in the pages, but the mask of its group lists it).
func (p *imagePlan) stepImages(start, end int) (first, count int) {
	first = -1
	for _, g := range p.groups {
		if g.end <= start || g.start >= end {
			continue
		}
		if first < 0 {
			first = g.first
		}
		count = g.first + g.count - first
	}
	return max(first, 0), count
}
