package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/tpuserve/tpuserve/internal/plan"
	"github.com/tpuserve/tpuserve/kvcache"
	"github.com/tpuserve/tpuserve/model"
	"github.com/tpuserve/tpuserve/model/vision"
)

// Engine errors returned by Submit (besides the scheduler's ErrInvalidRequest,
// ErrPromptTooLong and kvcache.ErrKVCacheFull).
var (
	// ErrQueueFull: the waiting queue is at its limit; retry later (HTTP 429).
	ErrQueueFull = errors.New("engine: request queue is full")
	// ErrClosed: the engine is shutting down.
	ErrClosed = errors.New("engine: closed")
)

// Precompile modes: which step programs are compiled before serving.
const (
	PrecompileNone = "none"
	PrecompileAll  = "all" // every decode bucket and every single-sequence prefill bucket
)

// Config configures an Engine. Zero fields take the documented defaults.
type Config struct {
	// Model is the single-device model; Sharded the tensor-parallel one. Set exactly one.
	Model   *model.Model
	Sharded *model.ShardedModel
	// NewDecoder makes each request's incremental detokenizer (required).
	NewDecoder NewDecoderFunc
	// Scheduler limits; MaxModelLen defaults to min(8192, the model's max positions).
	Scheduler SchedulerConfig
	// PageSize is the number of positions per KV block (default 16).
	PageSize int
	// KVCacheBytes is the device memory for the KV pools (default 256 MiB).
	KVCacheBytes int64
	// KVCacheDType is how the pools store K and V (--kv-cache-dtype): "auto" or "" (the
	// compute dtype), "int8" or "fp8" (1 byte per element with a scale per position and kv
	// head: about twice the tokens in the same KV budget; model/kvquant.go). Not with a
	// sharded model.
	KVCacheDType string
	// DisablePrefixCaching turns the prefix cache off.
	DisablePrefixCaching bool
	// MaxQueueLen bounds the waiting queue: Submit returns ErrQueueFull beyond it
	// (default 4 × MaxNumSeqs; negative = unbounded).
	MaxQueueLen int
	// SegmentLen is the attention row length of steps with more tokens than MaxNumSeqs
	// (default 16).
	SegmentLen int
	// MinTokenBucket is the smallest token and sampling-row bucket of the step set
	// (default 1; accelerators: plan.DefaultMinTokens).
	MinTokenBucket int
	// PromptLogprobRows is the most prompt positions scored per step (default 64).
	PromptLogprobRows int
	// Precompile is PrecompileAll (default) or PrecompileNone.
	Precompile string
	// Speculative turns on speculative decoding (--speculative-config; nil: off): decodes
	// carry up to NumSpeculativeTokens proposals, verified on the device (verify.go).
	Speculative *SpeculativeConfig
	// DraftModel is the draft of Speculative method draft_model (loaded by the caller from
	// Speculative.Model); it must share the target's vocabulary.
	DraftModel *model.Model
	Logger     *slog.Logger
	// verify are the verifier's test hooks (the residual ablation).
	verify verifyOptions
	// Vision is the vision tower of a vision model (nil: requests carry no images). It
	// runs on the model's device in the model's dtype, before the step whose prefill
	// consumes the images; its programs are part of the step set. With Sharded it is
	// replicated: its features are a replicated input of every chip's step program (the
	// same tensor on a virtual mesh, a copy on each device on xla); it must be on the
	// sharded model's backend.
	Vision *vision.Encoder
	// MaxImagesPerStep is the most images one step encodes and splices (default 4 with
	// Vision): the step programs' image-embedding rows are MaxImagesPerStep·
	// mm_tokens_per_image.
	MaxImagesPerStep int
}

// Engine runs continuous batching over a model. Create it with New; Close it when done.
type Engine struct {
	cfg  Config
	mcfg *model.Config
	log  *slog.Logger
	dev  stepDevice
	eos  map[int32]bool
	// vision is Config.Vision; maxImages the step set's images per step.
	vision    *vision.Encoder
	maxImages int

	mu      sync.Mutex
	cond    *sync.Cond
	sched   *Scheduler
	reqs    map[string]*reqState
	closed  bool
	rng     *rand.Rand
	done    chan struct{}
	stepErr error
	// broken is set when the device could not be restored after a failed step.
	broken     error
	stepTokens int64
	// onStep, when set, is told each step's token count (vllm:iteration_tokens_total).
	onStep func(tokens int)
	// spec counts speculative verifications (zero without speculation); specLog logs them.
	spec    SpecStats
	specLog specLogger
}

// SetStepObserver makes the engine call f with the tokens computed by every step (from the
// step loop, under the engine's lock: f must be quick).
func (e *Engine) SetStepObserver(f func(tokens int)) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.onStep = f
}

