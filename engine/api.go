package engine

import (
	"time"

	"github.com/tpuserve/tpuserve/engine/grammar"
)

// SamplingParams are a request's per-request sampling and stopping settings. The zero value
// is not valid on its own: use DefaultSamplingParams and override fields.
type SamplingParams struct {
	// Temperature 0 means greedy (argmax).
	Temperature float32
	// TopK keeps the K most likely tokens; 0 or -1 disables it.
	TopK int
	// TopP keeps the smallest set of tokens whose probability sums to at least TopP; 1 disables it.
	TopP float32
	// MinP drops tokens whose probability is below MinP × the top token's; 0 disables it.
	MinP float32
	// Seed makes the request's samples reproducible whatever else is batched with it; nil = random.
	Seed *int64
	// PresencePenalty and FrequencyPenalty follow OpenAI's definition (over generated tokens).
	PresencePenalty  float32
	FrequencyPenalty float32
	// RepetitionPenalty follows vLLM/HF (over prompt and generated tokens); 1 disables it.
	RepetitionPenalty float32

	// MaxTokens is the most tokens to generate; 0 scores the prompt without generating
	// (with PromptLogprobs: echo with max_tokens 0).
	MaxTokens int
	// MinTokens generated before EOS or stop token ids may end the request.
	MinTokens int
	// Stop strings end generation; they are excluded from the output unless IncludeStopStrInOutput.
	Stop                   []string
	StopTokenIDs           []int32
	IgnoreEOS              bool
	IncludeStopStrInOutput bool
	SkipSpecialTokens      bool

	// Logprobs: nil = none; otherwise the chosen token's logprob plus the top *Logprobs (0..20) alternatives.
	Logprobs *int
	// PromptLogprobs: nil = none; otherwise every prompt position after the first gets the
	// prompt token's logprob plus the top *PromptLogprobs (0..20) alternatives (vLLM's
	// prompt_logprobs). Such a request computes its whole prompt (no prefix-cache hit).
	PromptLogprobs *int
	// LogitBias adds a bias in [-100, 100] to a token's logit before sampling (OpenAI's
	// logit_bias; at most MaxLogitBias entries).
	LogitBias map[int32]float32
	// Grammar constrains the output (structured outputs): each step samples only tokens its
	// matcher allows, as a bitmask applied on the device; EOS only where it can end.
	Grammar *grammar.Grammar
}

// wantsFilters reports whether a request samples with top-k, top-p or min-p (the full
// sampler program).
func (p *SamplingParams) wantsFilters() bool {
	return p.Temperature >= samplingEps && (p.TopK > 0 || p.TopP < 1 || p.MinP > 0)
}

// wantsScoring reports whether a request needs penalties, banned tokens, logit bias or
// logprobs (the scored sampler program, unless it also filters).
func (p *SamplingParams) wantsScoring(banned bool) bool {
	return banned || p.PresencePenalty != 0 || p.FrequencyPenalty != 0 || p.RepetitionPenalty != 1 ||
		p.Logprobs != nil || len(p.LogitBias) > 0 || p.Grammar != nil
}

// DefaultSamplingParams returns vLLM's defaults: temperature 1, no top-k/top-p/min-p, no
// penalties, 16 max tokens, special tokens skipped.
func DefaultSamplingParams() SamplingParams {
	return SamplingParams{Temperature: 1, TopK: 0, TopP: 1, RepetitionPenalty: 1, MaxTokens: 16, SkipSpecialTokens: true}
}

// Request is one generation request submitted to the engine.
type Request struct {
	// ID is unique among live requests; the server generates it.
	ID        string
	PromptIDs []int32
	Params    SamplingParams
	// Priority: lower values are scheduled first when priority scheduling is on; ties are FCFS.
	Priority int
	// ArrivalTime is when the server received the request (zero = time of Submit).
	ArrivalTime time.Time
	// Images are the request's images, one per placeholder run of image_token_index in
	// PromptIDs, in prompt order (a vision model with Config.Vision set).
	Images []Image
}

// TokenLogprob is the log-probability of one token (natural log, after penalties, before
// temperature/top-k/top-p, as vLLM reports by default).
type TokenLogprob struct {
	TokenID int32
	Logprob float32
}

// PositionLogprobs are the logprobs for one generated position: the chosen token and the top-N.
type PositionLogprobs struct {
	Chosen TokenLogprob
	Top    []TokenLogprob
}

// FinishReason says why a request ended.
type FinishReason string

const (
	FinishNone   FinishReason = ""
	FinishStop   FinishReason = "stop"   // EOS, a stop token id or a stop string
	FinishLength FinishReason = "length" // max_tokens or max_model_len reached
	FinishAbort  FinishReason = "abort"  // cancelled or shut down
)

// RequestMetrics are the timestamps of one request's life, filled in on the final event.
type RequestMetrics struct {
	ArrivalTime        time.Time
	FirstScheduledTime time.Time
	FirstTokenTime     time.Time
	FinishedTime       time.Time
}

// Event is one increment of a request's output stream. The last event of a stream has
// Finished set (and then FinishReason, Metrics and the token counts), or Err.
type Event struct {
	// TokenIDs are the tokens generated since the previous event.
	TokenIDs []int32
	// Text is the newly completed text since the previous event (never half a UTF-8
	// character, never part of a possible stop string).
	Text string
	// Logprobs has one entry per TokenIDs entry when logprobs were requested.
	Logprobs []PositionLogprobs
	// TokenTimes has one entry per TokenIDs entry: when the step that produced it ended.
	TokenTimes []time.Time
	// PromptLogprobs, with PromptLogprobs requested, arrive once, on the first event after
	// the whole prompt was computed: entry i is prompt position i+1 (position 0 has none).
	PromptLogprobs []PositionLogprobs

	Finished     bool
	FinishReason FinishReason
	// StopReason is the matched stop string or stop token id (nil for EOS or length).
	StopReason any

	NumPromptTokens int
	NumOutputTokens int
	// NumCachedTokens is how many prompt tokens were served from the prefix cache.
	NumCachedTokens int
	Metrics         RequestMetrics

	Err error
}

// Stats is a snapshot for metrics and health.
type Stats struct {
	NumRunning   int
	NumWaiting   int
	KVCacheUsage float64 // fraction 0..1 of KV blocks in use
	// PrefixCacheQueries / PrefixCacheHits count tokens, cumulative.
	PrefixCacheQueries int64
	PrefixCacheHits    int64
	NumPreemptions     int64
	// StepPrograms is how many programs are compiled; ServingCompilations how many of them
	// compiled after start-up (0 when the whole set was compiled before serving).
	StepPrograms        int64
	ServingCompilations int64
	// StepTokens counts tokens computed by steps, cumulative (for vllm:iteration_tokens).
	StepTokens int64
	// Spec counts speculative decoding's proposals and acceptances (zero when it is off).
	Spec SpecStats
}
