package server

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/tpuserve/tpuserve/server/proto/enginepb"
)

// inflight starts, against ts, a streaming and a non-streaming HTTP completion and a gRPC
// stream, each asking for maxTokens tokens; the returned function waits for them and
// reports what each saw.
type shutdownResult struct {
	streamFinish string // finish_reason of the streaming HTTP request's last choice chunk
	streamDone   bool   // it ended with [DONE]
	streamTokens int
	plainStatus  int
	plainFinish  string
	plainTokens  int
	grpcFinish   string
	grpcErr      error
}

func startInflight(t *testing.T, ts *testServer, maxTokens int) func() shutdownResult {
	t.Helper()
	var res shutdownResult
	var wg sync.WaitGroup
	body := func(stream bool) string {
		b, _ := json.Marshal(map[string]any{"prompt": "x", "max_tokens": maxTokens, "ignore_eos": true, "stream": stream})
		return string(b)
	}
	wg.Add(3)
	go func() {
		defer wg.Done()
		status, _, raw := ts.post(t, "/v1/completions", body(true))
		if status != 200 {
			t.Errorf("streaming status %d", status)
			return
		}
		events := sseEvents(t, raw)
		res.streamDone = events[len(events)-1] == "[DONE]"
		for _, ev := range events[:len(events)-1] {
			var chunk completionResponse
			if err := json.Unmarshal([]byte(ev), &chunk); err != nil {
				t.Errorf("chunk %s: %v", ev, err)
				return
			}
			for _, c := range chunk.Choices {
				res.streamTokens += len(c.Text)
				if c.FinishReason != nil {
					res.streamFinish = *c.FinishReason
				}
			}
		}
	}()
	go func() {
		defer wg.Done()
		status, _, raw := ts.post(t, "/v1/completions", body(false))
		res.plainStatus = status
		if status == 200 {
			var resp completionResponse
			if err := json.Unmarshal(raw, &resp); err != nil {
				t.Error(err)
				return
			}
			res.plainFinish, res.plainTokens = *resp.Choices[0].FinishReason, resp.Usage.CompletionTokens
		}
	}()
	c, _ := dialGRPC(t, ts)
	stream, err := c.Generate(context.Background(), &enginepb.GenerateRequest{Input: &enginepb.GenerateRequest_Text{Text: "x"},
		SamplingParams: &enginepb.SamplingParams{MaxTokens: proto.Uint32(uint32(maxTokens)), IgnoreEos: true}, Stream: true})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		defer wg.Done()
		for {
			m, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				return
			}
			if err != nil {
				res.grpcErr = err
				return
			}
			if d := m.GetComplete(); d != nil {
				res.grpcFinish = d.FinishReason
			}
		}
	}()
	waitFor(t, "three running requests", func() bool { return ts.eng.Stats().NumRunning == 3 })
	return func() shutdownResult {
		wg.Wait()
		return res
	}
}

// TestGracefulShutdown: on shutdown the listeners close at once and in-flight requests
// run to completion.
func TestGracefulShutdown(t *testing.T) {
	eng := &fakeEngine{interval: 3 * time.Millisecond}
	ts := startTestServer(t, eng, func(c *Config) { c.ShutdownTimeout = 20 * time.Second })
	wait := startInflight(t, ts, 100) // ~300 ms each
	addr := ts.s.HTTPAddr().String()
	closed := make(chan struct{})
	go func() {
		ts.close()
		close(closed)
	}()
	// New connections are refused while the old requests still run.
	waitFor(t, "the listener to close", func() bool {
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			conn.Close()
		}
		return err != nil
	})
	if eng.Stats().NumRunning == 0 {
		t.Fatal("requests finished before the listener closed; the test proves nothing")
	}
	res := wait()
	<-closed
	if res.streamFinish != "length" || !res.streamDone || res.streamTokens != 100 {
		t.Errorf("streaming request: %+v", res)
	}
	if res.plainStatus != 200 || res.plainFinish != "length" || res.plainTokens != 100 {
		t.Errorf("non-streaming request: %+v", res)
	}
	if res.grpcFinish != "length" || res.grpcErr != nil {
		t.Errorf("gRPC request: %+v", res)
	}
	if got := eng.finishedCount("abort"); got != 0 {
		t.Errorf("%d requests aborted", got)
	}
}

// TestShutdownTimeoutAborts: requests still running when the shutdown timeout expires are
// aborted and told so.
func TestShutdownTimeoutAborts(t *testing.T) {
	eng := &fakeEngine{interval: 3 * time.Millisecond}
	ts := startTestServer(t, eng, func(c *Config) { c.ShutdownTimeout = 100 * time.Millisecond; c.MaxModelLen = 1 << 20 })
	wait := startInflight(t, ts, 100000)
	start := time.Now()
	ts.close()
	res := wait()
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("shutdown took %s", took)
	}
	if res.streamFinish != "abort" || !res.streamDone {
		t.Errorf("streaming request: %+v", res)
	}
	if res.plainStatus != http.StatusServiceUnavailable {
		t.Errorf("non-streaming request: %+v", res)
	}
	if res.grpcFinish != "abort" && res.grpcErr == nil {
		t.Errorf("gRPC request: %+v", res)
	}
	if got := eng.finishedCount("abort"); got != 3 {
		t.Errorf("%d requests aborted, want 3", got)
	}
	if eng.Stats().NumRunning != 0 {
		t.Errorf("still running: %+v", eng.Stats())
	}
}

func TestServeErrors(t *testing.T) {
	if _, err := New(Config{}, &fakeEngine{}, fakeTokenizer{}); err == nil || !strings.Contains(err.Error(), "ServedModelNames") || !strings.Contains(err.Error(), "MaxModelLen") {
		t.Errorf("New with an empty config: %v", err)
	}
	if _, err := New(testConfig(), &fakeEngine{}, nil); err == nil {
		t.Error("New with a nil tokenizer")
	}
	s0, err := New(testConfig(), nil, fakeTokenizer{})
	if err != nil {
		t.Fatalf("New without an engine (set later): %v", err)
	}
	if err := s0.SetEngine(nil); err == nil {
		t.Error("SetEngine(nil)")
	}
	if err := s0.SetEngine(&fakeEngine{}); err != nil {
		t.Fatal(err)
	}
	if err := s0.SetEngine(&fakeEngine{}); err == nil {
		t.Error("SetEngine twice")
	}
	// A port in use is an error from Serve, not a hang.
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	cfg := testConfig()
	cfg.Host = "127.0.0.1"
	cfg.Port = busy.Addr().(*net.TCPAddr).Port
	cfg.GRPCPort = -1
	s, err := New(cfg, &fakeEngine{}, fakeTokenizer{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Serve(context.Background()); err == nil || !strings.Contains(err.Error(), "listen") {
		t.Errorf("Serve on a busy port: %v", err)
	}
	if err := s.Serve(context.Background()); err == nil {
		t.Error("second Serve")
	}
}

func TestServeOwnListeners(t *testing.T) {
	cfg := testConfig()
	cfg.Host, cfg.Port, cfg.GRPCPort = "127.0.0.1", 0, 0
	s, err := New(cfg, &fakeEngine{}, fakeTokenizer{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	<-s.Ready()
	client := &http.Client{}
	resp, err := client.Get("http://" + s.HTTPAddr().String() + "/health")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	client.CloseIdleConnections()
	if resp.StatusCode != 200 || s.GRPCAddr() == nil {
		t.Errorf("health %d, grpc %v", resp.StatusCode, s.GRPCAddr())
	}
	cancel()
	if err := <-done; err != nil {
		t.Error(err)
	}
}
