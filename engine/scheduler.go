package engine

import (
	"container/heap"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"

	"github.com/tpuserve/tpuserve/kvcache"
)

// Scheduler errors. Add's errors wrap ErrInvalidRequest, ErrPromptTooLong or
// kvcache.ErrKVCacheFull; protocol misuse wraps ErrSchedulerState.
var (
	ErrInvalidRequest = errors.New("engine: invalid request")
	ErrPromptTooLong  = errors.New("engine: prompt longer than the maximum model length")
	ErrUnknownRequest = errors.New("engine: unknown request")
	ErrSchedulerState = errors.New("engine: scheduler call out of order")
)

// SchedulingPolicy orders the waiting queue.
type SchedulingPolicy int

const (
	// PolicyFCFS admits requests in the order they were added.
	PolicyFCFS SchedulingPolicy = iota
	// PolicyPriority admits lower Request.Priority first (ties in arrival order) and, when
	// blocks run out, preempts the running request with the highest priority value (latest
	// arrival among equals).
	PolicyPriority
)

// SchedulerConfig holds the scheduler's limits. Zero fields take the documented defaults.
type SchedulerConfig struct {
	// MaxNumSeqs is the most requests running at once (--max-num-seqs, default 256).
	MaxNumSeqs int
	// MaxNumBatchedTokens is the most tokens computed in one step, all requests together
	// (--max-num-batched-tokens, default 8192). It must be >= MaxNumSeqs so that every
	// running request can decode in the same step.
	MaxNumBatchedTokens int
	// MaxModelLen is the most tokens (prompt + output) a request may reach
	// (--max-model-len, required).
	MaxModelLen int
	Policy      SchedulingPolicy
	// DisableChunkedPrefill makes a prompt (or a recomputation after preemption) run in
	// one step; it then requires MaxNumBatchedTokens >= MaxModelLen.
	DisableChunkedPrefill bool
	// MaxPromptLogprobRows caps the prompt positions scored in one step (prompt logprobs),
	// the rows of the step set's prompt-scoring program; 0 means no cap.
	MaxPromptLogprobRows int
	// Logger receives preemption and admission debug lines (default slog.Default()).
	Logger *slog.Logger
	// MaxImagesPerStep is the most images one step encodes (the engine sets it from its
	// step set; 0: no images). A chunk never ends inside an image group.
	MaxImagesPerStep int
}

