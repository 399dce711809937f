package server

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	"github.com/tpuserve/tpuserve/engine"
	"github.com/tpuserve/tpuserve/server/proto/enginepb"
)

// rawRequest writes raw bytes on a fresh connection and returns the connection and a
// reader of its answers.
func rawConn(t *testing.T, ts *testServer) (net.Conn, *bufio.Reader) {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(ts.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	// Only a hung test trips this.
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	return conn, bufio.NewReader(conn)
}

func TestIdleConnectionsAreClosed(t *testing.T) {
	ts := startTestServer(t, &fakeEngine{}, func(c *Config) { c.IdleTimeout = 50 * time.Millisecond })
	conn, br := rawConn(t, ts)
	fmt.Fprintf(conn, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Close {
		t.Fatalf("status %d, close %v", resp.StatusCode, resp.Close)
	}
	// The keep-alive connection, left idle, is closed by the server (EOF), not by the
	// 30s test deadline.
	if _, err := br.ReadByte(); !errors.Is(err, io.EOF) {
		t.Fatalf("idle connection: read %v, want EOF", err)
	}
}

func TestSlowBodyIsCut(t *testing.T) {
	ts := startTestServer(t, &fakeEngine{}, func(c *Config) { c.BodyReadTimeout = 50 * time.Millisecond })
	conn, br := rawConn(t, ts)
	fmt.Fprintf(conn, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"prompt\":")
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusRequestTimeout || decodeError(t, body).Code != codeTimeout {
		t.Fatalf("slow body: %d %s", resp.StatusCode, body)
	}
}

func TestBigHeaderIs431(t *testing.T) {
	ts := startTestServer(t, &fakeEngine{}, nil)
	req, _ := http.NewRequest(http.MethodGet, ts.url+"/health", nil)
	req.Header.Set("X-Big", strings.Repeat("a", DefaultMaxHeaderBytes+8<<10))
	status, _, _ := ts.do(t, req)
	if status != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("status %d, want 431", status)
	}
}

func TestContentTypeMustBeJSON(t *testing.T) {
	ts := startTestServer(t, &fakeEngine{}, nil)
	body := `{"prompt":"hi","max_tokens":2}`
	for _, tc := range []struct {
		contentType string
		want        int
	}{
		{"application/json", 200},
		{"application/json; charset=utf-8", 200},
		{"Application/JSON", 200},
		{"text/plain", 415},
		{"application/x-www-form-urlencoded", 415},
		{"multipart/form-data; boundary=x", 415},
		{"", 415},
	} {
		for _, path := range []string{"/v1/completions", "/v1/chat/completions", "/v1/responses", "/tokenize"} {
			b := body
			if path == "/v1/chat/completions" {
				b = `{"messages":[{"role":"user","content":"hi"}],"max_tokens":2}`
			} else if path == "/v1/responses" {
				b = `{"input":"hi","max_output_tokens":2}`
			}
			req, _ := http.NewRequest(http.MethodPost, ts.url+path, strings.NewReader(b))
			if tc.contentType != "" {
				req.Header.Set("Content-Type", tc.contentType)
			}
			status, _, got := ts.do(t, req)
			if status != tc.want {
				t.Errorf("%s with Content-Type %q: %d %s", path, tc.contentType, status, got)
			}
			if status == 415 && decodeError(t, got).Code != codeUnsupportedMedia {
				t.Errorf("415 body: %s", got)
			}
		}
	}
}

func TestTokenizerEndpointsNeedTheKeyAndAreBounded(t *testing.T) {
	ts := startTestServer(t, &fakeEngine{}, func(c *Config) {
		c.APIKey = "sekrit"
		c.MaxTokenizeBodyBytes = 1 << 10
		c.MaxTokenizeTokens = 50
	})
	for _, path := range []string{"/tokenize", "/detokenize"} {
		status, _, body := ts.post(t, path, `{"prompt":"hi","tokens":[10]}`)
		if status != http.StatusUnauthorized {
			t.Errorf("%s without the key: %d %s", path, status, body)
		}
		status, _, body = ts.post(t, path, `{"prompt":"hi","tokens":[10]}`, "Authorization", "Bearer sekrit")
		if status != http.StatusOK {
			t.Errorf("%s with the key: %d %s", path, status, body)
		}
	}
	big := `{"prompt":"` + strings.Repeat("a", 2<<10) + `"}`
	if status, _, body := ts.post(t, "/tokenize", big, "Authorization", "Bearer sekrit"); status != http.StatusRequestEntityTooLarge {
		t.Errorf("2 KiB body over a 1 KiB limit: %d %s", status, body)
	}
	long := `{"prompt":"` + strings.Repeat("a", 60) + `"}`
	if status, _, body := ts.post(t, "/tokenize", long, "Authorization", "Bearer sekrit"); status != 400 || !strings.Contains(string(body), "limit of 50") {
		t.Errorf("61 tokens over a limit of 50: %d %s", status, body)
	}
	ids := strings.TrimSuffix(strings.Repeat("10,", 60), ",")
	if status, _, body := ts.post(t, "/detokenize", `{"tokens":[`+ids+`]}`, "Authorization", "Bearer sekrit"); status != 400 || !strings.Contains(string(body), "limit of 50") {
		t.Errorf("60 tokens over a limit of 50: %d %s", status, body)
	}
	// Probes stay open.
	for _, path := range []string{"/health", "/metrics"} {
		if status, _, _ := ts.get(t, path); status != 200 {
			t.Errorf("%s: %d", path, status)
		}
	}
}

func TestUnsupportedAPIs(t *testing.T) {
	ts := startTestServer(t, &fakeEngine{}, nil)
	for path, api := range map[string]string{
		"/v1/embeddings": "Embeddings", "/v1/audio/transcriptions": "Transcriptions", "/v1/images/generations": "Images",
		"/v1/rerank": "Rerank", "/rerank": "Rerank", "/score": "Score", "/v1/score": "Score", "/pooling": "Pooling",
		"/classify": "Classification", "/v2/rerank": "Rerank",
	} {
		status, _, body := ts.post(t, path, `{"input":"x"}`)
		if status != 400 || decodeError(t, body).Message != "The model does not support "+api+" API" {
			t.Errorf("%s: %d %s", path, status, body)
		}
	}
}

func TestRequestsThatCanNeverBeAdmitted(t *testing.T) {
	ts := startTestServer(t, &fakeEngine{}, func(c *Config) { c.QueueCapacity = 4 })
	cases := []struct {
		path, body string
		want       int
	}{
		{"/v1/completions", `{"prompt":"a","n":4,"max_tokens":1}`, 200},
		{"/v1/completions", `{"prompt":"a","n":5,"max_tokens":1}`, 400},
		{"/v1/completions", `{"prompt":["a","b","c"],"n":2,"max_tokens":1}`, 400},
		{"/v1/chat/completions", `{"messages":[{"role":"user","content":"a"}],"n":5,"max_tokens":1}`, 400},
	}
	for _, tc := range cases {
		status, hdr, body := ts.post(t, tc.path, tc.body)
		if status != tc.want {
			t.Errorf("%s %s: %d %s", tc.path, tc.body, status, body)
		}
		if status == 400 {
			if e := decodeError(t, body); e.Param == nil || *e.Param != "n" || !strings.Contains(e.Message, "can never be admitted") || hdr.Get("Retry-After") != "" {
				t.Errorf("%s: %s", tc.body, body)
			}
		}
	}
	c, _ := dialGRPC(t, ts)
	_, err := generateAll(context.Background(), c, &enginepb.GenerateRequest{Input: &enginepb.GenerateRequest_Text{Text: "a"},
		SamplingParams: &enginepb.SamplingParams{N: 5, MaxTokens: ptr(uint32(1))}})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "never be admitted") {
		t.Errorf("gRPC n=5 over a capacity of 4: %v", err)
	}
}

