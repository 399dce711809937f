package server

import (
	"bytes"
	"encoding/json"
	"math"
	"net/http"
	"net/http/httptest"
	"testing"
)

// Fuzz tests of request decoding and validation. The seed corpus is in
// testdata/fuzz/<FuzzName>/ (run with go test -fuzz=FuzzName ./server/).

func fuzzServer(t testing.TB) *Server {
	t.Helper()
	cfg := testConfig()
	cfg.MaxModelLen = 64
	s, err := New(cfg, &fakeEngine{}, fakeTokenizer{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// checkPlanOrError checks the invariants every validated request or error keeps.
func checkPlanOrError(t *testing.T, s *Server, plan *genPlan, e *APIError) {
	if (plan == nil) == (e == nil) {
		t.Fatalf("plan %v and error %v", plan, e)
	}
	if e != nil {
		if e.Status != 400 && e.Status != 404 || e.Message == "" || e.Type == "" || e.Code == "" {
			t.Fatalf("bad error %+v", e)
		}
		if _, err := json.Marshal(e.body()); err != nil {
			t.Fatalf("error does not encode: %v", err)
		}
		return
	}
	p := plan.params
	if plan.n < 1 || plan.n > maxN || len(plan.prompts) == 0 || len(plan.prompts)*plan.n > maxChoices {
		t.Fatalf("n=%d with %d prompts", plan.n, len(plan.prompts))
	}
	if p.Temperature < 0 || p.Temperature > 2 || !(p.TopP > 0 && p.TopP <= 1) || p.MinP < 0 || p.MinP > 1 ||
		math.Abs(float64(p.PresencePenalty)) > 2 || math.Abs(float64(p.FrequencyPenalty)) > 2 || !(p.RepetitionPenalty > 0) ||
		math.IsInf(float64(p.RepetitionPenalty), 0) || p.TopK < -1 || p.TopK > s.cfg.VocabSize || p.MinTokens < 0 {
		t.Fatalf("params out of range: %+v", p)
	}
	if p.Logprobs != nil && (*p.Logprobs < 0 || *p.Logprobs > s.cfg.MaxLogprobs) {
		t.Fatalf("logprobs %d", *p.Logprobs)
	}
	for _, st := range p.Stop {
		if st == "" {
			t.Fatal("empty stop string")
		}
	}
	for _, id := range p.StopTokenIDs {
		if id < 0 || int(id) >= s.cfg.VocabSize {
			t.Fatalf("stop token %d", id)
		}
	}
	for _, pr := range plan.prompts {
		if len(pr.ids) == 0 || pr.maxTokens < 1 || len(pr.ids)+pr.maxTokens > s.cfg.MaxModelLen || p.MinTokens > pr.maxTokens {
			t.Fatalf("prompt of %d tokens with max_tokens %d (min %d)", len(pr.ids), pr.maxTokens, p.MinTokens)
		}
		for _, id := range pr.ids {
			if id < 0 || int(id) >= s.cfg.VocabSize {
				t.Fatalf("prompt token %d", id)
			}
		}
	}
	if reqs := plan.engineRequests(); len(reqs) != len(plan.prompts)*plan.n {
		t.Fatalf("%d engine requests", len(reqs))
	}
}

func FuzzCompletionRequest(f *testing.F) {
	f.Add([]byte(`{"prompt":"hi","max_tokens":4}`))
	s := fuzzServer(f)
	f.Fuzz(func(t *testing.T, body []byte) {
		plan, e := s.completionPlan(body)
		checkPlanOrError(t, s, plan, e)
	})
}

func FuzzChatRequest(f *testing.F) {
	f.Add([]byte(`{"messages":[{"role":"user","content":"hi"}]}`))
	s := fuzzServer(f)
	f.Fuzz(func(t *testing.T, body []byte) {
		plan, e := s.chatPlan(body)
		checkPlanOrError(t, s, plan, e)
	})
}

// FuzzHTTP sends bodies through the whole HTTP stack (with a fake engine that always
// works): no panic and never a 5xx.
func FuzzHTTP(f *testing.F) {
	f.Add(uint8(0), []byte(`{"prompt":"hi","max_tokens":4,"stream":true}`))
	s := fuzzServer(f)
	paths := []string{"/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize"}
	f.Fuzz(func(t *testing.T, path uint8, body []byte) {
		req := httptest.NewRequest(http.MethodPost, paths[int(path)%len(paths)], bytes.NewReader(body))
		rec := httptest.NewRecorder()
		s.Handler().ServeHTTP(rec, req)
		if rec.Code >= 500 {
			t.Fatalf("%s: %d %s", req.URL.Path, rec.Code, rec.Body)
		}
		if rec.Code != 200 {
			decodeError(t, rec.Body.Bytes())
		}
	})
}
