package engine

import (
	"fmt"
	"log/slog"
	"math/bits"
	"time"

	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/tpuserve/tpuserve/model"
)

// runner executes steps on the device: it pads a step to a bucket, picks the compiled
// program for the sampler features the step needs, runs it and returns what the host needs
// (token ids and requested logprobs only). It is used by the step loop alone.
type runner struct {
	dev       deviceModel
	cfg       *model.Config
	layout    model.KVLayout
	segLen    int
	textVocab int
	programs  map[samplerFeatures]program
	// compiled records the (features, bucket) pairs already compiled, so a first use at
	// serving time is logged: it costs a compilation.
	compiled map[compiledKey]bool
	log      *slog.Logger
}

type compiledKey struct {
	f     samplerFeatures
	shape model.BatchShape
}

// stepOutput holds, per scheduled sequence (in plan order), the sampled token and, when
// the step computed them, the chosen token's logprob and the top maxTopLogprobs.
type stepOutput struct {
	tokens   []int32
	chosenLP []float32
	topIDs   []int32 // [n·maxTopLogprobs]
	topLP    []float32
}

func newRunner(dev deviceModel, layout model.KVLayout, segLen int, log *slog.Logger) (*runner, error) {
	if err := dev.allocPools(layout); err != nil {
		return nil, err
	}
	return &runner{
		dev: dev, cfg: dev.config(), layout: layout, segLen: segLen,
		textVocab: dev.config().TextVocabSize, programs: map[samplerFeatures]program{},
		compiled: map[compiledKey]bool{}, log: log,
	}, nil
}

// resetPools replaces the pools after a failed step lost them (they were donated).
func (r *runner) resetPools() error { return r.dev.allocPools(r.layout) }

func (r *runner) close() {
	for _, p := range r.programs {
		p.finalize()
	}
	r.dev.freePools()
}

func (r *runner) program(f samplerFeatures) (program, error) {
	if p, ok := r.programs[f]; ok {
		return p, nil
	}
	p, err := r.dev.newProgram(f.numInputs(), buildSampler(f, r.textVocab))
	if err != nil {
		return nil, err
	}
	r.programs[f] = p
	return p, nil
}

// pow2 rounds n up to a power of two (at least lo).
func pow2(n, lo int) int {
	n = max(n, lo, 1)
	return 1 << bits.Len(uint(n-1))
}

// bucket pads a step's needs to a bucket: powers of two on every axis; a step of one-token
// decodes runs rows of 1 query, anything else rows of segLen queries.
func (r *runner) bucket(chunks []model.SeqChunk) model.BatchShape {
	return bucketFor(r.cfg, r.layout, r.segLen, chunks)
}

func bucketFor(cfg *model.Config, layout model.KVLayout, segLen int, chunks []model.SeqChunk) model.BatchShape {
	decode := true
	for _, c := range chunks {
		decode = decode && len(c.Tokens) == 1
	}
	q := segLen
	if decode {
		q = 1
	}
	need := model.NeededShape(cfg, layout, chunks, q)
	s := need
	s.PG = pow2(need.PG, 1)
	s.N = pow2(need.N, 1)
	if decode {
		s.T, s.B = s.N, s.N
	} else {
		s.T = pow2(need.T, q)
		s.B = pow2(need.B, 1)
	}
	return s
}

// run executes one step. rows has one entry per chunk; it is padded here.
func (r *runner) run(chunks []model.SeqChunk, rows *samplerRows, f samplerFeatures) (*stepOutput, error) {
	shape := r.bucket(chunks)
	batch, err := model.BuildBatch(r.cfg, r.layout, chunks, shape)
	if err != nil {
		return nil, err
	}
	rows.pad(shape.N, r.cfg.VocabSize)
	p, err := r.program(f)
	if err != nil {
		return nil, err
	}
	if key := (compiledKey{f, shape}); !r.compiled[key] {
		r.compiled[key] = true
		r.log.Info("compiling a step program on first use", "bucket", fmt.Sprintf("%+v", shape), "sampler", fmt.Sprintf("%+v", f))
	}
	outs, err := p.run(batch, rows.inputs(f))
	if err != nil {
		return nil, err
	}
	defer func() {
		for _, t := range outs {
			t.FinalizeAll()
		}
	}()
	n := len(chunks)
	res := &stepOutput{tokens: tensors.MustCopyFlatData[int32](outs[0])[:n]}
	if f.Logprobs {
		res.chosenLP = tensors.MustCopyFlatData[float32](outs[1])[:n]
		res.topIDs = tensors.MustCopyFlatData[int32](outs[2])[:n*maxTopLogprobs]
		res.topLP = tensors.MustCopyFlatData[float32](outs[3])[:n*maxTopLogprobs]
	}
	return res, nil
}