// TestToolChoiceNeedsToolsAndLegacyFunctionsAreRefused (tool calling itself: tools_test.go).
func TestToolChoiceNeedsToolsAndLegacyFunctionsAreRefused(t *testing.T) {
	ts := startTestServer(t, &fakeEngine{}, nil)
	msgs := `"messages":[{"role":"user","content":"a"}],"max_tokens":1`
	for _, tc := range []struct{ extra, param string }{
		{`"tool_choice":"auto"`, "tool_choice"},
		{`"tool_choice":{"type":"function","function":{"name":"f"}}`, "tool_choice"},
		{`"functions":[{"name":"f"}]`, "functions"},
		{`"function_call":"auto"`, "function_call"},
	} {
		status, _, body := ts.post(t, "/v1/chat/completions", `{`+msgs+`,`+tc.extra+`}`)
		if e := decodeError(t, body); status != 400 || e.Param == nil || *e.Param != tc.param {
			t.Errorf("%s: %d %s", tc.extra, status, body)
		}
	}
	if status, _, body := ts.post(t, "/v1/chat/completions", `{`+msgs+`,"tool_choice":"none"}`); status != 200 {
		t.Errorf("tool_choice none: %d %s", status, body)
	}
}

func TestPriorityNeedsPriorityScheduling(t *testing.T) {
	fcfs := startTestServer(t, &fakeEngine{}, nil)
	code, _, body := fcfs.post(t, "/v1/completions", `{"prompt":"a","max_tokens":1,"priority":3}`)
	if e := decodeError(t, body); code != 400 || e.Param == nil || *e.Param != "priority" {
		t.Errorf("fcfs with priority 3: %d %s", code, body)
	}
	if status, _, body := fcfs.post(t, "/v1/completions", `{"prompt":"a","max_tokens":1,"priority":0}`); status != 200 {
		t.Errorf("fcfs with priority 0: %d %s", status, body)
	}
	c, _ := dialGRPC(t, fcfs)
	if _, err := generateAll(context.Background(), c, &enginepb.GenerateRequest{Input: &enginepb.GenerateRequest_Text{Text: "a"},
		SamplingParams: &enginepb.SamplingParams{Priority: 2, MaxTokens: ptr(uint32(1))}}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("gRPC fcfs with priority: %v", err)
	}

	eng := &fakeEngine{}
	prio := startTestServer(t, eng, func(c *Config) { c.PriorityScheduling = true })
	if status, _, body := prio.post(t, "/v1/chat/completions", `{"messages":[{"role":"user","content":"a"}],"max_tokens":1,"priority":-5}`); status != 200 {
		t.Fatalf("priority scheduling: %d %s", status, body)
	}
	if got := eng.requests()[0].Priority; got != -5 {
		t.Errorf("engine request priority %d, want -5", got)
	}
}