// New sizes the KV cache, allocates the pools, compiles the step programs and starts the
// step loop.
func New(cfg Config) (*Engine, error) {
	var dev deviceModel
	kvMode, err := model.ParseKVCacheDType(cfg.KVCacheDType)
	if err != nil {
		return nil, fmt.Errorf("%w: Config.KVCacheDType: %w", ErrInvalidRequest, err)
	}
	switch {
	case cfg.Model != nil && cfg.Sharded == nil:
		m := cfg.Model
		if kvMode != m.Config.KVCache {
			// A copy sharing the weights: the cache setting is this engine's, and the
			// caller's model (maybe shared with other engines) keeps its own.
			c := *m
			c.Config.KVCache = kvMode
			m = &c
		}
		dev = newPlainDevice(m)
	case cfg.Sharded != nil && cfg.Model == nil && kvMode.Quantized():
		return nil, fmt.Errorf("%w: Config.KVCacheDType %s: a quantized KV cache with tensor parallelism is not supported (the sharded pools hold K and V only)", ErrInvalidRequest, cfg.KVCacheDType)
	case cfg.Sharded != nil && cfg.Model == nil:
		dev = newShardedDevice(cfg.Sharded)
	default:
		return nil, fmt.Errorf("%w: set exactly one of Config.Model and Config.Sharded", ErrInvalidRequest)
	}
	if cfg.NewDecoder == nil {
		return nil, fmt.Errorf("%w: Config.NewDecoder is required", ErrInvalidRequest)
	}
	mc := dev.config()
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.PageSize == 0 {
		cfg.PageSize = 16
	}
	if cfg.KVCacheBytes == 0 {
		cfg.KVCacheBytes = 256 << 20
	}
	if cfg.SegmentLen == 0 {
		cfg.SegmentLen = 16
	}
	if cfg.Precompile == "" {
		cfg.Precompile = PrecompileAll
	}
	sc := &cfg.Scheduler
	if sc.MaxModelLen == 0 {
		sc.MaxModelLen = min(8192, mc.MaxPositionEmbeddings)
	}
	if sc.MaxModelLen > mc.MaxPositionEmbeddings {
		return nil, fmt.Errorf("%w: max model length %d exceeds the model's max_position_embeddings %d", ErrInvalidRequest, sc.MaxModelLen, mc.MaxPositionEmbeddings)
	}
	if err := sc.setDefaults(); err != nil {
		return nil, err
	}
	if cfg.MaxQueueLen == 0 {
		cfg.MaxQueueLen = 4 * sc.MaxNumSeqs
	}
	if sc.Logger == nil {
		sc.Logger = cfg.Logger
	}
	specTokens, err := checkSpeculative(&cfg)
	if err != nil {
		return nil, err
	}
	imageTokens := 0
	if cfg.Vision != nil {
		vc := cfg.Vision.Config()
		switch {
		case cfg.Sharded != nil && cfg.Vision.Backend() != cfg.Sharded.Backend:
			// Its features feed the chips' step program as they are (virtual mesh) or copied
			// per device: they must come from the same backend.
			return nil, fmt.Errorf("%w: the vision tower is on another backend instance (%s) than the sharded model (%s): load it on Config.Sharded.Backend",
				ErrInvalidRequest, cfg.Vision.Backend().Description(), cfg.Sharded.Backend.Description())
		case !mc.Vision:
			return nil, fmt.Errorf("%w: Config.Vision is set, the model's config has no vision_config", ErrInvalidRequest)
		case vc.TextHiddenSize != mc.HiddenSize:
			return nil, fmt.Errorf("%w: the vision tower projects to %d, the model's hidden size is %d", ErrInvalidRequest, vc.TextHiddenSize, mc.HiddenSize)
		case cfg.Vision.DType() != dev.dtype():
			return nil, fmt.Errorf("%w: the vision tower computes in %s, the model in %s", ErrInvalidRequest, cfg.Vision.DType(), dev.dtype())
		}
		imageTokens = vc.MMTokensPerImage
		if cfg.MaxImagesPerStep == 0 {
			cfg.MaxImagesPerStep = 4
		}
	} else {
		cfg.MaxImagesPerStep = 0
	}
	sc.MaxImagesPerStep = cfg.MaxImagesPerStep
	set, err := plan.NewStepSet(mc, plan.StepOptions{
		MaxNumSeqs: sc.MaxNumSeqs, MaxNumBatchedTokens: sc.MaxNumBatchedTokens, MaxModelLen: sc.MaxModelLen,
		PageSize: cfg.PageSize, SegmentLen: cfg.SegmentLen, MinTokens: cfg.MinTokenBucket, PromptLogprobRows: cfg.PromptLogprobRows,
		MaxImagesPerStep: cfg.MaxImagesPerStep, ImageTokens: imageTokens,
		SpecTokens: specTokens, DraftModel: cfg.DraftModel != nil,
	})
	if err != nil {
		if specTokens > 0 {
			return nil, fmt.Errorf("%w: speculative config num_speculative_tokens %d: %w", ErrInvalidRequest, specTokens, err)
		}
		return nil, fmt.Errorf("%w: %w", ErrInvalidRequest, err)
	}
	sc.MaxPromptLogprobRows = set.MaxPromptRows()
	elemBytes, scaleBytes := model.KVElementBytes(mc, dev.dtype())
	spec := kvcache.MemorySpec{
		PageSize: cfg.PageSize, NumGlobalLayers: mc.NumGlobalLayers(), NumSlidingLayers: mc.NumSlidingLayers(),
		KVHeads: dev.kvHeadsPerDevice(), HeadDim: mc.HeadDim, DTypeBytes: elemBytes, ScaleBytes: scaleBytes,
		SlidingWindow: mc.SlidingWindow, MaxNumSeqs: sc.MaxNumSeqs, MaxNumBatchedTokens: sc.MaxNumBatchedTokens,
		MaxModelLen: sc.MaxModelLen, EnablePrefixCaching: !cfg.DisablePrefixCaching,
	}
	budget := cfg.KVCacheBytes
	if d := cfg.DraftModel; d != nil {
		// The draft's pools share the blocks: each block costs the target's and the draft's.
		dspec := spec
		dspec.NumGlobalLayers, dspec.NumSlidingLayers = d.Config.NumGlobalLayers(), d.Config.NumSlidingLayers()
		dspec.KVHeads, dspec.HeadDim, dspec.DTypeBytes, dspec.ScaleBytes = d.Config.NumKeyValueHeads, d.Config.HeadDim, d.DType.Size(), 0
		budget = splitKVBudget(budget, spec, dspec)
	}
	kvCfg, err := kvcache.ConfigForBudget(budget, spec)
	if err != nil {
		if cfg.DraftModel != nil {
			return nil, fmt.Errorf("%w: speculative config: the draft model does not fit the memory plan: its KV pools on the same blocks leave the target %d of %d bytes: %w",
				ErrInvalidRequest, budget, cfg.KVCacheBytes, err)
		}
		return nil, fmt.Errorf("engine: sizing the KV cache: %w", err)
	}
	kv, err := kvcache.NewManager(kvCfg)
	if err != nil {
		return nil, fmt.Errorf("engine: %w", err)
	}
	sched, err := NewScheduler(*sc, kv)
	if err != nil {
		return nil, err
	}
	if sp := cfg.Speculative; sp != nil {
		propose := ngramProposer(sp.PromptLookupMin, sp.PromptLookupMax)
		if sp.Method == SpecMethodDraftModel {
			propose = draftProposer(specTokens)
		}
		sched.SetSpeculation(specTokens, propose)
		cfg.Logger.Info("speculative decoding", "config", sp.String())
	}
	layout := model.KVLayout{PageSize: cfg.PageSize, NumGlobalPages: max(2, kvCfg.NumGlobalBlocks), NumSlidingPages: max(2, kvCfg.NumSlidingBlocks)}
	run, err := newRunner(dev, layout, set, cfg.Logger, cfg.verify)
	if err == nil {
		run.vision = cfg.Vision
	}
	if err != nil {
		return nil, fmt.Errorf("engine: %w", err)
	}
	if cfg.DraftModel != nil {
		if run.draft, err = newDraftRunner(cfg.DraftModel, layout, set); err != nil {
			run.close()
			return nil, fmt.Errorf("engine: %w", err)
		}
	}
	cfg.Logger.Info("step programs", "count", len(set.Programs()), "token_buckets_max", set.MaxTokens(), "precompile", cfg.Precompile)
	cfg.Logger.Info("KV cache", "pool_bytes_per_device", poolBytes(mc, layout, dev), "budget", cfg.KVCacheBytes, "page_size", cfg.PageSize,
		"global_blocks", kvCfg.NumGlobalBlocks, "sliding_blocks", kvCfg.NumSlidingBlocks, "prefix_caching", !cfg.DisablePrefixCaching,
		"kv_cache_dtype", model.KVCacheDTypeName(mc.KVCache))
	if cfg.Precompile == PrecompileAll {
		if err := run.precompile(); err != nil {
			run.close()
			return nil, fmt.Errorf("engine: %w", err)
		}
	} else if cfg.Precompile != PrecompileNone {
		run.close()
		return nil, fmt.Errorf("%w: Precompile %q (want %s or %s)", ErrInvalidRequest, cfg.Precompile, PrecompileAll, PrecompileNone)
	}
	return start(cfg, mc, sched, run), nil
}

