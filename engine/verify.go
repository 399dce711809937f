package engine

import (
	"fmt"

	"slices"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/pkg/core/dtypes"
	. "github.com/gomlx/gomlx/pkg/core/graph" //nolint:revive // the graph DSL reads best unqualified
	"github.com/gomlx/gomlx/pkg/core/shapes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/tpuserve/tpuserve/internal/plan"
	"github.com/tpuserve/tpuserve/model"
)

// Speculative decoding's verification runs on the device, in the verify head programs: a
// speculating sequence's chunk is its last sampled token followed by k ≤ K proposals, so
// the step leaves K+1 hidden states for it; the head scores all of them, shapes each
// position's logits exactly as the plain sampler would (penalties at position j count the
// proposals before j as generated), accepts the longest run of proposals and draws the
// token after it. Only the emitted tokens (and their logprobs, when asked) go back.
//
// Acceptance is standard speculative sampling (Leviathan et al.; Chen et al.). With the
// target's distribution p_j at position j and the proposer's q_j (one-hot at the proposal
// for n-gram lookup), proposal d_j is accepted with probability min(1, p_j(d_j)/q_j(d_j));
// at the first rejection the token is drawn from max(p_j − q_j, 0) normalised, and when all
// k are accepted a bonus token is drawn from p_k. Greedy rows accept while the proposal is
// the target's argmax and emit the argmax after the run: the tokens of plain greedy decoding.
// Every draw is keyed by (request key, output position) with its own salt: reproducible,
// independent of the batch.

// Salts that separate the verification's draws from the sampler's Gumbel noise (whose
// stream the bonus draw shares, so a bonus token is drawn as plain sampling would).
const (
	acceptSalt   = 0x41434350 // "ACCP"
	residualSalt = 0x52455344 // "RESD"
)

// Verifier feature sets: the plain one (greedy, temperature) and the full one (penalties,
// logit bias, top-k/top-p/min-p, logprobs). Grammar requests do not speculate.
var (
	verifyFeatures     = samplerFeatures{}
	verifyFullFeatures = samplerFeatures{Penalties: true, Filters: true, Logprobs: true, Bias: true}
)

// verifyOptions are test hooks of the verifier.
type verifyOptions struct {
	// breakResidual draws the token after a rejection from p instead of max(p − q, 0): the
	// ablation that the distribution test must catch.
	breakResidual bool
}

// headVerify is the verifier as a head program: its extra inputs are the hidden-state
// rows [R·(K+1)], the proposals [R, K] and their counts [R], then samplerRows.inputs(f).
func headVerify(f samplerFeatures, textVocab, K int, opt verifyOptions) model.VocabHeadFn {
	v := buildVerifier(f, textVocab, K, opt)
	return func(logits func(idx *Node) *model.VocabShards, extra []*Node) []*Node {
		return v(logits(extra[0]), extra[1:])
	}
}

