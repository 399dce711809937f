package bench

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakePlan is how the fake server answers one request: the first chunk TTFT after the
// request arrives, then one chunk every ChunkSize·TPOT, each carrying ChunkSize tokens
// (the last one fewer), Out tokens in all.
type fakePlan struct {
	TTFT, TPOT time.Duration
	Out        int
	ChunkSize  int
}

func (p fakePlan) chunks() int { return (p.Out + p.ChunkSize - 1) / p.ChunkSize }
func (p fakePlan) gap() time.Duration {
	return time.Duration(p.ChunkSize) * p.TPOT
}

// fakeRecord is what the fake server did for one request.
type fakeRecord struct {
	Received  time.Time
	Flushes   []time.Time // when each choice chunk was flushed
	PromptLen int
	MaxTokens int
	Plan      fakePlan
}

// fakeServer is an in-process OpenAI completions server with known timing. It checks the
// request body strictly (unknown fields are an error) so the benchmark's payload is tested.
type fakeServer struct {
	t     *testing.T
	model string
	plan  func(promptLen, maxTokens int, ignoreEOS bool) fakePlan
	srv   *httptest.Server

	mu      sync.Mutex
	records []fakeRecord
	arrived []time.Time
}

func newFakeServer(t *testing.T, model string, plan func(promptLen, maxTokens int, ignoreEOS bool) fakePlan) *fakeServer {
	f := &fakeServer{t: t, model: model, plan: plan}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/models", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, `{"object":"list","data":[{"id":%q,"object":"model","root":%q}]}`, model, model)
	})
	mux.HandleFunc("POST /v1/completions", f.completions)
	f.srv = httptest.NewServer(mux)
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeServer) snapshot() ([]fakeRecord, []time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]fakeRecord(nil), f.records...), append([]time.Time(nil), f.arrived...)
}

func httpError(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	fmt.Fprintf(w, `{"error":{"message":%q,"type":"BadRequestError","code":%d}}`, msg, code)
}

func (f *fakeServer) completions(w http.ResponseWriter, r *http.Request) {
	received := time.Now()
	f.mu.Lock()
	f.arrived = append(f.arrived, received)
	f.mu.Unlock()
	var req struct {
		Model         string          `json:"model"`
		Prompt        json.RawMessage `json:"prompt"`
		MaxTokens     *int            `json:"max_tokens"`
		Stream        bool            `json:"stream"`
		StreamOptions *struct {
			IncludeUsage bool `json:"include_usage"`
		} `json:"stream_options"`
		IgnoreEOS bool `json:"ignore_eos"`
	}
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		httpError(w, 400, "bad body: "+err.Error())
		return
	}
	if req.Model != f.model {
		httpError(w, 404, "model "+req.Model+" does not exist")
		return
	}
	if !req.Stream || req.StreamOptions == nil || !req.StreamOptions.IncludeUsage || req.MaxTokens == nil || *req.MaxTokens < 1 {
		httpError(w, 400, "want stream, stream_options.include_usage and max_tokens >= 1")
		return
	}
	var ids []int
	var text string
	promptLen := 0
	if err := json.Unmarshal(req.Prompt, &ids); err == nil {
		promptLen = len(ids)
	} else if err := json.Unmarshal(req.Prompt, &text); err == nil {
		promptLen = EstimateTokens(text)
	} else {
		httpError(w, 400, "prompt must be token ids or a string")
		return
	}
	if promptLen == 0 {
		httpError(w, 400, "empty prompt")
		return
	}
	plan := f.plan(promptLen, *req.MaxTokens, req.IgnoreEOS)
	rec := fakeRecord{Received: received, PromptLen: promptLen, MaxTokens: *req.MaxTokens, Plan: plan}

	w.Header().Set("Content-Type", "text/event-stream")
	w.WriteHeader(200)
	fl := w.(http.Flusher)
	// A comment line, as servers send for keep-alive: the client must skip it.
	fmt.Fprint(w, ": ping\n\n")
	fl.Flush()
	sent := 0
	for c := 0; c < plan.chunks(); c++ {
		deadline := received.Add(plan.TTFT + time.Duration(c)*plan.gap())
		select {
		case <-time.After(time.Until(deadline)):
		case <-r.Context().Done():
			return
		}
		n := min(plan.ChunkSize, plan.Out-sent)
		var sb strings.Builder
		for k := 0; k < n; k++ {
			fmt.Fprintf(&sb, " t%d", sent+k)
		}
		sent += n
		finish := "null"
		if sent == plan.Out {
			finish = `"length"`
			if plan.Out < *req.MaxTokens {
				finish = `"stop"`
			}
		}
		fmt.Fprintf(w, "data: {\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"created\":1,\"model\":%q,\"choices\":[{\"index\":0,\"text\":%q,\"logprobs\":null,\"finish_reason\":%s}],\"usage\":null}\n\n",
			f.model, sb.String(), finish)
		fl.Flush()
		rec.Flushes = append(rec.Flushes, time.Now())
	}
	// Record before the usage event: the client may finish as soon as [DONE] arrives.
	f.mu.Lock()
	f.records = append(f.records, rec)
	f.mu.Unlock()
	fmt.Fprintf(w, "data: {\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"created\":1,\"model\":%q,\"choices\":[],\"usage\":{\"prompt_tokens\":%d,\"completion_tokens\":%d,\"total_tokens\":%d}}\n\n",
		f.model, promptLen, plan.Out, promptLen+plan.Out)
	fmt.Fprint(w, "data: [DONE]\n\n")
	fl.Flush()
}