func TestGenerationDefaults(t *testing.T) {
	eng := &fakeEngine{}
	ts := startTestServer(t, eng, func(c *Config) {
		c.Defaults = GenerationDefaults{TopK: ptr(64), TopP: ptr(0.95), Temperature: ptr(0.5), RepetitionPenalty: ptr(1.1), MaxTokens: ptr(7)}
	})
	if status, _, body := ts.post(t, "/v1/chat/completions", `{"messages":[{"role":"user","content":"a"}]}`); status != 200 {
		t.Fatalf("%d %s", status, body)
	}
	if status, _, body := ts.post(t, "/v1/completions", `{"prompt":"a","top_k":5,"temperature":0,"top_p":1,"max_tokens":3}`); status != 200 {
		t.Fatalf("%d %s", status, body)
	}
	reqs := eng.requests()
	p := reqs[0].Params
	if p.TopK != 64 || p.TopP != 0.95 || p.Temperature != 0.5 || p.RepetitionPenalty != 1.1 || p.MaxTokens != 7 || p.MinP != 0 {
		t.Errorf("defaults not applied: %+v", p)
	}
	p = reqs[1].Params
	if p.TopK != 5 || p.TopP != 1 || p.Temperature != 0 || p.RepetitionPenalty != 1.1 || p.MaxTokens != 3 {
		t.Errorf("explicit values must win over defaults: %+v", p)
	}
	if _, err := New(func() Config { c := testConfig(); c.Defaults.TopP = ptr(1.5); return c }(), &fakeEngine{}, fakeTokenizer{}); err == nil || !strings.Contains(err.Error(), "top_p") {
		t.Errorf("a default out of range: %v", err)
	}
}

func TestPromptIDsBeyondTheModelsRows(t *testing.T) {
	// The tokenizer knows more ids than the model has rows (VocabSize): text that encodes
	// to one of them is a 400 naming it, before the engine.
	eng := &fakeEngine{}
	ts := startTestServer(t, eng, func(c *Config) { c.VocabSize = fakeByteBase + 'z' })
	status, _, body := ts.post(t, "/v1/completions", `{"prompt":"abz","max_tokens":1}`)
	if status != 400 || !strings.Contains(string(body), fmt.Sprintf("token id %d", fakeByteBase+'z')) {
		t.Errorf("%d %s", status, body)
	}
	if len(eng.requests()) != 0 {
		t.Error("the engine got the request")
	}
}

