package engine

import (
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/tpuserve/tpuserve/internal/plan"
	"github.com/tpuserve/tpuserve/model"
	"github.com/tpuserve/tpuserve/model/vision"
)

// errPoolsLost: a failed step took the donated pools with it and they were not rebuilt.
var errPoolsLost = errors.New("engine: the KV pools were lost by a failed step and could not be reallocated")

// Fixed widths of the full sampler's per-row token lists: the program set is closed, so
// these cannot follow a request's lengths.
const (
	// maxBannedTokens bounds EOS plus stop_token_ids banned before min_tokens.
	maxBannedTokens = 64
	// MaxLogitBias is the most logit_bias entries a request may carry.
	MaxLogitBias = 300
)

// runner executes steps on the device: it maps a step to its member of the closed
// program set, runs the step program, then the sampler programs over the hidden states it
// left on the device, and returns what the host needs (token ids and requested logprobs
// only). It is used by the step loop alone, except its counters (atomic).
type runner struct {
	dev       deviceModel
	cfg       *model.Config
	layout    model.KVLayout
	set       *plan.StepSet
	textVocab int
	listWidth int // penalty token lists: the longest sequence (max model length)
	forward   forwardProgram
	sample    headProgram
	full      headProgram
	scored    headProgram
	prompt    headProgram
	// verify and verifyFull check speculative proposals (nil without speculation).
	verify, verifyFull headProgram
	// draft is the draft model (speculative decoding with method draft_model; nil without).
	draft       *draftRunner
	compiled    map[plan.Program]bool
	numCompiled atomic.Int64
	// servingCompilations counts programs compiled after start-up: with the whole set
	// compiled before serving it stays 0, and a move is a bug (logged as an error).
	servingCompilations atomic.Int64
	precompiled         bool
	log                 *slog.Logger
	// vision encodes a step's images (nil: no images).
	vision *vision.Encoder
}

// stepInput is one step for the device: the chunks, and who samples or scores what.
type stepInput struct {
	chunks []model.SeqChunk
	// base rows sample with greedy or temperature only; full rows use sampler features.
	base, full, scored     *samplerRows
	baseChunk              []int // chunk index of each base row
	fullChunk, scoredChunk []int
	prompt                 promptRows
	// verify and verifyFull are the speculating sequences (plain and full sampler
	// features); their chunks hold the last sampled token and the proposals.
	verify, verifyFull verifyRows
	// images are the step's images in row order (chunks' Images rows point into them).
	images [][]float32
}

// promptRows are the prompt positions a step scores: the hidden state of position
// chunks[chunk].StartPos+offset and the id of the prompt token that follows it.
type promptRows struct {
	chunk, offset []int
	target        []int32
}

// stepOutput holds, per chunk (in plan order), the sampled token (where it sampled) and,
// for full rows, the chosen token's logprob and the top maxTopLogprobs; per prompt row its
// logprob and top maxTopLogprobs.
type stepOutput struct {
	tokens   []int32
	hasLP    []bool
	chosenLP []float32
	topIDs   []int32 // [chunks·maxTopLogprobs]
	topLP    []float32
	prompt   promptOutput
	// spec, per chunk, is a speculating sequence's verification (nil for the others).
	spec []*verifyOutput
}

// verifyOutput is one speculating sequence's result: the emitted tokens (its accepted
// proposals, then the token drawn after them) and, for full rows, each one's logprob and
// top maxTopLogprobs.
type verifyOutput struct {
	tokens []int32
	hasLP  bool
	chosen []float32
	topIDs []int32 // [len(tokens)·maxTopLogprobs]
	topLP  []float32
}

type promptOutput struct {
	chosen []float32
	topIDs []int32 // [rows·maxTopLogprobs]
	topLP  []float32
}

