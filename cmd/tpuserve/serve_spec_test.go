package main

import (
	"context"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"testing"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
)

// TestServeSpeculativeConfigErrors: a bad --speculative-config is refused before the model
// loads, naming the flag and what is wrong.
func TestServeSpeculativeConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		json string
		tp   int
		want string
	}{
		{`{"method":"eagle9","num_speculative_tokens":2}`, 1, `--speculative-config: engine: invalid request: speculative config: unknown method "eagle9"`},
		{`{"method":"ngram","num_speculative_tokens":0}`, 1, "num_speculative_tokens 0 must be > 0"},
		{`{"method":"ngram"`, 1, "--speculative-config"},
		{`{"method":"draft_model","model":"tiny","num_speculative_tokens":2}`, 2, "a draft model is not supported with --tensor-parallel-size 2"},
	} {
		_, o := serveFlags(io.Discard)
		o.speculativeConfig, o.tensorParallel = tc.json, tc.tp
		if err := validateServeOptions(o); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s (tp %d): %v, want %q", tc.json, tc.tp, err, tc.want)
		}
	}
}

// TestServeSpeculative: serve --speculative-config (n-gram) answers a greedy completion with
// the same text as serve without it, and exports vLLM's spec_decode counters.
func TestServeSpeculative(t *testing.T) {
	req := openai.CompletionNewParams{
		Model:     "tiny",
		Prompt:    openai.CompletionNewParamsPromptUnion{OfString: openai.String("one two three one two three one two three one two")},
		MaxTokens: openai.Int(24), Temperature: openai.Float(0),
	}
	complete := func(ls *liveServer) string {
		client := ls.client()
		resp, err := client.Completions.New(context.Background(), req, option.WithJSONSet("ignore_eos", true))
		if err != nil {
			t.Fatal(err)
		}
		return resp.Choices[0].Text
	}
	plain := startServe(t, nil)
	want := complete(plain)
	spec := startServe(t, func(o *serveOptions) {
		o.speculativeConfig = `{"method":"ngram","num_speculative_tokens":3,"prompt_lookup_max":3,"prompt_lookup_min":1}`
	})
	if got := complete(spec); got != want {
		t.Errorf("speculative text %q, plain %q", got, want)
	}
	num := func(name string) int {
		v, err := strconv.ParseFloat(metric(t, spec.url, name), 64)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return int(v)
	}
	drafts, proposals, accepted := num("vllm:spec_decode_num_drafts_total"), num("vllm:spec_decode_num_draft_tokens_total"), num("vllm:spec_decode_num_accepted_tokens_total")
	perPos := num("vllm:spec_decode_num_accepted_tokens_per_pos_total")
	if drafts == 0 || proposals < drafts || accepted > proposals || perPos > drafts {
		t.Errorf("spec_decode counters: drafts %d, draft tokens %d, accepted %d, accepted at position 0 %d", drafts, proposals, accepted, perPos)
	}
	t.Logf("drafts %d, draft tokens %d, accepted %d", drafts, proposals, accepted)
	if v := metric(t, plain.url, "vllm:spec_decode_num_drafts_total"); v != "0" {
		t.Errorf("without speculation vllm:spec_decode_num_drafts_total = %q", v)
	}
	// The target as its own draft (the same preset, the same seed): every proposal is
	// accepted and the text is the same.
	self := startServe(t, func(o *serveOptions) {
		o.speculativeConfig = `{"method":"draft_model","model":"tiny","num_speculative_tokens":3}`
	})
	if got := complete(self); got != want {
		t.Errorf("with the target as its draft: text %q, plain %q", got, want)
	}
	d, a := metric(t, self.url, "vllm:spec_decode_num_draft_tokens_total"), metric(t, self.url, "vllm:spec_decode_num_accepted_tokens_total")
	if d == "0" || d != a {
		t.Errorf("the target as its own draft: %s proposals, %s accepted; want all", d, a)
	}
}

// TestServeDraftModelRefused: a draft of another vocabulary is refused at start-up, before
// its weights load, naming it.
func TestServeDraftModelRefused(t *testing.T) {
	_, o := serveFlags(io.Discard)
	o.tokenizerDir = tokenizerDirForTest(t)
	o.host, o.port, o.grpcPort, o.precompile = "127.0.0.1", 0, -1, "none"
	o.speculativeConfig = `{"method":"draft_model","model":"gemma3-1b","num_speculative_tokens":3}`
	err := serve(context.Background(), o, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	if err == nil || !strings.Contains(err.Error(), "draft model gemma3-1b: its vocabulary has 262144 rows, the target's 262208") {
		t.Errorf("serve with a gemma3-1b draft for the tiny target: %v", err)
	}
}
