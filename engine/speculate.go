package engine

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"
)

// Speculative decoding methods (vLLM's --speculative-config "method").
const (
	SpecMethodNgram      = "ngram"
	SpecMethodDraftModel = "draft_model"
)

// SpeculativeConfig is vLLM's --speculative-config JSON: {"method":"ngram",
// "num_speculative_tokens":K,"prompt_lookup_max":N,"prompt_lookup_min":M}.
type SpeculativeConfig struct {
	Method string `json:"method"`
	// NumSpeculativeTokens is K, the most proposals verified per sequence and step.
	NumSpeculativeTokens int `json:"num_speculative_tokens"`
	// PromptLookupMax and PromptLookupMin bound the n-gram matched against the request's
	// prompt and output (ngram; vLLM's defaults: both 5 when neither is given, the other's
	// value when one is).
	PromptLookupMax int `json:"prompt_lookup_max,omitempty"`
	PromptLookupMin int `json:"prompt_lookup_min,omitempty"`
	// Model is the draft model's checkpoint directory or preset (draft_model).
	Model string `json:"model,omitempty"`
}

// ParseSpeculativeConfig reads --speculative-config: an error names the field at fault.
func ParseSpeculativeConfig(text string) (*SpeculativeConfig, error) {
	dec := json.NewDecoder(bytes.NewReader([]byte(text)))
	dec.DisallowUnknownFields()
	var c SpeculativeConfig
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("%w: speculative config: %w", ErrInvalidRequest, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: speculative config: trailing data after the JSON object", ErrInvalidRequest)
	}
	if err := c.normalize(); err != nil {
		return nil, err
	}
	return &c, nil
}

// normalize applies the defaults and checks what needs no model.
func (c *SpeculativeConfig) normalize() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: speculative config: %s", ErrInvalidRequest, fmt.Sprintf(format, a...))
	}
	switch c.Method {
	case SpecMethodNgram:
		if c.Model != "" {
			return bad("method ngram takes no model (got %q)", c.Model)
		}
		switch {
		case c.PromptLookupMax == 0 && c.PromptLookupMin == 0:
			c.PromptLookupMax, c.PromptLookupMin = 5, 5
		case c.PromptLookupMin == 0:
			c.PromptLookupMin = c.PromptLookupMax
		case c.PromptLookupMax == 0:
			c.PromptLookupMax = c.PromptLookupMin
		}
		if c.PromptLookupMin < 1 || c.PromptLookupMax < c.PromptLookupMin {
			return bad("prompt_lookup_min %d and prompt_lookup_max %d: want 1 <= min <= max", c.PromptLookupMin, c.PromptLookupMax)
		}
	case SpecMethodDraftModel:
		if c.Model == "" {
			return bad("method draft_model needs a model (a checkpoint directory or a preset)")
		}
		if c.PromptLookupMax != 0 || c.PromptLookupMin != 0 {
			return bad("prompt_lookup_max and prompt_lookup_min are for method ngram")
		}
	case "":
		return bad("method is required (supported: %s, %s)", SpecMethodNgram, SpecMethodDraftModel)
	default:
		return bad("unknown method %q (supported: %s, %s)", c.Method, SpecMethodNgram, SpecMethodDraftModel)
	}
	if c.NumSpeculativeTokens <= 0 {
		return bad("num_speculative_tokens %d must be > 0", c.NumSpeculativeTokens)
	}
	return nil
}

// String is the config as vLLM's JSON.
func (c *SpeculativeConfig) String() string {
	b, _ := json.Marshal(c)
	return string(b)
}

// ngramProposer is prompt lookup decoding: the longest suffix of the tokens, of lookupMin
// to lookupMax tokens, that occurred before; the tokens that followed an earlier
// occurrence are the proposals — the latest occurrence with k tokens after it, else the
// earliest (in a loop the latest occurrence overlaps the suffix and has one token after
// it). One backward pass over the tokens (each earlier copy of the last token is extended
// backwards up to lookupMax), stopping at the latest full-length occurrence with k tokens
// after it; no allocation: the proposals are a slice of the tokens.
func ngramProposer(lookupMin, lookupMax int) Proposer {
	return func(tokens []int32, k int) []int32 {
		L := len(tokens)
		if k <= 0 || L < lookupMin+1 {
			return nil
		}
		last := tokens[L-1]
		best, latestFull, earliest := 0, -1, -1 // match length; its occurrences' last positions
		for e := L - 2; e >= 0; e-- {
			if tokens[e] != last {
				continue
			}
			m := 1
			for m < lookupMax && e-m >= 0 && tokens[e-m] == tokens[L-1-m] {
				m++
			}
			if m < lookupMin || m < best {
				continue
			}
			if m > best {
				best, latestFull = m, -1
			}
			if latestFull < 0 && L-1-e >= k {
				latestFull = e // the scan runs backwards: the first found is the latest
			}
			earliest = e
			if best == lookupMax && latestFull >= 0 {
				break // nothing longer exists, and the latest with k after is found
			}
		}
		at := latestFull
		if at < 0 {
			at = earliest
		}
		if at < 0 {
			return nil
		}
		end := min(L, at+1+k)
		return tokens[at+1 : end : end]
	}
}

