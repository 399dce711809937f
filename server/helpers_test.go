package server

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const testModel = "gemma-3-tiny"

// testServer is a Server on loopback listeners with a fake engine.
type testServer struct {
	t      *testing.T
	s      *Server
	eng    *fakeEngine
	url    string // http://127.0.0.1:port
	grpc   string // host:port
	client *http.Client
	stop   context.CancelFunc
	done   chan error
}

func testLogger() *slog.Logger {
	level := slog.LevelError + 4 // silent unless TPUSERVE_TEST_LOG is set
	if os.Getenv("TPUSERVE_TEST_LOG") != "" {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
}

func testConfig() Config {
	cfg := DefaultConfig()
	cfg.ServedModelNames = []string{testModel, "alias"}
	cfg.ModelRoot = "/models/gemma-3-tiny"
	cfg.MaxModelLen = 256
	cfg.ShutdownTimeout = 5 * time.Second
	cfg.Version = "v0.0.0-test"
	cfg.Logger = testLogger()
	return cfg
}

func startTestServer(t testing.TB, eng *fakeEngine, mutate func(*Config)) *testServer {
	t.Helper()
	return startTestServerWith(t, eng, eng, mutate)
}

// startTestServerWith serves eng (which wraps the fake engine fake).
func startTestServerWith(t testing.TB, eng Engine, fake *fakeEngine, mutate func(*Config)) *testServer {
	t.Helper()
	cfg := testConfig()
	if mutate != nil {
		mutate(&cfg)
	}
	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg.HTTPListener, cfg.GRPCListener = hl, gl
	s, err := New(cfg, eng, fakeTokenizer{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ts := &testServer{s: s, eng: fake, stop: cancel, done: make(chan error, 1),
		client: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1024}}}
	go func() { ts.done <- s.Serve(ctx) }()
	select {
	case <-s.Ready():
	case err := <-ts.done:
		t.Fatalf("Serve: %v", err)
	}
	ts.url = "http://" + s.HTTPAddr().String()
	ts.grpc = s.GRPCAddr().String()
	t.Cleanup(ts.close)
	return ts
}

// close shuts the server down and waits for Serve; it is idempotent.
func (ts *testServer) close() {
	ts.stop()
	select {
	case err, ok := <-ts.done:
		if ok && err != nil {
			panic("Serve: " + err.Error())
		}
		if ok {
			close(ts.done)
		}
	case <-time.After(30 * time.Second):
		panic("Serve did not return within 30s of shutdown")
	}
	ts.client.CloseIdleConnections()
}

func (ts *testServer) openai(opts ...option.RequestOption) openai.Client {
	base := []option.RequestOption{option.WithBaseURL(ts.url + "/v1/"), option.WithAPIKey("unused"),
		option.WithHTTPClient(ts.client), option.WithMaxRetries(0)}
	return openai.NewClient(append(base, opts...)...)
}

// post sends body as JSON and returns the status, headers and body.
func (ts *testServer) post(t testing.TB, path, body string, headers ...string) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, ts.url+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	return ts.do(t, req)
}

func (ts *testServer) get(t testing.TB, path string) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, ts.url+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	return ts.do(t, req)
}

func (ts *testServer) do(t testing.TB, req *http.Request) (int, http.Header, []byte) {
	t.Helper()
	resp, err := ts.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, b
}

// sseEvents splits an SSE body into its data payloads.
func sseEvents(t testing.TB, body []byte) []string {
	t.Helper()
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(body))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			continue
		}
		data, ok := strings.CutPrefix(line, "data: ")
		if !ok {
			t.Fatalf("SSE line without data: %q", line)
		}
		out = append(out, data)
	}
	return out
}

// metric returns the value of the series named name (first match) in a /metrics body.
func metricValue(t testing.TB, body, name string) (float64, bool) {
	t.Helper()
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + `(\{[^}]*\})? (\S+)$`)
	m := re.FindStringSubmatch(body)
	if m == nil {
		return 0, false
	}
	v, err := strconv.ParseFloat(m[2], 64)
	if err != nil {
		t.Fatalf("metric %s: %v", name, err)
	}
	return v, true
}

// waitFor polls cond until it holds or 10s pass.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// errorObject decodes an OpenAI error body and checks its shape.
func decodeError(t testing.TB, body []byte) errorObject {
	t.Helper()
	var raw map[string]map[string]json.RawMessage
	if err := json.Unmarshal(body, &raw); err != nil {
		t.Fatalf("error body is not JSON: %v: %s", err, body)
	}
	obj, ok := raw["error"]
	if !ok {
		t.Fatalf("error body has no \"error\": %s", body)
	}
	for _, k := range []string{"message", "type", "param", "code"} {
		if _, ok := obj[k]; !ok {
			t.Fatalf("error object lacks %q: %s", k, body)
		}
	}
	var e errorBody
	if err := json.Unmarshal(body, &e); err != nil {
		t.Fatal(err)
	}
	return e.Error
}