// truth is the fake server's side of a run, per metric, in seconds.
type truth struct {
	ttft, tpot, allTPOT, itl, e2el []float64
	out, in                        int
	usage                          []int
}

// recordedTruth computes the metrics from the times the server flushed each chunk.
func recordedTruth(recs []fakeRecord) truth {
	var tr truth
	for _, r := range recs {
		ttft := r.Flushes[0].Sub(r.Received).Seconds()
		e2e := r.Flushes[len(r.Flushes)-1].Sub(r.Received).Seconds()
		tr.ttft = append(tr.ttft, ttft)
		tr.e2el = append(tr.e2el, e2e)
		for i := 1; i < len(r.Flushes); i++ {
			tr.itl = append(tr.itl, r.Flushes[i].Sub(r.Flushes[i-1]).Seconds())
		}
		tpot := 0.0
		if r.Plan.Out > 1 {
			tpot = (e2e - ttft) / float64(r.Plan.Out-1)
			tr.tpot = append(tr.tpot, tpot)
		}
		tr.allTPOT = append(tr.allTPOT, tpot)
		tr.out += r.Plan.Out
		tr.in += r.PromptLen
		tr.usage = append(tr.usage, r.Plan.Out)
	}
	return tr
}

// plannedTruth computes the metrics the server meant to produce (its configured delays).
func plannedTruth(recs []fakeRecord) truth {
	var tr truth
	for _, r := range recs {
		p := r.Plan
		ttft := p.TTFT.Seconds()
		e2e := (p.TTFT + time.Duration(p.chunks()-1)*p.gap()).Seconds()
		tr.ttft = append(tr.ttft, ttft)
		tr.e2el = append(tr.e2el, e2e)
		for i := 1; i < p.chunks(); i++ {
			tr.itl = append(tr.itl, p.gap().Seconds())
		}
		tpot := 0.0
		if p.Out > 1 {
			tpot = (e2e - ttft) / float64(p.Out-1)
			tr.tpot = append(tr.tpot, tpot)
		}
		tr.allTPOT = append(tr.allTPOT, tpot)
		tr.out += p.Out
		tr.in += r.PromptLen
		tr.usage = append(tr.usage, p.Out)
	}
	return tr
}

// sseBody builds a stream body from events (each written as "data: EV\n\n").
func sseBody(events ...string) string {
	var b bytes.Buffer
	for _, e := range events {
		fmt.Fprintf(&b, "data: %s\n\n", e)
	}
	return b.String()
}
