package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/responses"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/tpuserve/tpuserve/model"
	"github.com/tpuserve/tpuserve/server"
)

// TestServeResponsesAPI: the official client's Responses.New and its streaming work
// against the real engine, and at temperature 0 give the chat completion's text.
func TestServeResponsesAPI(t *testing.T) {
	ls := startServe(t, nil)
	client := ls.client()
	ctx := context.Background()
	params := responses.ResponseNewParams{
		Model:           "tiny",
		Instructions:    openai.String("Answer in French."),
		Input:           responses.ResponseNewParamsInputUnion{OfString: openai.String("The capital of France is")},
		MaxOutputTokens: openai.Int(10),
		Temperature:     openai.Float(0),
	}
	resp, err := client.Responses.New(ctx, params, option.WithJSONSet("ignore_eos", true))
	if err != nil {
		t.Fatal(err)
	}
	chat, err := client.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "tiny",
		Messages:  []openai.ChatCompletionMessageParamUnion{openai.SystemMessage("Answer in French."), openai.UserMessage("The capital of France is")},
		MaxTokens: openai.Int(10), Temperature: openai.Float(0)}, option.WithJSONSet("ignore_eos", true))
	if err != nil {
		t.Fatal(err)
	}
	want := chat.Choices[0].Message.Content
	if resp.OutputText() == "" || resp.OutputText() != want || resp.Usage.OutputTokens != 10 || resp.Usage.InputTokens != chat.Usage.PromptTokens {
		t.Errorf("responses %q (usage %+v), chat %q (usage %+v)", resp.OutputText(), resp.Usage, want, chat.Usage)
	}
	if resp.Status != "incomplete" || resp.IncompleteDetails.Reason != "max_output_tokens" {
		t.Errorf("10 tokens of 10: status %q %+v", resp.Status, resp.IncompleteDetails)
	}
	stream := client.Responses.NewStreaming(ctx, params, option.WithJSONSet("ignore_eos", true))
	text, last := "", ""
	for n := int64(0); stream.Next(); n++ {
		ev := stream.Current()
		if ev.SequenceNumber != n {
			t.Errorf("event %d %s has sequence_number %d", n, ev.Type, ev.SequenceNumber)
		}
		if ev.Type == "response.output_text.delta" {
			text += ev.Delta
		}
		last = ev.Type
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	if text != want || last != "response.incomplete" {
		t.Errorf("streamed %q ending with %s; want %q", text, last, want)
	}
	// The metrics vLLM has that were missing.
	for _, name := range []string{"vllm:request_params_n_count", "vllm:request_params_max_tokens_count", "vllm:request_max_num_generation_tokens_count"} {
		if v := metric(t, ls.url, name); v == "" || v == "0" {
			t.Errorf("%s = %q", name, v)
		}
	}
	if metric(t, ls.url, "vllm:iteration_tokens_total_count") == "" {
		t.Error("vllm:iteration_tokens_total is not exported")
	}
}

// TestServeStartupErrors: settings that used to become defaults silently, or fail late,
// are start-up errors naming the flag.
func TestServeStartupErrors(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	for _, tc := range []struct {
		mutate func(o *serveOptions)
		want   string
	}{
		{func(o *serveOptions) { o.maxNumSeqs = 0 }, "--max-num-seqs 0 must be > 0"},
		{func(o *serveOptions) { o.maxNumSeqs = -3 }, "--max-num-seqs -3"},
		{func(o *serveOptions) { o.pageSize = 0 }, "--block-size 0 must be > 0"},
		{func(o *serveOptions) { o.maxModelLen = -1 }, "--max-model-len"},
		{func(o *serveOptions) { o.maxBatched, o.maxNumSeqs = 16, 32 }, "--max-num-batched-tokens 16 must be >= --max-num-seqs 32"},
		{func(o *serveOptions) { o.maxQueueLen = -2 }, "--max-queue-len"},
		{func(o *serveOptions) { o.shutdownTimeout = 0 }, "--shutdown-timeout"},
		{func(o *serveOptions) { o.schedulingPolicy = "lifo" }, "--scheduling-policy"},
		{func(o *serveOptions) { o.port = 70000 }, "--port"},
		{func(o *serveOptions) { o.model = "gemma3-1bb" }, "gemma3-1b, gemma3-4b, gemma3-12b, gemma3-27b, tiny"},
		{func(o *serveOptions) { o.generationConfig = t.TempDir() }, "--generation-config"},
		{func(o *serveOptions) { o.tokenizerDir = filepath.Join(t.TempDir(), "missing.json") }, "--tokenizer"},
		{func(o *serveOptions) { o.images.imageMask = "causal" }, "--image-mask"},
		{func(o *serveOptions) { o.images.limitMMPerPrompt = `{"video": 1}` }, "--limit-mm-per-prompt"},
		{func(o *serveOptions) { o.images.limitMMPerPrompt = "3" }, "--limit-mm-per-prompt"},
		{func(o *serveOptions) { o.images.maxImagesPerStep = 0 }, "--max-images-per-step"},
	} {
		_, o := serveFlags(io.Discard)
		o.tokenizerDir = tokenizerDirForTest(t)
		o.host, o.port, o.grpcPort = "127.0.0.1", 0, -1
		tc.mutate(o)
		err := serve(context.Background(), o, log, nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("want an error containing %q, got %v", tc.want, err)
		}
	}
}

