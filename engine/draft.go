package engine

import (
	"fmt"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	. "github.com/gomlx/gomlx/pkg/core/graph" //nolint:revive // the graph DSL reads best unqualified
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/tpuserve/tpuserve/internal/plan"
	"github.com/tpuserve/tpuserve/kvcache"
	"github.com/tpuserve/tpuserve/model"
)

// Speculative decoding with a draft model: a second, smaller Gemma 3 on the same device,
// with its own KV pools laid out like the target's (the same block tables index both, so
// the scheduler, prefix cache and preemption need nothing of their own). Its K/V follow
// the target's exactly: every step, the draft's first pass computes the same positions as
// the target's chunks — prefill chunks and plain decodes as they are, a speculating
// sequence's last sampled token — and its argmax after that token is the first proposal;
// each further pass feeds the previous proposal back (one token per speculating sequence)
// for the next. After verification, a sequence whose every proposal was accepted has its
// last proposal's K/V computed by one catch-up pass, so at every step boundary the draft
// holds the K/V of exactly the target's computed positions (rejected positions are
// overwritten later, as the target's are).
//
// Proposals are the draft's argmax: q is one-hot at the proposal, so the verifier's
// acceptance (min(1, p/q) = p(d)) and residual (max(p − q, 0)) are those of the n-gram
// method and the output keeps the target's distribution exactly; a sampled draft (a full q
// per position) is not implemented.

// draftRunner is the draft model on the device: its pools, step program and propose head.
type draftRunner struct {
	dev     deviceModel
	cfg     *model.Config
	forward forwardProgram
	propose headProgram
}

func newDraftRunner(m *model.Model, layout model.KVLayout, set *plan.StepSet) (*draftRunner, error) {
	d := &draftRunner{dev: newPlainDevice(m), cfg: &m.Config}
	if err := d.dev.allocPools(layout); err != nil {
		return nil, fmt.Errorf("draft model: %w", err)
	}
	n := len(set.Programs())
	var err error
	if d.forward, err = d.dev.newForward(set.MaxTokens(), n); err == nil {
		d.propose, err = d.dev.newHead("gemma3_draft_propose", headArgmax(m.Config.TextVocabSize), n)
	}
	if err != nil {
		d.close()
		return nil, fmt.Errorf("draft model: %w", err)
	}
	return d, nil
}

func (d *draftRunner) close() {
	if d.forward != nil {
		d.forward.finalize()
	}
	if d.propose != nil {
		d.propose.finalize()
	}
	d.dev.freePools()
}

// headArgmax is the draft's proposal head: rows [R] → the argmax over the text vocabulary [R].
func headArgmax(textVocab int) model.VocabHeadFn {
	return func(logits func(idx *Node) *model.VocabShards, extra []*Node) []*Node {
		lg := logits(extra[0])
		g := lg.Parts[0].Graph()
		N, W := lg.Parts[0].Shape().Dimensions[0], lg.Width
		negInf := BroadcastToDims(Infinity(g, dtypes.Float32, -1), N, W)
		valid := lg.Each(func(c int) *Node {
			return Where(LessThan(lg.GlobalIDs(c), Scalar(g, dtypes.Int32, textVocab)), lg.Parts[c], negInf)
		})
		return []*Node{lg.ArgMax(valid)[0]}
	}
}

// runDraft runs the draft's forward pass over chunks (a member of the step set).
func (r *runner) runDraft(chunks []model.SeqChunk) (hiddenStates, error) {
	d := r.draft
	shape, ok := r.set.StepFor(func(q int) model.BatchShape { return model.NeededShape(d.cfg, r.layout, chunks, q) })
	if !ok {
		return nil, fmt.Errorf("%w: a draft step of %+v is outside the step set", ErrSchedulerState, model.NeededShape(d.cfg, r.layout, chunks, 1))
	}
	batch, err := model.BuildBatch(d.cfg, r.layout, chunks, shape)
	if err != nil {
		return nil, fmt.Errorf("draft model: %w", err)
	}
	r.use(plan.Program{Kind: plan.KindDraftStep, Shape: shape})
	return d.forward.run(batch)
}

// proposeDraft reads the draft's argmax at hidden-state rows rows.
func (r *runner) proposeDraft(hidden hiddenStates, rows []int32) ([]int32, error) {
	n, ok := r.set.RowsFor(plan.KindDraftPropose, len(rows))
	if !ok {
		return nil, fmt.Errorf("%w: %d draft proposal rows, the step set holds at most %d", ErrSchedulerState, len(rows), r.set.Options().MaxNumSeqs)
	}
	idx := make([]int32, n)
	copy(idx, rows)
	r.use(plan.Program{Kind: plan.KindDraftPropose, Rows: n})
	outs, err := r.draft.propose.run(hidden, []any{tensors.FromFlatDataAndDimensions(idx, n)})
	if err != nil {
		return nil, err
	}
	defer finalize(outs)
	return tensors.MustCopyFlatData[int32](outs[0])[:len(rows)], nil
}

// specSeq is one speculating sequence of a step: its chunk, and its proposals (the
// verifier row's list, which aliases the scheduler's: filling it in fills both).
type specSeq struct {
	chunk  int
	drafts []int32
}

func (in *stepInput) specSeqs() []specSeq {
	var out []specSeq
	for _, v := range []*verifyRows{&in.verify, &in.verifyFull} {
		for j, c := range v.chunkOf {
			out = append(out, specSeq{c, v.drafts[j]})
		}
	}
	return out
}