func TestChatRefusalAndFingerprint(t *testing.T) {
	ts := startTestServer(t, &fakeEngine{}, nil)
	status, _, body := ts.post(t, "/v1/chat/completions", `{"messages":[{"role":"user","content":"a"}],"max_tokens":2}`)
	if status != 200 {
		t.Fatal(status, string(body))
	}
	var resp map[string]any
	if err := json.Unmarshal(body, &resp); err != nil {
		t.Fatal(err)
	}
	msg := resp["choices"].([]any)[0].(map[string]any)["message"].(map[string]any)
	if r, ok := msg["refusal"]; !ok || r != nil {
		t.Errorf("message.refusal must be present and null: %s", body)
	}
	fp, _ := resp["system_fingerprint"].(string)
	if !strings.HasPrefix(fp, "fp_") {
		t.Errorf("system_fingerprint %q", fp)
	}
	status, _, body = ts.post(t, "/v1/chat/completions", `{"messages":[{"role":"user","content":"a"}],"max_tokens":2,"stream":true,"stream_options":{"include_usage":true}}`)
	if status != 200 {
		t.Fatal(status)
	}
	for _, ev := range sseEvents(t, body) {
		if ev == "[DONE]" {
			continue
		}
		var chunk map[string]any
		if err := json.Unmarshal([]byte(ev), &chunk); err != nil {
			t.Fatal(err)
		}
		if chunk["system_fingerprint"] != fp {
			t.Errorf("chunk without the fingerprint %q: %s", fp, ev)
		}
		if choices := chunk["choices"].([]any); len(choices) > 0 {
			delta := choices[0].(map[string]any)["delta"].(map[string]any)
			if r, ok := delta["refusal"]; (delta["role"] == "assistant") != (ok && r == nil) {
				t.Errorf("refusal: null belongs in the role delta only: %s", ev)
			}
		}
	}
}

// openMetricsAccept is what Prometheus sends when it prefers OpenMetrics.
const openMetricsAccept = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"

// stepEngine is a fake engine that takes the step observer, as the real adapter does.
type stepEngine struct {
	*fakeEngine
	observe func(int)
}

func (e *stepEngine) SetStepObserver(f func(int)) { e.observe = f }

func TestNewMetrics(t *testing.T) {
	fake := &fakeEngine{}
	eng := &stepEngine{fakeEngine: fake}
	ts := startTestServerWith(t, eng, fake, nil)
	if eng.observe == nil {
		t.Fatal("SetStepObserver was not called")
	}
	eng.observe(48)
	eng.observe(0) // an idle step computes nothing and is not observed
	if status, _, body := ts.post(t, "/v1/completions", `{"prompt":["a","b"],"n":3,"max_tokens":5,"ignore_eos":true}`); status != 200 {
		t.Fatal(status, string(body))
	}
	_, _, body := ts.get(t, "/metrics")
	for name, want := range map[string]float64{
		"vllm:iteration_tokens_total_count":          1,
		"vllm:iteration_tokens_total_sum":            48,
		"vllm:request_params_n_count":                2, // once per prompt
		"vllm:request_params_n_sum":                  6,
		"vllm:request_params_max_tokens_count":       6, // once per sequence
		"vllm:request_params_max_tokens_sum":         30,
		"vllm:request_max_num_generation_tokens_sum": 10, // per prompt, the most any of its n generated
	} {
		if got, ok := metricValue(t, string(body), name); !ok || got != want {
			t.Errorf("%s = %v (present %v), want %v", name, got, ok, want)
		}
	}
	if !strings.Contains(string(body), `vllm:request_params_max_tokens_bucket{engine="0",model_name="gemma-3-tiny",le="200"}`) {
		t.Error("max_tokens buckets are not vLLM's 1-2-5 series up to max_model_len")
	}
	req, _ := http.NewRequest(http.MethodGet, ts.url+"/metrics", nil)
	req.Header.Set("Accept", openMetricsAccept)
	resp, err := ts.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	om, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/openmetrics-text") || !strings.HasSuffix(strings.TrimSpace(string(om)), "# EOF") {
		t.Errorf("OpenMetrics: Content-Type %q, body ends %q", ct, string(om[max(0, len(om)-40):]))
	}
}

