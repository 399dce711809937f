package server

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/tpuserve/tpuserve/server/proto/enginepb"
)

func TestModelsVersionHealth(t *testing.T) {
	ts := startTestServer(t, &fakeEngine{}, nil)
	client := ts.openai()
	page, err := client.Models.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(page.Data) != 2 || page.Data[0].ID != testModel || page.Data[1].ID != "alias" || page.Data[0].Object != "model" {
		t.Fatalf("models %+v", page.Data)
	}
	var raw struct {
		Data []map[string]any `json:"data"`
	}
	if err := json.Unmarshal([]byte(page.RawJSON()), &raw); err != nil {
		t.Fatal(err)
	}
	if raw.Data[0]["root"] != "/models/gemma-3-tiny" || raw.Data[0]["max_model_len"] != 256.0 {
		t.Errorf("model card %v", raw.Data[0])
	}
	m, err := client.Models.Get(context.Background(), "alias")
	if err != nil || m.ID != "alias" {
		t.Errorf("get model: %v %+v", err, m)
	}
	if status, _, body := ts.get(t, "/version"); status != 200 || strings.TrimSpace(string(body)) != `{"version":"v0.0.0-test"}` {
		t.Errorf("/version %d %s", status, body)
	}
	for _, path := range []string{"/health", "/ping"} {
		if status, _, _ := ts.get(t, path); status != 200 {
			t.Errorf("%s %d", path, status)
		}
	}
	if status, _, body := ts.post(t, "/health", ""); status != http.StatusMethodNotAllowed {
		t.Errorf("POST /health: %d %s", status, body)
	}
}

