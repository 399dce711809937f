package model

import (
	"errors"
	"fmt"

	"github.com/gomlx/gomlx/pkg/core/tensors"
)

// ErrInput is wrapped by every error about a step's inputs (token ids, positions, blocks).
var ErrInput = errors.New("invalid model input")

// KVLayout is the geometry of the paged KV pools: one group of pools for the global layers
// and one for the sliding-window layers, each [pages, PageSize, kvHeads, headDim] per layer
// for K and for V. Page 0 of each group is the null page: padding writes land there and it
// is never read unmasked.
type KVLayout struct {
	PageSize        int
	NumGlobalPages  int
	NumSlidingPages int
}

// Validate checks the layout.
func (l KVLayout) Validate() error {
	if l.PageSize <= 0 || l.NumGlobalPages < 2 || l.NumSlidingPages < 2 {
		return fmt.Errorf("%w: KV layout needs page size > 0 and at least 2 pages per group (page 0 is the null page), got %+v", ErrInput, l)
	}
	return nil
}

// SeqChunk is one sequence's share of a step: the new tokens whose K/V are computed now
// and where its pages are.
type SeqChunk struct {
	// Tokens are the new tokens, at positions StartPos, StartPos+1, ….
	Tokens   []int32
	StartPos int
	// GlobalBlocks are the global group's pages of logical blocks 0, 1, … (logical block j
	// holds positions [j·PageSize, (j+1)·PageSize)); they must cover every new position.
	GlobalBlocks []int32
	// SlidingBlocks are the sliding group's pages of logical blocks SlidingFirstBlock, ….
	// They must cover the new positions and the window before the first of them.
	SlidingBlocks     []int32
	SlidingFirstBlock int
	// AllLogits asks for the logits of every new token; otherwise only the last one's.
	AllLogits bool
	// Images are the chunk's images: their soft tokens take their embeddings from the
	// step's image-embedding input instead of the token table, and attend to each other
	// bidirectionally. An image lies wholly inside one chunk (its keys must all be written
	// in the step that reads them).
	Images []ChunkImage
}

// ChunkImage is one image's run of soft tokens in a chunk: positions [Pos, Pos+Len), whose
// embeddings are rows [Row, Row+Len) of the step's image-embedding input.
type ChunkImage struct{ Pos, Len, Row int }

// ImageRanges is how many key ranges an image token may see beyond causality (its own
// image and, under a windowed mask, the neighbours on either side): ImageSpan's width / 2.
const ImageRanges = 3

// imageKeyRanges are the key ranges [start, end) the image token at pos sees beyond
// causality (cfg.ImageMaskWindow), or nil when pos is no image token. images are sorted.
func imageKeyRanges(window int, images []ChunkImage, pos int) ([][2]int, error) {
	own := -1
	for k, im := range images {
		if pos >= im.Pos && pos < im.Pos+im.Len {
			own = k
		}
	}
	if own < 0 {
		return nil, nil
	}
	if window == 0 {
		im := images[own]
		return [][2]int{{im.Pos, im.Pos + im.Len}}, nil
	}
	var out [][2]int
	for _, im := range images {
		lo, hi := max(im.Pos, pos-window), min(im.Pos+im.Len, pos+window+1)
		if lo < hi {
			out = append(out, [2]int{lo, hi})
		}
	}
	if len(out) > ImageRanges {
		return nil, fmt.Errorf("%w: the image token at position %d sees %d images within %d positions, at most %d fit", ErrInput, pos, len(out), window, ImageRanges)
	}
	return out, nil
}

// ImageGroups are the position ranges [start, end) that must run in one step: each image,
// or under a windowed mask (window > 0) each chain of images less than window+1 apart
// (their tokens see each other). images are sorted by position.
func ImageGroups(window int, images []ChunkImage) [][2]int {
	var out [][2]int
	for _, im := range images {
		if n := len(out); n > 0 && window > 0 && im.Pos-(out[n-1][1]-1) <= window {
			out[n-1][1] = im.Pos + im.Len
			continue
		}
		out = append(out, [2]int{im.Pos, im.Pos + im.Len})
	}
	return out
}