func TestInterTokenLatencyPerToken(t *testing.T) {
	m := newMetrics("m", 100, func() Engine { return nil })
	itlCount := func() uint64 {
		mfs, err := m.reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() == "vllm:inter_token_latency_seconds" {
				return mf.GetMetric()[0].GetHistogram().GetSampleCount()
			}
		}
		t.Fatal("no ITL histogram")
		return 0
	}
	t0 := time.Unix(1000, 0)
	var rm requestMetrics
	// Three tokens in one event, stamped by the engine: two gaps.
	m.observe(&rm, &engine.Event{TokenIDs: []int32{1, 2, 3}, TokenTimes: []time.Time{t0, t0.Add(time.Millisecond), t0.Add(2 * time.Millisecond)}})
	if got := itlCount(); got != 2 {
		t.Errorf("ITL observations %d, want 2", got)
	}
	// Without stamps, one event is one gap.
	m.observe(&rm, &engine.Event{TokenIDs: []int32{4, 5}})
	if got := itlCount(); got != 3 {
		t.Errorf("ITL observations %d, want 3", got)
	}
	var _ prometheus.Collector = m.reg // the registry is what /metrics serves
}

// failingWriter is a ResponseWriter whose writes fail, as when the client has gone.
type failingWriter struct{ *httptest.ResponseRecorder }

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("broken pipe") }

func TestSSEWriteFailureAborts(t *testing.T) {
	c, _ := gin.CreateTestContext(failingWriter{httptest.NewRecorder()})
	aborted := 0
	w := startSSE(c, func() { aborted++ })
	w.data(map[string]int{"a": 1})
	w.flush()
	w.data(map[string]int{"a": 2})
	w.flush()
	if aborted != 1 {
		t.Errorf("onFail called %d times, want once", aborted)
	}
}

func TestEngineErrorsReachClients(t *testing.T) {
	ts := startTestServer(t, &fakeEngine{failAfter: 2}, nil)
	code, _, body := ts.post(t, "/v1/completions", `{"prompt":"a","max_tokens":10,"ignore_eos":true}`)
	if code != 500 || strings.Contains(string(body), "secret") {
		t.Errorf("non-streaming: %d %s", code, body)
	}
	code, _, body = ts.post(t, "/v1/chat/completions", `{"messages":[{"role":"user","content":"a"}],"max_tokens":10,"ignore_eos":true,"stream":true}`)
	if evs := sseEvents(t, body); code != 200 || !strings.Contains(strings.Join(evs, "\n"), `"error":{`) {
		t.Errorf("SSE: %d %s", code, body)
	}
	c, _ := dialGRPC(t, ts)
	msgs, err := generateAll(context.Background(), c, &enginepb.GenerateRequest{Input: &enginepb.GenerateRequest_Text{Text: "a"}, Stream: true,
		SamplingParams: &enginepb.SamplingParams{MaxTokens: ptr(uint32(10)), IgnoreEos: true}})
	if status.Code(err) != codes.Internal || len(msgs) == 0 || msgs[len(msgs)-1].GetError() == nil {
		t.Errorf("gRPC: %v after %d messages", err, len(msgs))
	}
}

