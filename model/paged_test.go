package model_test

import (
	"math"
	"math/rand/v2"
	"path/filepath"
	"testing"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/tpuserve/tpuserve/model"
)

// pagedDriver runs sequences through the step program the way a serving engine does:
// pages handed out from a shuffled free list (so they are not contiguous), sliding-window
// blocks that left the window returned to the free list (and reused by others).
type pagedDriver struct {
	t      testing.TB
	m      *model.Model
	layout model.KVLayout
	exec   *model.StepExec
	pools  *model.KVPools
	freeG  []int32
	freeS  []int32
	// padding adds this many extra slots to every bucket dimension, to exercise padding.
	padding int
	// segment is the attention row length (0: one row per sequence).
	segment int
	// lastGlobal/lastSliding are the blocks of the last stepNoLogits sequence, for reuse.
	lastGlobal, lastSliding []int32
}

type drvSeq struct {
	tokens       []int32
	done         int
	global       []int32
	sliding      []int32
	slidingFirst int
}

func newPagedDriver(t testing.TB, m *model.Model, pageSize, pages int, seed uint64) *pagedDriver {
	t.Helper()
	layout := model.KVLayout{PageSize: pageSize, NumGlobalPages: pages, NumSlidingPages: pages}
	pools, err := m.NewKVPools(layout)
	if err != nil {
		t.Fatal(err)
	}
	exec, err := m.NewStepExec(0, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { exec.Finalize(); pools.Finalize() })
	d := &pagedDriver{t: t, m: m, layout: layout, exec: exec, pools: pools}
	rng := rand.New(rand.NewPCG(seed, 7))
	for p := 1; p < pages; p++ {
		d.freeG = append(d.freeG, int32(p))
		d.freeS = append(d.freeS, int32(p))
	}
	rng.Shuffle(len(d.freeG), func(i, j int) { d.freeG[i], d.freeG[j] = d.freeG[j], d.freeG[i] })
	rng.Shuffle(len(d.freeS), func(i, j int) { d.freeS[i], d.freeS[j] = d.freeS[j], d.freeS[i] })
	return d
}

func pop(t testing.TB, free *[]int32) int32 {
	if len(*free) == 0 {
		t.Fatal("test driver ran out of pages")
	}
	p := (*free)[len(*free)-1]
	*free = (*free)[:len(*free)-1]
	return p
}

// step runs counts[i] new tokens of each seqs[i] in one program and returns, per sequence,
// the logits rows of those tokens.
func (d *pagedDriver) step(seqs []*drvSeq, counts []int) [][][]float32 {
	t := d.t
	t.Helper()
	ps, w := d.layout.PageSize, d.m.Config.SlidingWindow
	chunks := make([]model.SeqChunk, len(seqs))
	for i, s := range seqs {
		end := s.done + counts[i]
		for len(s.global)*ps < end {
			s.global = append(s.global, pop(t, &d.freeG))
		}
		first := max(0, s.done-w+1) / ps
		for s.slidingFirst < first {
			d.freeS = append(d.freeS, s.sliding[0])
			s.sliding = s.sliding[1:]
			s.slidingFirst++
		}
		for (s.slidingFirst+len(s.sliding))*ps < end {
			s.sliding = append(s.sliding, pop(t, &d.freeS))
		}
		chunks[i] = model.SeqChunk{
			Tokens: s.tokens[s.done:end], StartPos: s.done,
			GlobalBlocks: s.global, SlidingBlocks: s.sliding, SlidingFirstBlock: s.slidingFirst,
			AllLogits: true,
		}
	}
	shape := model.NeededShape(&d.m.Config, d.layout, chunks, d.segment)
	shape.T += d.padding
	shape.B += d.padding
	shape.EG += d.padding
	shape.ES += d.padding
	shape.N += d.padding
	batch, err := model.BuildBatch(&d.m.Config, d.layout, chunks, shape)
	if err != nil {
		t.Fatal(err)
	}
	outs, err := d.exec.Run(d.pools, batch)
	if err != nil {
		t.Fatal(err)
	}
	logits := flat32(t, outs[0])
	outs[0].FinalizeAll()
	V := d.m.Config.VocabSize
	res := make([][][]float32, len(seqs))
	for i, s := range seqs {
		for _, r := range batch.LogitsRows[i] {
			res[i] = append(res[i], logits[r*V:(r+1)*V])
		}
		s.done += counts[i]
	}
	return res
}

// stepNoLogits runs n tokens of one sequence, asking only for the last token's logits
// (as serving does), and keeps its blocks in lastGlobal/lastSliding.
func (d *pagedDriver) stepNoLogits(s *drvSeq, n int) {
	t := d.t
	ps := d.layout.PageSize
	for len(s.global)*ps < s.done+n {
		s.global = append(s.global, pop(t, &d.freeG))
	}
	for len(s.sliding)*ps < s.done+n {
		s.sliding = append(s.sliding, pop(t, &d.freeS))
	}
	chunk := model.SeqChunk{Tokens: s.tokens[s.done : s.done+n], StartPos: s.done, GlobalBlocks: s.global, SlidingBlocks: s.sliding}
	batch, err := model.BuildBatch(&d.m.Config, d.layout, []model.SeqChunk{chunk}, model.NeededShape(&d.m.Config, d.layout, []model.SeqChunk{chunk}, 0))
	if err != nil {
		t.Fatal(err)
	}
	outs, err := d.exec.Run(d.pools, batch)
	if err != nil {
		t.Fatal(err)
	}
	outs[0].FinalizeAll()
	d.lastGlobal, d.lastSliding = s.global, s.sliding
}