// stepDevice runs steps: the real one is *runner; tests use fakes to measure the host
// side and to inject faults.
type stepDevice interface {
	run(in *stepInput) (*stepOutput, error)
	resetPools() error
	// counts returns (programs compiled, of which after start-up).
	counts() (compiled, serving int64)
	close()
}

// start builds the Engine around a scheduler and a device and starts the step loop.
func start(cfg Config, mc *model.Config, sched *Scheduler, dev stepDevice) *Engine {
	e := &Engine{
		cfg: cfg, mcfg: mc, log: cfg.Logger, dev: dev, sched: sched, reqs: map[string]*reqState{},
		vision: cfg.Vision, maxImages: cfg.MaxImagesPerStep,
		rng: rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 0x7470)), done: make(chan struct{}), eos: map[int32]bool{},
	}
	for _, id := range mc.EOSTokenIDs {
		e.eos[int32(id)] = true
	}
	if sp := cfg.Speculative; sp != nil {
		e.spec.AcceptedPerPos = make([]int64, sp.NumSpeculativeTokens)
	}
	e.cond = sync.NewCond(&e.mu)
	go e.loop()
	return e
}

// validate checks what the scheduler does not: sampling ranges and token ids.
func (e *Engine) validate(req *Request) error {
	p := &req.Params
	vocab := e.mcfg.VocabSize
	for i, id := range req.PromptIDs {
		if id < 0 || int(id) >= vocab {
			return fmt.Errorf("%w: prompt token %d (at %d) is outside the vocabulary [0, %d)", ErrInvalidRequest, id, i, vocab)
		}
	}
	for _, id := range p.StopTokenIDs {
		if id < 0 || int(id) >= vocab {
			return fmt.Errorf("%w: stop token id %d is outside the vocabulary [0, %d)", ErrInvalidRequest, id, vocab)
		}
	}
	for id, b := range p.LogitBias {
		if id < 0 || int(id) >= e.mcfg.TextVocabSize {
			return fmt.Errorf("%w: logit_bias token id %d is outside the vocabulary [0, %d)", ErrInvalidRequest, id, e.mcfg.TextVocabSize)
		}
		if !(b >= -100 && b <= 100) {
			return fmt.Errorf("%w: logit_bias[%d] = %v; want in [-100, 100]", ErrInvalidRequest, id, b)
		}
	}
	bad := func(name string, v any, want string) error {
		return fmt.Errorf("%w: %s = %v; want %s", ErrInvalidRequest, name, v, want)
	}
	switch {
	case !(p.Temperature >= 0) || math.IsInf(float64(p.Temperature), 0):
		return bad("temperature", p.Temperature, ">= 0")
	case !(p.TopP > 0 && p.TopP <= 1):
		return bad("top_p", p.TopP, "in (0, 1]")
	case p.TopK < -1:
		return bad("top_k", p.TopK, "-1, 0 (disabled) or > 0")
	case !(p.MinP >= 0 && p.MinP <= 1):
		return bad("min_p", p.MinP, "in [0, 1]")
	case !(p.PresencePenalty >= -2 && p.PresencePenalty <= 2):
		return bad("presence_penalty", p.PresencePenalty, "in [-2, 2]")
	case !(p.FrequencyPenalty >= -2 && p.FrequencyPenalty <= 2):
		return bad("frequency_penalty", p.FrequencyPenalty, "in [-2, 2]")
	case !(p.RepetitionPenalty > 0) || math.IsInf(float64(p.RepetitionPenalty), 0):
		return bad("repetition_penalty", p.RepetitionPenalty, "> 0")
	case p.MaxTokens < 0:
		return bad("max_tokens", p.MaxTokens, ">= 0")
	case p.MinTokens < 0 || p.MinTokens > max(p.MaxTokens, 0):
		return bad("min_tokens", p.MinTokens, fmt.Sprintf("in [0, max_tokens=%d]", p.MaxTokens))
	case p.Logprobs != nil && (*p.Logprobs < 0 || *p.Logprobs > maxTopLogprobs):
		return bad("logprobs", *p.Logprobs, fmt.Sprintf("in [0, %d]", maxTopLogprobs))
	case p.PromptLogprobs != nil && (*p.PromptLogprobs < 0 || *p.PromptLogprobs > maxTopLogprobs):
		return bad("prompt_logprobs", *p.PromptLogprobs, fmt.Sprintf("in [0, %d]", maxTopLogprobs))
	case len(p.LogitBias) > MaxLogitBias:
		return bad("logit_bias", fmt.Sprintf("%d entries", len(p.LogitBias)), fmt.Sprintf("at most %d", MaxLogitBias))
	case len(p.StopTokenIDs)+len(e.eos) > maxBannedTokens:
		return bad("stop_token_ids", fmt.Sprintf("%d ids", len(p.StopTokenIDs)), fmt.Sprintf("at most %d", maxBannedTokens-len(e.eos)))
	case p.MaxTokens == 0 && req.Params.MinTokens > 0:
		return bad("min_tokens", p.MinTokens, "0 with max_tokens 0")
	}
	return nil
}