// BatchShape is a bucket: the padded sizes of a step's inputs. Attention runs on a grid of
// B rows × Q queries: each sequence's new tokens are cut into segments of at most Q tokens,
// one row each. The keys a row reads are listed in a flat list per attention type — each
// entry is PagesPerEntry consecutive pages of one row's context — so every row attends
// over its own context only, and a short row next to a long one costs no more than itself.
type BatchShape struct {
	T  int // tokens
	B  int // attention rows (segments of at most Q tokens)
	Q  int // queries per row
	EG int // global-layer entries (runs of PagesPerEntry pages of every row's context)
	ES int // sliding-layer entries (runs of PagesPerEntry pages of every row's window)
	N  int // logits rows (0: the program computes no logits; the engine's step programs)
	// M is the rows of the image-embedding input (image soft tokens the step can splice
	// in); 0: the program takes no image inputs (a text-only model).
	M int
}

// Batch is a step's host-side inputs, padded to a BatchShape.
type Batch struct {
	Shape                                BatchShape
	Tokens, Positions                    []int32
	SlotsGlobal, SlotsSliding, TokenCell []int32
	GridIndex                            []int32 // [B·Q]
	// Entries of the global and sliding layers: the pages read ([E·PagesPerEntry]; the null
	// page past a sequence's last page), the row reading them (B for padding entries: a row
	// that is dropped), and the position of the first key (paddingBase for padding
	// entries: masked everywhere).
	EntPageG, EntRowG, EntBaseG []int32 // [EG·PagesPerEntry], [EG], [EG]
	EntPageS, EntRowS, EntBaseS []int32 // [ES·PagesPerEntry], [ES], [ES]
	LogitsIndex                 []int32 // [N]
	// LogitsRows[i] are the rows of the logits output that belong to sequence i, in order.
	LogitsRows [][]int
	// With Shape.M > 0: ImageRow [T] is each token's row of the image embeddings (M: not an
	// image token), ImageSpan [T·2·ImageRanges] the key ranges [start, end) it sees
	// whatever causality says (its image's, by cfg.ImageMaskWindow; [0, 0) if unused).
	ImageRow, ImageSpan []int32
	// ImageEmbeds [M, H] in the compute dtype are the step's image features (on the device,
	// from the vision program); not owned by the batch. Nil: zeros (no image in the step).
	ImageEmbeds *tensors.Tensor
}

// paddingBase is the first key position of a padding page entry: beyond any query, so
// causality masks all of its keys.
const paddingBase = 1 << 30

// PagesPerEntry is how many consecutive pages one attention entry reads: enough keys per
// entry that the per-entry buffers (queries and weighted values, Q×D each) stay small next
// to the keys, few enough that a row wastes at most PagesPerEntry−1 pages.
const PagesPerEntry = 4

// entries is how many entries cover logical pages [first, last].
func entries(first, last int) int { return (last - first + PagesPerEntry) / PagesPerEntry }

// SlidingPagesPerRow is the most sliding pages a row of q queries reads: the window before
// its first query plus the q queries, on pages that need not be aligned.
func SlidingPagesPerRow(cfg *Config, pageSize, q int) int {
	return (cfg.SlidingWindow+q-2)/pageSize + 2
}

// rowPages returns, for the row of a sequence whose first query is at pos and whose queries
// end at rowEnd (exclusive), the logical pages its global and sliding layers read:
// [0, last] and [first, last].
func rowPages(cfg *Config, pageSize, pos, rowEnd int) (first, last int) {
	return max(0, pos-cfg.SlidingWindow+1) / pageSize, (rowEnd - 1) / pageSize
}

// chunkRowPages is rowPages of a chunk's row of queries [pos, rowEnd), widened to the
// image keys its queries see beyond causality (after the row's last query, or before the
// sliding window's start).
func chunkRowPages(cfg *Config, pageSize int, sq *SeqChunk, pos, rowEnd int) (first, last int) {
	first, last = rowPages(cfg, pageSize, pos, rowEnd)
	for p := pos; p < rowEnd && len(sq.Images) > 0; p++ {
		ranges, _ := imageKeyRanges(cfg.ImageMaskWindow, sq.Images, p) // BuildBatch reports the error
		for _, r := range ranges {
			first, last = min(first, r[0]/pageSize), max(last, (r[1]-1)/pageSize)
		}
	}
	// The sliding pages before SlidingFirstBlock are gone: only a windowed image mask wider
	// than the sliding window (toy configs) reaches there, and only from a chunk that
	// resumes inside an image group.
	return max(first, sq.SlidingFirstBlock), last
}

