package plan

import (
	"fmt"
	"slices"

	"github.com/tpuserve/tpuserve/model"
)

// ProgramKind names what a compiled program does.
type ProgramKind string

const (
	// KindStep is the model's forward pass over one step's tokens: it writes their K/V into
	// the pools and leaves the hidden states on the device.
	KindStep ProgramKind = "step"
	// KindSample turns the hidden states of Rows sampling positions into token ids with
	// greedy or temperature (Gumbel-max) sampling: the path every request takes.
	KindSample ProgramKind = "sample"
	// KindSampleFull does the same with every sampler feature (penalties, banned tokens,
	// logit bias, top-k/top-p/min-p, logprobs) for the Rows positions that ask for one, so
	// only those requests pay for them.
	KindSampleFull ProgramKind = "sample_full"
	// KindPromptLogprobs scores Rows prompt positions: the logprob of the next prompt token
	// and the top alternatives (echo / prompt_logprobs).
	KindPromptLogprobs ProgramKind = "prompt_logprobs"
)

// Program is one member of the closed set of compiled programs. Step programs have Shape;
// the others have Rows (positions they read from the step's hidden states).
type Program struct {
	Kind  ProgramKind      `json:"kind"`
	Shape model.BatchShape `json:"shape,omitzero"`
	Rows  int              `json:"rows,omitempty"`
}

// String is a short name for logs: step{T=64 B=64 Q=1 PG=32 PS=4} or sample{rows=8}.
func (p Program) String() string {
	if p.Kind == KindStep {
		s := p.Shape
		return fmt.Sprintf("step{T=%d B=%d Q=%d PG=%d PS=%d}", s.T, s.B, s.Q, s.PG, s.PS)
	}
	return fmt.Sprintf("%s{rows=%d}", p.Kind, p.Rows)
}

// StepOptions are the serving settings the program set is enumerated from. Zero fields take
// the documented defaults.
type StepOptions struct {
	MaxNumSeqs          int // running sequences (required)
	MaxNumBatchedTokens int // tokens per step (required, >= MaxNumSeqs)
	MaxModelLen         int // prompt + output tokens (required)
	PageSize            int // positions per KV page (required)
	// SegmentLen is the query-row length of steps with more tokens than MaxNumSeqs
	// (default 16); smaller steps run one query per row.
	SegmentLen int
	// MinTokens is the smallest token bucket, and the smallest sampling-row bucket
	// (default 1). Accelerators gain nothing below their matrix-unit width: the TPU and GPU
	// defaults are 16, as vLLM-TPU pads.
	MinTokens int
	// PageLadder is the ratio between consecutive page-table widths (default 4): a step
	// attends over the narrowest width that holds its longest sequence.
	PageLadder int
	// MinContext is the fewest positions the narrowest page-table width covers (default 256):
	// below it attention is too cheap to be worth another program.
	MinContext int
	// PromptLogprobRows is the most prompt positions scored in one step (default 64); the
	// scheduler cuts the prefill chunks of prompt-logprob requests to fit.
	PromptLogprobRows int
}

// DefaultMinTokens is the smallest token bucket on backend ("go" or "xla:…"): 1 on the CPU,
// 16 on accelerators.
func DefaultMinTokens(backend string) int {
	if backend == "" || backend == "go" || len(backend) > 3 && backend[:3] == "go:" || backend == "xla:cpu" {
		return 1
	}
	return 16
}