func newRunner(dev deviceModel, layout model.KVLayout, set *plan.StepSet, log *slog.Logger, vopt verifyOptions) (*runner, error) {
	if err := dev.allocPools(layout); err != nil {
		return nil, err
	}
	cfg := dev.config()
	r := &runner{
		dev: dev, cfg: cfg, layout: layout, set: set, textVocab: cfg.TextVocabSize,
		listWidth: set.Options().MaxModelLen, compiled: map[plan.Program]bool{}, log: log,
	}
	progs := set.Programs()
	var err error
	if r.forward, err = dev.newForward(set.MaxTokens(), len(progs)); err == nil {
		if r.sample, err = dev.newHead("gemma3_sample", headSampler(samplerFeatures{}, r.textVocab), len(progs)); err == nil {
			if r.full, err = dev.newHead("gemma3_sample_full", headSampler(fullFeatures, r.textVocab), len(progs)); err == nil {
				if r.scored, err = dev.newHead("gemma3_sample_scored", headSampler(scoredFeatures, r.textVocab), len(progs)); err == nil {
					r.prompt, err = dev.newHead("gemma3_prompt_logprobs", headPromptLogprobs(r.textVocab), len(progs))
				}
			}
		}
	}
	if k := set.SpecTokens(); err == nil && k > 0 {
		if r.verify, err = dev.newHead("gemma3_verify", headVerify(verifyFeatures, r.textVocab, k, vopt), len(progs)); err == nil {
			r.verifyFull, err = dev.newHead("gemma3_verify_full", headVerify(verifyFullFeatures, r.textVocab, k, vopt), len(progs))
		}
	}
	if err != nil {
		r.close()
		return nil, err
	}
	return r, nil
}

// resetPools replaces the pools after a failed step lost them (they were donated).
func (r *runner) resetPools() error {
	if r.draft != nil {
		if err := r.draft.dev.allocPools(r.layout); err != nil {
			return fmt.Errorf("draft model: %w", err)
		}
	}
	return r.dev.allocPools(r.layout)
}

func (r *runner) close() {
	for _, p := range []interface{ finalize() }{r.forward, r.sample, r.full, r.scored, r.prompt, r.verify, r.verifyFull} {
		if p != nil {
			p.finalize()
		}
	}
	if r.draft != nil {
		r.draft.close()
	}
	r.dev.freePools()
}

// counts returns (programs compiled, of which after start-up).
func (r *runner) counts() (int64, int64) { return r.numCompiled.Load(), r.servingCompilations.Load() }

// use records that program p runs now; the first use of a program that start-up did not
// compile is a serving-time compilation.
func (r *runner) use(p plan.Program) {
	if r.compiled[p] {
		return
	}
	r.compiled[p] = true
	r.numCompiled.Add(1)
	r.servingCompilations.Add(1)
	if r.precompiled {
		r.log.Error("BUG: a program outside the precompiled set compiles while serving", "program", p.String())
	} else {
		r.log.Info("compiling a program on first use", "program", p.String())
	}
}

// shapeOf maps a step's chunks to their member of the step set.
func (r *runner) shapeOf(chunks []model.SeqChunk) (model.BatchShape, error) {
	s, ok := r.set.StepFor(func(q int) model.BatchShape { return model.NeededShape(r.cfg, r.layout, chunks, q) })
	if !ok {
		return s, fmt.Errorf("%w: a step of %+v is outside the step set", ErrSchedulerState, model.NeededShape(r.cfg, r.layout, chunks, 1))
	}
	return s, nil
}