// Submit queues a request and returns its event stream. The stream ends with an event
// that has Finished or Err set, then is closed. Cancelling ctx aborts the request at the
// next step (FinishAbort) and frees its blocks.
func (e *Engine) Submit(ctx context.Context, req Request) (<-chan Event, error) {
	if err := e.validate(&req); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return nil, ErrClosed
	}
	if e.broken != nil {
		return nil, fmt.Errorf("%w: %w", ErrClosed, e.broken)
	}
	if e.reqs[req.ID] != nil {
		return nil, fmt.Errorf("%w: ID %q is still live", ErrInvalidRequest, req.ID)
	}
	// Capacity is the running slots plus the queue: a burst that fits both is admitted.
	if live := e.sched.NumRunning() + e.sched.NumWaiting(); e.cfg.MaxQueueLen > 0 && live >= e.cfg.Scheduler.MaxNumSeqs+e.cfg.MaxQueueLen {
		return nil, fmt.Errorf("%w (%d running, %d waiting)", ErrQueueFull, e.sched.NumRunning(), e.sched.NumWaiting())
	}
	if req.ArrivalTime.IsZero() {
		req.ArrivalTime = time.Now()
	}
	req.PromptIDs = append([]int32(nil), req.PromptIDs...)
	images, err := e.planImages(&req)
	if err != nil {
		return nil, err
	}
	if err := e.sched.Add(&req); err != nil {
		return nil, err
	}
	if images != nil {
		seq := e.sched.reqs[req.ID]
		seq.images = images
		seq.kv.SetContentKeys(images.keys) // before its first prefix-cache lookup
	}
	seed := e.rng.Int64()
	if req.Params.Seed != nil {
		seed = *req.Params.Seed
	}
	maxStop := 0
	for _, s := range req.Params.Stop {
		maxStop = max(maxStop, len(s))
	}
	r := &reqState{
		req: req, ctx: ctx, events: make(chan Event, 16), key: seedKey(seed), seq: e.sched.reqs[req.ID],
		decoder: e.cfg.NewDecoder(req.Params.SkipSpecialTokens), maxStop: maxStop, eos: e.eos,
		metrics: RequestMetrics{ArrivalTime: req.ArrivalTime},
	}
	if g := req.Params.Grammar; g != nil {
		r.matcher = g.NewMatcher()
		r.mask = make([]uint32, maskWords(e.mcfg.VocabSize))
	}
	if len(req.Params.LogitBias) > 0 {
		for id, b := range req.Params.LogitBias {
			r.bias.ids = append(r.bias.ids, id)
			r.bias.values = append(r.bias.values, b)
		}
	}
	e.reqs[req.ID] = r
	id := req.ID
	r.stopCtx = context.AfterFunc(ctx, func() { e.abort(id) })
	e.cond.Broadcast()
	return r.events, nil
}