func (o *StepOptions) setDefaults() error {
	if o.SegmentLen == 0 {
		o.SegmentLen = 16
	}
	if o.MinTokens == 0 {
		o.MinTokens = 1
	}
	if o.PageLadder == 0 {
		o.PageLadder = 4
	}
	if o.MinContext == 0 {
		o.MinContext = 256
	}
	if o.PromptLogprobRows == 0 {
		o.PromptLogprobRows = 64
	}
	for _, f := range []struct {
		name string
		v    int
		min  int
	}{
		{"MaxNumSeqs", o.MaxNumSeqs, 1}, {"MaxNumBatchedTokens", o.MaxNumBatchedTokens, 1},
		{"MaxModelLen", o.MaxModelLen, 1}, {"PageSize", o.PageSize, 1}, {"SegmentLen", o.SegmentLen, 1},
		{"MinTokens", o.MinTokens, 1}, {"PageLadder", o.PageLadder, 2}, {"MinContext", o.MinContext, 1},
		{"PromptLogprobRows", o.PromptLogprobRows, 1},
	} {
		if f.v < f.min {
			return fmt.Errorf("%w: step options: %s = %d, want >= %d", model.ErrConfig, f.name, f.v, f.min)
		}
	}
	if o.MaxNumBatchedTokens < o.MaxNumSeqs {
		return fmt.Errorf("%w: step options: MaxNumBatchedTokens %d must be >= MaxNumSeqs %d (every running sequence decodes in one step)",
			model.ErrConfig, o.MaxNumBatchedTokens, o.MaxNumSeqs)
	}
	return nil
}

// StepSet is the closed set of programs the engine runs: every step shape and every
// sampler program, enumerated from the serving options. The scheduler plans only steps
// that fit it (at most MaxNumBatchedTokens tokens, at most PromptLogprobRows scored prompt
// positions), the runner maps each step to the smallest member that holds it, the memory
// plan sizes activations from its largest members, and the engine compiles all of it
// before serving. It is immutable and safe for concurrent use.
//
// The rule: token buckets are powers of two from MinTokens up to MaxNumBatchedTokens (the
// last bucket is MaxNumBatchedTokens itself). A bucket of at most MaxNumSeqs tokens runs
// one query per attention row (decodes, and small prefill chunks token by token); a larger
// one runs rows of SegmentLen queries, with room for every running sequence's partial row.
// Each token bucket comes in page-table widths from a ladder (×PageLadder down from the
// pages of MaxModelLen, to no fewer than MinContext positions), so a batch of short
// sequences attends over its own context, not MaxModelLen's. Sliding-window tables are as
// wide as a row can need, and never wider than the global table. Sampler programs come in
// row buckets of powers of two (sample: from MinTokens; sample_full: from 1) up to
// MaxNumSeqs, and prompt scoring in rows of PromptLogprobRows and PromptLogprobRows/8.
type StepSet struct {
	opts         StepOptions
	cfg          *model.Config
	tokens       []int // token buckets, ascending
	pages        []int // page-table widths, ascending
	steps        []model.BatchShape
	sample, full []int
	prompt       []int
}

// NewStepSet enumerates the program set for cfg served with opts.
func NewStepSet(cfg *model.Config, opts StepOptions) (*StepSet, error) {
	if err := opts.setDefaults(); err != nil {
		return nil, err
	}
	s := &StepSet{opts: opts, cfg: cfg}
	s.tokens = powersUpTo(opts.MinTokens, opts.MaxNumBatchedTokens)
	maxPages := ceilDiv(opts.MaxModelLen, opts.PageSize)
	for pg := maxPages; ; {
		s.pages = append(s.pages, pg)
		next := ceilDiv(pg, opts.PageLadder)
		if next == pg || next*opts.PageSize < opts.MinContext {
			break
		}
		pg = next
	}
	slices.Reverse(s.pages)
	for _, t := range s.tokens {
		for _, pg := range s.pages {
			s.steps = append(s.steps, s.shapeFor(t, pg))
		}
	}
	s.sample = powersUpTo(min(opts.MinTokens, opts.MaxNumSeqs), opts.MaxNumSeqs)
	s.full = powersUpTo(1, opts.MaxNumSeqs)
	pr := min(opts.PromptLogprobRows, opts.MaxNumBatchedTokens)
	if small := pr / 8; small >= 1 {
		s.prompt = append(s.prompt, small)
	}
	s.prompt = append(s.prompt, pr)
	return s, nil
}