// draftPropose runs the draft's passes before the target's step: the first over every
// chunk (a speculating one reduced to its last sampled token), then one per further
// proposal; it writes the proposals into the chunks' tokens and the verifier rows.
func (r *runner) draftPropose(in *stepInput) error {
	spec := in.specSeqs()
	first := make([]model.SeqChunk, len(in.chunks))
	copy(first, in.chunks)
	for _, s := range spec {
		first[s.chunk].Tokens = in.chunks[s.chunk].Tokens[:1]
	}
	maxK := 0
	for _, s := range spec {
		maxK = max(maxK, len(s.drafts))
	}
	chunks := first
	active := spec // the sequences of this pass
	for pass := 0; ; pass++ {
		hidden, err := r.runDraft(chunks)
		if err != nil {
			return err
		}
		if len(active) == 0 {
			hidden.Finalize()
			return nil
		}
		// The last row of each active sequence's chunk.
		rows := make([]int32, len(active))
		pos := 0
		at := map[int]int{}
		for i, c := range chunks {
			pos += len(c.Tokens)
			at[i] = pos - 1
		}
		for j, s := range active {
			if pass == 0 {
				rows[j] = int32(at[s.chunk])
			} else {
				rows[j] = int32(j)
			}
		}
		props, err := r.proposeDraft(hidden, rows)
		hidden.Finalize()
		if err != nil {
			return err
		}
		for j, s := range active {
			s.drafts[pass] = props[j]
			in.chunks[s.chunk].Tokens[1+pass] = props[j]
		}
		if pass+1 >= maxK {
			return nil
		}
		// The next pass: each sequence with another proposal to make feeds this one back.
		var next []specSeq
		chunks = chunks[:0:0]
		for _, s := range active {
			if len(s.drafts) > pass+1 {
				c := in.chunks[s.chunk]
				c.Tokens = c.Tokens[1+pass : 2+pass]
				c.StartPos += 1 + pass
				chunks = append(chunks, c)
				next = append(next, s)
			}
		}
		active = next
	}
}

// draftCatchUp computes, for each sequence whose proposals were all accepted, the K/V of
// its last proposal (no earlier pass fed it to the draft).
func (r *runner) draftCatchUp(in *stepInput, out *stepOutput) error {
	var chunks []model.SeqChunk
	for _, s := range in.specSeqs() {
		if v := out.spec[s.chunk]; v != nil && len(v.tokens) == len(s.drafts)+1 {
			c := in.chunks[s.chunk]
			k := len(s.drafts)
			c.Tokens = c.Tokens[k : k+1]
			c.StartPos += k
			chunks = append(chunks, c)
		}
	}
	if len(chunks) == 0 {
		return nil
	}
	hidden, err := r.runDraft(chunks)
	if err != nil {
		return err
	}
	hidden.Finalize()
	return nil
}

// precompileDraft compiles draft program p.
func (r *runner) precompileDraft(p plan.Program) error {
	if p.Kind == plan.KindDraftStep {
		return r.draft.forward.precompile(model.ZeroBatch(p.Shape))
	}
	hidden, err := r.draft.dev.zeroHidden(r.set.MaxTokens())
	if err != nil {
		return err
	}
	defer hidden.Finalize()
	return r.draft.propose.precompile(hidden, []any{tensors.FromFlatDataAndDimensions(make([]int32, p.Rows), p.Rows)})
}

// draftProposer reserves k proposals for the draft model to fill in on the device.
func draftProposer(k int) Proposer {
	zeros := make([]int32, k)
	return func(_ []int32, n int) []int32 { return zeros[:min(n, k)] }
}

// checkDraft refuses a draft model that cannot serve with target: another vocabulary,
// a longer sliding window than the target's (its window would need blocks the target
// frees), too few positions.
func checkDraft(target, draft *model.Config, maxModelLen int) error {
	switch {
	case draft.VocabSize != target.VocabSize || draft.TextVocabSize != target.TextVocabSize:
		return fmt.Errorf("the draft model's vocabulary (%d rows, %d text tokens) differs from the target's (%d, %d): it must share the tokenizer",
			draft.VocabSize, draft.TextVocabSize, target.VocabSize, target.TextVocabSize)
	case draft.BOSTokenID != target.BOSTokenID:
		return fmt.Errorf("the draft model's BOS token %d differs from the target's %d: it must share the tokenizer", draft.BOSTokenID, target.BOSTokenID)
	case draft.SlidingWindow > target.SlidingWindow && draft.NumSlidingLayers() > 0:
		return fmt.Errorf("the draft model's sliding window %d is longer than the target's %d (the draft's K/V lives in the target's block tables)",
			draft.SlidingWindow, target.SlidingWindow)
	case draft.MaxPositionEmbeddings < maxModelLen:
		return fmt.Errorf("the draft model's max_position_embeddings %d is below the max model length %d", draft.MaxPositionEmbeddings, maxModelLen)
	case target.NumSlidingLayers() == 0 && draft.NumSlidingLayers() > 0 || target.NumGlobalLayers() == 0 && draft.NumGlobalLayers() > 0:
		return fmt.Errorf("the draft model has attention layers of a kind the target has none of (no block table for them)")
	}
	return nil
}

// splitKVBudget returns the part of budget the target's pools may take so that the draft's,
// laid out on the same blocks, fit the rest: proportional to their bytes per block.
func splitKVBudget(budget int64, target, draft kvcache.MemorySpec) int64 {
	tg, ts := target.BlockBytes()
	dg, ds := draft.BlockBytes()
	return int64(float64(budget) * float64(tg+ts) / float64(tg+ts+dg+ds))
}