// abort ends a request whose context ended.
func (e *Engine) abort(id string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	r := e.reqs[id]
	if r == nil || r.finished {
		return
	}
	_ = e.sched.Finish(id)
	r.finish(FinishAbort, nil, nil)
	e.cond.Broadcast()
}

// Health reports an error once the engine is closed, while its last step failed, or for
// good once the device could not be restored after a failure.
func (e *Engine) Health() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return ErrClosed
	}
	if e.broken != nil {
		return e.broken
	}
	return e.stepErr
}

// Stats is a snapshot for metrics.
func (e *Engine) Stats() Stats {
	e.mu.Lock()
	defer e.mu.Unlock()
	st := e.sched.Stats()
	st.StepPrograms, st.ServingCompilations = e.dev.counts()
	st.StepTokens = e.stepTokens
	st.Spec = e.spec.clone()
	return st
}

// Close stops the step loop, aborts every live request (each stream gets its final event)
// and frees the device memory.
func (e *Engine) Close() {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		<-e.done
		return
	}
	e.closed = true
	e.cond.Broadcast()
	e.mu.Unlock()
	<-e.done
	e.dev.close()
}

// CheckAllFree reports an error if any KV block is still held (for tests).
func (e *Engine) CheckAllFree() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if n := len(e.reqs); n > 0 {
		return fmt.Errorf("engine: %d requests still live", n)
	}
	return e.sched.KV().CheckAllFree()
}