// run executes one step.
func (r *runner) run(in *stepInput) (*stepOutput, error) {
	if r.draft != nil {
		if err := r.draftPropose(in); err != nil {
			return nil, err
		}
	}
	shape, err := r.shapeOf(in.chunks)
	if err != nil {
		return nil, err
	}
	batch, err := model.BuildBatch(r.cfg, r.layout, in.chunks, shape)
	if err != nil {
		return nil, err
	}
	if len(in.images) > 0 {
		embeds, err := r.encodeImages(in.images, shape.M)
		if err != nil {
			return nil, err
		}
		defer embeds.FinalizeAll()
		batch.ImageEmbeds = embeds
	}
	r.use(plan.Program{Kind: plan.KindStep, Shape: shape})
	hidden, err := r.forward.run(batch)
	if err != nil {
		return nil, err
	}
	defer hidden.Finalize()
	n := len(in.chunks)
	out := &stepOutput{
		tokens: make([]int32, n), hasLP: make([]bool, n), chosenLP: make([]float32, n),
		topIDs: make([]int32, n*maxTopLogprobs), topLP: make([]float32, n*maxTopLogprobs),
	}
	offsets := make([]int, n+1)
	for i, c := range in.chunks {
		offsets[i+1] = offsets[i] + len(c.Tokens)
	}
	lastToken := func(chunk int) int32 { return int32(offsets[chunk+1] - 1) }
	if len(in.baseChunk) > 0 {
		outs, err := r.runSampler(r.sample, plan.KindSample, samplerFeatures{}, hidden, in.base, in.baseChunk, lastToken)
		if err != nil {
			return nil, err
		}
		toks := tensors.MustCopyFlatData[int32](outs[0])
		for j, c := range in.baseChunk {
			out.tokens[c] = toks[j]
		}
		finalize(outs)
	}
	for _, v := range []struct {
		p      headProgram
		kind   plan.ProgramKind
		f      samplerFeatures
		rows   *samplerRows
		chunks []int
	}{{r.full, plan.KindSampleFull, fullFeatures, in.full, in.fullChunk}, {r.scored, plan.KindSampleScored, scoredFeatures, in.scored, in.scoredChunk}} {
		if len(v.chunks) == 0 {
			continue
		}
		outs, err := r.runSampler(v.p, v.kind, v.f, hidden, v.rows, v.chunks, lastToken)
		if err != nil {
			return nil, err
		}
		toks := tensors.MustCopyFlatData[int32](outs[0])
		chosen := tensors.MustCopyFlatData[float32](outs[1])
		ids := tensors.MustCopyFlatData[int32](outs[2])
		lps := tensors.MustCopyFlatData[float32](outs[3])
		for j, c := range v.chunks {
			out.tokens[c], out.hasLP[c], out.chosenLP[c] = toks[j], true, chosen[j]
			copy(out.topIDs[c*maxTopLogprobs:(c+1)*maxTopLogprobs], ids[j*maxTopLogprobs:])
			copy(out.topLP[c*maxTopLogprobs:(c+1)*maxTopLogprobs], lps[j*maxTopLogprobs:])
		}
		finalize(outs)
	}
	if len(in.verify.chunkOf)+len(in.verifyFull.chunkOf) > 0 {
		out.spec = make([]*verifyOutput, n)
		if err := r.runVerify(hidden, &in.verify, offsets, out.spec, false); err != nil {
			return nil, err
		}
		if err := r.runVerify(hidden, &in.verifyFull, offsets, out.spec, true); err != nil {
			return nil, err
		}
		if r.draft != nil {
			if err := r.draftCatchUp(in, out); err != nil {
				return nil, err
			}
		}
	}
	if m := len(in.prompt.chunk); m > 0 {
		rows, ok := r.set.RowsFor(plan.KindPromptLogprobs, m)
		if !ok {
			return nil, fmt.Errorf("%w: %d prompt positions to score, the step set scores at most %d", ErrSchedulerState, m, r.set.MaxPromptRows())
		}
		idx := make([]int32, rows)
		target := make([]int32, rows)
		for j := range in.prompt.chunk {
			idx[j] = int32(offsets[in.prompt.chunk[j]] + in.prompt.offset[j])
			target[j] = in.prompt.target[j]
		}
		r.use(plan.Program{Kind: plan.KindPromptLogprobs, Rows: rows})
		outs, err := r.prompt.run(hidden, []any{tensors.FromFlatDataAndDimensions(idx, rows), tensors.FromFlatDataAndDimensions(target, rows)})
		if err != nil {
			return nil, err
		}
		out.prompt.chosen = tensors.MustCopyFlatData[float32](outs[0])[:m]
		out.prompt.topIDs = tensors.MustCopyFlatData[int32](outs[1])[:m*maxTopLogprobs]
		out.prompt.topLP = tensors.MustCopyFlatData[float32](outs[2])[:m*maxTopLogprobs]
		finalize(outs)
	}
	return out, nil
}

// encodeImages runs the vision program of the step's images: their features as the step's
// image-embedding rows [rows, H], left on the device.
func (r *runner) encodeImages(images [][]float32, rows int) (*tensors.Tensor, error) {
	n, ok := r.set.RowsFor(plan.KindVision, len(images))
	if !ok || r.vision == nil {
		return nil, fmt.Errorf("%w: %d images in a step, the step set encodes at most %d", ErrSchedulerState, len(images), r.set.MaxImages())
	}
	p := plan.Program{Kind: plan.KindVision, Rows: n}
	if !r.compiled[p] {
		// Outside start-up's set (Precompile none): the encoder compiles only on request.
		if err := r.vision.PrecompileRows(rows, n); err != nil {
			return nil, err
		}
	}
	r.use(p)
	return r.vision.EncodeRows(images, rows)
}

