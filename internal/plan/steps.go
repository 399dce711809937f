package plan

import (
	"fmt"
	"math"
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
	// KindSampleScored is the full sampler without the top-k/top-p/min-p search (penalties,
	// banned tokens, logit bias, logprobs): the rows that need those but no filter do not
	// pay for the threshold search.
	KindSampleScored ProgramKind = "sample_scored"
	// KindPromptLogprobs scores Rows prompt positions: the logprob of the next prompt token
	// and the top alternatives (echo / prompt_logprobs).
	KindPromptLogprobs ProgramKind = "prompt_logprobs"
	// KindVerify checks Rows speculating sequences' SpecTokens proposals against the
	// target's distributions at SpecTokens+1 positions each (speculative decoding) and
	// returns the accepted run plus the next token, sampling with greedy or temperature.
	KindVerify ProgramKind = "verify"
	// KindVerifyFull is KindVerify with penalties, logit bias, top-k/top-p/min-p and the
	// logprobs of every emitted token.
	KindVerifyFull ProgramKind = "verify_full"
	// KindDraftStep is the draft model's forward pass (speculative decoding with a draft
	// model): the same shapes as KindStep, over the draft's own KV pools.
	KindDraftStep ProgramKind = "draft_step"
	// KindDraftPropose turns the draft's hidden states at Rows positions into proposals
	// (the draft's argmax).
	KindDraftPropose ProgramKind = "draft_propose"
	// KindVision is the vision tower and projector over Rows images (zero-padded), its
	// features left on the device as the image-embedding rows of the step that consumes
	// them (vision models serving images only).
	KindVision ProgramKind = "vision"
)

// Program is one member of the closed set of compiled programs. Step programs have Shape;
// the others have Rows (positions they read from the step's hidden states).
type Program struct {
	Kind  ProgramKind      `json:"kind"`
	Shape model.BatchShape `json:"shape,omitzero"`
	Rows  int              `json:"rows,omitempty"`
}