func TestEngineSetLater(t *testing.T) {
	cfg := testConfig()
	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg.HTTPListener, cfg.GRPCListener = hl, gl
	s, err := New(cfg, nil, fakeTokenizer{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	ts := &testServer{t: t, s: s, url: "http://" + s.HTTPAddr().String(), grpc: s.GRPCAddr().String(), client: &http.Client{}}
	defer ts.client.CloseIdleConnections()
	conn, err := grpc.NewClient(ts.grpc, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	health := healthpb.NewHealthClient(conn)
	check := func() healthpb.HealthCheckResponse_ServingStatus {
		r, err := health.Check(context.Background(), &healthpb.HealthCheckRequest{})
		if err != nil {
			t.Fatal(err)
		}
		return r.GetStatus()
	}
	if status, _, _ := ts.get(t, "/health"); status != 503 {
		t.Errorf("/health while loading: %d", status)
	}
	if st := check(); st != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Errorf("gRPC health while loading: %v", st)
	}
	status, hdr, body := ts.post(t, "/v1/completions", `{"prompt":"a","max_tokens":1}`)
	if status != 503 || hdr.Get("Retry-After") == "" || !strings.Contains(string(body), "loading") {
		t.Errorf("completion while loading: %d %s", status, body)
	}
	if status, _, _ := ts.get(t, "/metrics"); status != 200 {
		t.Errorf("/metrics while loading: %d", status)
	}
	if err := s.SetEngine(&fakeEngine{}); err != nil {
		t.Fatal(err)
	}
	<-s.EngineReady()
	if status, _, _ := ts.get(t, "/health"); status != 200 {
		t.Errorf("/health once ready: %d", status)
	}
	if st := check(); st != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("gRPC health once ready: %v", st)
	}
	if status, _, body := ts.post(t, "/v1/completions", `{"prompt":"a","max_tokens":1}`); status != 200 {
		t.Errorf("completion once ready: %d %s", status, body)
	}
}

func TestShutdownDoesNotWaitForHealthWatches(t *testing.T) {
	// With an hour of shutdown timeout, Serve returns only if an open Watch does not hold
	// the shutdown up.
	ts := startTestServer(t, &fakeEngine{}, func(c *Config) { c.ShutdownTimeout = time.Hour })
	conn, err := grpc.NewClient(ts.grpc, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	watch, err := healthpb.NewHealthClient(conn).Watch(context.Background(), &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := watch.Recv(); err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("watch: %v %v", r, err)
	}
	ts.stop()
	select {
	case err := <-ts.done:
		ts.done <- err // for the cleanup's close
	case <-time.After(30 * time.Second):
		t.Fatal("Serve did not return with a health Watch open")
	}
}

func TestGRPCReflectionAndBadMessages(t *testing.T) {
	ts := startTestServer(t, &fakeEngine{}, nil)
	c, conn := dialGRPC(t, ts)
	rc, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := rc.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	resp, err := rc.Recv()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, svc := range resp.GetListServicesResponse().GetService() {
		names = append(names, svc.GetName())
	}
	if !strings.Contains(strings.Join(names, ","), enginepb.TpuserveEngine_ServiceDesc.ServiceName) {
		t.Errorf("reflection lists %v", names)
	}
	rc.CloseSend()

	garbage := []byte{0xff, 0xff, 0xff}
	for _, method := range []string{"/" + enginepb.TpuserveEngine_ServiceDesc.ServiceName + "/Abort",
		"/" + enginepb.TpuserveEngine_ServiceDesc.ServiceName + "/Generate"} {
		var err error
		if strings.HasSuffix(method, "Generate") {
			var st grpc.ClientStream
			st, err = conn.NewStream(context.Background(), &grpc.StreamDesc{ServerStreams: true}, method, grpc.ForceCodec(rawCodec{}))
			if err == nil {
				if err = st.SendMsg(garbage); err == nil {
					st.CloseSend()
					var out []byte
					err = st.RecvMsg(&out)
				}
			}
		} else {
			var out []byte
			err = conn.Invoke(context.Background(), method, garbage, &out, grpc.ForceCodec(rawCodec{}))
		}
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s with a malformed message: %v, want InvalidArgument", method, err)
		}
	}

	// n out of range reports the value sent.
	_, err = generateAll(context.Background(), c, &enginepb.GenerateRequest{Input: &enginepb.GenerateRequest_Text{Text: "a"},
		SamplingParams: &enginepb.SamplingParams{N: 3_000_000}})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "got 3000000") {
		t.Errorf("n out of range: %v", err)
	}
}

func TestGRPCAbortCountsEachRequestOnce(t *testing.T) {
	eng := &fakeEngine{interval: time.Millisecond}
	ts := startTestServer(t, eng, nil)
	c, _ := dialGRPC(t, ts)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, err := c.Generate(ctx, &enginepb.GenerateRequest{RequestId: "dup", Input: &enginepb.GenerateRequest_Text{Text: "a"}, Stream: true,
		SamplingParams: &enginepb.SamplingParams{MaxTokens: ptr(uint32(200)), IgnoreEos: true}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	resp, err := c.Abort(context.Background(), &enginepb.AbortRequest{RequestIds: []string{"dup", "dup", "other"}})
	if err != nil || resp.GetNumAborted() != 1 {
		t.Errorf("Abort [dup dup other]: %v %v", resp, err)
	}
	for {
		if _, err := stream.Recv(); err != nil {
			break
		}
	}
}

// rawCodec sends and receives bytes as they are.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return v.([]byte), nil }
func (rawCodec) Unmarshal(data []byte, v any) error {
	*(v.(*[]byte)) = append([]byte(nil), data...)
	return nil
}
func (rawCodec) Name() string { return "proto" }