// runSampler pads rows to their bucket and runs one sampler program.
func (r *runner) runSampler(p headProgram, kind plan.ProgramKind, f samplerFeatures, hidden hiddenStates, rows *samplerRows, chunkOf []int, token func(int) int32) ([]*tensors.Tensor, error) {
	n, ok := r.set.RowsFor(kind, len(chunkOf))
	if !ok {
		return nil, fmt.Errorf("%w: %d %s rows, the step set holds at most %d", ErrSchedulerState, len(chunkOf), kind, r.set.Options().MaxNumSeqs)
	}
	idx := make([]int32, n)
	for j, c := range chunkOf {
		idx[j] = token(c)
	}
	r.padRows(rows, n, f)
	r.use(plan.Program{Kind: kind, Rows: n})
	return p.run(hidden, append([]any{tensors.FromFlatDataAndDimensions(idx, n)}, rows.inputs(f)...))
}

// padRows pads rows to n, with the full sampler's fixed list widths.
func (r *runner) padRows(rows *samplerRows, n int, f samplerFeatures) {
	rows.padFixed(n, r.cfg.VocabSize, listWidths{out: r.listWidth, prompt: r.listWidth, banned: maxBannedTokens, bias: MaxLogitBias}, f)
}

func finalize(ts []*tensors.Tensor) {
	for _, t := range ts {
		t.FinalizeAll()
	}
}

// precompile compiles every program of the set before serving, logging progress.
func (r *runner) precompile() error {
	progs := r.set.Programs()
	hidden, err := r.dev.zeroHidden(r.set.MaxTokens())
	if err != nil {
		return err
	}
	defer hidden.Finalize()
	start, last := time.Now(), time.Now()
	for i, p := range progs {
		var err error
		switch p.Kind {
		case plan.KindStep:
			err = r.forward.precompile(model.ZeroBatch(p.Shape))
		case plan.KindSample, plan.KindSampleFull, plan.KindSampleScored:
			f, prog := samplerFeatures{}, r.sample
			switch p.Kind {
			case plan.KindSampleFull:
				f, prog = fullFeatures, r.full
			case plan.KindSampleScored:
				f, prog = scoredFeatures, r.scored
			}
			rows := &samplerRows{}
			r.padRows(rows, p.Rows, f)
			err = prog.precompile(hidden, append([]any{tensors.FromFlatDataAndDimensions(make([]int32, p.Rows), p.Rows)}, rows.inputs(f)...))
		case plan.KindVision:
			if r.vision == nil {
				return fmt.Errorf("compiling %s: no vision tower", p)
			}
			err = r.vision.PrecompileRows(r.set.ImageRows(), p.Rows)
		case plan.KindPromptLogprobs:
			z := make([]int32, p.Rows)
			err = r.prompt.precompile(hidden, []any{tensors.FromFlatDataAndDimensions(z, p.Rows), tensors.FromFlatDataAndDimensions(z, p.Rows)})
		case plan.KindVerify, plan.KindVerifyFull:
			err = r.precompileVerify(hidden, p)
		case plan.KindDraftStep, plan.KindDraftPropose:
			err = r.precompileDraft(p)
		}
		if err != nil {
			return fmt.Errorf("compiling %s: %w", p, err)
		}
		if !r.compiled[p] {
			r.compiled[p] = true
			r.numCompiled.Add(1)
		}
		if time.Since(last) > 2*time.Second || i == len(progs)-1 {
			last = time.Now()
			elapsed := time.Since(start)
			left := time.Duration(float64(elapsed) / float64(i+1) * float64(len(progs)-i-1))
			r.log.Info(fmt.Sprintf("compiling step programs %d/%d, %s, about %s left", i+1, len(progs), elapsed.Round(time.Second), left.Round(time.Second)),
				"done", i+1, "total", len(progs), "elapsed", elapsed.Round(time.Millisecond))
		}
	}
	r.precompiled = true
	return nil
}

// headSampler is the sampler as a head program: its first extra input is the hidden-state
// row of each sampling row, the rest are buildSampler's.
func headSampler(f samplerFeatures, textVocab int) model.VocabHeadFn {
	sampler := buildSampler(f, textVocab)
	return func(logits func(idx *graph.Node) *model.VocabShards, extra []*graph.Node) []*graph.Node {
		return sampler(logits(extra[0]), extra[1:])
	}
}

// headPromptLogprobs scores prompt positions: inputs rows [P] and the next prompt token
// [P]; outputs that token's logprob [P] and the top maxTopLogprobs ids [P, 20] and
// logprobs [P, 20], over the text vocabulary, from the raw logits (as vLLM reports them).
func headPromptLogprobs(textVocab int) model.VocabHeadFn {
	return func(logits func(idx *graph.Node) *model.VocabShards, extra []*graph.Node) []*graph.Node {
		return logprobOutputs(logits(extra[0]), extra[1], textVocab)
	}
}
