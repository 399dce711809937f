package server

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/tpuserve/tpuserve/server/proto/enginepb"
)

func dialGRPC(t *testing.T, ts *testServer) (enginepb.TpuserveEngineClient, *grpc.ClientConn) {
	t.Helper()
	conn, err := grpc.NewClient(ts.grpc, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return enginepb.NewTpuserveEngineClient(conn), conn
}

// generateAll runs one Generate call and returns its messages.
func generateAll(ctx context.Context, c enginepb.TpuserveEngineClient, req *enginepb.GenerateRequest) ([]*enginepb.GenerateResponse, error) {
	stream, err := c.Generate(ctx, req)
	if err != nil {
		return nil, err
	}
	var out []*enginepb.GenerateResponse
	for {
		m, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		out = append(out, m)
	}
}

func TestGRPCGenerate(t *testing.T) {
	ts := startTestServer(t, &fakeEngine{}, nil)
	c, _ := dialGRPC(t, ts)
	ctx := context.Background()
	params := &enginepb.SamplingParams{MaxTokens: proto.Uint32(10), Seed: proto.Int64(4), IgnoreEos: true, Logprobs: proto.Int32(2)}

	t.Run("text stream", func(t *testing.T) {
		msgs, err := generateAll(ctx, c, &enginepb.GenerateRequest{RequestId: "r1", Input: &enginepb.GenerateRequest_Text{Text: "Hello"},
			SamplingParams: params, Stream: true})
		if err != nil {
			t.Fatal(err)
		}
		var text strings.Builder
		var ids []uint32
		for _, m := range msgs[:len(msgs)-1] {
			ch := m.GetChunk()
			if ch == nil || m.RequestId != "r1" {
				t.Fatalf("want chunks before the complete, got %v", m)
			}
			text.WriteString(ch.Text)
			ids = append(ids, ch.TokenIds...)
			if len(ch.Logprobs) != len(ch.TokenIds) || len(ch.Logprobs[0].Top) != 2 || ch.PromptTokens != 6 {
				t.Errorf("chunk %v", ch)
			}
		}
		done := msgs[len(msgs)-1].GetComplete()
		if done == nil || done.FinishReason != "length" || done.CompletionTokens != 10 || done.PromptTokens != 6 ||
			done.Text != text.String() || len(done.OutputIds) != 10 || len(ids) != 10 || len(done.Logprobs) != 10 {
			t.Fatalf("complete %v (streamed %q)", done, text.String())
		}
		// The same request over HTTP gives the same text.
		status, _, body := ts.post(t, "/v1/completions", `{"prompt":"Hello","max_tokens":10,"seed":4,"ignore_eos":true}`)
		if status != 200 || !strings.Contains(string(body), `"text":"`+done.Text+`"`) {
			t.Errorf("HTTP %d %s, gRPC %q", status, body, done.Text)
		}
	})
	t.Run("tokens n=2 unary", func(t *testing.T) {
		p := proto.Clone(params).(*enginepb.SamplingParams)
		p.N = 2
		p.Stop = []string{"zz"}
		msgs, err := generateAll(ctx, c, &enginepb.GenerateRequest{
			Input:          &enginepb.GenerateRequest_Tokenized{Tokenized: &enginepb.TokenizedInput{InputIds: []uint32{2, 110, 111}}},
			SamplingParams: p})
		if err != nil {
			t.Fatal(err)
		}
		if len(msgs) != 2 {
			t.Fatalf("%d messages, want one complete per sample", len(msgs))
		}
		seen := map[uint32]string{}
		for _, m := range msgs {
			if m.GetComplete() == nil || !strings.HasPrefix(m.RequestId, "grpc-") {
				t.Fatalf("message %v", m)
			}
			seen[m.Index] = m.GetComplete().Text
		}
		if len(seen) != 2 || seen[0] == seen[1] {
			t.Errorf("samples %v", seen)
		}
	})
	t.Run("errors", func(t *testing.T) {
		text := &enginepb.GenerateRequest_Text{Text: "x"}
		tests := []struct {
			name string
			req  *enginepb.GenerateRequest
			code codes.Code
			msg  string
		}{
			{"no input", &enginepb.GenerateRequest{}, codes.InvalidArgument, "input"},
			{"temperature", &enginepb.GenerateRequest{Input: text, SamplingParams: &enginepb.SamplingParams{Temperature: proto.Float32(3)}}, codes.InvalidArgument, "temperature"},
			{"top_p", &enginepb.GenerateRequest{Input: text, SamplingParams: &enginepb.SamplingParams{TopP: proto.Float32(0)}}, codes.InvalidArgument, "top_p"},
			{"n", &enginepb.GenerateRequest{Input: text, SamplingParams: &enginepb.SamplingParams{N: 1000}}, codes.InvalidArgument, "n must be"},
			{"logprobs", &enginepb.GenerateRequest{Input: text, SamplingParams: &enginepb.SamplingParams{Logprobs: proto.Int32(50)}}, codes.InvalidArgument, "logprobs"},
			{"max_tokens", &enginepb.GenerateRequest{Input: text, SamplingParams: &enginepb.SamplingParams{MaxTokens: proto.Uint32(0)}}, codes.InvalidArgument, "max_tokens"},
			{"vocab", &enginepb.GenerateRequest{Input: &enginepb.GenerateRequest_Tokenized{Tokenized: &enginepb.TokenizedInput{InputIds: []uint32{1, 5000}}}}, codes.InvalidArgument, "vocabulary"},
			{"empty", &enginepb.GenerateRequest{Input: &enginepb.GenerateRequest_Tokenized{Tokenized: &enginepb.TokenizedInput{}}}, codes.InvalidArgument, "empty"},
			{"too long", &enginepb.GenerateRequest{Input: &enginepb.GenerateRequest_Text{Text: strings.Repeat("a", 300)}}, codes.InvalidArgument, "maximum context length is 256"},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				_, err := generateAll(ctx, c, tc.req)
				if status.Code(err) != tc.code || !strings.Contains(err.Error(), tc.msg) {
					t.Errorf("err = %v, want %s containing %q", err, tc.code, tc.msg)
				}
			})
		}
	})
	t.Run("info and health", func(t *testing.T) {
		info, err := c.GetModelInfo(ctx, &enginepb.GetModelInfoRequest{})
		if err != nil || info.MaxContextLength != 256 || info.VocabSize != fakeVocabSize || info.ModelPath != "/models/gemma-3-tiny" || !info.IsGeneration {
			t.Errorf("info %v %v", info, err)
		}
		h, err := c.HealthCheck(ctx, &enginepb.HealthCheckRequest{})
		if err != nil || !h.Healthy {
			t.Errorf("health %v %v", h, err)
		}
		_, conn := dialGRPC(t, ts)
		hc, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: enginepb.TpuserveEngine_ServiceDesc.ServiceName})
		if err != nil || hc.Status != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("grpc.health.v1: %v %v", hc, err)
		}
	})
}

