package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tpuserve/tpuserve/engine"
	"github.com/tpuserve/tpuserve/server"
)

// benchEngine streams MaxTokens tokens: the first after 20 ms, then one every 5 ms.
type benchEngine struct{}

func (benchEngine) Submit(ctx context.Context, req engine.Request) (<-chan engine.Event, error) {
	ch := make(chan engine.Event, req.Params.MaxTokens)
	go func() {
		defer close(ch)
		delay := 20 * time.Millisecond
		for i := 0; i < req.Params.MaxTokens; i++ {
			select {
			case <-time.After(delay):
			case <-ctx.Done():
				ch <- engine.Event{Finished: true, FinishReason: engine.FinishAbort, NumPromptTokens: len(req.PromptIDs), NumOutputTokens: i}
				return
			}
			delay = 5 * time.Millisecond
			ev := engine.Event{TokenIDs: []int32{int32(100 + i)}, Text: " a"}
			if i == req.Params.MaxTokens-1 {
				ev.Finished, ev.FinishReason = true, engine.FinishLength
				ev.NumPromptTokens, ev.NumOutputTokens = len(req.PromptIDs), req.Params.MaxTokens
			}
			ch <- ev
		}
	}()
	return ch, nil
}

func (benchEngine) Stats() engine.Stats { return engine.Stats{} }

// benchTokenizer is a byte tokenizer; the benchmark sends token ids, so it only decodes.
type benchTokenizer struct{}

func (benchTokenizer) Encode(text string, _ bool) []int32 {
	ids := make([]int32, len(text))
	for i := range text {
		ids[i] = int32(text[i])
	}
	return ids
}
func (benchTokenizer) Decode(ids []int32, _ bool) (string, error) {
	return strings.Repeat(" a", len(ids)), nil
}
func (benchTokenizer) VocabSize() int                   { return 1000 }
func (benchTokenizer) TokenString(int32) (string, bool) { return " a", true }
func (benchTokenizer) ApplyChatTemplate([]server.ChatMessage, bool) (string, error) {
	return "", fmt.Errorf("no chat template")
}

// TestBenchAgainstTheServerPackage runs `tpuserve bench` against the project's real HTTP
// server (OpenAI API, SSE, usage) over a scripted engine: token-id prompts are accepted,
// and token counts come back from the server's usage.
func TestBenchAgainstTheServerPackage(t *testing.T) {
	cfg := server.DefaultConfig()
	cfg.ServedModelNames = []string{"gemma-scripted"}
	cfg.MaxModelLen = 4096
	var err error
	if cfg.HTTPListener, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	if cfg.GRPCListener, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(cfg, benchEngine{}, benchTokenizer{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	defer func() { cancel(); <-done }()
	<-srv.Ready() // HTTPAddr is set once the server listens

	resultPath := filepath.Join(t.TempDir(), "r.json")
	code, out, errOut := runCmd("bench", "--base-url", "http://"+srv.HTTPAddr().String(), "--num-prompts", "20",
		"--random-input-len", "32", "--random-output-len", "8", "--random-token-range", "10:1000", "--ignore-eos",
		"--request-rate", "50", "--disable-tqdm", "--ready-check-timeout-sec", "10", "--result-json", resultPath)
	if code != 0 {
		t.Fatalf("exit %d\n%s\n%s", code, out, errOut)
	}
	var res map[string]any
	b, err := os.ReadFile(resultPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &res); err != nil {
		t.Fatal(err)
	}
	if res["completed"] != 20.0 || res["total_output_tokens"] != 160.0 || res["total_input_tokens"] != 640.0 || res["model_id"] != "gemma-scripted" {
		t.Errorf("completed %v, tokens out %v in %v, model %v\n%s", res["completed"], res["total_output_tokens"], res["total_input_tokens"], res["model_id"], out)
	}
	// The scripted engine waits 20 ms for the first token and 5 ms for each next one.
	if ttft := res["mean_ttft_ms"].(float64); ttft < 20 {
		t.Errorf("mean TTFT %.2f ms is shorter than the engine's 20 ms", ttft)
	}
	if tpot := res["mean_tpot_ms"].(float64); tpot < 5 {
		t.Errorf("mean TPOT %.2f ms is shorter than the engine's 5 ms", tpot)
	}
}