// buildVerifier returns the verification tail over logits [R·(K+1), V] split on the
// vocabulary (row r's positions 0..K consecutive; position j predicts the token after the
// chunk's j-th token). extra: proposals [R, K] int32, their counts [R] int32 (0..K;
// positions past the count are ignored), then the rows' sampler inputs. Outputs: emitted
// tokens [R, K+1] int32 (the accepted proposals then the drawn token; −1 after), their
// count [R] int32 (1..k+1), and with Logprobs the emitted tokens' logprobs [R, K+1] and
// the top maxTopLogprobs ids [R, K+1, 20] and logprobs [R, K+1, 20] (padding positions
// report token −1's: zeros). Like the sampler, every chip works on its columns and only
// per-row values cross chips.
func buildVerifier(f samplerFeatures, textVocab, K int, opt verifyOptions) func(lg *model.VocabShards, extra []*Node) []*Node {
	return func(lg *model.VocabShards, extra []*Node) []*Node {
		g := lg.Parts[0].Graph()
		N, W := lg.Parts[0].Shape().Dimensions[0], lg.Width
		P := K + 1
		R := N / P
		drafts, numDrafts := extra[0], extra[1]
		negInf := BroadcastToDims(Infinity(g, dtypes.Float32, -1), N, W)

		// Per-position sampler inputs: row values repeated over its K+1 positions; the RNG
		// counter (the output index) advances by one per position.
		perPos := func(x *Node) *Node {
			dims := x.Shape().Dimensions
			if len(dims) == 1 {
				return Reshape(BroadcastToDims(InsertAxes(x, 1), R, P), N)
			}
			return Reshape(BroadcastToDims(InsertAxes(x, 1), R, P, dims[1]), N, dims[1])
		}
		posIota := Iota(g, shapes.Make(dtypes.Int32, R, P), 1)
		rowIn := extra[2:]
		in := make([]*Node, len(rowIn))
		for i, x := range rowIn {
			in[i] = perPos(x)
		}
		in[2] = Add(in[2], Reshape(ConvertDType(posIota, dtypes.Uint32), N))
		// The proposals that count: j < numDrafts.
		draftIota := Iota(g, shapes.Make(dtypes.Int32, R, K), 1)
		draftValid := LessThan(draftIota, InsertAxes(numDrafts, -1)) // [R, K]
		if f.Penalties {
			// Position j's penalties count proposals 0..j−1 as generated: they join its
			// output-token list (the vocabulary size pads, as on the host).
			posK := Iota(g, shapes.Make(dtypes.Int32, R, P, K), 1)
			idxK := Iota(g, shapes.Make(dtypes.Int32, R, P, K), 2)
			before := And(LessThan(idxK, posK), InsertAxes(draftValid, 1))
			prior := Where(before, BroadcastToDims(InsertAxes(drafts, 1), R, P, K), BroadcastToDims(Scalar(g, dtypes.Int32, lg.Vocab), R, P, K))
			const outputTokens = 6 // samplerRows.inputs: temperature, key, counter, 3 penalties, then the output tokens
			in[outputTokens] = Concatenate([]*Node{in[outputTokens], Reshape(prior, N, K)}, 1)
		}
		sl := shapeLogits(f, textVocab, lg, in)

		// The target's distribution at every position, over what the filters keep.
		zKept := lg.Each(func(c int) *Node { return Where(sl.keep[c], sl.z[c], negInf) })
		zmax := lg.Reduce(zKept, backends.ReduceOpMax)
		exps := lg.Each(func(c int) *Node { return Exp(Sub(zKept[c], zmax[c])) })
		sums := lg.Reduce(exps, backends.ReduceOpSum)
		probs := lg.Each(func(c int) *Node { return Div(exps[c], sums[c]) }) // [N, W] per chip
		firstK := func(x *Node) *Node {                                      // positions 0..K−1 of [R, P, …]
			return Slice(x, AxisRange(), AxisRange(0, K))
		}
		// q one-hot at the proposal (n-gram lookup, a draft's argmax): p(d)/q(d) = p(d).
		hotF := lg.Each(func(c int) *Node {
			ids := firstK(Reshape(sl.ids[c], R, P, W))
			hot := And(Equal(ids, InsertAxes(drafts, -1)), InsertAxes(draftValid, -1)) // [R, K, W]
			return ConvertDType(hot, dtypes.Float32)
		})
		pDraft := lg.Mesh.AllReduce(lg.Each(func(c int) *Node {
			return ReduceSum(Mul(firstK(Reshape(probs[c], R, P, W)), hotF[c]), -1)
		}), backends.ReduceOpSum)[0] // [R, K]
		u := uniformDraw(Reshape(firstK(Reshape(sl.key, R, P)), R*K), Reshape(firstK(Reshape(sl.counter, R, P)), R*K), acceptSalt)
		acceptSampled := LessThan(Reshape(u, R, K), pDraft)
		greedy3 := Reshape(sl.greedy, R, P)
		acceptGreedy := Equal(firstK(greedy3), drafts)
		rowGreedy := Reshape(firstK(Reshape(sl.isGreedy, R, P)), R, K)
		accept := And(Where(rowGreedy, acceptGreedy, acceptSampled), draftValid)
		// a = the run of leading acceptances: the positions before which nothing was rejected.
		rejectsUpTo := Einsum("rk,kj->rj", ConvertDType(LogicalNot(accept), dtypes.Float32), Const(g, upperTriangle(K)))
		numAccepted := ReduceSum(ConvertDType(Equal(rejectsUpTo, ZerosLike(rejectsUpTo)), dtypes.Int32), -1) // [R]

		// The token after the run at every position: greedy's argmax; else the residual
		// draw where a proposal was rejected, the bonus draw from p past the proposals (the
		// plain sampler's draw, with its noise).
		bonus := sl.draw(lg, sl.key, sl.counter)
		residual := lg.Each(func(c int) *Node {
			if opt.breakResidual {
				return probs[c]
			}
			qFull := Concatenate([]*Node{hotF[c], Zeros(g, shapes.Make(dtypes.Float32, R, 1, W))}, 1) // [R, P, W]
			p3 := Reshape(probs[c], R, P, W)
			return Reshape(Max(Sub(p3, qFull), ZerosLike(p3)), N, W)
		})
		residualKey := BitwiseXor(sl.key, Scalar(g, dtypes.Uint32, uint32(residualSalt)))
		resLogits := lg.Each(func(c int) *Node {
			return Where(GreaterThan(residual[c], ZerosLike(residual[c])), Log(residual[c]), negInf)
		})
		resTok := sl.drawFrom(lg, resLogits, sl.keep, residualKey, sl.counter)
		// No residual mass (p equals q up to rounding): the rejection was rounding; draw from p.
		resMax := Reshape(lg.Reduce(residual, backends.ReduceOpMax)[0], N)
		resTok = Where(GreaterThan(resMax, ZerosLike(resMax)), resTok, bonus)
		posFlat := Reshape(posIota, N)
		afterDrafts := GreaterOrEqual(posFlat, perPos(numDrafts))
		sampledNext := Where(afterDrafts, bonus, resTok)
		next := Reshape(Where(sl.isGreedy, sl.greedy, sampledNext), R, P)

		draftsP := Concatenate([]*Node{drafts, Zeros(g, shapes.Make(dtypes.Int32, R, 1))}, 1) // [R, P]
		a := InsertAxes(numAccepted, -1)
		minusOne := BroadcastToDims(Scalar(g, dtypes.Int32, -1), R, P)
		emitted := Where(LessThan(posIota, a), draftsP, Where(Equal(posIota, a), next, minusOne))
		count := AddScalar(numAccepted, 1)
		if !f.Logprobs {
			return []*Node{emitted, count}
		}
		lp := logprobOutputs(sl.raw, Reshape(emitted, N), textVocab)
		return []*Node{emitted, count, Reshape(lp[0], R, P), Reshape(lp[1], R, P, maxTopLogprobs), Reshape(lp[2], R, P, maxTopLogprobs)}
	}
}

