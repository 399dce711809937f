package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func runCmd(args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	code = run(args, strings.NewReader(""), &out, &errb)
	return code, out.String(), errb.String()
}

func TestDeployCommand(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		code     int
		contains []string
		absent   []string
	}{
		{"tpu", []string{"deploy", "--target", "tpu", "--model", "gs://my-models/gemma-3-27b-it", "--replicas", "2", "--namespace", "serving", "--image", "img:1"},
			0, []string{"google.com/tpu: \"8\"", "--tensor-parallel-size=8", "--model=/models/my-models/gemma-3-27b-it", "replicas: 2", "namespace: serving", "image: img:1", "kind: HorizontalPodAutoscaler", "kind: PodMonitoring"},
			[]string{"nvidia"}},
		{"gpu", []string{"deploy", "--target=gpu"}, 0, []string{"nvidia.com/gpu: \"1\"", "--backend=xla:cuda"}, []string{"google.com/tpu"}},
		{"cpu without autoscaling", []string{"deploy", "--target", "cpu", "--no-autoscale"}, 0, []string{"--backend=go"}, []string{"HorizontalPodAutoscaler"}},
		{"unknown target", []string{"deploy", "--target", "tpu-v4"}, 1, nil, nil},
		{"no target", []string{"deploy"}, 1, nil, nil},
		{"bad model", []string{"deploy", "--target", "tpu", "--model", "hf://google/gemma"}, 1, nil, nil},
		{"zero replicas", []string{"deploy", "--target", "tpu", "--replicas", "0"}, 1, nil, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := runCmd(tc.args...)
			if code != tc.code {
				t.Fatalf("exit %d, want %d; stderr %s", code, tc.code, errOut)
			}
			if tc.code != 0 {
				if out != "" || errOut == "" {
					t.Errorf("failed render wrote %d bytes of YAML and stderr %q", len(out), errOut)
				}
				return
			}
			for _, s := range tc.contains {
				if !strings.Contains(out, s) {
					t.Errorf("output lacks %q", s)
				}
			}
			for _, s := range tc.absent {
				if strings.Contains(strings.ToLower(out), strings.ToLower(s)) {
					t.Errorf("output contains %q", s)
				}
			}
		})
	}
}

func TestJoinGoodput(t *testing.T) {
	got := joinGoodput([]string{"--num-prompts", "5", "--goodput", "ttft:500", "tpot:50", "--ignore-eos", "--goodput=e2el:9"})
	want := []string{"--num-prompts", "5", "--goodput=ttft:500 tpot:50", "--ignore-eos", "--goodput=e2el:9"}
	if !slices.Equal(got, want) {
		t.Errorf("%q, want %q", got, want)
	}
}

