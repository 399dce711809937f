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
}

// BatchShape is a bucket: the padded sizes of a step's inputs. Attention runs on a grid of
// B rows × Q queries: each sequence's new tokens are cut into segments of at most Q tokens,
// one row each, so a step that mixes long prefill chunks with one-token decodes wastes
// little of the grid.
type BatchShape struct {
	T  int // tokens
	B  int // attention rows (segments of at most Q tokens)
	Q  int // queries per row
	PG int // global pages per row
	PS int // sliding pages per row
	N  int // logits rows (0: the program computes no logits; the engine's step programs)
}

// Batch is a step's host-side inputs, padded to a BatchShape.
type Batch struct {
	Shape                                BatchShape
	Tokens, Positions                    []int32
	SlotsGlobal, SlotsSliding, TokenCell []int32
	GridIndex                            []int32 // [B·Q]
	PageTableGlobal                      []int32 // [B·PG]
	PageTableSliding                     []int32 // [B·PS]
	SlidingBase                          []int32 // [B]
	LogitsIndex                          []int32 // [N]
	// LogitsRows[i] are the rows of the logits output that belong to sequence i, in order.
	LogitsRows [][]int
}

// SlidingPagesPerRow is the most sliding pages a row of q queries reads: the window before
// its first query plus the q queries, on pages that need not be aligned.
func SlidingPagesPerRow(cfg *Config, pageSize, q int) int {
	return (cfg.SlidingWindow+q-2)/pageSize + 2
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
	for _, sq := range seqs {
		s.T += len(sq.Tokens)
		s.B += (len(sq.Tokens) + s.Q - 1) / s.Q
		s.PG = max(s.PG, len(sq.GlobalBlocks))
		if sq.AllLogits {
			s.N += len(sq.Tokens)
		} else {
			s.N++
		}
	}
	s.PG = max(s.PG, 1)
	// The sliding table of a row spans the window before its first query to its last
	// query: never more than SlidingPagesPerRow, nor than the pages up to the row's end.
	ps := layout.PageSize
	for _, sq := range seqs {
		end := sq.StartPos + len(sq.Tokens)
		for q := 0; q < len(sq.Tokens); q += s.Q {
			pos := sq.StartPos + q
			first := max(0, pos-cfg.SlidingWindow+1) / ps
			last := (min(end, pos+s.Q) - 1) / ps
			s.PS = max(s.PS, last-first+1)
		}
	}
	s.PS = max(s.PS, 1)
	return s
}

// Fits reports whether need fits in s (with the same row length).
func (s BatchShape) Fits(need BatchShape) bool {
	return need.Q == s.Q && need.T <= s.T && need.B <= s.B && need.PG <= s.PG && need.PS <= s.PS && (s.N == 0 || need.N <= s.N)
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
	b := &Batch{
		Shape:  shape,
		Tokens: make([]int32, shape.T), Positions: make([]int32, shape.T),
		SlotsGlobal: make([]int32, shape.T), SlotsSliding: make([]int32, shape.T), TokenCell: make([]int32, shape.T),
		GridIndex:        make([]int32, shape.B*shape.Q),
		PageTableGlobal:  make([]int32, shape.B*shape.PG),
		PageTableSliding: make([]int32, shape.B*shape.PS),
		SlidingBase:      make([]int32, shape.B),
		LogitsIndex:      make([]int32, shape.N),
		LogitsRows:       make([][]int, len(seqs)),
	}
	t, n, row := 0, 0, 0
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
		for q, tok := range sq.Tokens {
			if tok < 0 || int(tok) >= cfg.VocabSize {
				return nil, fmt.Errorf("%w: sequence %d: token id %d is outside the vocabulary [0, %d)", ErrInput, i, tok, cfg.VocabSize)
			}
			pos := sq.StartPos + q
			if q%shape.Q == 0 {
				// A new row: the global table, and the sliding pages its window reaches.
				if q > 0 {
					row++
				}
				copy(b.PageTableGlobal[row*shape.PG:], sq.GlobalBlocks)
				first := max(0, pos-cfg.SlidingWindow+1) / ps
				rowEnd := min(end, pos+shape.Q)
				lastRowBlock := (rowEnd - 1) / ps
				copy(b.PageTableSliding[row*shape.PS:], sq.SlidingBlocks[first-sq.SlidingFirstBlock:lastRowBlock-sq.SlidingFirstBlock+1])
				b.SlidingBase[row] = int32(first * ps)
			}
			lb := pos / ps
			b.Tokens[t] = tok
			b.Positions[t] = int32(pos)
			b.SlotsGlobal[t] = sq.GlobalBlocks[lb]*int32(ps) + int32(pos%ps)
			b.SlotsSliding[t] = sq.SlidingBlocks[lb-sq.SlidingFirstBlock]*int32(ps) + int32(pos%ps)
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
		b.SlotsGlobal[p] = int32(p % ps)
		b.SlotsSliding[p] = int32(p % ps)
	}
	return b, nil
}

// ZeroBatch is an all-padding batch of a shape: every token is padding and writes to the
// null page. It is what compiling a bucket ahead of traffic runs on.
func ZeroBatch(shape BatchShape) *Batch {
	return &Batch{
		Shape:  shape,
		Tokens: make([]int32, shape.T), Positions: make([]int32, shape.T),
		SlotsGlobal: make([]int32, shape.T), SlotsSliding: make([]int32, shape.T), TokenCell: make([]int32, shape.T),
		GridIndex:        make([]int32, shape.B*shape.Q),
		PageTableGlobal:  make([]int32, shape.B*shape.PG),
		PageTableSliding: make([]int32, shape.B*shape.PS),
		SlidingBase:      make([]int32, shape.B),
		LogitsIndex:      make([]int32, shape.N),
	}
}

// stepTensors are the batch's inputs of the step program, in StepNodes order (see
// stepNodesFromSlice). LogitsIndex is not among them: only StepExec, which computes
// logits inside the step, takes it (logitsIndexTensor).
func (b *Batch) stepTensors() []*tensors.Tensor {
	s := b.Shape
	return []*tensors.Tensor{
		tensors.FromFlatDataAndDimensions(b.Tokens, s.T),
		tensors.FromFlatDataAndDimensions(b.Positions, s.T),
		tensors.FromFlatDataAndDimensions(b.SlotsGlobal, s.T),
		tensors.FromFlatDataAndDimensions(b.SlotsSliding, s.T),
		tensors.FromFlatDataAndDimensions(b.TokenCell, s.T),
		tensors.FromFlatDataAndDimensions(b.GridIndex, s.B, s.Q),
		tensors.FromFlatDataAndDimensions(b.PageTableGlobal, s.B, s.PG),
		tensors.FromFlatDataAndDimensions(b.PageTableSliding, s.B, s.PS),
		tensors.FromFlatDataAndDimensions(b.SlidingBase, s.B),
	}
}

// logitsIndexTensor is LogitsIndex as the input StepExec takes after the step inputs.
func (b *Batch) logitsIndexTensor() *tensors.Tensor {
	return tensors.FromFlatDataAndDimensions(b.LogitsIndex, b.Shape.N)
}