// upperTriangle is the [n, n] matrix with ones where i ≤ j: x·U is x's prefix sums.
func upperTriangle(n int) [][]float32 {
	m := make([][]float32, n)
	for i := range m {
		m[i] = make([]float32, n)
		for j := i; j < n; j++ {
			m[i][j] = 1
		}
	}
	return m
}

// uniformDraw is one uniform in (0, 1) per (key, counter) [M] from the counter-based hash,
// in a stream of its own (salt).
func uniformDraw(key, counter *Node, salt uint32) *Node {
	g := key.Graph()
	bits := hash32(BitwiseXor(hash32(Add(hash32(BitwiseXor(key, Scalar(g, dtypes.Uint32, salt))), MulScalar(counter, 0x9E3779B9))), Scalar(g, dtypes.Uint32, uint32(0x27d4eb2d))))
	u := ConvertDType(Div(bits, Scalar(g, dtypes.Uint32, 512)), dtypes.Float32)
	return MulScalar(AddScalar(u, 0.5), 1.0/(1<<23))
}

// verifyRows is the host side of one step's verifications: per speculating sequence its
// proposals, and its sampler row.
type verifyRows struct {
	rows      samplerRows
	drafts    [][]int32
	chunkOf   []int // chunk index of each row
	chunkLens []int // tokens of each row's chunk (1 + its proposals)
}

// inputs pads to n rows and returns the head's extra inputs after the hidden-state rows.
func (v *verifyRows) inputs(n, K int, f samplerFeatures, pad func(*samplerRows, int, samplerFeatures)) []any {
	drafts := make([]int32, n*K)
	counts := make([]int32, n)
	for i, d := range v.drafts {
		copy(drafts[i*K:(i+1)*K], d)
		counts[i] = int32(len(d))
	}
	pad(&v.rows, n, f)
	return append([]any{tensors.FromFlatDataAndDimensions(drafts, n, K), tensors.FromFlatDataAndDimensions(counts, n)}, v.rows.inputs(f)...)
}

