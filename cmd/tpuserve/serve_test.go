package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/proto"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	appsv1 "k8s.io/api/apps/v1"

	"github.com/tpuserve/tpuserve/internal/deploy"
	"github.com/tpuserve/tpuserve/model"
	"github.com/tpuserve/tpuserve/server"
	"github.com/tpuserve/tpuserve/server/proto/enginepb"
)

// tokenizerDirForTest is the real Gemma 3 tokenizer fetched by `make tokenizer`. Without it
// the test skips, except under CI=true where it fails.
func tokenizerDirForTest(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("TPUSERVE_TOKENIZER_DIR")
	if dir == "" {
		dir = filepath.Join("..", "..", ".cache", "tokenizer")
	}
	if _, err := os.Stat(filepath.Join(dir, "tokenizer.json")); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("the Gemma 3 tokenizer is missing from %s (make tokenizer)", dir)
		}
		t.Skipf("the Gemma 3 tokenizer is missing from %s: run `make tokenizer`", dir)
	}
	return dir
}

type liveServer struct {
	url    string
	cancel context.CancelFunc
	done   chan error
	srv    *server.Server
}

// startServe runs the real serve path (tiny model, real tokenizer, engine, HTTP + gRPC) on
// loopback ports.
func startServe(t *testing.T, mutate func(o *serveOptions)) *liveServer {
	t.Helper()
	_, o := serveFlags(io.Discard)
	o.tokenizerDir = tokenizerDirForTest(t)
	o.host, o.port, o.grpcPort = "127.0.0.1", 0, 0
	o.maxModelLen = 512
	o.precompile = "none"
	if mutate != nil {
		mutate(o)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ls := &liveServer{cancel: cancel, done: make(chan error, 1)}
	ready := make(chan *server.Server, 1)
	var logw io.Writer = io.Discard
	if os.Getenv("TPUSERVE_TEST_LOG") != "" {
		logw = os.Stderr
	}
	log := slog.New(slog.NewTextHandler(logw, nil))
	go func() { ls.done <- serve(ctx, o, log, func(s *server.Server) { ready <- s }) }()
	select {
	case s := <-ready:
		ls.srv = s
		ls.url = "http://" + s.HTTPAddr().String()
	case err := <-ls.done:
		cancel()
		t.Fatalf("serve exited: %v", err)
	case <-time.After(2 * time.Minute):
		cancel()
		t.Fatal("serve did not start")
	}
	t.Cleanup(func() {
		cancel()
		if err := <-ls.done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return ls
}

func (ls *liveServer) client(opts ...option.RequestOption) openai.Client {
	return openai.NewClient(append([]option.RequestOption{option.WithBaseURL(ls.url + "/v1/"), option.WithAPIKey("none"), option.WithMaxRetries(0)}, opts...)...)
}

func metric(t *testing.T, url, name string) string {
	t.Helper()
	resp, err := http.Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(line, name+"{") || strings.HasPrefix(line, name+" ") {
			f := strings.Fields(line)
			return f[len(f)-1]
		}
	}
	return ""
}

// TestServeEndToEnd drives `tpuserve serve` (the tiny model with the real tokenizer) with
// the official OpenAI Go client.
func TestServeEndToEnd(t *testing.T) {
	ls := startServe(t, nil)
	client := ls.client()
	ctx := context.Background()
	greedy := openai.CompletionNewParams{
		Model: "tiny", Prompt: openai.CompletionNewParamsPromptUnion{OfString: openai.String("The capital of France is")},
		MaxTokens: openai.Int(12), Temperature: openai.Float(0),
	}
	full, err := client.Completions.New(ctx, greedy, option.WithJSONSet("ignore_eos", true))
	if err != nil {
		t.Fatal(err)
	}
	if len(full.Choices) != 1 || full.Choices[0].Text == "" || full.Usage.CompletionTokens != 12 || full.Choices[0].FinishReason != "length" {
		t.Fatalf("completion %+v", full)
	}
	t.Run("streaming equals non-streaming", func(t *testing.T) {
		stream := client.Completions.NewStreaming(ctx, greedy, option.WithJSONSet("ignore_eos", true))
		text := ""
		for stream.Next() {
			for _, c := range stream.Current().Choices {
				text += c.Text
			}
		}
		if err := stream.Err(); err != nil {
			t.Fatal(err)
		}
		if text != full.Choices[0].Text {
			t.Errorf("streamed %q, non-streamed %q", text, full.Choices[0].Text)
		}
	})
	t.Run("chat", func(t *testing.T) {
		resp, err := client.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
			Model:     "tiny",
			Messages:  []openai.ChatCompletionMessageParamUnion{openai.SystemMessage("Be brief."), openai.UserMessage("Hello!")},
			MaxTokens: openai.Int(6), Seed: openai.Int(5),
		})
		if err != nil {
			t.Fatal(err)
		}
		// <bos><start_of_turn>user\nBe brief.\n\nHello!<end_of_turn>\n<start_of_turn>model\n
		if resp.Usage.PromptTokens < 10 || len(resp.Choices) != 1 || resp.Choices[0].Message.Role != "assistant" {
			t.Errorf("chat %+v", resp)
		}
		_, err = client.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
			Model:    "tiny",
			Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("a"), openai.UserMessage("b")},
		})
		var apiErr *openai.Error
		if !errors.As(err, &apiErr) || apiErr.StatusCode != 400 || !strings.Contains(apiErr.Message, "alternate") {
			t.Errorf("non-alternating roles: %v", err)
		}
	})
	t.Run("seeds and n", func(t *testing.T) {
		p := greedy
		p.Temperature, p.Seed, p.N = openai.Float(1), openai.Int(11), openai.Int(3)
		a, err := client.Completions.New(ctx, p, option.WithJSONSet("ignore_eos", true))
		if err != nil {
			t.Fatal(err)
		}
		b, err := client.Completions.New(ctx, p, option.WithJSONSet("ignore_eos", true))
		if err != nil {
			t.Fatal(err)
		}
		if len(a.Choices) != 3 || len(b.Choices) != 3 {
			t.Fatalf("n=3 gave %d and %d choices", len(a.Choices), len(b.Choices))
		}
		distinct := map[string]bool{}
		for i := range a.Choices {
			if a.Choices[i].Text != b.Choices[i].Text {
				t.Errorf("choice %d differs between two runs with seed 11: %q vs %q", i, a.Choices[i].Text, b.Choices[i].Text)
			}
			distinct[a.Choices[i].Text] = true
		}
		if len(distinct) < 2 {
			t.Errorf("the 3 choices of one request are identical: %q", a.Choices[0].Text)
		}
	})
	t.Run("stop and logprobs", func(t *testing.T) {
		words := strings.Fields(full.Choices[0].Text)
		if len(words) < 2 {
			t.Skip("greedy text has too few words to stop on")
		}
		stop := words[1]
		p := greedy
		p.Stop = openai.CompletionNewParamsStopUnion{OfStringArray: []string{stop}}
		p.Logprobs = openai.Int(2)
		resp, err := client.Completions.New(ctx, p, option.WithJSONSet("ignore_eos", true))
		if err != nil {
			t.Fatal(err)
		}
		c := resp.Choices[0]
		if c.FinishReason != "stop" || strings.Contains(c.Text, stop) || !strings.HasPrefix(full.Choices[0].Text, c.Text) {
			t.Errorf("stop %q: %q (finish %s), full %q", stop, c.Text, c.FinishReason, full.Choices[0].Text)
		}
		if len(c.Logprobs.Tokens) == 0 || len(c.Logprobs.TokenLogprobs) != len(c.Logprobs.Tokens) || len(c.Logprobs.TopLogprobs[0]) != 2 {
			t.Errorf("logprobs %+v", c.Logprobs)
		}
		for _, lp := range c.Logprobs.TokenLogprobs {
			if lp > 0 {
				t.Errorf("logprob %v > 0", lp)
			}
		}
	})
	t.Run("errors", func(t *testing.T) {
		for _, tc := range []struct {
			opt    option.RequestOption
			status int
			want   string
		}{
			{option.WithJSONSet("temperature", -1), 400, "temperature"},
			{option.WithJSONSet("model", "other"), 404, "other"},
			{option.WithJSONSet("max_tokens", 100000), 400, "512"},
			{option.WithJSONSet("prompt", []int{2, 999999}), 400, "999999"},
		} {
			_, err := client.Completions.New(ctx, greedy, tc.opt)
			var apiErr *openai.Error
			if !errors.As(err, &apiErr) || apiErr.StatusCode != tc.status || !strings.Contains(apiErr.Message, tc.want) {
				t.Errorf("want %d mentioning %q, got %v", tc.status, tc.want, err)
			}
		}
	})
	t.Run("disconnect aborts", func(t *testing.T) {
		cctx, cancel := context.WithCancel(ctx)
		p := greedy
		p.MaxTokens = openai.Int(400)
		stream := client.Completions.NewStreaming(cctx, p, option.WithJSONSet("ignore_eos", true))
		if !stream.Next() {
			t.Fatalf("no first chunk: %v", stream.Err())
		}
		cancel()
		_ = stream.Close()
		deadline := time.Now().Add(20 * time.Second)
		for metric(t, ls.url, "vllm:num_requests_running") != "0" && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if got := metric(t, ls.url, "vllm:num_requests_running"); got != "0" {
			t.Errorf("vllm:num_requests_running = %s after the client left", got)
		}
	})
	if got := metric(t, ls.url, "vllm:generation_tokens_total"); got == "" || got == "0" {
		t.Errorf("vllm:generation_tokens_total = %q", got)
	}
}