// NeededShape is the smallest BatchShape that holds seqs with rows of at most q queries
// (q ≤ 0: one row per sequence, as long as its longest chunk).
func NeededShape(cfg *Config, layout KVLayout, seqs []SeqChunk, q int) BatchShape {
	var s BatchShape
	if q <= 0 {
		for _, sq := range seqs {
			q = max(q, len(sq.Tokens))
		}
	}
	s.Q = max(q, 1)
	for i := range seqs {
		sq := &seqs[i]
		s.T += len(sq.Tokens)
		for _, im := range sq.Images {
			s.M = max(s.M, im.Row+im.Len)
		}
		end := sq.StartPos + len(sq.Tokens)
		for off := 0; off < len(sq.Tokens); off += s.Q {
			pos := sq.StartPos + off
			first, last := chunkRowPages(cfg, layout.PageSize, sq, pos, min(end, pos+s.Q))
			s.B++
			s.EG += entries(0, last)
			s.ES += entries(first, last)
		}
		if sq.AllLogits {
			s.N += len(sq.Tokens)
		} else {
			s.N++
		}
	}
	s.EG, s.ES = max(s.EG, 1), max(s.ES, 1)
	if cfg.Vision {
		s.M = max(s.M, 1) // the image inputs are always there (zeros for text)
	}
	return s
}

// Fits reports whether need fits in s (with the same row length).
func (s BatchShape) Fits(need BatchShape) bool {
	return need.Q == s.Q && need.T <= s.T && need.B <= s.B && need.EG <= s.EG && need.ES <= s.ES && (s.N == 0 || need.N <= s.N) && need.M <= s.M
}