// verifyProgram is the verify program of a feature set, with its kind.
func (r *runner) verifyProgram(full bool) (headProgram, plan.ProgramKind, samplerFeatures) {
	if full {
		return r.verifyFull, plan.KindVerifyFull, verifyFullFeatures
	}
	return r.verify, plan.KindVerify, verifyFeatures
}

// runVerify runs one verify program over v's rows and stores each row's result in out by
// chunk; offsets[c] is chunk c's first hidden-state row.
func (r *runner) runVerify(hidden hiddenStates, v *verifyRows, offsets []int, out []*verifyOutput, full bool) error {
	if len(v.chunkOf) == 0 {
		return nil
	}
	prog, kind, f := r.verifyProgram(full)
	K := r.set.SpecTokens()
	if prog == nil {
		return fmt.Errorf("%w: %d speculating sequences without speculation configured", ErrSchedulerState, len(v.chunkOf))
	}
	n, ok := r.set.RowsFor(kind, len(v.chunkOf))
	if !ok {
		return fmt.Errorf("%w: %d %s rows, the step set holds at most %d", ErrSchedulerState, len(v.chunkOf), kind, r.set.Options().MaxNumSeqs)
	}
	idx := make([]int32, n*(K+1))
	for j, c := range v.chunkOf {
		if len(v.drafts[j]) > K || v.chunkLens[j] != len(v.drafts[j])+1 {
			return fmt.Errorf("%w: a verification of %d proposals in a chunk of %d tokens (K = %d)", ErrSchedulerState, len(v.drafts[j]), v.chunkLens[j], K)
		}
		for p := 0; p <= K; p++ {
			// Positions past the proposals repeat the last one: their results are ignored.
			idx[j*(K+1)+p] = int32(offsets[c] + min(p, v.chunkLens[j]-1))
		}
	}
	r.use(plan.Program{Kind: kind, Rows: n})
	outs, err := prog.run(hidden, append([]any{tensors.FromFlatDataAndDimensions(idx, n*(K+1))}, v.inputs(n, K, f, r.padRows)...))
	if err != nil {
		return err
	}
	defer finalize(outs)
	toks := tensors.MustCopyFlatData[int32](outs[0])
	counts := tensors.MustCopyFlatData[int32](outs[1])
	var chosen, lps []float32
	var ids []int32
	if f.Logprobs {
		chosen = tensors.MustCopyFlatData[float32](outs[2])
		ids = tensors.MustCopyFlatData[int32](outs[3])
		lps = tensors.MustCopyFlatData[float32](outs[4])
	}
	for j, c := range v.chunkOf {
		m := int(counts[j])
		if m < 1 || m > len(v.drafts[j])+1 {
			return fmt.Errorf("engine: verification of %d proposals emitted %d tokens", len(v.drafts[j]), m)
		}
		o := &verifyOutput{tokens: slices.Clone(toks[j*(K+1) : j*(K+1)+m]), hasLP: f.Logprobs}
		if f.Logprobs {
			o.chosen = slices.Clone(chosen[j*(K+1) : j*(K+1)+m])
			o.topIDs = slices.Clone(ids[j*(K+1)*maxTopLogprobs : (j*(K+1)+m)*maxTopLogprobs])
			o.topLP = slices.Clone(lps[j*(K+1)*maxTopLogprobs : (j*(K+1)+m)*maxTopLogprobs])
		}
		out[c] = o
	}
	return nil
}

// precompileVerify compiles verify program p on zero inputs.
func (r *runner) precompileVerify(hidden hiddenStates, p plan.Program) error {
	prog, _, f := r.verifyProgram(p.Kind == plan.KindVerifyFull)
	K := r.set.SpecTokens()
	v := &verifyRows{}
	extra := append([]any{tensors.FromFlatDataAndDimensions(make([]int32, p.Rows*(K+1)), p.Rows*(K+1))}, v.inputs(p.Rows, K, f, r.padRows)...)
	return prog.precompile(hidden, extra)
}
