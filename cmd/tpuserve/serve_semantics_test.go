package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"testing"
)

func postJSON(t *testing.T, url, body string) (int, map[string]any) {
	t.Helper()
	resp, err := http.Post(url, "application/json", bytes.NewBufferString(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var out map[string]any
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatalf("%s: %v", raw, err)
	}
	return resp.StatusCode, out
}

// TestServeRequestSemantics: against the real tiny engine, echo with logprobs and
// max_tokens 0 scores the prompt (every position after the first, agreeing with vLLM's
// prompt_logprobs field), logit_bias steers greedy decoding, a stop string before
// min_tokens is ignored, bad values are 400s naming the field, and the program-set
// metrics show no compilation while serving.
func TestServeRequestSemantics(t *testing.T) {
	ls := startServe(t, func(o *serveOptions) { o.precompile = "all"; o.maxNumSeqs = 4; o.maxBatched = 64; o.maxModelLen = 128 })
	prompt := []int{2, 818, 3444, 563, 496, 1757, 529}
	for _, maxTokens := range []int{0, 1} {
		status, out := postJSON(t, ls.url+"/v1/completions", fmt.Sprintf(`{"model":"tiny","prompt":%s,"echo":true,"logprobs":5,"max_tokens":%d,"prompt_logprobs":5,"temperature":0}`, mustJSON(prompt), maxTokens))
		if status != 200 {
			t.Fatalf("max_tokens %d: %d %v", maxTokens, status, out)
		}
		ch := out["choices"].([]any)[0].(map[string]any)
		lp := ch["logprobs"].(map[string]any)
		toks := lp["token_logprobs"].([]any)
		if len(toks) != len(prompt)+maxTokens || toks[0] != nil {
			t.Fatalf("max_tokens %d: token_logprobs %v", maxTokens, toks)
		}
		pl := ch["prompt_logprobs"].([]any)
		if len(pl) != len(prompt) || pl[0] != nil {
			t.Fatalf("prompt_logprobs %v", pl)
		}
		for i := 1; i < len(prompt); i++ {
			entry := pl[i].(map[string]any)[strconv.Itoa(prompt[i])].(map[string]any)
			if got, want := entry["logprob"].(float64), toks[i].(float64); math.Abs(got-want) > 1e-6 || got > 0 {
				t.Errorf("position %d: prompt_logprobs %v, echo logprobs %v", i, got, want)
			}
			if top := lp["top_logprobs"].([]any)[i].(map[string]any); len(top) < 5 {
				t.Errorf("position %d: %d top logprobs", i, len(top))
			}
		}
	}
	// logit_bias: +100 forces token 1234, invalid entries are 400s.
	status, out := postJSON(t, ls.url+"/v1/completions", `{"model":"tiny","prompt":"Hello","max_tokens":1,"temperature":0,"logit_bias":{"1234":100},"return_tokens_as_token_ids":true,"logprobs":0}`)
	if status != 200 {
		t.Fatalf("logit_bias: %d %v", status, out)
	}
	if tok := out["choices"].([]any)[0].(map[string]any)["logprobs"].(map[string]any)["tokens"].([]any)[0]; tok != "token_id:1234" {
		t.Errorf("+100 on 1234: greedy produced %v", tok)
	}
	for _, bad := range []string{`{"abc":1}`, `{"-1":1}`, `{"999999":1}`, `{"5":101}`, `{"5":"x"}`} {
		if status, out := postJSON(t, ls.url+"/v1/completions", `{"model":"tiny","prompt":"Hi","max_tokens":1,"logit_bias":`+bad+`}`); status != 400 || out["error"].(map[string]any)["param"] != "logit_bias" {
			t.Errorf("logit_bias %s: %d %v", bad, status, out)
		}
	}
	if status, out := postJSON(t, ls.url+"/v1/completions", `{"model":"tiny","prompt":"Hi","max_tokens":0}`); status != 400 {
		t.Errorf("max_tokens 0 without echo: %d %v", status, out)
	}
	// min_tokens: the greedy run's second token text as a stop string is ignored before 4.
	_, free := postJSON(t, ls.url+"/v1/completions", `{"model":"tiny","prompt":"Hello","max_tokens":8,"temperature":0,"ignore_eos":true,"logprobs":0}`)
	toks := free["choices"].([]any)[0].(map[string]any)["logprobs"].(map[string]any)["tokens"].([]any)
	stop := toks[1].(string)
	firstAt := 1
	for i, tk := range toks {
		if tk == stop {
			firstAt = i
			break
		}
	}
	if firstAt < 3 && stop != "" {
		_, held := postJSON(t, ls.url+"/v1/completions", fmt.Sprintf(`{"model":"tiny","prompt":"Hello","max_tokens":8,"temperature":0,"ignore_eos":true,"min_tokens":4,"stop":[%s]}`, mustJSON(stop)))
		if n := held["usage"].(map[string]any)["completion_tokens"].(float64); n < 4 {
			t.Errorf("min_tokens 4 with stop %q: %v tokens", stop, n)
		}
	}
	if got := metric(t, ls.url, "tpuserve:serving_compilations_total"); got != "0" {
		t.Errorf("tpuserve:serving_compilations_total = %q", got)
	}
	if got := metric(t, ls.url, "tpuserve:step_programs"); got == "" || got == "0" {
		t.Errorf("tpuserve:step_programs = %q", got)
	}
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}