// miniOpenAI is a small streaming completions server: a fixed 20 ms to the first token,
// then 5 ms per token, usage at the end.
func miniOpenAI(t *testing.T) *httptest.Server {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/models", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, `{"object":"list","data":[{"id":"mini"}]}`)
	})
	mux.HandleFunc("POST /v1/completions", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Prompt    []int `json:"prompt"`
			MaxTokens int   `json:"max_tokens"`
		}
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.MaxTokens < 1 {
			http.Error(w, "bad request", 400)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		fl := w.(http.Flusher)
		time.Sleep(20 * time.Millisecond)
		for i := 0; i < req.MaxTokens; i++ {
			if i > 0 {
				time.Sleep(5 * time.Millisecond)
			}
			fmt.Fprintf(w, "data: {\"choices\":[{\"index\":0,\"text\":\" x\",\"finish_reason\":null}],\"usage\":null}\n\n")
			fl.Flush()
		}
		fmt.Fprintf(w, "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":%d,\"completion_tokens\":%d}}\n\ndata: [DONE]\n\n", len(req.Prompt), req.MaxTokens)
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

func TestBenchThenCost(t *testing.T) {
	srv := miniOpenAI(t)
	dir := t.TempDir()
	resultPath := filepath.Join(dir, "result.json")
	chartPath := filepath.Join(dir, "chart.html")
	code, out, errOut := runCmd("bench", "--base-url", srv.URL, "--num-prompts", "12", "--random-input-len", "16",
		"--random-output-len", "6", "--max-concurrency", "4", "--request-rate", "inf", "--goodput", "ttft:1000", "tpot:1000",
		"--metric-percentiles", "50,99", "--result-json", resultPath, "--chart", chartPath, "--ready-check-timeout-sec", "5")
	if code != 0 {
		t.Fatalf("bench exit %d: %s", code, errOut)
	}
	for _, want := range []string{"Successful requests:                     12", "Total generated tokens:                  72", "P50 TTFT (ms):", "Request goodput (req/s):"} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
	if !strings.Contains(errOut, "12/12") {
		t.Errorf("no progress bar on stderr: %q", errOut)
	}
	var res map[string]any
	b, err := os.ReadFile(resultPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &res); err != nil {
		t.Fatal(err)
	}
	if res["completed"] != 12.0 || res["total_output_tokens"] != 72.0 || res["total_input_tokens"] != 192.0 || res["model_id"] != "mini" {
		t.Errorf("result %v %v %v %v", res["completed"], res["total_output_tokens"], res["total_input_tokens"], res["model_id"])
	}
	if html, err := os.ReadFile(chartPath); err != nil || !bytes.Contains(html, []byte("<svg")) {
		t.Errorf("chart: %v", err)
	}

	code, out, errOut = runCmd("cost", "--result-json", resultPath, "--hourly-price", "9.60", "--load-tps", "5000")
	if code != 0 {
		t.Fatalf("cost exit %d: %s", code, errOut)
	}
	for _, want := range []string{"$ per 1M output tokens: $", "$ per 1M total tokens:  $", "monthly at 5000 out tok/s:"} {
		if !strings.Contains(out, want) {
			t.Errorf("cost output lacks %q:\n%s", want, out)
		}
	}
	code, out, errOut = runCmd("cost", "--catalogue", "--result", "v5e-8="+resultPath)
	if code != 0 || !strings.Contains(out, "ct5lp-hightpu-8t") || !strings.Contains(out, "a3-highgpu-1g") {
		t.Fatalf("catalogue exit %d: %s%s", code, out, errOut)
	}
	for _, bad := range [][]string{
		{"cost"},
		{"cost", "--result-json", resultPath},
		{"cost", "--result-json", resultPath, "--hourly-price", "free"},
		{"cost", "--catalogue", "--result", "a100=" + resultPath},
		{"cost", "--result-json", filepath.Join(dir, "missing.json"), "--hourly-price", "1"},
	} {
		if code, _, errOut := runCmd(bad...); code == 0 || errOut == "" {
			t.Errorf("%q: exit %d, stderr %q", bad, code, errOut)
		}
	}
}

func TestBenchFlagErrors(t *testing.T) {
	for _, args := range [][]string{
		{"bench", "--request-rate", "fast"},
		{"bench", "--dataset-name", "sonnet"},
		{"bench", "--dataset-name", "sharegpt"},
		{"bench", "--random-token-range", "5"},
		{"bench", "--goodput", "itl:5"},
		{"bench", "--metric-percentiles", "p99"},
		{"bench", "--base-url", "http://127.0.0.1:1", "--random-range-ratio", "1"},
	} {
		if code, _, errOut := runCmd(args...); code != 1 || errOut == "" {
			t.Errorf("%q: exit %d, stderr %q", args, code, errOut)
		}
	}
}

// TestBenchAgainstServeTiny is the end-to-end check: `tpuserve serve --model tiny` in a
// child process (this test binary, re-executed), benchmarked by `tpuserve bench`. It is
// skipped until the serve command exists in this binary.
func TestBenchAgainstServeTiny(t *testing.T) {
	if _, ok := commands["serve"]; !ok {
		t.Skip("no serve command in this build yet")
	}
	if testing.Short() {
		t.Skip("starts a server; skipped with -short")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	grpcLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	grpcPort := grpcLn.Addr().(*net.TCPAddr).Port
	ln.Close()
	grpcLn.Close()

	serveArgs := []string{"serve", "--model", "tiny", "--host", "127.0.0.1", "--port", fmt.Sprint(port), "--grpc-port", fmt.Sprint(grpcPort)}
	serveArgs = append(serveArgs, "--tokenizer", tokenizerDirForTest(t))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], append([]string{"-test.run=^TestHelperRunMain$", "--"}, serveArgs...)...)
	cmd.Env = append(os.Environ(), "TPUSERVE_HELPER_RUN_MAIN=1")
	var serverLog bytes.Buffer
	cmd.Stdout, cmd.Stderr = &serverLog, &serverLog
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		cmd.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			cancel()
			<-exited
		}
	}()

	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	deadline := time.Now().Add(3 * time.Minute)
	for {
		resp, err := http.Get(base + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		select {
		case err := <-exited:
			t.Fatalf("serve exited before it was healthy (%v):\n%s", err, serverLog.String())
		case <-time.After(500 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("serve not healthy after 3 minutes:\n%s", serverLog.String())
		}
	}
	resultPath := filepath.Join(t.TempDir(), "tiny.json")
	code, out, errOut := runCmd("bench", "--base-url", base, "--num-prompts", "8", "--random-input-len", "12",
		"--random-output-len", "4", "--random-token-range", "10:512", "--ignore-eos", "--request-rate", "20",
		"--max-concurrency", "4", "--result-json", resultPath, "--disable-tqdm", "--ready-check-timeout-sec", "60")
	if code != 0 {
		t.Fatalf("bench against serve tiny: exit %d\n%s\n%s\nserver log:\n%s", code, out, errOut, serverLog.String())
	}
	var res map[string]any
	b, _ := os.ReadFile(resultPath)
	if err := json.Unmarshal(b, &res); err != nil {
		t.Fatal(err)
	}
	if res["completed"] != 8.0 || res["total_output_tokens"] != 32.0 {
		t.Errorf("completed %v, output tokens %v (want 8 and 8×4 with ignore_eos)\n%s", res["completed"], res["total_output_tokens"], out)
	}
}

// TestHelperRunMain runs the command line after "--" when re-executed by another test.
func TestHelperRunMain(t *testing.T) {
	if os.Getenv("TPUSERVE_HELPER_RUN_MAIN") != "1" {
		t.Skip("helper process only")
	}
	args := os.Args
	for i, a := range args {
		if a == "--" {
			args = args[i+1:]
			break
		}
	}
	os.Exit(run(args, os.Stdin, os.Stdout, os.Stderr))
}