func (c *SchedulerConfig) setDefaults() error {
	if c.MaxNumSeqs == 0 {
		c.MaxNumSeqs = 256
	}
	if c.MaxNumBatchedTokens == 0 {
		c.MaxNumBatchedTokens = 8192
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	switch {
	case c.MaxNumSeqs < 0:
		return fmt.Errorf("%w: MaxNumSeqs %d must be > 0", ErrInvalidRequest, c.MaxNumSeqs)
	case c.MaxNumBatchedTokens < c.MaxNumSeqs:
		return fmt.Errorf("%w: MaxNumBatchedTokens %d must be >= MaxNumSeqs %d", ErrInvalidRequest, c.MaxNumBatchedTokens, c.MaxNumSeqs)
	case c.MaxModelLen <= 0:
		return fmt.Errorf("%w: MaxModelLen %d must be > 0", ErrInvalidRequest, c.MaxModelLen)
	case c.Policy != PolicyFCFS && c.Policy != PolicyPriority:
		return fmt.Errorf("%w: Policy %d is unknown", ErrInvalidRequest, c.Policy)
	case c.DisableChunkedPrefill && c.MaxNumBatchedTokens < c.MaxModelLen:
		return fmt.Errorf("%w: MaxNumBatchedTokens %d must be >= MaxModelLen %d when chunked prefill is disabled",
			ErrInvalidRequest, c.MaxNumBatchedTokens, c.MaxModelLen)
	}
	return nil
}

type seqStatus uint8

const (
	statusWaiting seqStatus = iota
	statusRunning
	statusFinished
)

// seqState is the scheduler's view of one request.
type seqState struct {
	id        string
	tokens    []int32 // prompt then outputs; append-only (plans share sub-slices)
	numPrompt int
	// numComputed tokens have their KV in the cache (committed by UpdateFromOutput).
	numComputed int
	// numScheduled tokens are in the pending plan (0 when none).
	numScheduled int
	numCached    int // prefix-cache hit at the first admission, -1 before it
	priority     int
	order        uint64 // Add order: the FCFS tie-break
	status       seqStatus
	admitted     bool // admitted by the current Schedule call
	// promptLP: the request scores its prompt, so every prompt position is computed (no
	// prefix-cache hit) and its chunks fit the step's prompt-scoring rows.
	promptLP  bool
	heapIndex int
	kv        kvcache.Seq
	// Speculation limits: maxOutput is Params.MaxTokens, minOutput Params.MinTokens (no
	// proposal while EOS may be banned), noSpec for requests that never speculate (a
	// grammar, whose matcher advances one accepted token at a time on the host).
	maxOutput, minOutput int
	noSpec               bool
	// draft are the proposals of the pending plan (nil when none).
	draft []int32
	// images are the request's image groups (nil: none): a chunk never ends inside one.
	images *imagePlan
}

// Scheduler decides, step by step, which requests run and how many tokens each computes,
// and owns their KV blocks (vLLM v1's model: no prefill or decode phases, running requests
// first within the token budget, then waiting ones; chunked prefill; preemption by
// recompute). It never touches tensors.
//
// Protocol, on one goroutine (the engine's step loop): Add requests at any step boundary;
// Schedule returns a plan; the runner executes it; UpdateFromOutput reports the sampled
// tokens; Finish removes a request (stopped, length, aborted) at any step boundary or
// between Schedule and UpdateFromOutput. A Scheduler is not safe for concurrent use.
type Scheduler struct {
	cfg     SchedulerConfig
	kv      *kvcache.Manager
	log     *slog.Logger
	reqs    map[string]*seqState
	running []*seqState
	waiting waitQueue
	nextOrd uint64
	// maxChunk caps one request's tokens per step: the token budget and, with chunked
	// prefill, what the sliding-window pool can hold for one sequence (tiny caches).
	maxChunk int

	pending     *StepPlan
	pendingSeqs []*seqState // parallel to pending.Seqs
	scheduled   []*seqState // scratch
	// Reused by every plan (a plan is valid until the next Schedule call): at 256
	// sequences the block tables are ~150 KB a step, not worth allocating and zeroing.
	planIDs  []int32
	planSeqs []ScheduledSeq
	planPre  []string

	numPreemptions int64

	// propose, when set, gives up to max speculative proposals to follow a sequence's
	// tokens; specTokens is the most per step (--speculative-config).
	propose    Proposer
	specTokens int
}

// Proposer returns at most max proposed tokens to follow tokens (a request's prompt and
// outputs so far); nil or empty when it has none. It must not keep tokens.
type Proposer func(tokens []int32, max int) []int32

// SetSpeculation makes running decodes carry up to k proposals from propose each step
// (k = 0 turns speculation off).
func (s *Scheduler) SetSpeculation(k int, propose Proposer) {
	s.specTokens, s.propose = k, propose
	if k <= 0 {
		s.specTokens, s.propose = 0, nil
	}
}

// NewScheduler builds a scheduler over a KV cache manager, which it then owns.
func NewScheduler(cfg SchedulerConfig, kv *kvcache.Manager) (*Scheduler, error) {
	if kv == nil {
		return nil, fmt.Errorf("%w: kv cache manager is nil", ErrInvalidRequest)
	}
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	maxChunk := cfg.MaxNumBatchedTokens
	if !cfg.DisableChunkedPrefill {
		maxChunk = min(maxChunk, kv.MaxChunkTokens())
	}
	return &Scheduler{
		cfg:      cfg,
		kv:       kv,
		log:      cfg.Logger,
		reqs:     make(map[string]*seqState),
		waiting:  waitQueue{priority: cfg.Policy == PolicyPriority},
		maxChunk: maxChunk,
	}, nil
}

// Config returns the configuration with defaults applied.
func (s *Scheduler) Config() SchedulerConfig { return s.cfg }

// KV returns the KV cache manager (page size, usage, leak checks).
func (s *Scheduler) KV() *kvcache.Manager { return s.kv }

// NumRunning and NumWaiting count the requests in each state.
func (s *Scheduler) NumRunning() int { return len(s.running) }
func (s *Scheduler) NumWaiting() int { return s.waiting.Len() }

// HasUnfinished reports whether any request is running or waiting.
func (s *Scheduler) HasUnfinished() bool { return len(s.reqs) > 0 }

// Stats returns the scheduler's figures for metrics.
func (s *Scheduler) Stats() Stats {
	kv := s.kv.Stats()
	return Stats{
		NumRunning:         len(s.running),
		NumWaiting:         s.waiting.Len(),
		KVCacheUsage:       kv.Usage(),
		PrefixCacheQueries: kv.PrefixQueries,
		PrefixCacheHits:    kv.PrefixHits,
		NumPreemptions:     s.numPreemptions,
	}
}

// Add queues a request. It checks what the scheduler can: a non-empty unique ID, a
// non-empty prompt no longer than MaxModelLen, and that the request's longest possible KV
// (prompt plus Params.MaxTokens, capped by MaxModelLen; MaxTokens 0 means up to
// MaxModelLen) fits the cache on its own, so that it can always finish; otherwise it
// returns an error wrapping ErrInvalidRequest, ErrPromptTooLong or kvcache.ErrKVCacheFull.
// The prompt is copied.
func (s *Scheduler) Add(req *Request) error {
	switch {
	case req == nil:
		return fmt.Errorf("%w: request is nil", ErrInvalidRequest)
	case req.ID == "":
		return fmt.Errorf("%w: ID is empty", ErrInvalidRequest)
	case s.reqs[req.ID] != nil:
		return fmt.Errorf("%w: ID %q is already in use", ErrInvalidRequest, req.ID)
	case len(req.PromptIDs) == 0:
		return fmt.Errorf("%w: PromptIDs is empty", ErrInvalidRequest)
	case len(req.PromptIDs) > s.cfg.MaxModelLen:
		return fmt.Errorf("%w: PromptIDs has %d tokens, MaxModelLen is %d", ErrPromptTooLong, len(req.PromptIDs), s.cfg.MaxModelLen)
	case req.Params.MaxTokens < 0:
		return fmt.Errorf("%w: Params.MaxTokens %d must be >= 0", ErrInvalidRequest, req.Params.MaxTokens)
	}
	n := len(req.PromptIDs)
	maxLen := s.cfg.MaxModelLen
	if req.Params.MaxTokens > 0 {
		maxLen = min(maxLen, n+req.Params.MaxTokens)
	}
	// The last sampled token is never computed, unless the prompt alone reaches the limit.
	kvTokens := max(n, maxLen-1)
	chunk := s.maxChunk
	if s.cfg.DisableChunkedPrefill {
		chunk = kvTokens // a recomputation after preemption runs in one step too
	}
	if err := s.kv.CheckFits(kvTokens, chunk); err != nil {
		return fmt.Errorf("request %q: %w", req.ID, err)
	}
	tokens := make([]int32, n, n+min(maxLen-n, 64))
	copy(tokens, req.PromptIDs)
	r := &seqState{
		id:        req.ID,
		tokens:    tokens,
		numPrompt: n,
		numCached: -1,
		priority:  req.Priority,
		order:     s.nextOrd,
		promptLP:  req.Params.PromptLogprobs != nil,
		maxOutput: req.Params.MaxTokens,
		minOutput: req.Params.MinTokens,
		noSpec:    req.Params.Grammar != nil,
	}
	s.nextOrd++
	s.reqs[r.id] = r
	heap.Push(&s.waiting, r)
	return nil
}

// Schedule plans the next step. It returns an error wrapping ErrSchedulerState when the
// previous plan has not been reported through UpdateFromOutput. A plan with no Seqs means
// there is nothing to run (its Preempted list may still be non-empty). The plan's slices
// are reused by the next plan: they are valid until the next Schedule call.
func (s *Scheduler) Schedule() (*StepPlan, error) {
	if s.pending != nil {
		return nil, fmt.Errorf("%w: Schedule called before UpdateFromOutput of the previous plan", ErrSchedulerState)
	}
	plan := &StepPlan{PageSize: s.kv.PageSize(), Preempted: s.planPre[:0]}
	budget := s.cfg.MaxNumBatchedTokens
	promptBudget := s.cfg.MaxPromptLogprobRows
	if promptBudget == 0 {
		promptBudget = math.MaxInt
	}
	s.scheduled = s.scheduled[:0]
	imageBudget := s.cfg.MaxImagesPerStep

	// Running requests first, in admission order.
	for i := 0; i < len(s.running) && budget > 0; {
		r := s.running[i]
		n := s.capPromptRows(r, r.numComputed, s.numNewTokens(r, budget), promptBudget)
		n = cutImages(r, r.numComputed, n, &imageBudget)
		if n == 0 {
			i++
			continue
		}
		// A decode may carry proposals, leaving a token of the budget for every running
		// request after it; without the blocks for them it decodes plainly.
		if k := s.numProposals(r, n, budget-(len(s.running)-i-1)); k > 0 {
			if d := s.propose(r.tokens, k); len(d) > 0 {
				d = d[:min(len(d), k)]
				if err := s.kv.Allocate(&r.kv, nil, r.numComputed, n+len(d)); err == nil {
					r.draft = append(r.draft[:0], d...)
					n += len(d)
				} else if !errors.Is(err, kvcache.ErrNoFreeBlocks) {
					return nil, fmt.Errorf("engine: allocating blocks for %q: %w", r.id, err)
				}
			}
		}
		for {
			err := s.kv.Allocate(&r.kv, nil, r.numComputed, n)
			if err == nil {
				break
			}
			if !errors.Is(err, kvcache.ErrNoFreeBlocks) {
				return nil, fmt.Errorf("engine: allocating blocks for %q: %w", r.id, err)
			}
			victim := s.pickVictim()
			vi := s.indexOfRunning(victim)
			budget += victim.numScheduled
			s.preempt(victim, vi)
			plan.Preempted = append(plan.Preempted, victim.id)
			if victim == r {
				n = 0
				break
			}
			if vi < i {
				i--
			}
		}
		if n == 0 {
			break // r itself was preempted: nothing after it can fit either
		}
		r.numScheduled = n
		budget -= n
		promptBudget -= s.promptRows(r, r.numComputed, n)
		s.scheduled = append(s.scheduled, r)
		i++
	}
	s.scheduled = s.dropPreempted(s.scheduled)

	// Then waiting requests, unless this step had to preempt (blocks are short).
	if len(plan.Preempted) == 0 {
		for s.waiting.Len() > 0 && budget > 0 && len(s.running) < s.cfg.MaxNumSeqs {
			r := s.waiting.peek()
			var hit kvcache.Hit
			if !r.promptLP {
				hit = s.kv.Lookup(&r.kv, r.tokens)
			}
			computed := hit.NumTokens
			n := min(len(r.tokens), s.maxComputable(r)) - computed
			if n <= 0 {
				// Cannot happen: preemption and UpdateFromOutput never leave a request at
				// its length limit in the queue. Refuse rather than loop on it.
				return nil, fmt.Errorf("%w: waiting request %q has no token to compute", ErrSchedulerState, r.id)
			}
			if n > budget || n > s.maxChunk {
				if s.cfg.DisableChunkedPrefill {
					break
				}
				n = min(n, budget, s.maxChunk)
			}
			if n = s.capPromptRows(r, computed, n, promptBudget); n == 0 {
				break // FCFS: the head of the queue waits for the next step's scoring rows
			}
			spare := imageBudget
			if n = cutImages(r, computed, n, &spare); n == 0 {
				break // FCFS: the head of the queue waits for a step with room for its image
			}
			if err := s.kv.Allocate(&r.kv, &hit, computed, n); err != nil {
				if errors.Is(err, kvcache.ErrNoFreeBlocks) {
					break // FCFS: nobody overtakes the head of the queue
				}
				return nil, fmt.Errorf("engine: allocating blocks for %q: %w", r.id, err)
			}
			heap.Pop(&s.waiting)
			imageBudget = spare
			s.kv.RecordPrefixQuery(len(r.tokens), computed)
			if r.numCached < 0 {
				r.numCached = computed
			}
			r.numComputed = computed
			r.status = statusRunning
			r.admitted = true
			r.numScheduled = n
			budget -= n
			promptBudget -= s.promptRows(r, computed, n)
			s.running = append(s.running, r)
			s.scheduled = append(s.scheduled, r)
		}
	}
	if len(plan.Preempted) > 0 {
		s.log.Debug("preempted requests", "count", len(plan.Preempted), "running", len(s.running),
			"waiting", s.waiting.Len(), "kv_usage", s.kv.Usage())
	}
	s.buildPlan(plan, budget)
	s.planPre = plan.Preempted[:0]
	if len(plan.Preempted) == 0 {
		plan.Preempted = nil
	}
	return plan, nil
}

// numNewTokens is how many tokens r computes this step within budget.
func (s *Scheduler) numNewTokens(r *seqState, budget int) int {
	n := min(len(r.tokens), s.maxComputable(r)) - r.numComputed
	return max(0, min(n, budget, s.maxChunk))
}

// numProposals is how many proposals r may carry when it computes n tokens with budget
// left: only a decode (its one uncomputed token is the last sampled), past min_tokens, and
// never so many that the step could emit more than max_tokens or reach past MaxModelLen.
func (s *Scheduler) numProposals(r *seqState, n, budget int) int {
	if s.propose == nil || r.noSpec || n != 1 || r.numComputed != len(r.tokens)-1 || r.maxOutput == 0 {
		return 0
	}
	out := len(r.tokens) - r.numPrompt
	if out < r.minOutput || out == 0 {
		return 0
	}
	k := min(s.specTokens, budget-1, r.maxOutput-out-1, s.cfg.MaxModelLen-1-len(r.tokens))
	return max(k, 0)
}

// promptRows is how many prompt positions a prompt-scoring request scores when it
// computes n tokens from position start: positions p whose next token is a prompt token.
func (s *Scheduler) promptRows(r *seqState, start, n int) int {
	if !r.promptLP {
		return 0
	}
	return max(0, min(start+n, r.numPrompt-1)-start)
}

// capPromptRows cuts n so that r's scored prompt positions fit budget.
func (s *Scheduler) capPromptRows(r *seqState, start, n, budget int) int {
	if s.promptRows(r, start, n) <= budget {
		return n
	}
	return max(0, budget)
}

// maxComputable is the most positions whose KV r may compute: a request stops once it
// holds MaxModelLen tokens, so the token at MaxModelLen-1 is never computed, except that a
// prompt of exactly MaxModelLen tokens is computed to sample its one output token.
func (s *Scheduler) maxComputable(r *seqState) int {
	return max(r.numPrompt, s.cfg.MaxModelLen-1)
}

// pickVictim chooses whom to preempt: FCFS the last admitted, priority the running request
// with the highest priority value, latest arrival among equals.
func (s *Scheduler) pickVictim() *seqState {
	v := s.running[len(s.running)-1]
	if s.cfg.Policy == PolicyPriority {
		for _, r := range s.running {
			if r.priority > v.priority || (r.priority == v.priority && r.order > v.order) {
				v = r
			}
		}
	}
	return v
}

func (s *Scheduler) indexOfRunning(r *seqState) int {
	for i := len(s.running) - 1; i >= 0; i-- {
		if s.running[i] == r {
			return i
		}
	}
	return -1
}

// preempt frees r's blocks and returns it to the waiting queue; its tokens (prompt and
// outputs) are kept and recomputed when it is admitted again.
func (s *Scheduler) preempt(r *seqState, runIdx int) {
	s.kv.Free(&r.kv)
	s.running = append(s.running[:runIdx], s.running[runIdx+1:]...)
	r.numComputed, r.numScheduled = 0, 0
	r.status = statusWaiting
	heap.Push(&s.waiting, r)
	s.numPreemptions++
}

// dropPreempted removes from list the requests that a later preemption took back.
func (s *Scheduler) dropPreempted(list []*seqState) []*seqState {
	out := list[:0]
	for _, r := range list {
		if r.status == statusRunning {
			out = append(out, r)
		}
	}
	return out
}

// buildPlan turns the scheduled requests into plain data, with one backing array for all
// block tables.
func (s *Scheduler) buildPlan(plan *StepPlan, budgetLeft int) {
	plan.NumBatchedTokens = s.cfg.MaxNumBatchedTokens - budgetLeft
	if len(s.scheduled) == 0 {
		return
	}
	page := s.kv.PageSize()
	numIDs := 0
	for _, r := range s.scheduled {
		nb := divCeil(r.numComputed+r.numScheduled, page) // proposals included
		if s.kv.HasGlobal() {
			numIDs += nb
		}
		if s.kv.HasSliding() {
			numIDs += nb - s.kv.SlidingFirstBlock(r.numComputed)
		}
	}
	if cap(s.planIDs) < numIDs {
		s.planIDs = make([]int32, 0, numIDs+numIDs/4)
	}
	ids := s.planIDs[:0]
	if cap(s.planSeqs) < len(s.scheduled) {
		s.planSeqs = make([]ScheduledSeq, len(s.scheduled), len(s.scheduled)+len(s.scheduled)/4)
	}
	plan.Seqs = s.planSeqs[:len(s.scheduled)]
	for i, r := range s.scheduled {
		start, end := r.numComputed, r.numComputed+r.numScheduled-len(r.draft)
		nb := divCeil(end+len(r.draft), page)
		ps := &plan.Seqs[i]
		*ps = ScheduledSeq{
			RequestID:       r.id,
			TokenIDs:        r.tokens[start:end:end],
			StartPos:        start,
			Sample:          end == len(r.tokens),
			NumPromptTokens: r.numPrompt,
			NumOutputTokens: len(r.tokens) - r.numPrompt,
			NumCachedTokens: max(r.numCached, 0),
			Admitted:        r.admitted,
			Draft:           r.draft,
		}
		r.admitted = false
		if s.kv.HasGlobal() {
			ids = append(ids, r.kv.GlobalBlocks()[:nb]...)
			ps.GlobalBlocks = ids[len(ids)-nb : len(ids) : len(ids)]
		}
		if s.kv.HasSliding() {
			first := s.kv.SlidingFirstBlock(start)
			ids = append(ids, r.kv.SlidingBlocks()[first:nb]...)
			ps.SlidingBlocks = ids[len(ids)-(nb-first) : len(ids) : len(ids)]
			ps.SlidingFirstBlock = first
		}
	}
	s.pending = plan
	s.pendingSeqs = append(s.pendingSeqs[:0], s.scheduled...)
}

// UpdateFromOutput records a finished step: sampled[i] is the token sampled for
// plan.Seqs[i] (ignored where Sample is false), so len(sampled) must equal len(plan.Seqs).
// It commits the computed KV (caching full blocks, freeing sliding blocks that left the
// window) and appends the sampled tokens. Requests that reach MaxModelLen tokens are
// finished here, their blocks freed, and their IDs returned: the engine ends their streams
// with FinishLength (unless a stop on the same token takes precedence) and need not call
// Finish. Requests finished since Schedule are skipped.
func (s *Scheduler) UpdateFromOutput(plan *StepPlan, sampled []int32) (lengthCapped []string, err error) {
	return s.UpdateFromOutputSpec(plan, sampled, nil)
}

// UpdateFromOutputSpec is UpdateFromOutput for a plan with proposals: accepted[i] are the
// proposals of plan.Seqs[i] that verification accepted (a prefix of its Draft; nil for a
// sequence without proposals, or accepted itself nil), and sampled[i] the token after
// them. Only the K/V up to the accepted run counts as computed: the blocks holding just
// rejected tokens go back to the pool, and none of them is registered in the prefix cache.
func (s *Scheduler) UpdateFromOutputSpec(plan *StepPlan, sampled []int32, accepted [][]int32) (lengthCapped []string, err error) {
	if plan == nil || plan != s.pending {
		return nil, fmt.Errorf("%w: UpdateFromOutput of a plan that is not the pending one", ErrSchedulerState)
	}
	if len(sampled) != len(plan.Seqs) || accepted != nil && len(accepted) != len(plan.Seqs) {
		return nil, fmt.Errorf("%w: %d sampled tokens (%d accepted runs) for %d scheduled sequences", ErrInvalidRequest, len(sampled), len(accepted), len(plan.Seqs))
	}
	for i := range plan.Seqs {
		if d := plan.Seqs[i].Draft; accepted != nil && len(accepted[i]) > 0 && (len(accepted[i]) > len(d) || !slices.Equal(accepted[i], d[:len(accepted[i])])) {
			return nil, fmt.Errorf("%w: %q: accepted %v is not a prefix of the proposals %v", ErrInvalidRequest, plan.Seqs[i].RequestID, accepted[i], d)
		}
	}
	s.pending = nil
	for i := range plan.Seqs {
		ps, r := &plan.Seqs[i], s.pendingSeqs[i]
		if r.status != statusRunning {
			continue // finished (aborted) since Schedule
		}
		var acc []int32
		if accepted != nil {
			acc = accepted[i]
		}
		rejected := len(r.draft) - len(acc)
		r.numComputed += r.numScheduled - rejected
		r.numScheduled = 0
		r.draft = r.draft[:0]
		if ps.Sample {
			r.tokens = append(append(r.tokens, acc...), sampled[i])
		}
		if rejected > 0 {
			if err := s.kv.Truncate(&r.kv, r.numComputed); err != nil {
				return lengthCapped, fmt.Errorf("engine: releasing the rejected proposals of %q: %w", r.id, err)
			}
		}
		if err := s.kv.Commit(&r.kv, r.tokens, r.numComputed); err != nil {
			return lengthCapped, fmt.Errorf("engine: committing %q: %w", r.id, err)
		}
		if ps.Sample && len(r.tokens) >= s.cfg.MaxModelLen {
			s.finish(r)
			lengthCapped = append(lengthCapped, r.id)
		}
	}
	clear(s.pendingSeqs)
	s.pendingSeqs = s.pendingSeqs[:0]
	return lengthCapped, nil
}

// Abandon retires the pending plan of a step that failed on the device: nothing is
// committed — no K/V counted as computed, no prefix-cache hash registered, no token
// appended — so the requests' state is what it was before the step. The blocks allocated
// for the step stay in the tables until the requests are finished or preempted.
func (s *Scheduler) Abandon(plan *StepPlan) error {
	if plan == nil || plan != s.pending {
		return fmt.Errorf("%w: Abandon of a plan that is not the pending one", ErrSchedulerState)
	}
	s.pending = nil
	for _, r := range s.pendingSeqs {
		r.numScheduled = 0
		if len(r.draft) > 0 {
			// The next step may carry fewer proposals: its tables must not be longer.
			r.draft = r.draft[:0]
			if err := s.kv.Truncate(&r.kv, r.numComputed); err != nil {
				return err
			}
		}
	}
	clear(s.pendingSeqs)
	s.pendingSeqs = s.pendingSeqs[:0]
	return nil
}

// Finish removes a request for any reason (stop, length, abort, client gone) and frees its
// blocks; their full blocks stay in the prefix cache. Calling it between Schedule and
// UpdateFromOutput is allowed: the step's result for it is then dropped. It returns an
// error wrapping ErrUnknownRequest for an ID that is not live.
func (s *Scheduler) Finish(id string) error {
	r := s.reqs[id]
	if r == nil {
		return fmt.Errorf("%w: %q", ErrUnknownRequest, id)
	}
	s.finish(r)
	return nil
}

func (s *Scheduler) finish(r *seqState) {
	switch r.status {
	case statusRunning:
		i := s.indexOfRunning(r)
		s.running = append(s.running[:i], s.running[i+1:]...)
	case statusWaiting:
		heap.Remove(&s.waiting, r.heapIndex)
	}
	s.kv.Free(&r.kv)
	r.status = statusFinished
	r.numScheduled = 0
	r.draft = nil
	delete(s.reqs, r.id)
}

// waitQueue is a heap of waiting requests: by Add order (FCFS), or by priority then Add
// order. A preempted request keeps its Add order, so under FCFS it returns to the front.
type waitQueue struct {
	priority bool
	items    []*seqState
}

func (q *waitQueue) Len() int { return len(q.items) }
func (q *waitQueue) Less(i, j int) bool {
	a, b := q.items[i], q.items[j]
	if q.priority && a.priority != b.priority {
		return a.priority < b.priority
	}
	return a.order < b.order
}
func (q *waitQueue) Swap(i, j int) {
	q.items[i], q.items[j] = q.items[j], q.items[i]
	q.items[i].heapIndex, q.items[j].heapIndex = i, j
}
func (q *waitQueue) Push(x any) {
	r := x.(*seqState)
	r.heapIndex = len(q.items)
	q.items = append(q.items, r)
}
func (q *waitQueue) Pop() any {
	n := len(q.items) - 1
	r := q.items[n]
	q.items[n] = nil
	q.items = q.items[:n]
	r.heapIndex = -1
	return r
}
func (q *waitQueue) peek() *seqState { return q.items[0] }

func divCeil(a, b int) int { return (a + b - 1) / b }