// TestServeBindsBeforeLoading: a busy port fails before the model loads (here the
// checkpoint's weights are missing, which would fail the load).
func TestServeBindsBeforeLoading(t *testing.T) {
	dir := t.TempDir()
	cfg, err := model.Preset("tiny")
	if err != nil {
		t.Fatal(err)
	}
	hub, err := model.HubConfig(&cfg, true)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), hub, 0o644); err != nil {
		t.Fatal(err)
	}
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	_, o := serveFlags(io.Discard)
	o.tokenizerDir = tokenizerDirForTest(t)
	o.model, o.host, o.port, o.grpcPort = dir, "127.0.0.1", busy.Addr().(*net.TCPAddr).Port, -1
	err = serve(context.Background(), o, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	if err == nil || !strings.Contains(err.Error(), "listen") {
		t.Errorf("busy port with unloadable weights: %v, want the listen error", err)
	}
	// With a free port, the same checkpoint fails at the load, after listening.
	o.port = 0
	if err := serve(context.Background(), o, slog.New(slog.NewTextHandler(io.Discard, nil)), nil); err == nil || strings.Contains(err.Error(), "listen") {
		t.Errorf("free port with unloadable weights: %v", err)
	}
}

// TestServeShutdownWithHealthWatch: SIGTERM with a grpc.health.v1 Watch open exits once
// the in-flight requests drain (none here), not after --shutdown-timeout (an hour).
func TestServeShutdownWithHealthWatch(t *testing.T) {
	_, o := serveFlags(io.Discard)
	o.tokenizerDir = tokenizerDirForTest(t)
	o.host, o.port, o.grpcPort, o.maxModelLen, o.precompile = "127.0.0.1", 0, 0, 512, "none"
	o.shutdownTimeout = time.Hour
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	ready := make(chan string, 1)
	go func() {
		done <- serve(ctx, o, slog.New(slog.NewTextHandler(io.Discard, nil)), func(s *server.Server) { ready <- s.GRPCAddr().String() })
	}()
	var addr string
	select {
	case addr = <-ready:
	case err := <-done:
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
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
	cancel() // as SIGTERM does
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("serve did not exit with a health Watch open")
	}
}