// loop is the step loop: schedule, run on the device, process outputs, deliver events.
func (e *Engine) loop() {
	defer close(e.done)
	e.mu.Lock()
	defer e.mu.Unlock()
	for {
		pending := e.deliverAll()
		for !e.closed && (!e.sched.HasUnfinished() || e.broken != nil) && !pending {
			e.cond.Wait()
			pending = e.deliverAll()
		}
		if e.closed {
			for id, r := range e.reqs {
				_ = e.sched.Finish(id)
				r.finish(FinishAbort, nil, nil)
			}
			// Every stream gets its final event: wait (briefly) for slow consumers.
			deadline := time.Now().Add(closeDrain)
			for e.deliverAll() && time.Now().Before(deadline) {
				e.mu.Unlock()
				time.Sleep(time.Millisecond)
				e.mu.Lock()
			}
			for id, r := range e.reqs {
				if !r.closed {
					close(r.events)
				}
				delete(e.reqs, id)
			}
			return
		}
		if !e.sched.HasUnfinished() || e.broken != nil {
			// Only undelivered events: give the consumers a moment.
			e.mu.Unlock()
			time.Sleep(time.Millisecond)
			e.mu.Lock()
			continue
		}
		err := e.step()
		if err != nil {
			e.log.Error("engine step failed; aborting running requests", "err", err)
			e.failAll(err)
		}
		e.stepErr = err
	}
}

// closeDrain is how long Close waits for consumers to take their final events.
const closeDrain = 2 * time.Second

// deliverAll hands out pending events and forgets closed streams; it reports whether any
// event is still waiting for its consumer.
func (e *Engine) deliverAll() bool {
	pending := false
	for id, r := range e.reqs {
		if r.deliver() {
			pending = true
		}
		if r.closed {
			delete(e.reqs, id)
		}
	}
	return pending
}

// failAll ends every request with err after a device failure, then restores the device:
// the prefix cache is reset (the pools' contents are gone) and the pools reallocated (the
// old ones were freed first: memory is planned to the byte). If that fails the engine is
// broken for good: Health reports it and Submit refuses.
func (e *Engine) failAll(err error) {
	for id, r := range e.reqs {
		if !r.finished {
			_ = e.sched.Finish(id)
			r.finish(FinishAbort, nil, fmt.Errorf("engine: step failed: %w", err))
		}
	}
	if rerr := e.sched.KV().ResetPrefixCache(); rerr != nil {
		e.log.Error("engine: resetting the prefix cache failed", "err", rerr)
		e.broken = fmt.Errorf("engine: prefix cache reset after a failed step: %w", rerr)
		return
	}
	if perr := e.dev.resetPools(); perr != nil {
		e.log.Error("engine: reallocating KV pools failed; the engine is unhealthy", "err", perr)
		e.broken = fmt.Errorf("engine: reallocating the KV pools after a failed step: %w", perr)
	}
}