// TestServeGracefulShutdown: a request in flight when shutdown starts still completes.
func TestServeGracefulShutdown(t *testing.T) {
	ls := startServe(t, nil)
	client := ls.client()
	result := make(chan error, 1)
	go func() {
		resp, err := client.Completions.New(context.Background(), openai.CompletionNewParams{
			Model: "tiny", Prompt: openai.CompletionNewParamsPromptUnion{OfString: openai.String("Once")},
			MaxTokens: openai.Int(40), Temperature: openai.Float(0),
		}, option.WithJSONSet("ignore_eos", true))
		if err == nil && resp.Usage.CompletionTokens != 40 {
			err = fmt.Errorf("completion tokens %d, want 40", resp.Usage.CompletionTokens)
		}
		result <- err
	}()
	deadline := time.Now().Add(20 * time.Second)
	for metric(t, ls.url, "vllm:num_requests_running") != "1" && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	ls.cancel() // as SIGTERM does
	if err := <-result; err != nil {
		t.Errorf("in-flight request during shutdown: %v", err)
	}
}

// TestServeGRPC: the gRPC Generate stream of the real server gives the same greedy text as
// the HTTP API, and grpc.health.v1 reports SERVING.
func TestServeGRPC(t *testing.T) {
	ls := startServe(t, nil)
	conn, err := grpc.NewClient(ls.srv.GRPCAddr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx := context.Background()
	hc, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || hc.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health: %v %v", hc, err)
	}
	stream, err := enginepb.NewTpuserveEngineClient(conn).Generate(ctx, &enginepb.GenerateRequest{
		RequestId: "g1", Input: &enginepb.GenerateRequest_Text{Text: "The capital of France is"}, Stream: true,
		SamplingParams: &enginepb.SamplingParams{Temperature: proto.Float32(0), MaxTokens: proto.Uint32(12), IgnoreEos: true},
	})
	if err != nil {
		t.Fatal(err)
	}
	var text strings.Builder
	var done *enginepb.GenerateComplete
	for {
		msg, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if c := msg.GetChunk(); c != nil {
			text.WriteString(c.Text)
		}
		if c := msg.GetComplete(); c != nil {
			done = c
		}
	}
	client := ls.client()
	resp, err := client.Completions.New(ctx, openai.CompletionNewParams{
		Model: "tiny", Prompt: openai.CompletionNewParamsPromptUnion{OfString: openai.String("The capital of France is")},
		MaxTokens: openai.Int(12), Temperature: openai.Float(0),
	}, option.WithJSONSet("ignore_eos", true))
	if err != nil {
		t.Fatal(err)
	}
	if done == nil || done.CompletionTokens != 12 || done.Text != resp.Choices[0].Text || text.String() != resp.Choices[0].Text {
		t.Errorf("gRPC complete %v, streamed %q; HTTP %q", done, text.String(), resp.Choices[0].Text)
	}
}