// writeToy writes a random checkpoint of the tiny preset's shapes with vocab rows.
func writeToy(t *testing.T, vocab int) string {
	t.Helper()
	cfg, err := model.Preset("tiny")
	if err != nil {
		t.Fatal(err)
	}
	cfg.VocabSize, cfg.TextVocabSize = vocab, vocab
	w, err := model.RandomWeights(&cfg, dtypes.Float32, 7)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := model.WriteCheckpoint(dir, &cfg, w, "model.", 1); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestServeTextOnlyVocabulary: a checkpoint with 262,144 embedding rows (Gemma 3 1B's)
// serves with the real tokenizer, whose 262,145th id is <image_soft_token>; a prompt
// that contains it is a 400 naming the id.
func TestServeTextOnlyVocabulary(t *testing.T) {
	dir := writeToy(t, 262144)
	tokJSON := filepath.Join(tokenizerDirForTest(t), "tokenizer.json")
	ls := startServe(t, func(o *serveOptions) { o.model, o.tokenizerDir, o.servedModelName = dir, tokJSON, "toy" })
	client := ls.client()
	ctx := context.Background()
	resp, err := client.Completions.New(ctx, openai.CompletionNewParams{Model: "toy",
		Prompt: openai.CompletionNewParamsPromptUnion{OfString: openai.String("Hello")}, MaxTokens: openai.Int(3)},
		option.WithJSONSet("ignore_eos", true))
	if err != nil || resp.Usage.CompletionTokens != 3 {
		t.Fatalf("%+v %v", resp, err)
	}
	for _, opt := range []option.RequestOption{
		option.WithJSONSet("prompt", "look: <image_soft_token>"),
		option.WithJSONSet("prompt", []int{2, 262144}),
	} {
		_, err = client.Completions.New(ctx, openai.CompletionNewParams{Model: "toy",
			Prompt: openai.CompletionNewParamsPromptUnion{OfString: openai.String("x")}, MaxTokens: openai.Int(3)}, opt)
		var apiErr *openai.Error
		if !errors.As(err, &apiErr) || apiErr.StatusCode != 400 || !strings.Contains(apiErr.Message, "262144") {
			t.Errorf("a prompt with id 262144: %v", err)
		}
	}
}

// TestServeGenerationConfig: with --generation-config auto, the checkpoint's
// generation_config.json supplies what requests leave out (here temperature 0: a request
// without temperature is greedy), and vllm ignores it.
func TestServeGenerationConfig(t *testing.T) {
	dir := writeToy(t, 262208)
	if err := os.WriteFile(filepath.Join(dir, model.GenerationConfigFile),
		[]byte(`{"do_sample": true, "temperature": 0.0, "top_k": 64, "top_p": 0.95, "eos_token_id": [1, 106]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	complete := func(ls *liveServer, temp *float64) string {
		p := openai.CompletionNewParams{Model: "toy", Prompt: openai.CompletionNewParamsPromptUnion{OfString: openai.String("Once upon")},
			MaxTokens: openai.Int(8)}
		if temp != nil {
			p.Temperature = openai.Float(*temp)
		}
		c := ls.client()
		resp, err := c.Completions.New(context.Background(), p, option.WithJSONSet("ignore_eos", true))
		if err != nil {
			t.Fatal(err)
		}
		return resp.Choices[0].Text
	}
	zero := 0.0
	auto := startServe(t, func(o *serveOptions) { o.model, o.servedModelName = dir, "toy" })
	greedy := complete(auto, &zero)
	if a, b := complete(auto, nil), complete(auto, nil); a != greedy || b != greedy {
		t.Errorf("without temperature: %q and %q; greedy %q", a, b, greedy)
	}
	auto.cancel()

	vllm := startServe(t, func(o *serveOptions) { o.model, o.servedModelName, o.generationConfig = dir, "toy", "vllm" })
	differ := false
	for range 3 {
		differ = differ || complete(vllm, nil) != greedy
	}
	if !differ {
		t.Error("with --generation-config vllm, temperature 1 sampling gave the greedy text three times")
	}
}

// TestServeTokenizerFile: --tokenizer takes a tokenizer.json file.
func TestServeTokenizerFile(t *testing.T) {
	tokJSON := filepath.Join(tokenizerDirForTest(t), "tokenizer.json")
	ls := startServe(t, func(o *serveOptions) { o.tokenizerDir, o.apiKey = tokJSON, "k" })
	req, _ := http.NewRequest(http.MethodPost, ls.url+"/tokenize", strings.NewReader(`{"prompt":"Hello world"}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer k")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"tokens":[2,`) {
		t.Errorf("/tokenize with a tokenizer.json: %d %s", resp.StatusCode, body)
	}
	req.Header.Del("Authorization")
	req.Body = io.NopCloser(strings.NewReader(`{"prompt":"x"}`))
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("/tokenize without the key: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
}

// TestServeAdmissionAndPriority: a request with more choices than max-num-seqs +
// max-queue-len can never be admitted (400, not 429); with fcfs a priority is a 400, with
// --scheduling-policy priority it is served.
func TestServeAdmissionAndPriority(t *testing.T) {
	p := openai.CompletionNewParams{Model: "tiny", Prompt: openai.CompletionNewParamsPromptUnion{OfString: openai.String("Hi")},
		MaxTokens: openai.Int(2)}
	fcfs := startServe(t, func(o *serveOptions) { o.maxNumSeqs, o.maxQueueLen = 2, 1 })
	client := fcfs.client()
	for _, tc := range []struct {
		opt  option.RequestOption
		want string
	}{
		{option.WithJSONSet("n", 4), "can never be admitted"},
		{option.WithJSONSet("priority", 1), "priority scheduling is not enabled"},
	} {
		_, err := client.Completions.New(context.Background(), p, tc.opt)
		var apiErr *openai.Error
		if !errors.As(err, &apiErr) || apiErr.StatusCode != 400 || !strings.Contains(apiErr.Message, tc.want) {
			t.Errorf("want 400 %q, got %v", tc.want, err)
		}
	}
	if _, err := client.Completions.New(context.Background(), p, option.WithJSONSet("n", 3)); err != nil {
		t.Errorf("n=3 within a capacity of 3: %v", err)
	}
	fcfs.cancel()

	prio := startServe(t, func(o *serveOptions) { o.schedulingPolicy = "priority" })
	pc := prio.client()
	if _, err := pc.Completions.New(context.Background(), p, option.WithJSONSet("priority", 1)); err != nil {
		t.Errorf("priority with --scheduling-policy priority: %v", err)
	}
}