// precompile compiles the plain-sampler program for every decode bucket (1…maxSeqs
// sequences × page-table widths) and every single-sequence prefill bucket, logging progress.
func (r *runner) precompile(maxSeqs, maxBatched, maxModelLen int) error {
	p, err := r.program(samplerFeatures{})
	if err != nil {
		return err
	}
	var shapes []model.BatchShape
	maxPG := pow2((maxModelLen+r.layout.PageSize-1)/r.layout.PageSize, 1)
	for pg := 1; pg <= maxPG; pg *= 2 {
		for n := 1; n <= pow2(maxSeqs, 1); n *= 2 {
			shapes = append(shapes, model.BatchShape{T: n, B: n, Q: 1, PG: pg, PS: model.SlidingPagesPerRow(r.cfg, r.layout.PageSize, 1), N: n})
		}
		for t := r.segLen; t <= pow2(maxBatched, r.segLen); t *= 2 {
			shapes = append(shapes, model.BatchShape{T: t, B: t / r.segLen, Q: r.segLen, PG: pg, PS: model.SlidingPagesPerRow(r.cfg, r.layout.PageSize, r.segLen), N: 1})
		}
	}
	start, last := time.Now(), time.Now()
	for i, s := range shapes {
		rows := &samplerRows{}
		rows.pad(s.N, r.cfg.VocabSize)
		if err := p.precompile(model.ZeroBatch(s), rows.inputs(samplerFeatures{})); err != nil {
			return err
		}
		r.compiled[compiledKey{samplerFeatures{}, s}] = true
		if time.Since(last) > 2*time.Second || i == len(shapes)-1 {
			last = time.Now()
			r.log.Info("compiling step programs", "done", i+1, "total", len(shapes), "elapsed", time.Since(start).Round(time.Millisecond))
		}
	}
	return nil
}

// pad extends every per-row array to n rows with inert rows (greedy, no penalties) and
// fixes the token-list widths (padding entries are the vocabulary size: counted nowhere).
func (rows *samplerRows) pad(n, vocab int) {
	for len(rows.Temperature) < n {
		rows.Temperature = append(rows.Temperature, 0)
		rows.RNGKey = append(rows.RNGKey, 0)
		rows.RNGCounter = append(rows.RNGCounter, 0)
		rows.TopK = append(rows.TopK, 0)
		rows.TopP = append(rows.TopP, 1)
		rows.MinP = append(rows.MinP, 0)
		rows.Presence = append(rows.Presence, 0)
		rows.Frequency = append(rows.Frequency, 0)
		rows.Repetition = append(rows.Repetition, 1)
	}
	rows.OutputTokens, rows.L = padLists(rows.outLists, n, vocab)
	rows.PromptTokens, rows.Lp = padLists(rows.promptLists, n, vocab)
	rows.Banned, rows.Lb = padLists(rows.bannedLists, n, vocab)
}

// padLists lays out per-row token lists as [n, L] with L a power of two.
func padLists(lists [][]int32, n, vocab int) ([]int32, int) {
	longest := 0
	for _, l := range lists {
		longest = max(longest, len(l))
	}
	L := pow2(longest, 1)
	out := make([]int32, n*L)
	for i := range out {
		out[i] = int32(vocab)
	}
	for i, l := range lists {
		copy(out[i*L:], l)
	}
	return out, L
}