// powersUpTo lists lo, 2·lo, 4·lo, … below hi, then hi (lo is rounded up to a power of two).
func powersUpTo(lo, hi int) []int {
	p := 1
	for p < lo {
		p *= 2
	}
	var out []int
	for ; p < hi; p *= 2 {
		out = append(out, p)
	}
	return append(out, hi)
}

func ceilDiv(a, b int) int { return (a + b - 1) / b }

// shapeFor is the step shape of token bucket t with page-table width pg.
func (s *StepSet) shapeFor(t, pg int) model.BatchShape {
	q, b := 1, t
	if t > s.opts.MaxNumSeqs {
		q = s.opts.SegmentLen
		// Each sequence's tokens split into rows of q; a sequence adds at most one partial row.
		b = ceilDiv(t, q) + s.opts.MaxNumSeqs
	}
	ps := min(pg, model.SlidingPagesPerRow(s.cfg, s.opts.PageSize, q))
	return model.BatchShape{T: t, B: b, Q: q, PG: pg, PS: ps}
}

// Options returns the options with defaults applied.
func (s *StepSet) Options() StepOptions { return s.opts }

// Steps lists every step shape, by token bucket then page-table width.
func (s *StepSet) Steps() []model.BatchShape { return slices.Clone(s.steps) }

// MaxTokens is the largest token bucket: the row count of the hidden states every step
// leaves for the sampler programs (smaller steps are padded to it).
func (s *StepSet) MaxTokens() int { return s.tokens[len(s.tokens)-1] }

// MaxPromptRows is the most prompt positions one step may score.
func (s *StepSet) MaxPromptRows() int { return s.prompt[len(s.prompt)-1] }

// StepFor returns the smallest step shape holding numTokens tokens whose longest sequence
// spans maxPages global pages (its page table up to the end of this step's tokens). The
// second result is false when none does: more tokens than MaxNumBatchedTokens or a
// sequence longer than MaxModelLen, which the scheduler never plans.
func (s *StepSet) StepFor(numTokens, maxPages int) (model.BatchShape, bool) {
	ti, ok := firstAtLeast(s.tokens, numTokens)
	if !ok {
		return model.BatchShape{}, false
	}
	pi, ok := firstAtLeast(s.pages, max(maxPages, 1))
	if !ok {
		return model.BatchShape{}, false
	}
	return s.steps[ti*len(s.pages)+pi], true
}

// RowsFor returns the smallest row bucket of a sampler program kind that holds n rows.
func (s *StepSet) RowsFor(kind ProgramKind, n int) (int, bool) {
	var list []int
	switch kind {
	case KindSample:
		list = s.sample
	case KindSampleFull:
		list = s.full
	case KindPromptLogprobs:
		list = s.prompt
	default:
		return 0, false
	}
	i, ok := firstAtLeast(list, n)
	if !ok {
		return 0, false
	}
	return list[i], true
}

func firstAtLeast(list []int, n int) (int, bool) {
	for i, v := range list {
		if v >= n {
			return i, true
		}
	}
	return 0, false
}

// Programs lists the whole set: step shapes first, then the sampler programs.
func (s *StepSet) Programs() []Program {
	var out []Program
	for _, sh := range s.steps {
		out = append(out, Program{Kind: KindStep, Shape: sh})
	}
	for _, k := range []struct {
		kind ProgramKind
		rows []int
	}{{KindSample, s.sample}, {KindSampleFull, s.full}, {KindPromptLogprobs, s.prompt}} {
		for _, r := range k.rows {
			out = append(out, Program{Kind: k.kind, Rows: r})
		}
	}
	return out
}

// LargestSteps are the step shapes with the most tokens and, among them, the widest page
// table; the memory plan sizes activations from them.
func (s *StepSet) LargestSteps() []model.BatchShape {
	var out []model.BatchShape
	for _, sh := range s.steps {
		if sh.PG == s.pages[len(s.pages)-1] {
			out = append(out, sh)
		}
	}
	return out
}