// TestServeMemoryPlan: --device-memory sizes the KV cache from the memory plan and refuses
// what cannot fit, with the numbers; TP needs a plan.
func TestServeMemoryPlan(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	for _, tc := range []struct {
		model, mem string
		tp         int
		want       string
	}{
		{"gemma3-27b", "", 8, "needs --device-memory"},
		{"gemma3-27b", "16GiB", 2, "does not fit in device memory: 28.3 GiB per chip before any KV cache"},
		{"gemma3-27b", "lots", 8, "--device-memory"},
	} {
		_, o := serveFlags(io.Discard)
		o.model, o.deviceMemory, o.tensorParallel, o.dtype, o.backend = tc.model, tc.mem, tc.tp, "bf16", "xla:tpu"
		_, err := kvBudget(o, dtypesBF16, log)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc, err, tc.want)
		}
	}
	_, o := serveFlags(io.Discard)
	o.model, o.deviceMemory, o.tensorParallel, o.maxNumSeqs, o.maxBatched = "gemma3-27b", "16GiB", 8, 64, 2048
	kv, err := kvBudget(o, dtypesBF16, log)
	if err != nil || kv < 6<<30 || kv > 10<<30 {
		t.Errorf("27B TP=8 on 16 GiB: KV budget %d bytes per chip, %v (want 6–10 GiB: weights take 6.3)", kv, err)
	}
	// --quantization int8: the plan counts the int8 weights, and the bytes they free go to
	// the KV cache.
	o.quantization = "int8"
	kv8, err := kvBudget(o, dtypesBF16, log)
	cfg, _ := model.Preset("gemma3-27b")
	bf, _ := model.NewShardingPlan(&cfg, 8, model.FormatBF16)
	i8, _ := model.NewShardingPlan(&cfg, 8, model.FormatInt8)
	if err != nil || kv8-kv != bf.WeightBytesPerChip-i8.WeightBytesPerChip {
		t.Errorf("--quantization int8: KV budget %d (bf16 %d), %v; want %d more", kv8, kv, err, bf.WeightBytesPerChip-i8.WeightBytesPerChip)
	}
	o.quantization = "int4"
	if _, err := kvBudget(o, dtypesBF16, log); err == nil || !strings.Contains(err.Error(), "--quantization") {
		t.Errorf("--quantization int4: %v", err)
	}
	// --kv-cache-dtype int8: the same budget (the engine fits about twice the tokens in it).
	o.quantization, o.kvCacheDType = "", "int8"
	if kvq, err := kvBudget(o, dtypesBF16, log); err != nil || kvq != kv {
		t.Errorf("--kv-cache-dtype int8: KV budget %d, %v; want bf16's %d", kvq, err, kv)
	}
	for _, tc := range []struct {
		kv   string
		tp   int
		want string
	}{{"int4", 1, `--kv-cache-dtype: invalid model config: kv-cache-dtype "int4"`}, {"fp8", 2, "--kv-cache-dtype fp8: a quantized KV cache is not supported with --tensor-parallel-size 2"}} {
		_, o := serveFlags(io.Discard)
		o.model, o.kvCacheDType, o.tensorParallel, o.deviceMemory = "tiny", tc.kv, tc.tp, "16GiB"
		if err := validateServeOptions(o); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("--kv-cache-dtype %s --tensor-parallel-size %d: %v, want %q", tc.kv, tc.tp, err, tc.want)
		}
	}
}