// step runs one scheduler step. Called with e.mu held; releases it around the device run.
func (e *Engine) step() error {
	plan, err := e.sched.Schedule()
	if err != nil {
		return err
	}
	if len(plan.Seqs) == 0 {
		_, err := e.sched.UpdateFromOutput(plan, nil)
		if err == nil {
			// Nothing can run now (e.g. waiting for blocks): wait for a change.
			e.mu.Unlock()
			time.Sleep(time.Millisecond)
			e.mu.Lock()
		}
		return err
	}
	now := time.Now()
	in := &stepInput{chunks: make([]model.SeqChunk, len(plan.Seqs)), base: &samplerRows{}, full: &samplerRows{}, scored: &samplerRows{}}
	states := make([]*reqState, len(plan.Seqs))
	promptFrom := make([]int, len(plan.Seqs)) // first prompt row of each chunk in in.prompt
	e.fillGrammarMasks(plan)
	for i := range plan.Seqs {
		ps := &plan.Seqs[i]
		r := e.reqs[ps.RequestID]
		states[i] = r
		if ps.Admitted && r.metrics.FirstScheduledTime.IsZero() {
			r.metrics.FirstScheduledTime = now
		}
		in.chunks[i] = model.SeqChunk{
			Tokens: ps.TokenIDs, StartPos: ps.StartPos, GlobalBlocks: ps.GlobalBlocks,
			SlidingBlocks: ps.SlidingBlocks, SlidingFirstBlock: ps.SlidingFirstBlock,
		}
		if len(ps.Draft) > 0 {
			in.chunks[i].Tokens = append(slices.Clip(ps.TokenIDs), ps.Draft...)
		}
		if ip := r.seq.images; ip != nil {
			e.addStepImages(in, i, r, ip, ps)
		}
		switch {
		case ps.Sample && len(ps.Draft) > 0:
			e.addVerifyRow(in, i, r, ps)
		case ps.Sample && r.req.Params.MaxTokens > 0:
			e.addSamplerRow(in, i, r, ps)
		}
		promptFrom[i] = len(in.prompt.chunk)
		if r.req.Params.PromptLogprobs != nil {
			// Hidden state at p scores prompt token p+1; positions already scored (before a
			// preemption) are not scored again.
			for p := max(ps.StartPos, len(r.promptLP)); p < min(ps.End(), len(r.req.PromptIDs)-1); p++ {
				in.prompt.chunk = append(in.prompt.chunk, i)
				in.prompt.offset = append(in.prompt.offset, p-ps.StartPos)
				in.prompt.target = append(in.prompt.target, r.req.PromptIDs[p+1])
			}
		}
	}
	e.mu.Unlock()
	out, runErr := e.dev.run(in)
	e.mu.Lock()
	if runErr != nil {
		// Nothing of the step is committed: no K/V, no prefix hashes, no tokens.
		if err := e.sched.Abandon(plan); err != nil {
			return errors.Join(runErr, err)
		}
		return runErr
	}
	e.stepTokens += int64(plan.NumBatchedTokens)
	if e.onStep != nil {
		e.onStep(plan.NumBatchedTokens)
	}
	// Prompt logprobs first; a prompt-scoring request (max_tokens 0) whose prompt is now
	// computed ends before the scheduler would append a sampled token to it.
	for i := range plan.Seqs {
		ps, r := &plan.Seqs[i], states[i]
		if r == nil || r.finished {
			continue
		}
		if np := r.req.Params.PromptLogprobs; np != nil {
			for j := promptFrom[i]; j < len(in.prompt.chunk) && in.prompt.chunk[j] == i; j++ {
				pos := PositionLogprobs{Chosen: TokenLogprob{TokenID: in.prompt.target[j], Logprob: out.prompt.chosen[j]}}
				for k := 0; k < *np; k++ {
					pos.Top = append(pos.Top, TokenLogprob{TokenID: out.prompt.topIDs[j*maxTopLogprobs+k], Logprob: out.prompt.topLP[j*maxTopLogprobs+k]})
				}
				r.promptLP = append(r.promptLP, pos)
			}
		}
		if ps.Sample {
			r.promptDone()
			if r.req.Params.MaxTokens == 0 {
				_ = e.sched.Finish(ps.RequestID) // its result is dropped by UpdateFromOutput
				r.finish(FinishLength, nil, nil)
			}
		}
	}
	var accepted [][]int32
	if out.spec != nil {
		accepted = e.acceptSpec(plan, out)
	}
	capped, err := e.sched.UpdateFromOutputSpec(plan, out.tokens, accepted)
	if err != nil {
		return err
	}
	cappedSet := map[string]bool{}
	for _, id := range capped {
		cappedSet[id] = true
	}
	end := time.Now()
	for i := range plan.Seqs {
		ps := &plan.Seqs[i]
		r := states[i]
		if r == nil || r.finished || !ps.Sample {
			continue
		}
		if out.spec != nil && out.spec[i] != nil {
			e.emitSpec(r, out.spec[i], cappedSet[ps.RequestID], end)
			continue
		}
		var lp *PositionLogprobs
		if n := r.req.Params.Logprobs; n != nil {
			lp = &PositionLogprobs{Chosen: TokenLogprob{TokenID: out.tokens[i], Logprob: out.chosenLP[i]}}
			for j := 0; j < *n; j++ {
				lp.Top = append(lp.Top, TokenLogprob{TokenID: out.topIDs[i*maxTopLogprobs+j], Logprob: out.topLP[i*maxTopLogprobs+j]})
			}
		}
		res := r.addToken(out.tokens[i], lp, cappedSet[ps.RequestID], end)
		if r.matcher != nil && res.reason == "" {
			if err := r.matcher.Advance(out.tokens[i]); err != nil {
				res = tokenResult{reason: FinishAbort, err: fmt.Errorf("engine: grammar: %w", err)}
			} else if r.matcher.IsTerminated() {
				res.reason = FinishStop // the grammar took EOS
			}
		}
		if res.reason != "" {
			if !cappedSet[ps.RequestID] {
				_ = e.sched.Finish(ps.RequestID)
			}
			r.finish(res.reason, res.stopReason, res.err)
		}
	}
	return nil
}

// acceptSpec counts the step's verifications and returns, per chunk, the accepted
// proposals (nil for the others); out.tokens[i] becomes the token drawn after them.
func (e *Engine) acceptSpec(plan *StepPlan, out *stepOutput) [][]int32 {
	accepted := make([][]int32, len(plan.Seqs))
	for i, v := range out.spec {
		if v == nil {
			continue
		}
		m := len(v.tokens)
		accepted[i] = v.tokens[:m-1]
		out.tokens[i] = v.tokens[m-1]
		e.spec.record(len(plan.Seqs[i].Draft), m-1)
	}
	e.specLog.maybeLog(e.log, time.Now(), &e.spec)
	return accepted
}