// SpecStats are speculative decoding's counters, cumulative (vLLM's spec_decode metrics).
type SpecStats struct {
	// NumDrafts counts verifications (a sequence verified with at least one proposal).
	NumDrafts int64
	// NumDraftTokens counts proposals; NumAcceptedTokens those accepted.
	NumDraftTokens    int64
	NumAcceptedTokens int64
	// AcceptedPerPos[i] counts the proposals accepted at position i of their run.
	AcceptedPerPos []int64
}

// AcceptanceRate is NumAcceptedTokens / NumDraftTokens (0 without proposals).
func (s SpecStats) AcceptanceRate() float64 {
	if s.NumDraftTokens == 0 {
		return 0
	}
	return float64(s.NumAcceptedTokens) / float64(s.NumDraftTokens)
}

func (s *SpecStats) clone() SpecStats {
	c := *s
	c.AcceptedPerPos = append([]int64(nil), s.AcceptedPerPos...)
	return c
}

// record adds one verification of numDrafts proposals of which accepted were accepted.
func (s *SpecStats) record(numDrafts, accepted int) {
	s.NumDrafts++
	s.NumDraftTokens += int64(numDrafts)
	s.NumAcceptedTokens += int64(accepted)
	for i := 0; i < accepted && i < len(s.AcceptedPerPos); i++ {
		s.AcceptedPerPos[i]++
	}
}

// specLogInterval is how often the step loop logs the acceptance figures (vLLM: 10 s).
const specLogInterval = 10 * time.Second

// specLogger logs the acceptance rate over each interval, as vLLM's SpecDecodingLogging.
type specLogger struct {
	last     SpecStats
	lastTime time.Time
}

func (l *specLogger) maybeLog(log *slog.Logger, now time.Time, st *SpecStats) {
	if l.lastTime.IsZero() {
		l.lastTime, l.last = now, st.clone()
		return
	}
	if now.Sub(l.lastTime) < specLogInterval || st.NumDrafts == l.last.NumDrafts {
		return
	}
	drafts := st.NumDrafts - l.last.NumDrafts
	draftTokens := st.NumDraftTokens - l.last.NumDraftTokens
	accepted := st.NumAcceptedTokens - l.last.NumAcceptedTokens
	perPos := make([]string, len(st.AcceptedPerPos))
	for i := range perPos {
		perPos[i] = fmt.Sprintf("%.3f", float64(st.AcceptedPerPos[i]-l.last.AcceptedPerPos[i])/float64(drafts))
	}
	log.Info("speculative decoding",
		"acceptance_rate", fmt.Sprintf("%.3f", float64(accepted)/float64(max(draftTokens, 1))),
		"mean_acceptance_length", fmt.Sprintf("%.2f", 1+float64(accepted)/float64(drafts)),
		"drafts", drafts, "draft_tokens", draftTokens, "accepted_tokens", accepted,
		"per_position_acceptance_rate", strings.Join(perPos, ","))
	l.lastTime, l.last = now, st.clone()
}

// errDraftTP refuses a draft model with tensor parallelism: the draft would need a
// sharded device of its own. Prompt lookup works at any TP (the verifier runs on the
// vocabulary shards as the sampler does).
var errDraftTP = errors.New("a draft model is not supported with tensor parallelism yet (method ngram is)")

// checkSpeculative validates cfg.Speculative against the rest of the configuration and
// returns K (0 without speculation).
func checkSpeculative(cfg *Config) (int, error) {
	sp := cfg.Speculative
	if sp == nil {
		return 0, nil
	}
	if err := sp.normalize(); err != nil {
		return 0, err
	}
	if cfg.Sharded != nil && sp.Method == SpecMethodDraftModel {
		return 0, fmt.Errorf("%w: speculative config: %w", ErrInvalidRequest, errDraftTP)
	}
	switch {
	case sp.Method == SpecMethodDraftModel && cfg.DraftModel == nil:
		return 0, fmt.Errorf("%w: speculative config: method draft_model: Config.DraftModel (the loaded %q) is required", ErrInvalidRequest, sp.Model)
	case sp.Method != SpecMethodDraftModel && cfg.DraftModel != nil:
		return 0, fmt.Errorf("%w: speculative config: Config.DraftModel is set but the method is %s", ErrInvalidRequest, sp.Method)
	case cfg.DraftModel != nil && cfg.Vision != nil:
		return 0, fmt.Errorf("%w: speculative config: a draft model with image inputs (Config.Vision) is not supported: the draft would need the images too", ErrInvalidRequest)
	case cfg.DraftModel != nil:
		if err := checkDraft(&cfg.Model.Config, &cfg.DraftModel.Config, cfg.Scheduler.MaxModelLen); err != nil {
			return 0, fmt.Errorf("%w: speculative config: draft model %q: %w", ErrInvalidRequest, sp.Model, err)
		}
	}
	return sp.NumSpeculativeTokens, nil
}