var dtypesBF16 = dtypes.BFloat16

// TestServeTensorParallelVirtualMesh: `serve --tensor-parallel-size 2` on the pure-Go
// backend runs the per-chip programs on a virtual mesh and answers with the TP=1 server's
// greedy text.
func TestServeTensorParallelVirtualMesh(t *testing.T) {
	ctx := context.Background()
	greedy := openai.CompletionNewParams{
		Model: "tiny", Prompt: openai.CompletionNewParamsPromptUnion{OfString: openai.String("The capital of France is")},
		MaxTokens: openai.Int(8), Temperature: openai.Float(0),
	}
	texts := map[int]string{}
	for _, tp := range []int{1, 2} {
		ls := startServe(t, func(o *serveOptions) {
			o.tensorParallel, o.kvCacheMemory, o.maxNumSeqs, o.maxBatched = tp, "16MiB", 8, 256
		})
		client := ls.client()
		resp, err := client.Completions.New(ctx, greedy, option.WithJSONSet("ignore_eos", true))
		if err != nil {
			t.Fatalf("TP=%d: %v", tp, err)
		}
		if len(resp.Choices) != 1 || resp.Usage.CompletionTokens != 8 {
			t.Fatalf("TP=%d: completion %+v", tp, resp)
		}
		texts[tp] = resp.Choices[0].Text
	}
	if texts[2] != texts[1] {
		t.Errorf("TP=2 greedy text %q, TP=1 %q", texts[2], texts[1])
	}
}

// TestDeployArgsParse: the serve arguments `tpuserve deploy` renders for every target are
// flags serve accepts, and the TPU ones plan the memory of a v5e chip.
func TestDeployArgsParse(t *testing.T) {
	for _, target := range []deploy.Target{deploy.TargetTPU, deploy.TargetGPU, deploy.TargetCPU} {
		objs, err := deploy.Objects(deploy.Options{Target: target, Model: "gs://bucket/gemma-3-27b-it"})
		if err != nil {
			t.Fatal(err)
		}
		var args []string
		for _, obj := range objs {
			if d, ok := obj.(*appsv1.Deployment); ok {
				c := d.Spec.Template.Spec.Containers[0]
				args = append(append([]string{}, c.Command...), c.Args...)
			}
		}
		i := slices.Index(args, "serve")
		if i < 0 {
			t.Fatalf("%s: no serve command in %q", target, args)
		}
		fs, o := serveFlags(io.Discard)
		if err := fs.Parse(args[i+1:]); err != nil || fs.NArg() != 0 {
			t.Fatalf("%s: serve rejects %q: %v", target, args[i+1:], err)
		}
		if target == deploy.TargetTPU && (o.tensorParallel != 8 || o.deviceMemory != "16GiB" || o.backend != "xla:tpu") {
			t.Errorf("tpu: %+v", o)
		}
	}
}