func TestGRPCQueueFullAndAuth(t *testing.T) {
	hold := make(chan struct{})
	eng := &fakeEngine{maxLive: 1, hold: hold}
	ts := startTestServer(t, eng, func(c *Config) { c.APIKey = "k" })
	c, conn := dialGRPC(t, ts)
	ctx := context.Background()
	req := &enginepb.GenerateRequest{Input: &enginepb.GenerateRequest_Text{Text: "x"}, SamplingParams: &enginepb.SamplingParams{MaxTokens: proto.Uint32(2)}}
	if _, err := generateAll(ctx, c, req); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("without key: %v", err)
	}
	if _, err := c.GetModelInfo(ctx, &enginepb.GetModelInfoRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("unary without key: %v", err)
	}
	if _, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("health must not need the key: %v", err)
	}
	authed := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer k")
	first := make(chan error, 1)
	go func() {
		_, err := generateAll(authed, c, req)
		first <- err
	}()
	waitFor(t, "the first request to wait", func() bool { return eng.Stats().NumWaiting == 1 })
	if _, err := generateAll(authed, c, req); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("queue full: %v", err)
	}
	close(hold)
	if err := <-first; err != nil {
		t.Error(err)
	}
}

func TestGRPCAbortAndCancel(t *testing.T) {
	eng := &fakeEngine{interval: 2 * time.Millisecond}
	ts := startTestServer(t, eng, nil)
	c, _ := dialGRPC(t, ts)
	ctx := context.Background()
	long := &enginepb.SamplingParams{MaxTokens: proto.Uint32(200), IgnoreEos: true}

	t.Run("abort", func(t *testing.T) {
		stream, err := c.Generate(ctx, &enginepb.GenerateRequest{RequestId: "victim", Input: &enginepb.GenerateRequest_Text{Text: "x"},
			SamplingParams: long, Stream: true})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := stream.Recv(); err != nil {
			t.Fatal(err)
		}
		// A second live request with the same id is refused.
		if _, err := generateAll(ctx, c, &enginepb.GenerateRequest{RequestId: "victim", Input: &enginepb.GenerateRequest_Text{Text: "x"}}); status.Code(err) != codes.AlreadyExists {
			t.Errorf("duplicate id: %v", err)
		}
		resp, err := c.Abort(ctx, &enginepb.AbortRequest{RequestIds: []string{"victim", "unknown"}, Reason: "test"})
		if err != nil || resp.NumAborted != 1 {
			t.Fatalf("abort: %v %v", resp, err)
		}
		var done *enginepb.GenerateComplete
		for {
			m, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			if m.GetComplete() != nil {
				done = m.GetComplete()
			}
		}
		if done == nil || done.FinishReason != "abort" || done.CompletionTokens >= 200 {
			t.Errorf("complete after abort: %v", done)
		}
	})
	t.Run("cancel", func(t *testing.T) {
		cctx, cancel := context.WithCancel(ctx)
		stream, err := c.Generate(cctx, &enginepb.GenerateRequest{Input: &enginepb.GenerateRequest_Text{Text: "x"}, SamplingParams: long, Stream: true})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := stream.Recv(); err != nil {
			t.Fatal(err)
		}
		before := eng.finishedCount("abort")
		cancel()
		waitFor(t, "the cancelled request to be aborted", func() bool { return eng.Stats().NumRunning == 0 && eng.finishedCount("abort") == before+1 })
	})
}