// emitSpec hands a verification's tokens to the request one by one, as plain decoding
// would have produced them: a stop (token, string, max_tokens) inside the run ends the
// request there, and the tokens after it are dropped from its record.
func (e *Engine) emitSpec(r *reqState, v *verifyOutput, capped bool, end time.Time) {
	n0 := len(r.output()) - len(v.tokens) // outputs before this step
	for j, tok := range v.tokens {
		var lp *PositionLogprobs
		if k := r.req.Params.Logprobs; k != nil && v.hasLP {
			lp = &PositionLogprobs{Chosen: TokenLogprob{TokenID: tok, Logprob: v.chosen[j]}}
			for t := 0; t < *k; t++ {
				lp.Top = append(lp.Top, TokenLogprob{TokenID: v.topIDs[j*maxTopLogprobs+t], Logprob: v.topLP[j*maxTopLogprobs+t]})
			}
		}
		last := j == len(v.tokens)-1
		res := r.addTokenAt(tok, n0+j+1, lp, capped && last, end)
		if res.reason == "" {
			continue
		}
		if !last {
			// The request ends inside the accepted run: what follows was never generated.
			r.seq.tokens = r.seq.tokens[:r.seq.numPrompt+n0+j+1]
		}
		if !capped {
			_ = e.sched.Finish(r.req.ID)
		}
		r.finish(res.reason, res.stopReason, res.err)
		return
	}
}

// addVerifyRow adds chunk i's verification row: the full verifier when the request needs
// any sampler feature, the plain one otherwise.
func (e *Engine) addVerifyRow(in *stepInput, i int, r *reqState, ps *ScheduledSeq) {
	p := &r.req.Params
	v := &in.verify
	out, prompt := []int32(nil), []int32(nil)
	if p.wantsFilters() || p.wantsScoring(false) {
		v, out, prompt = &in.verifyFull, r.output(), r.req.PromptIDs
	}
	v.chunkOf = append(v.chunkOf, i)
	v.drafts = append(v.drafts, ps.Draft)
	v.chunkLens = append(v.chunkLens, len(in.chunks[i].Tokens))
	v.rows.addRow(p, r.key, uint32(ps.NumOutputTokens), out, prompt, nil, r.bias, nil)
}

// addStepImages lists the images chunk i's step encodes (every image of a group it
// touches) after the step's earlier images: their rows of the step's image embeddings.
func (e *Engine) addStepImages(in *stepInput, i int, r *reqState, ip *imagePlan, ps *ScheduledSeq) {
	first, count := ip.stepImages(ps.StartPos, ps.End())
	T := e.vision.Config().MMTokensPerImage
	for k := first; k < first+count; k++ {
		im := ip.images[k]
		im.Row = len(in.images) * T
		in.chunks[i].Images = append(in.chunks[i].Images, im)
		in.images = append(in.images, r.req.Images[k].Pixels)
	}
}

// addSamplerRow adds chunk i's sampling row: to the full sampler when the request filters
// (top-k/top-p/min-p), to the scored one when it needs penalties, banned tokens, logit bias
// or logprobs, otherwise to the plain one (greedy or temperature).
func (e *Engine) addSamplerRow(in *stepInput, i int, r *reqState, ps *ScheduledSeq) {
	p := &r.req.Params
	var banned []int32
	if len(r.output()) < p.MinTokens {
		if !p.IgnoreEOS {
			for id := range e.eos {
				banned = append(banned, id)
			}
			slices.Sort(banned) // map order must not reach the device
		}
		banned = append(banned, p.StopTokenIDs...)
	}
	counter := uint32(ps.NumOutputTokens)
	var mask []uint32
	if r.matcher != nil {
		// Filled by fillGrammarMasks before the rows are assembled.
		if r.maskErr != nil {
			// Cannot happen for a live matcher; allow nothing rather than anything.
			e.log.Error("grammar mask failed", "request", r.req.ID, "err", r.maskErr)
		}
		mask = r.mask
	}
	switch {
	case p.wantsFilters():
		in.fullChunk = append(in.fullChunk, i)
		in.full.addRow(p, r.key, counter, r.output(), r.req.PromptIDs, banned, r.bias, mask)
		return
	case p.wantsScoring(len(banned) > 0):
		in.scoredChunk = append(in.scoredChunk, i)
		in.scored.addRow(p, r.key, counter, r.output(), r.req.PromptIDs, banned, r.bias, mask)
		return
	}
	in.baseChunk = append(in.baseChunk, i)
	in.base.addRow(p, r.key, counter, nil, nil, nil, logitBias{}, nil)
}
