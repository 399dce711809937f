package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tpuserve/tpuserve/engine"
)

func TestDeriveSeed(t *testing.T) {
	seen := map[int64]bool{}
	for _, seed := range []int64{0, 1, -1, 1 << 62} {
		if deriveSeed(seed, 0) != seed {
			t.Errorf("choice 0 must keep seed %d", seed)
		}
		for i := range 64 {
			s := deriveSeed(seed, i)
			if s != deriveSeed(seed, i) {
				t.Fatal("not deterministic")
			}
			seen[s] = true
		}
	}
	if len(seen) != 4*64 {
		t.Errorf("%d distinct seeds of %d", len(seen), 4*64)
	}
}

func TestClassifyEngineError(t *testing.T) {
	s := &Server{cfg: Config{RetryAfter: 2 * time.Second}}
	tests := []struct {
		err    error
		status int
		leaks  bool // the message may carry the error's text
	}{
		{fmt.Errorf("engine: %w", ErrQueueFull), http.StatusTooManyRequests, false},
		{fmt.Errorf("needs 900 blocks: %w", ErrRequestTooLarge), http.StatusBadRequest, true},
		{fmt.Errorf("bad top_k: %w", ErrInvalidRequest), http.StatusBadRequest, true},
		{fmt.Errorf("engine: %w", ErrShuttingDown), http.StatusServiceUnavailable, false},
		{context.Canceled, http.StatusServiceUnavailable, false},
		{errors.New("XLA: device 3 halted"), http.StatusInternalServerError, false},
		{badParam("x", "bad x"), http.StatusBadRequest, false}, // passed through as is
	}
	for _, tc := range tests {
		e := s.classifyEngineError("cmpl-1", tc.err)
		if e.Status != tc.status {
			t.Errorf("%v: status %d, want %d", tc.err, e.Status, tc.status)
		}
		if contains := strings.Contains(e.Message, tc.err.Error()); contains != tc.leaks {
			t.Errorf("%v: message %q", tc.err, e.Message)
		}
		if !errors.Is(e, tc.err) && e.cause != nil && !errors.Is(e.cause, tc.err) {
			t.Errorf("%v: cause lost", tc.err)
		}
		if tc.status == http.StatusTooManyRequests && e.retryAfterHeader() != "2" {
			t.Errorf("Retry-After %q", e.retryAfterHeader())
		}
	}
}

func TestHoldBack(t *testing.T) {
	tests := []struct {
		text  string
		stops []string
		want  int
	}{
		{"hello wor", []string{"world"}, 3},
		{"hello", []string{"xyz"}, 0},
		{"ab", []string{"abc", "b"}, 2},
		{"a", nil, 0},
	}
	for _, tc := range tests {
		if got := holdBack(tc.text, tc.stops); got != tc.want {
			t.Errorf("holdBack(%q, %q) = %d, want %d", tc.text, tc.stops, got, tc.want)
		}
	}
}

func TestEngineRequests(t *testing.T) {
	seed := int64(10)
	lp := 2
	plan := &genPlan{id: "cmpl-x", n: 2, prompts: []promptIn{{ids: []int32{1}, maxTokens: 5}, {ids: []int32{2, 3}, maxTokens: 7}},
		params: engine.SamplingParams{Seed: &seed, Logprobs: &lp, Stop: []string{"s"}}, priority: 3}
	reqs := plan.engineRequests()
	if len(reqs) != 4 {
		t.Fatalf("%d requests", len(reqs))
	}
	for i, r := range reqs {
		wantPrompt := plan.prompts[i/2]
		if r.ID != fmt.Sprintf("cmpl-x-%d", i) || len(r.PromptIDs) != len(wantPrompt.ids) || r.Params.MaxTokens != wantPrompt.maxTokens ||
			*r.Params.Seed != deriveSeed(10, i%2) || r.Priority != 3 || *r.Params.Logprobs != 2 {
			t.Errorf("request %d = %+v", i, r)
		}
	}
	reqs[0].Params.Stop[0] = "changed"
	*reqs[0].Params.Seed = 99
	if plan.params.Stop[0] != "s" || *reqs[2].Params.Seed != 10 {
		t.Error("engine requests share mutable state")
	}
}

func TestConfigDefaults(t *testing.T) {
	cfg := DefaultConfig()
	cfg.ServedModelNames = []string{"m"}
	cfg.MaxModelLen = 10
	got, err := cfg.withDefaults(fakeTokenizer{})
	if err != nil {
		t.Fatal(err)
	}
	if got.VocabSize != fakeVocabSize || got.Logger == nil || got.MaxLogprobs != 20 || got.Port != 8000 || got.GRPCPort != 50051 {
		t.Errorf("defaults %+v", got)
	}
	bad := []func(*Config){
		func(c *Config) { c.ServedModelNames = []string{""} },
		func(c *Config) { c.MaxModelLen = -1 },
		func(c *Config) { c.Port = 70000 },
		func(c *Config) { c.MaxRequestBodyBytes = -1 },
		func(c *Config) { c.ShutdownTimeout = -time.Second },
		func(c *Config) { c.MaxLogprobs = -1 },
	}
	for i, mutate := range bad {
		c := cfg
		mutate(&c)
		if _, err := c.withDefaults(fakeTokenizer{}); err == nil {
			t.Errorf("case %d: no error", i)
		}
	}
}