// BuildBatch checks seqs against the config and layout and lays them out padded to shape.
func BuildBatch(cfg *Config, layout KVLayout, seqs []SeqChunk, shape BatchShape) (*Batch, error) {
	if len(seqs) == 0 {
		return nil, fmt.Errorf("%w: empty batch", ErrInput)
	}
	need := NeededShape(cfg, layout, seqs, shape.Q)
	if !shape.Fits(need) {
		return nil, fmt.Errorf("%w: batch needs shape %+v, bucket is %+v", ErrInput, need, shape)
	}
	ps := layout.PageSize
	b := ZeroBatch(shape)
	b.LogitsRows = make([][]int, len(seqs))
	t, n, row, eg, es := 0, 0, 0, 0, 0
	for i, sq := range seqs {
		if len(sq.Tokens) == 0 {
			return nil, fmt.Errorf("%w: sequence %d has no tokens", ErrInput, i)
		}
		if sq.StartPos < 0 {
			return nil, fmt.Errorf("%w: sequence %d: negative start position %d", ErrInput, i, sq.StartPos)
		}
		end := sq.StartPos + len(sq.Tokens)
		if end > cfg.MaxPositionEmbeddings {
			return nil, fmt.Errorf("%w: sequence %d: position %d is beyond max_position_embeddings %d",
				ErrInput, i, end-1, cfg.MaxPositionEmbeddings)
		}
		lastBlock := (end - 1) / ps
		if len(sq.GlobalBlocks) <= lastBlock {
			return nil, fmt.Errorf("%w: sequence %d: %d global blocks do not cover position %d (page size %d)",
				ErrInput, i, len(sq.GlobalBlocks), end-1, ps)
		}
		windowStart := max(0, sq.StartPos-cfg.SlidingWindow+1) / ps
		if sq.SlidingFirstBlock < 0 || sq.SlidingFirstBlock > windowStart ||
			sq.SlidingFirstBlock+len(sq.SlidingBlocks) <= lastBlock {
			return nil, fmt.Errorf("%w: sequence %d: sliding blocks %d..%d do not cover logical blocks %d..%d",
				ErrInput, i, sq.SlidingFirstBlock, sq.SlidingFirstBlock+len(sq.SlidingBlocks)-1, windowStart, lastBlock)
		}
		for j, pg := range sq.GlobalBlocks {
			if pg <= 0 || int(pg) >= layout.NumGlobalPages {
				return nil, fmt.Errorf("%w: sequence %d: global block %d is page %d, outside 1..%d",
					ErrInput, i, j, pg, layout.NumGlobalPages-1)
			}
		}
		for j, pg := range sq.SlidingBlocks {
			// Blocks that already left the window may be the null page; the rest must be real.
			inWindow := sq.SlidingFirstBlock+j >= windowStart
			if pg < 0 || int(pg) >= layout.NumSlidingPages || (pg == 0 && inWindow) {
				return nil, fmt.Errorf("%w: sequence %d: sliding block %d is page %d, outside 1..%d",
					ErrInput, i, sq.SlidingFirstBlock+j, pg, layout.NumSlidingPages-1)
			}
		}
		if err := checkChunkImages(i, &sq, shape.M); err != nil {
			return nil, err
		}
		for q, tok := range sq.Tokens {
			if tok < 0 || int(tok) >= cfg.VocabSize {
				return nil, fmt.Errorf("%w: sequence %d: token id %d is outside the vocabulary [0, %d)", ErrInput, i, tok, cfg.VocabSize)
			}
			pos := sq.StartPos + q
			if q%shape.Q == 0 {
				// A new row: its context's pages, in order, in both lists.
				if q > 0 {
					row++
				}
				first, last := chunkRowPages(cfg, ps, &seqs[i], pos, min(end, pos+shape.Q))
				for j := 0; j <= last; j += PagesPerEntry {
					for k := j; k < min(j+PagesPerEntry, last+1); k++ {
						b.EntPageG[eg*PagesPerEntry+k-j] = sq.GlobalBlocks[k]
					}
					b.EntRowG[eg], b.EntBaseG[eg] = int32(row), int32(j*ps)
					eg++
				}
				for j := first; j <= last; j += PagesPerEntry {
					for k := j; k < min(j+PagesPerEntry, last+1); k++ {
						b.EntPageS[es*PagesPerEntry+k-j] = sq.SlidingBlocks[k-sq.SlidingFirstBlock]
					}
					b.EntRowS[es], b.EntBaseS[es] = int32(row), int32(j*ps)
					es++
				}
			}
			lb := pos / ps
			b.Tokens[t] = tok
			b.Positions[t] = int32(pos)
			b.SlotsGlobal[t] = sq.GlobalBlocks[lb]*int32(ps) + int32(pos%ps)
			b.SlotsSliding[t] = sq.SlidingBlocks[lb-sq.SlidingFirstBlock]*int32(ps) + int32(pos%ps)
			if shape.M > 0 {
				b.ImageRow[t] = int32(shape.M)
				for _, im := range sq.Images {
					if pos >= im.Pos && pos < im.Pos+im.Len {
						b.ImageRow[t] = int32(im.Row + pos - im.Pos)
					}
				}
				ranges, err := imageKeyRanges(cfg.ImageMaskWindow, sq.Images, pos)
				if err != nil {
					return nil, fmt.Errorf("sequence %d: %w", i, err)
				}
				for k, r := range ranges {
					b.ImageSpan[2*ImageRanges*t+2*k], b.ImageSpan[2*ImageRanges*t+2*k+1] = int32(r[0]), int32(r[1])
				}
			}
			b.GridIndex[row*shape.Q+q%shape.Q] = int32(t)
			b.TokenCell[t] = int32(row*shape.Q + q%shape.Q)
			if shape.N > 0 && (sq.AllLogits || q == len(sq.Tokens)-1) {
				b.LogitsIndex[n] = int32(t)
				b.LogitsRows[i] = append(b.LogitsRows[i], n)
				n++
			}
			t++
		}
		row++
	}
	// Padding tokens write to distinct slots of the null page where they can.
	for p := t; p < shape.T; p++ {
		if shape.M > 0 {
			b.ImageRow[p] = int32(shape.M)
		}
		b.SlotsGlobal[p] = int32(p % ps)
		b.SlotsSliding[p] = int32(p % ps)
	}
	return b, nil
}

// ZeroBatch is an all-padding batch of a shape: every token is padding and writes to the
// null page, every page entry is padding. It is what compiling a bucket ahead of traffic
// runs on.
func ZeroBatch(shape BatchShape) *Batch {
	b := &Batch{
		Shape:  shape,
		Tokens: make([]int32, shape.T), Positions: make([]int32, shape.T),
		SlotsGlobal: make([]int32, shape.T), SlotsSliding: make([]int32, shape.T), TokenCell: make([]int32, shape.T),
		GridIndex: make([]int32, shape.B*shape.Q),
		EntPageG:  make([]int32, shape.EG*PagesPerEntry), EntRowG: make([]int32, shape.EG), EntBaseG: make([]int32, shape.EG),
		EntPageS: make([]int32, shape.ES*PagesPerEntry), EntRowS: make([]int32, shape.ES), EntBaseS: make([]int32, shape.ES),
		LogitsIndex: make([]int32, shape.N),
	}
	if shape.M > 0 {
		b.ImageRow, b.ImageSpan = make([]int32, shape.T), make([]int32, 2*ImageRanges*shape.T)
		for i := range b.ImageRow {
			b.ImageRow[i] = int32(shape.M)
		}
	}
	for _, e := range []struct{ row, base []int32 }{{b.EntRowG, b.EntBaseG}, {b.EntRowS, b.EntBaseS}} {
		for i := range e.row {
			e.row[i], e.base[i] = int32(shape.B), paddingBase
		}
	}
	return b
}

