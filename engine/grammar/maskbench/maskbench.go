// Package maskbench runs MaskBench's protocol (guidance-ai/jsonschemabench,
// maskbench/maskbench/runner.py) against the grammar engine: per schema file, compile
// the schema with compact separators (", " and ": ", no other whitespace), then for each
// test tokenize its text without special tokens and, token by token, compute the mask
// and check that the token is allowed; at the end the grammar must be able to end.
//
// A valid test that is rejected is a validation error ("should accept but didn't"); an
// invalid test that is accepted is an invalidation error ("should reject but didn't"), a
// soundness bug in the engine. Times are in microseconds: TTFM is the compile plus the
// first mask; each token's time is its mask plus its Advance.
package maskbench

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/tpuserve/tpuserve/engine/grammar"
)

// File is one MaskBench data file.
type File struct {
	Description string          `json:"description"`
	Schema      json.RawMessage `json:"schema"`
	Tests       []Test          `json:"tests"`
}

// Test is one instance; Text is its json.dumps serialization.
type Test struct {
	Description string `json:"description"`
	Valid       bool   `json:"valid"`
	Text        string `json:"text"`
}

// Result is one file's line of output, with MaskBench's field meanings.
type Result struct {
	ID              string  `json:"id"`
	TTFMMicros      int64   `json:"ttfm_us"`
	MasksMicros     int64   `json:"masks_us"`
	MaxMaskMicros   int64   `json:"max_mask_us"`
	NumTokens       int     `json:"num_tokens"`
	NumTests        int     `json:"num_tests"`
	NumValidTests   int     `json:"num_valid_tests"`   // valid tests accepted
	NumInvalidTests int     `json:"num_invalid_tests"` // invalid tests rejected
	ShouldAccept    int     `json:"should_accept_errors"`
	ShouldReject    int     `json:"should_reject_errors"`
	MaskMicros      []int64 `json:"mask_us"`
	CompileError    string  `json:"compile_error,omitempty"`
	ValidationError string  `json:"validation_error,omitempty"` // the first failing test
	TimedOut        bool    `json:"timed_out,omitempty"`
}

// Passed reports whether the schema compiled and every test came out right.
func (r *Result) Passed() bool {
	return r.CompileError == "" && !r.TimedOut && r.ShouldAccept == 0 && r.ShouldReject == 0
}

// Encoder tokenizes a test's text (without special tokens).
type Encoder func(text string) []int32

// Run processes one file. deadline (zero: none) is checked between tokens; a run past it
// stops with TimedOut set.
func Run(v *grammar.Vocabulary, encode Encoder, path string, deadline time.Time) (*Result, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var f File
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return RunFile(v, encode, filepath.Base(path), &f, deadline), nil
}

// RunFile processes a parsed file.
func RunFile(v *grammar.Vocabulary, encode Encoder, id string, f *File, deadline time.Time) *Result {
	r := &Result{ID: id, NumTests: len(f.Tests), MaskMicros: []int64{}}
	t0 := time.Now()
	g, err := grammar.CompileJSONSchema(v, f.Schema, grammar.WithSeparators(", ", ": "))
	if err != nil {
		r.CompileError = err.Error()
		return r
	}
	m := g.NewMatcher()
	mask := make([]uint32, v.MaskWords())
	if err := m.FillMask(mask); err != nil {
		r.CompileError = err.Error()
		return r
	}
	r.TTFMMicros = time.Since(t0).Microseconds()
	for i, test := range f.Tests {
		m.Reset()
		tokens := encode(test.Text)
		accepted := true
		for _, tok := range tokens {
			if !deadline.IsZero() && time.Now().After(deadline) {
				r.TimedOut = true
				r.ValidationError = fmt.Sprintf("test #%d: timed out", i)
				return r
			}
			ts := time.Now()
			if err := m.FillMask(mask); err != nil {
				panic(err) // the mask size comes from v: cannot fail
			}
			ok := mask[tok>>5]&(1<<(tok&31)) != 0
			if ok {
				if err := m.Advance(tok); err != nil {
					// In the mask but rejected: an engine inconsistency; count it as
					// a rejection and say so.
					r.ValidationError = fmt.Sprintf("test #%d: token %d allowed by the mask but rejected: %v", i, tok, err)
					ok = false
				}
			}
			us := time.Since(ts).Microseconds()
			r.NumTokens++
			r.MasksMicros += us
			r.MaskMicros = append(r.MaskMicros, us)
			r.MaxMaskMicros = max(r.MaxMaskMicros, us)
			if !ok {
				accepted = false
				break
			}
		}
		if accepted && !m.CanEnd() {
			accepted = false
		}
		switch {
		case accepted && !test.Valid:
			r.ShouldReject++
			if r.ValidationError == "" {
				r.ValidationError = fmt.Sprintf("test #%d: should reject but didn't", i)
			}
		case !accepted && test.Valid:
			r.ShouldAccept++
			if r.ValidationError == "" {
				r.ValidationError = fmt.Sprintf("test #%d: should accept but didn't", i)
			}
		case test.Valid:
			r.NumValidTests++
		default:
			r.NumInvalidTests++
		}
	}
	return r
}