// String is a short name for logs: step{T=64 B=64 Q=1 EG=2048 ES=256} or sample{rows=8}.
func (p Program) String() string {
	if p.Kind == KindStep || p.Kind == KindDraftStep {
		s := p.Shape
		if s.M > 0 {
			return fmt.Sprintf("%s{T=%d B=%d Q=%d EG=%d ES=%d M=%d}", p.Kind, s.T, s.B, s.Q, s.EG, s.ES, s.M)
		}
		return fmt.Sprintf("%s{T=%d B=%d Q=%d EG=%d ES=%d}", p.Kind, s.T, s.B, s.Q, s.EG, s.ES)
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
	// EntryLevels is how many page-entry budgets each token bucket comes in (default 5),
	// spaced evenly in log scale from MinContext positions per row to every row at
	// MaxModelLen: a step attends over the smallest budget that holds its rows' pages.
	EntryLevels int
	// MinContext is the positions per row of the smallest entry budget (default 256): below
	// it attention is too cheap to be worth another program.
	MinContext int
	// PromptLogprobRows is the most prompt positions scored in one step (default 64); the
	// scheduler cuts the prefill chunks of prompt-logprob requests to fit.
	PromptLogprobRows int
	// SpecTokens is the most proposals a speculating sequence is verified with in one step
	// (--speculative-config num_speculative_tokens; 0: no speculation, no verify programs).
	// A verification needs SpecTokens+1 positions in one attention row of the segment
	// layouts, so it must be below SegmentLen.
	SpecTokens int
	// DraftModel adds the draft model's programs: a draft_step for every step shape and
	// draft_propose in sample's row buckets (SpecTokens > 0 required).
	DraftModel bool
	// MaxImagesPerStep is the most images one step takes (a vision model serving images;
	// 0: none), ImageTokens the soft tokens per image (mm_tokens_per_image). Every step
	// shape of a vision model has M = MaxImagesPerStep·ImageTokens image-embedding rows
	// (at least 1: the inputs are there for text steps too), so images add no step
	// programs, only the vision programs: image buckets of powers of two up to
	// MaxImagesPerStep.
	MaxImagesPerStep, ImageTokens int
}

// DefaultMinTokens is the smallest token bucket on backend ("go" or "xla:…"): 1 on the CPU,
// 32 on accelerators (a TPU's matrix unit is 128 wide: fewer rows cost as much).
func DefaultMinTokens(backend string) int {
	if backend == "" || backend == "go" || len(backend) > 3 && backend[:3] == "go:" || backend == "xla:cpu" {
		return 1
	}
	return 32
}

func (o *StepOptions) setDefaults() error {
	if o.SegmentLen == 0 {
		o.SegmentLen = 16
	}
	if o.MinTokens == 0 {
		o.MinTokens = 1
	}
	if o.EntryLevels == 0 {
		o.EntryLevels = 5
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
		{"MinTokens", o.MinTokens, 1}, {"EntryLevels", o.EntryLevels, 1}, {"MinContext", o.MinContext, 1},
		{"PromptLogprobRows", o.PromptLogprobRows, 1},
	} {
		if f.v < f.min {
			return fmt.Errorf("%w: step options: %s = %d, want >= %d", model.ErrConfig, f.name, f.v, f.min)
		}
	}
	if o.SpecTokens < 0 || o.SpecTokens > 0 && (o.SpecTokens+1 > o.SegmentLen || o.SpecTokens+1 > o.MaxNumBatchedTokens) {
		return fmt.Errorf("%w: step options: SpecTokens = %d: a verification of k proposals needs k+1 <= SegmentLen (%d) and <= MaxNumBatchedTokens (%d) positions",
			model.ErrConfig, o.SpecTokens, o.SegmentLen, o.MaxNumBatchedTokens)
	}
	if o.DraftModel && o.SpecTokens == 0 {
		return fmt.Errorf("%w: step options: DraftModel needs SpecTokens > 0", model.ErrConfig)
	}
	if o.MaxImagesPerStep < 0 || (o.MaxImagesPerStep > 0 && o.ImageTokens <= 0) {
		return fmt.Errorf("%w: step options: MaxImagesPerStep %d with ImageTokens %d (want both > 0, or no images)", model.ErrConfig, o.MaxImagesPerStep, o.ImageTokens)
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
// last bucket is MaxNumBatchedTokens itself). A bucket of at most max(MaxNumSeqs, 256)
// tokens runs one query per attention row (decodes, and small prefill chunks token by
// token); a larger one runs rows of SegmentLen queries, with room for every running
// sequence's partial row.
// Attention reads each row's own pages through a flat list of page entries; each token
// bucket comes in EntryLevels entry budgets, log-spaced from MinContext positions per row
// to every row at MaxModelLen, so a batch of short sequences pays for its own context, not
// MaxModelLen's. The sliding layers' list is as long as the global one, or as the rows'
// windows can need when that is less. Sampler programs come in row buckets of powers of two
// (sample, from MinTokens) or of eight (sample_full and sample_scored, from 1) up to
// MaxNumSeqs, and prompt scoring in PromptLogprobRows rows. With SpecTokens (speculative
// decoding) the verify and verify_full programs come in sample_full's row buckets; with a
// draft model, draft_step repeats every step shape and draft_propose comes in sample's. A vision model's step shapes
// all carry M = MaxImagesPerStep·ImageTokens image-embedding rows (at least 1) and a
// sliding entry budget that allows the image mask's reach, and the set adds one vision
// program per image bucket (powers of two up to MaxImagesPerStep).
type StepSet struct {
	opts         StepOptions
	cfg          *model.Config
	tokens       []int              // token buckets, ascending
	steps        []model.BatchShape // by token bucket, then entry budget ascending
	perToken     [][]model.BatchShape
	sample, full []int // sample_scored has sample_full's buckets
	prompt       []int
	verify       []int // verify and verify_full (none without SpecTokens)
	propose      []int // draft_propose (none without DraftModel)
	vision       []int // image buckets of the vision programs
}

// NewStepSet enumerates the program set for cfg served with opts.
func NewStepSet(cfg *model.Config, opts StepOptions) (*StepSet, error) {
	if err := opts.setDefaults(); err != nil {
		return nil, err
	}
	s := &StepSet{opts: opts, cfg: cfg}
	s.tokens = powersUpTo(opts.MinTokens, opts.MaxNumBatchedTokens)
	maxEntries := ceilDiv(ceilDiv(opts.MaxModelLen, opts.PageSize), model.PagesPerEntry) // one row at MaxModelLen
	minEntries := ceilDiv(opts.MinContext, opts.PageSize*model.PagesPerEntry)            // one row at MinContext
	for _, t := range s.tokens {
		var shapes []model.BatchShape
		if q, b := s.rows(t); q == 1 {
			// One query per row: entry budgets from MinContext per token to MaxModelLen
			// per token.
			shapes = s.ladder(t, 1, b, t*minEntries, t*maxEntries, opts.EntryLevels)
		} else {
			// Rows of one query while the step's tokens read no more pages than the rows of
			// SegmentLen would at MaxModelLen (typical contexts: every slot is a real
			// query), then rows of SegmentLen queries for deep contexts.
			top := b * maxEntries
			one := max(1, opts.EntryLevels-2)
			shapes = s.ladder(t, 1, t, min(t*minEntries, top), top, one)
			shapes = append(shapes, s.ladder(t, q, b, top/4, top, opts.EntryLevels-one)...)
		}
		if cfg.Vision {
			for i := range shapes {
				shapes[i].M = max(1, opts.MaxImagesPerStep*opts.ImageTokens)
			}
		}
		s.perToken = append(s.perToken, shapes)
		s.steps = append(s.steps, shapes...)
	}
	if cfg.Vision && opts.MaxImagesPerStep > 0 {
		s.vision = powersUpTo(1, opts.MaxImagesPerStep)
	} else if opts.MaxImagesPerStep > 0 {
		return nil, fmt.Errorf("%w: step options: MaxImagesPerStep %d for a model without a vision tower", model.ErrConfig, opts.MaxImagesPerStep)
	}
	s.sample = powersUpTo(min(opts.MinTokens, opts.MaxNumSeqs), opts.MaxNumSeqs)
	// The feature samplers' rows are few (only requests that ask for a feature): ×8 buckets.
	for r := 1; r < opts.MaxNumSeqs; r *= 8 {
		s.full = append(s.full, r)
	}
	s.full = append(s.full, opts.MaxNumSeqs)
	s.prompt = []int{min(opts.PromptLogprobRows, opts.MaxNumBatchedTokens)}
	if opts.SpecTokens > 0 {
		// Speculating sequences are the decodes of latency-bound traffic: few, ×8 buckets.
		s.verify = s.full
	}
	if opts.DraftModel {
		s.propose = s.sample
	}
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

// oneQueryTokens: token buckets up to this size (or MaxNumSeqs) run one query per row.
// Rows of one query cost no query slot for a decode next to a prefill chunk; a chunk's
// tokens then each read their own pages, which stays cheap for small steps only.
const oneQueryTokens = 256

// ladder is levels step shapes of token bucket t with rows of q queries (b rows), entry
// budgets log-spaced from bottom to top.
func (s *StepSet) ladder(t, q, b, bottom, top, levels int) []model.BatchShape {
	bottom = max(1, min(bottom, top))
	var shapes []model.BatchShape
	for l := 0; l < levels; l++ {
		e := top
		if l < levels-1 {
			e = int(math.Ceil(float64(bottom) * math.Pow(float64(top)/float64(bottom), float64(l)/float64(levels-1))))
		}
		if len(shapes) > 0 && e <= shapes[len(shapes)-1].EG {
			continue
		}
		// An image token's row reads on to the keys its image mask shows it (at most
		// its image's rest and a neighbour's mm_tokens_per_image): 2·ImageTokens more.
		reach := q
		if s.cfg.Vision {
			reach += 2 * s.opts.ImageTokens
		}
		es := min(e, b*ceilDiv(model.SlidingPagesPerRow(s.cfg, s.opts.PageSize, reach), model.PagesPerEntry))
		shapes = append(shapes, model.BatchShape{T: t, B: b, Q: q, EG: e, ES: es})
	}
	return shapes
}

// rows is the deepest query-row layout of token bucket t: one query per row up to
// max(MaxNumSeqs, oneQueryTokens) tokens (decodes, small chunks token by token), else rows
// of SegmentLen queries with room for every running sequence's partial row.
func (s *StepSet) rows(t int) (q, b int) {
	if t <= max(s.opts.MaxNumSeqs, oneQueryTokens) {
		return 1, t
	}
	return s.opts.SegmentLen, ceilDiv(t, s.opts.SegmentLen) + s.opts.MaxNumSeqs
}

// SpecTokens is the number of proposals the verify programs check per sequence (0: none).
func (s *StepSet) SpecTokens() int { return s.opts.SpecTokens }

// Options returns the options with defaults applied.
func (s *StepSet) Options() StepOptions { return s.opts }

// Steps lists every step shape, by token bucket then page-table width.
func (s *StepSet) Steps() []model.BatchShape { return slices.Clone(s.steps) }

// MaxTokens is the largest token bucket: the row count of the hidden states every step
// leaves for the sampler programs (smaller steps are padded to it).
func (s *StepSet) MaxTokens() int { return s.tokens[len(s.tokens)-1] }

// ImageRows is the image-embedding rows of every step shape (0: a text-only model).
func (s *StepSet) ImageRows() int {
	if len(s.steps) == 0 {
		return 0
	}
	return s.steps[0].M
}

// MaxImages is the most images one step takes (0: no images).
func (s *StepSet) MaxImages() int {
	if len(s.vision) == 0 {
		return 0
	}
	return s.vision[len(s.vision)-1]
}

// MaxPromptRows is the most prompt positions one step may score.
func (s *StepSet) MaxPromptRows() int { return s.prompt[len(s.prompt)-1] }

// StepFor returns the smallest step shape holding a step that needs need(q) (its T, rows
// and page entries, EG and ES, as model.NeededShape counts them with rows of q queries):
// the smallest token bucket that holds the tokens, and in it the first member, in the
// order listed (one query per row before rows of SegmentLen, smaller budgets first), that
// holds the rest. The second result is false when none does: more tokens than
// MaxNumBatchedTokens or more entries than any member reads, which the scheduler never
// plans.
func (s *StepSet) StepFor(need func(q int) model.BatchShape) (model.BatchShape, bool) {
	cache := map[int]model.BatchShape{}
	needQ := func(q int) model.BatchShape {
		n, ok := cache[q]
		if !ok {
			n = need(q)
			cache[q] = n
		}
		return n
	}
	for i, t := range s.tokens {
		if needQ(1).T > t {
			continue
		}
		for _, sh := range s.perToken[i] {
			if sh.Fits(needQ(sh.Q)) {
				return sh, true
			}
		}
		return model.BatchShape{}, false
	}
	return model.BatchShape{}, false
}

// RowsFor returns the smallest row bucket of a sampler program kind that holds n rows.
func (s *StepSet) RowsFor(kind ProgramKind, n int) (int, bool) {
	var list []int
	switch kind {
	case KindSample:
		list = s.sample
	case KindSampleFull, KindSampleScored:
		list = s.full
	case KindPromptLogprobs:
		list = s.prompt
	case KindVerify, KindVerifyFull:
		list = s.verify
	case KindDraftPropose:
		list = s.propose
	case KindVision:
		list = s.vision
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
	if s.opts.DraftModel {
		for _, sh := range s.steps {
			out = append(out, Program{Kind: KindDraftStep, Shape: sh})
		}
	}
	for _, k := range []struct {
		kind ProgramKind
		rows []int
	}{{KindSample, s.sample}, {KindSampleFull, s.full}, {KindSampleScored, s.full}, {KindPromptLogprobs, s.prompt}, {KindVerify, s.verify}, {KindVerifyFull, s.verify}, {KindDraftPropose, s.propose}, {KindVision, s.vision}} {
		for _, r := range k.rows {
			out = append(out, Program{Kind: k.kind, Rows: r})
		}
	}
	return out
}

// LargestSteps are each token bucket's largest entry budget; the memory plan sizes
// activations from them.
func (s *StepSet) LargestSteps() []model.BatchShape {
	var out []model.BatchShape
	for _, shapes := range s.perToken {
		out = append(out, shapes[len(shapes)-1])
	}
	return out
}