// stepTensors are the batch's inputs of the step program, in StepNodes order (see
// stepNodesFromSlice), then ImageRow and ImageSpan when the shape has image rows (the
// embeddings follow: imageEmbeds). LogitsIndex is not among them: only StepExec, which
// computes logits inside the step, takes it (logitsIndexTensor).
func (b *Batch) stepTensors() []*tensors.Tensor {
	s := b.Shape
	return append([]*tensors.Tensor{
		tensors.FromFlatDataAndDimensions(b.Tokens, s.T),
		tensors.FromFlatDataAndDimensions(b.Positions, s.T),
		tensors.FromFlatDataAndDimensions(b.SlotsGlobal, s.T),
		tensors.FromFlatDataAndDimensions(b.SlotsSliding, s.T),
		tensors.FromFlatDataAndDimensions(b.TokenCell, s.T),
		tensors.FromFlatDataAndDimensions(b.GridIndex, s.B, s.Q),
		tensors.FromFlatDataAndDimensions(b.EntPageG, s.EG, PagesPerEntry),
		tensors.FromFlatDataAndDimensions(b.EntRowG, s.EG),
		tensors.FromFlatDataAndDimensions(b.EntBaseG, s.EG),
		tensors.FromFlatDataAndDimensions(b.EntPageS, s.ES, PagesPerEntry),
		tensors.FromFlatDataAndDimensions(b.EntRowS, s.ES),
		tensors.FromFlatDataAndDimensions(b.EntBaseS, s.ES),
	}, b.imageTensors()...)
}

// imageTensors are the batch's image inputs after the step inputs (Shape.M > 0): ImageRow,
// ImageSpan and the embeddings (zeros when nil: the caller passes its own).
func (b *Batch) imageTensors() []*tensors.Tensor {
	s := b.Shape
	if s.M == 0 {
		return nil
	}
	return []*tensors.Tensor{
		tensors.FromFlatDataAndDimensions(b.ImageRow, s.T),
		tensors.FromFlatDataAndDimensions(b.ImageSpan, s.T, 2*ImageRanges),
	}
}

// checkChunkImages checks chunk i's images: inside the chunk, not overlapping, their rows
// inside the image-embedding input of m rows.
func checkChunkImages(i int, sq *SeqChunk, m int) error {
	end := sq.StartPos + len(sq.Tokens)
	for k, im := range sq.Images {
		switch {
		case im.Len <= 0:
			return fmt.Errorf("%w: sequence %d: image %d has %d tokens", ErrInput, i, k, im.Len)
		case im.Pos < 0 || im.Pos+im.Len > end:
			// An image may start before the chunk (its first tokens' K/V already in the
			// pages, from the prefix cache), never end after it: its later keys would be
			// missing from this step's bidirectional attention.
			return fmt.Errorf("%w: sequence %d: image %d at positions [%d, %d) ends after the chunk [%d, %d): an image's tokens must all run by the step that reads them",
				ErrInput, i, k, im.Pos, im.Pos+im.Len, sq.StartPos, end)
		case im.Row < 0 || im.Row+im.Len > m:
			return fmt.Errorf("%w: sequence %d: image %d reads embedding rows [%d, %d), the step has %d", ErrInput, i, k, im.Row, im.Row+im.Len, m)
		case k > 0 && im.Pos < sq.Images[k-1].Pos+sq.Images[k-1].Len:
			return fmt.Errorf("%w: sequence %d: image %d overlaps image %d", ErrInput, i, k, k-1)
		}
	}
	return nil
}

// logitsIndexTensor is LogitsIndex as the input StepExec takes after the step inputs.
func (b *Batch) logitsIndexTensor() *tensors.Tensor {
	return tensors.FromFlatDataAndDimensions(b.LogitsIndex, b.Shape.N)
}