// release returns a finished sequence's pages.
func (d *pagedDriver) release(s *drvSeq) {
	d.freeG = append(d.freeG, s.global...)
	for _, p := range s.sliding {
		if p != 0 {
			d.freeS = append(d.freeS, p)
		}
	}
	s.global, s.sliding = nil, nil
}

func maxAbsDiff(a, b [][]float32) float64 {
	m := 0.0
	for i := range a {
		for j := range a[i] {
			m = math.Max(m, math.Abs(float64(a[i][j]-b[i][j])))
		}
	}
	return m
}

func randomTokens(rng *rand.Rand, n, vocab int) []int32 {
	out := []int32{2}
	for len(out) < n {
		out = append(out, int32(3+rng.IntN(vocab-3)))
	}
	return out
}

// TestKVCacheConsistency: a 90-token sequence's logits are the same whether computed as one
// prefill, in chunks of 7, token by token, or batched with other sequences, with its pages
// scattered and sliding blocks recycled.
func TestKVCacheConsistency(t *testing.T) {
	m := loadModel(t, filepath.Join("testdata", "gemma3-tiny"), dtypes.Float32)
	rng := rand.New(rand.NewPCG(42, 1))
	const n = 90
	target := randomTokens(rng, n, m.Config.VocabSize)

	// Reference: one prefill chunk on contiguous pages.
	refT, err := m.ForwardLogits(target)
	if err != nil {
		t.Fatal(err)
	}
	refFlat := flat32(t, refT)
	V := m.Config.VocabSize
	ref := make([][]float32, n)
	for p := range ref {
		ref[p] = refFlat[p*V : (p+1)*V]
	}

	run := func(name string, pad, segment int, schedule func(d *pagedDriver) [][]float32) {
		t.Run(name, func(t *testing.T) {
			d := newPagedDriver(t, m, 4, 128, uint64(len(name)))
			d.padding, d.segment = pad, segment
			got := schedule(d)
			if len(got) != n {
				t.Fatalf("got %d logits rows, want %d", len(got), n)
			}
			if diff := maxAbsDiff(got, ref); diff > 1e-5 {
				t.Errorf("max |Δ| against one prefill = %.3g > 1e-5", diff)
			} else {
				t.Logf("max |Δ| = %.2g", diff)
			}
		})
	}
	run("chunks-of-7", 0, 0, func(d *pagedDriver) [][]float32 {
		s := &drvSeq{tokens: target}
		var out [][]float32
		for s.done < n {
			out = append(out, d.step([]*drvSeq{s}, []int{min(7, n-s.done)})[0]...)
		}
		return out
	})
	run("token-by-token", 0, 0, func(d *pagedDriver) [][]float32 {
		s := &drvSeq{tokens: target}
		var out [][]float32
		for s.done < n {
			out = append(out, d.step([]*drvSeq{s}, []int{1})[0]...)
		}
		return out
	})
	batched := func(d *pagedDriver) [][]float32 {
		// The target shares every step with two others of other lengths and chunkings; one
		// of them finishes early and its pages are reused.
		s := &drvSeq{tokens: target}
		others := []*drvSeq{{tokens: randomTokens(rng, 37, V)}, {tokens: randomTokens(rng, 61, V)}}
		sizes := []int{5, 1, 11, 3, 1, 1, 16, 2}
		var out [][]float32
		for k := 0; s.done < n; k++ {
			batch := []*drvSeq{}
			counts := []int{}
			for j, o := range others {
				if o.done < len(o.tokens) {
					batch = append(batch, o)
					counts = append(counts, min(sizes[(k+j+3)%len(sizes)], len(o.tokens)-o.done))
				} else if o.global != nil {
					d.release(o)
				}
			}
			batch = append(batch, s)
			counts = append(counts, min(sizes[k%len(sizes)], n-s.done))
			res := d.step(batch, counts)
			out = append(out, res[len(res)-1]...)
		}
		return out
	}
	run("batched-padded", 3, 0, batched)
	run("batched-rows-of-4", 1, 4, batched)
}

// TestGreedyMatchesHuggingFace decodes through the KV cache (prefill then one token per
// step) and compares with HF's greedy runs wherever the top-1 margin is clear.
func TestGreedyMatchesHuggingFace(t *testing.T) {
	for _, fixture := range []string{"gemma3-tiny", "gemma3-tiny-mm"} {
		t.Run(fixture, func(t *testing.T) {
			dir := filepath.Join("testdata", fixture)
			golden, _ := loadGolden(t, dir)
			m := loadModel(t, dir, dtypes.Float32)
			for gi, run := range golden.Greedy {
				d := newPagedDriver(t, m, 8, 64, uint64(gi))
				s := &drvSeq{tokens: append([]int32{}, run.Prompt...)}
				rows := d.step([]*drvSeq{s}, []int{len(run.Prompt)})[0]
				last := rows[len(rows)-1]
				compared := 0
				for step, want := range run.Greedy {
					got, _ := argmaxAndMargin(last)
					if run.Margins[step] <= 1e-3 {
						t.Logf("run %d: stop comparing at step %d (HF margin %.2g)", gi, step, run.Margins[step])
						break
					}
					if int32(got) != want {
						t.Fatalf("run %d step %d: greedy token %d, HF %d (margin %.3g)", gi, step, got, want, run.Margins[step])
					}
					compared++
					s.tokens = append(s.tokens, int32(got))
					last = d.step([]*drvSeq{s}, []int{1})[0][0]
				}
				t.Logf("run %d: %d greedy tokens equal to HF", gi, compared)
			}
		})
	}
}