func TestTokenizeDetokenize(t *testing.T) {
	ts := startTestServer(t, &fakeEngine{}, nil)
	tests := []struct {
		name, path, body, want string
	}{
		{"prompt", "/tokenize", `{"prompt":"hi"}`, `{"count":3,"max_model_len":256,"tokens":[2,110,111],"token_strs":null}`},
		{"no special", "/tokenize", `{"prompt":"h i","add_special_tokens":false,"return_token_strs":true}`,
			`{"count":3,"max_model_len":256,"tokens":[110,38,111],"token_strs":["h","▁","i"]}`},
		{"messages", "/tokenize", `{"model":"alias","messages":[{"role":"user","content":"x"}],"add_generation_prompt":false}`,
			`{"count":10,"max_model_len":256,"tokens":[2,3,123,121,107,120,16,126,4,16],"token_strs":null}`},
		{"detokenize", "/detokenize", `{"tokens":[2,110,111]}`, `{"prompt":"<bos>hi"}`},
		{"detokenize empty", "/detokenize", `{"tokens":[]}`, `{"prompt":""}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, _, body := ts.post(t, tc.path, tc.body)
			if status != 200 || strings.TrimSpace(string(body)) != tc.want {
				t.Errorf("%d %s\nwant %s", status, body, tc.want)
			}
		})
	}
}

// metricLine returns the value of the first series whose line starts with name and
// contains every label fragment.
func metricLine(t *testing.T, body, name string, fragments ...string) float64 {
	t.Helper()
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		ok := true
		for _, f := range fragments {
			ok = ok && strings.Contains(line, f)
		}
		if ok {
			v, found := metricValue(t, line, name)
			if !found {
				t.Fatalf("cannot parse %q", line)
			}
			return v
		}
	}
	t.Fatalf("metric %s %v not found in:\n%s", name, fragments, body)
	return 0
}

func TestMetrics(t *testing.T) {
	ts := startTestServer(t, &fakeEngine{}, nil)
	client := ts.openai()
	ctx := context.Background()
	p := completionParams("abc", 5, 1)
	p.N = openai.Int(2)
	if _, err := client.Completions.New(ctx, p, option.WithJSONSet("ignore_eos", true)); err != nil {
		t.Fatal(err)
	}
	if _, err := client.Completions.New(ctx, completionParams("abcdef", 3, 1), option.WithJSONSet("ignore_eos", true)); err != nil {
		t.Fatal(err)
	}
	status, hdr, raw := ts.get(t, "/metrics")
	body := string(raw)
	if status != 200 || !strings.HasPrefix(hdr.Get("Content-Type"), "text/plain") {
		t.Fatalf("/metrics %d %s", status, hdr.Get("Content-Type"))
	}
	for _, name := range []string{
		"vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc",
		"vllm:time_to_first_token_seconds_bucket", "vllm:inter_token_latency_seconds_bucket", "vllm:e2e_request_latency_seconds_bucket",
		"vllm:request_queue_time_seconds_bucket", "vllm:prompt_tokens_total", "vllm:generation_tokens_total", "vllm:request_success_total",
	} {
		if !strings.Contains(body, "\n"+name+"{") {
			t.Errorf("/metrics lacks %s", name)
		}
	}
	model := `model_name="` + testModel + `"`
	checks := []struct {
		name      string
		fragments []string
		want      float64
	}{
		{"vllm:num_requests_running", []string{model}, 0},
		{"vllm:prompt_tokens_total", []string{model}, 4 + 4 + 7},
		{"vllm:generation_tokens_total", []string{model}, 5 + 5 + 3},
		{"vllm:request_success_total", []string{`finished_reason="length"`}, 3},
		{"vllm:request_success_total", []string{`finished_reason="stop"`}, 0},
		{"vllm:time_to_first_token_seconds_count", nil, 3},
		{"vllm:e2e_request_latency_seconds_count", nil, 3},
		{"vllm:request_queue_time_seconds_count", nil, 3},
		{"vllm:inter_token_latency_seconds_count", nil, 4 + 4 + 2},
	}
	for _, c := range checks {
		if got := metricLine(t, body, c.name, c.fragments...); got != c.want {
			t.Errorf("%s%v = %g, want %g", c.name, c.fragments, got, c.want)
		}
	}
}

// TestDisconnectAborts: a client that goes away mid-stream aborts its engine request and
// the running gauge returns to 0.
func TestDisconnectAborts(t *testing.T) {
	for _, stream := range []bool{true, false} {
		name := "non-streaming"
		if stream {
			name = "streaming"
		}
		t.Run(name, func(t *testing.T) {
			eng := &fakeEngine{interval: 5 * time.Millisecond}
			ts := startTestServer(t, eng, nil)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			body := `{"prompt":"go","max_tokens":200,"ignore_eos":true,"n":2,"stream":` + map[bool]string{true: "true", false: "false"}[stream] + `}`
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, ts.url+"/v1/completions", strings.NewReader(body))
			req.Header.Set("Content-Type", "application/json")
			errc := make(chan error, 1)
			go func() {
				resp, err := ts.client.Do(req)
				if err == nil {
					br := bufio.NewReader(resp.Body)
					_, err = br.ReadString('\n') // the first chunk
					<-ctx.Done()
					resp.Body.Close()
				}
				errc <- err
			}()
			running := func() float64 {
				_, _, b := ts.get(t, "/metrics")
				return metricLine(t, string(b), "vllm:num_requests_running")
			}
			waitFor(t, "two running requests", func() bool { return running() == 2 })
			time.Sleep(20 * time.Millisecond)
			cancel()
			<-errc
			waitFor(t, "the running gauge to return to 0", func() bool { return running() == 0 })
			if got := eng.finishedCount("abort"); got != 2 {
				t.Errorf("%d requests aborted, want 2", got)
			}
			_, _, b := ts.get(t, "/metrics")
			if got := metricLine(t, string(b), "vllm:request_success_total", `finished_reason="abort"`); got != 2 {
				t.Errorf("abort counter %g", got)
			}
		})
	}
}

// healthEngine is a fake engine whose health the test sets.
type healthEngine struct {
	*fakeEngine
	err atomic.Pointer[error]
}

func (h *healthEngine) Health() error {
	if e := h.err.Load(); e != nil {
		return *e
	}
	return nil
}

func TestEngineHealth(t *testing.T) {
	eng := &healthEngine{fakeEngine: &fakeEngine{}}
	ts := startTestServerWith(t, eng, eng.fakeEngine, nil)
	c, _ := dialGRPC(t, ts)
	if status, _, _ := ts.get(t, "/health"); status != 200 {
		t.Errorf("healthy: %d", status)
	}
	bad := errors.New("device lost")
	eng.err.Store(&bad)
	if status, _, _ := ts.get(t, "/health"); status != http.StatusServiceUnavailable {
		t.Errorf("unhealthy: %d", status)
	}
	h, err := c.HealthCheck(context.Background(), &enginepb.HealthCheckRequest{})
	if err != nil || h.Healthy || !strings.Contains(h.Message, "device lost") {
		t.Errorf("gRPC health %v %v", h, err)
	}
}
