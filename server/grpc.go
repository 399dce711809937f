package server

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/tpuserve/tpuserve/engine"
	"github.com/tpuserve/tpuserve/server/proto/enginepb"
)

func (s *Server) newGRPC() (*grpc.Server, *health.Server) {
	limit := s.cfg.MaxRequestBodyBytes
	if limit > 1<<30 {
		limit = 1 << 30
	}
	gs := grpc.NewServer(
		grpc.ForceServerCodec(lenientCodec{}),
		grpc.MaxRecvMsgSize(int(limit)),
		grpc.ChainUnaryInterceptor(s.unaryInterceptor),
		grpc.ChainStreamInterceptor(s.streamInterceptor),
	)
	hs := health.NewServer()
	healthpb.RegisterHealthServer(gs, hs)
	gs.RegisterService(invalidArgumentOnBadMessages(&enginepb.TpuserveEngine_ServiceDesc), &grpcService{s: s})
	// Server reflection, so that grpcurl and grpcui work without the .proto files.
	reflection.Register(gs)
	// NOT_SERVING until SetEngine.
	for _, svc := range []string{"", enginepb.TpuserveEngine_ServiceDesc.ServiceName} {
		hs.SetServingStatus(svc, healthpb.HealthCheckResponse_NOT_SERVING)
	}
	return gs, hs
}

func (s *Server) setServing(st healthpb.HealthCheckResponse_ServingStatus) {
	for _, svc := range []string{"", enginepb.TpuserveEngine_ServiceDesc.ServiceName} {
		s.health.SetServingStatus(svc, st)
	}
}

// grpc-go answers a request message that does not decode with Internal, and writes that
// status itself before the handler can change it. The server codec therefore lets the
// tpuserve service's messages "decode" (empty) and remembers the failure; the service's
// handlers (invalidArgumentOnBadMessages) turn it into InvalidArgument, the client's fault.

// lenientCodec is the proto codec, except for tpuserve messages that fail to decode.
type lenientCodec struct{}

// badMessages maps a message that failed to decode to its error, until the handler asks.
var badMessages sync.Map

func (lenientCodec) Name() string { return "proto" }

func (lenientCodec) Marshal(v any) ([]byte, error) {
	m, ok := v.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("lenientCodec: %T is not a proto message", v)
	}
	return proto.Marshal(m)
}

func (lenientCodec) Unmarshal(data []byte, v any) error {
	m, ok := v.(proto.Message)
	if !ok {
		return fmt.Errorf("lenientCodec: %T is not a proto message", v)
	}
	err := proto.Unmarshal(data, m)
	if err != nil && m.ProtoReflect().Descriptor().ParentFile().Package() == enginePackage {
		proto.Reset(m)
		badMessages.Store(m, err)
		return nil
	}
	return err
}

var enginePackage = enginepb.File_enginepb_engine_proto.Package()

// invalidArgumentOnBadMessages wraps a service so that a request message that did not
// decode is answered InvalidArgument.
func invalidArgumentOnBadMessages(desc *grpc.ServiceDesc) *grpc.ServiceDesc {
	d := *desc
	d.Methods = slices.Clone(desc.Methods)
	for i := range d.Methods {
		h := d.Methods[i].Handler
		d.Methods[i].Handler = func(srv any, ctx context.Context, dec func(any) error, ic grpc.UnaryServerInterceptor) (any, error) {
			return h(srv, ctx, func(m any) error { return badMessage(m, dec(m)) }, ic)
		}
	}
	d.Streams = slices.Clone(desc.Streams)
	for i := range d.Streams {
		h := d.Streams[i].Handler
		d.Streams[i].Handler = func(srv any, ss grpc.ServerStream) error {
			return h(srv, badMessageStream{ss})
		}
	}
	return &d
}

type badMessageStream struct{ grpc.ServerStream }

func (s badMessageStream) RecvMsg(m any) error { return badMessage(m, s.ServerStream.RecvMsg(m)) }

func badMessage(m any, err error) error {
	if bad, ok := badMessages.LoadAndDelete(m); ok && err == nil {
		return status.Errorf(codes.InvalidArgument, "malformed request message: %v", bad)
	}
	return err
}

var engineServicePrefix = "/" + enginepb.TpuserveEngine_ServiceDesc.ServiceName + "/"

// grpcAuth checks the API key on the tpuserve service (health stays open for probes).
func (s *Server) grpcAuth(ctx context.Context, method string) error {
	if s.cfg.APIKey == "" || !strings.HasPrefix(method, engineServicePrefix) {
		return nil
	}
	md, _ := metadata.FromIncomingContext(ctx)
	for _, v := range md.Get("authorization") {
		if got, ok := strings.CutPrefix(v, "Bearer "); ok && subtle.ConstantTimeCompare([]byte(strings.TrimSpace(got)), []byte(s.cfg.APIKey)) == 1 {
			return nil
		}
	}
	return status.Error(codes.Unauthenticated, "missing or incorrect API key; send metadata 'authorization: Bearer <key>'")
}

// The interceptors count the tpuserve service's RPCs as in flight (shutdown drains them);
// health watches and reflection streams are not counted: shutdown ends them.
func (s *Server) unaryInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if err := s.grpcAuth(ctx, info.FullMethod); err != nil {
		return nil, err
	}
	if strings.HasPrefix(info.FullMethod, engineServicePrefix) {
		s.inflight.Add(1)
		defer s.inflight.Add(-1)
	}
	return handler(ctx, req)
}

func (s *Server) streamInterceptor(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if err := s.grpcAuth(ss.Context(), info.FullMethod); err != nil {
		return err
	}
	if strings.HasPrefix(info.FullMethod, engineServicePrefix) {
		s.inflight.Add(1)
		defer s.inflight.Add(-1)
	}
	return handler(srv, ss)
}

// grpcStatus turns an APIError into the matching gRPC status.
func grpcStatus(e *APIError) error {
	code := codes.Internal
	switch e.Status {
	case http.StatusBadRequest:
		code = codes.InvalidArgument
	case http.StatusUnauthorized:
		code = codes.Unauthenticated
	case http.StatusNotFound:
		code = codes.NotFound
	case http.StatusTooManyRequests, http.StatusRequestEntityTooLarge:
		code = codes.ResourceExhausted
	case http.StatusServiceUnavailable:
		code = codes.Unavailable
	}
	msg := e.Message
	if e.Param != "" && !strings.Contains(msg, e.Param) {
		msg = e.Param + ": " + msg
	}
	return status.Error(code, msg)
}

type grpcService struct {
	enginepb.UnimplementedTpuserveEngineServer
	s *Server
}

// plan validates a GenerateRequest with the same rules as the HTTP API.
func (g *grpcService) plan(req *enginepb.GenerateRequest) (*genPlan, *APIError) {
	s := g.s
	sp := req.GetSamplingParams()
	if sp == nil {
		sp = &enginepb.SamplingParams{}
	}
	f := samplingFields{
		TopK:                   ptrIfNonZero(int(sp.GetTopK())),
		MinP:                   ptrIfNonZero(float64(sp.GetMinP())),
		PresencePenalty:        ptrIfNonZero(float64(sp.GetPresencePenalty())),
		FrequencyPenalty:       ptrIfNonZero(float64(sp.GetFrequencyPenalty())),
		IgnoreEOS:              sp.GetIgnoreEos(),
		IncludeStopStrInOutput: sp.GetIncludeStopStrInOutput(),
		SkipSpecialTokens:      sp.SkipSpecialTokens,
		Seed:                   sp.Seed,
		Priority:               int(sp.GetPriority()),
	}
	if sp.Temperature != nil {
		f.Temperature = ptr(float64(sp.GetTemperature()))
	}
	if sp.TopP != nil {
		f.TopP = ptr(float64(sp.GetTopP()))
	}
	if sp.RepetitionPenalty != nil {
		f.RepetitionPenalty = ptr(float64(sp.GetRepetitionPenalty()))
	}
	if sp.MaxTokens != nil {
		if sp.GetMaxTokens() == 0 {
			return nil, badParam("max_tokens", "max_tokens must be at least 1, got 0")
		}
		f.MaxTokens = ptr(int(sp.GetMaxTokens()))
	}
	if sp.GetMinTokens() != 0 {
		f.MinTokens = ptr(int(sp.GetMinTokens()))
	}
	if sp.GetN() > 1 {
		f.N = ptr(int(sp.GetN())) // the value sent, so that an error reports it
	}
	if len(sp.GetStop()) > 0 {
		f.Stop, _ = json.Marshal(sp.GetStop())
	}
	for _, id := range sp.GetStopTokenIds() {
		f.StopTokenIDs = append(f.StopTokenIDs, int64(id))
	}
	grpcConstraint(sp, &f)
	params, n, e := s.samplingParams(&f)
	if e != nil {
		return nil, grpcConstraintError(e)
	}
	plan := &genPlan{model: s.modelName, n: n, logprobs: -1, stream: req.GetStream(), priority: f.Priority}
	if sp.Logprobs != nil {
		k := int(sp.GetLogprobs())
		if k < 0 || k > s.cfg.MaxLogprobs {
			return nil, badParam("logprobs", "logprobs must be in [0, %d], got %d", s.cfg.MaxLogprobs, k)
		}
		plan.logprobs = k
		params.Logprobs = &k
	}
	images, crops, e := s.grpcImages(req.GetImages())
	if e != nil {
		return nil, e
	}
	plan.images = images
	var pr promptIn
	switch in := req.GetInput().(type) {
	case *enginepb.GenerateRequest_Text:
		text := in.Text
		if len(images) > 0 {
			var err error
			if text, err = s.cfg.Images.ExpandPrompt(text, crops); err != nil {
				return nil, badParam("text", "text with images cannot be prompted: %v", err)
			}
		}
		pr.ids = s.tok.Encode(text, true)
	case *enginepb.GenerateRequest_Tokenized:
		ids := in.Tokenized.GetInputIds()
		pr.ids = make([]int32, len(ids))
		for i, id := range ids {
			if id >= uint32(s.cfg.VocabSize) {
				return nil, badParam(fmt.Sprintf("tokenized.input_ids[%d]", i), "token id %d in tokenized.input_ids[%d] is outside the vocabulary [0, %d)", id, i, s.cfg.VocabSize)
			}
			pr.ids[i] = int32(id)
		}
	default:
		return nil, &APIError{Status: http.StatusBadRequest, Type: typeInvalidRequest, Code: codeMissing, Param: "input",
			Message: "input (text or tokenized) is required"}
	}
	if len(pr.ids) == 0 {
		return nil, badParam("input", "input must not be empty")
	}
	if e := s.checkChoices(1, n); e != nil {
		return nil, e
	}
	prompts := []promptIn{pr}
	if e := s.resolveLengths(prompts, nil, f.MaxTokens, "sampling_params.max_tokens", 0, params.MinTokens, "input"); e != nil {
		return nil, e
	}
	plan.prompts, plan.params = prompts, params
	return plan, nil
}

func ptr[T any](v T) *T { return &v }

func ptrIfNonZero[T comparable](v T) *T {
	var zero T
	if v == zero {
		return nil
	}
	return &v
}

func (g *grpcService) Generate(req *enginepb.GenerateRequest, stream grpc.ServerStreamingServer[enginepb.GenerateResponse]) error {
	s := g.s
	if s.shuttingDown.Load() {
		return status.Error(codes.Unavailable, "the server is shutting down")
	}
	plan, e := g.plan(req)
	if e != nil {
		return grpcStatus(e)
	}
	plan.id = req.GetRequestId()
	if plan.id == "" {
		plan.id = newRequestID("grpc-")
	}
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	stop := context.AfterFunc(s.hardCtx, cancel)
	defer stop()
	if !s.register(plan.id, cancel) {
		return status.Errorf(codes.AlreadyExists, "request_id %q is already live", plan.id)
	}
	defer s.unregister(plan.id)

	r, err := s.startRun(ctx, plan)
	if err != nil {
		return grpcStatus(s.classifyEngineError(plan.id, err))
	}
	defer r.drain()

	accs := make([]choiceAcc, len(r.subs))
	promptLen := uint32(len(plan.prompts[0].ids))
	var sendErr error
	send := func(m *enginepb.GenerateResponse) {
		if sendErr == nil {
			if sendErr = stream.Send(m); sendErr != nil {
				r.abort() // the client is gone
			}
		}
	}
	var failure *APIError
	for {
		i, ev, ok := r.next()
		if !ok {
			break
		}
		if ev.Err != nil {
			ae := s.classifyEngineError(plan.id, ev.Err)
			if ae.Status >= 500 {
				s.log.Error("grpc generate failed", "request_id", plan.id, "err", ev.Err)
			}
			if failure == nil {
				failure = ae
			}
			send(&enginepb.GenerateResponse{RequestId: plan.id, Index: uint32(i), Response: &enginepb.GenerateResponse_Error{
				Error: &enginepb.GenerateError{Message: ae.Message, HttpStatusCode: strconv.Itoa(ae.Status), Details: ae.Code}}})
			continue
		}
		a := &accs[i]
		a.add(&ev, plan.logprobs >= 0, true)
		if plan.stream && (len(ev.TokenIDs) > 0 || ev.Text != "") {
			send(&enginepb.GenerateResponse{RequestId: plan.id, Index: uint32(i), Response: &enginepb.GenerateResponse_Chunk{
				Chunk: &enginepb.GenerateStreamChunk{TokenIds: toUint32(ev.TokenIDs), PromptTokens: promptLen, CompletionTokens: uint32(a.tokens),
					CachedTokens: uint32(ev.NumCachedTokens), Text: ev.Text, Logprobs: toProtoLogprobs(a.lastPositions)}}})
		}
		if ev.Finished {
			done := &enginepb.GenerateComplete{OutputIds: toUint32(a.tokenIDs), FinishReason: string(a.finish), PromptTokens: promptLen,
				CompletionTokens: uint32(a.tokens), CachedTokens: uint32(a.cached),
				Text: a.text.String(), Logprobs: toProtoLogprobs(a.positions)}
			switch a.stop.kind {
			case stopString:
				done.StopReason = &enginepb.GenerateComplete_StopStr{StopStr: a.stop.str}
			case stopTokenID:
				done.StopReason = &enginepb.GenerateComplete_StopTokenId{StopTokenId: uint32(a.stop.tokenID)}
			}
			send(&enginepb.GenerateResponse{RequestId: plan.id, Index: uint32(i), Response: &enginepb.GenerateResponse_Complete{Complete: done}})
		}
	}
	if sendErr != nil {
		return sendErr
	}
	if failure != nil {
		// After the per-sample error messages, the RPC itself ends with the error's status.
		return grpcStatus(failure)
	}
	return nil
}

func toUint32(ids []int32) []uint32 {
	out := make([]uint32, len(ids))
	for i, id := range ids {
		out[i] = uint32(id)
	}
	return out
}

func toProtoLogprobs(pos []engine.PositionLogprobs) []*enginepb.PositionLogprobs {
	if len(pos) == 0 {
		return nil
	}
	out := make([]*enginepb.PositionLogprobs, len(pos))
	for i, p := range pos {
		pl := &enginepb.PositionLogprobs{Chosen: &enginepb.TokenLogprob{TokenId: uint32(p.Chosen.TokenID), Logprob: p.Chosen.Logprob}}
		for _, t := range p.Top {
			pl.Top = append(pl.Top, &enginepb.TokenLogprob{TokenId: uint32(t.TokenID), Logprob: t.Logprob})
		}
		out[i] = pl
	}
	return out
}

func (s *Server) register(id string, cancel context.CancelFunc) bool {
	s.liveMu.Lock()
	defer s.liveMu.Unlock()
	if _, dup := s.live[id]; dup {
		return false
	}
	s.live[id] = cancel
	return true
}

func (s *Server) unregister(id string) {
	s.liveMu.Lock()
	defer s.liveMu.Unlock()
	delete(s.live, id)
}

func (g *grpcService) Abort(_ context.Context, req *enginepb.AbortRequest) (*enginepb.AbortResponse, error) {
	s := g.s
	n := 0
	seen := make(map[string]bool, len(req.GetRequestIds()))
	s.liveMu.Lock()
	for _, id := range req.GetRequestIds() {
		if seen[id] {
			continue // an id listed twice is one request
		}
		seen[id] = true
		if cancel, ok := s.live[id]; ok {
			cancel()
			n++
		}
	}
	s.liveMu.Unlock()
	s.log.Info("grpc abort", "request_ids", req.GetRequestIds(), "aborted", n, "reason", req.GetReason())
	return &enginepb.AbortResponse{NumAborted: uint32(n)}, nil
}

func (g *grpcService) GetModelInfo(context.Context, *enginepb.GetModelInfoRequest) (*enginepb.GetModelInfoResponse, error) {
	s := g.s
	root := s.cfg.ModelRoot
	if root == "" {
		root = s.modelName
	}
	return &enginepb.GetModelInfoResponse{ModelPath: root, IsGeneration: true, MaxContextLength: uint32(s.cfg.MaxModelLen),
		VocabSize: uint32(s.cfg.VocabSize), ServedModelNames: s.cfg.ServedModelNames}, nil
}

func (g *grpcService) HealthCheck(context.Context, *enginepb.HealthCheckRequest) (*enginepb.HealthCheckResponse, error) {
	if err := g.s.healthErr(); err != nil {
		return &enginepb.HealthCheckResponse{Healthy: false, Message: err.Error()}, nil
	}
	return &enginepb.HealthCheckResponse{Healthy: true, Message: "ok"}, nil
}

// grpcConstraint maps SamplingParams' structured-output oneof onto the HTTP API's fields,
// so that both compile and check it the same way.
func grpcConstraint(sp *enginepb.SamplingParams, f *samplingFields) {
	switch c := sp.GetConstraint().(type) {
	case *enginepb.SamplingParams_JsonSchema:
		f.StructuredOutputs = &structuredOutputs{JSON: json.RawMessage(c.JsonSchema)}
		if strings.TrimSpace(c.JsonSchema) == "" {
			f.StructuredOutputs.JSON = json.RawMessage(`""`) // not a schema: an error, not "absent"
		}
	case *enginepb.SamplingParams_Regex:
		f.StructuredOutputs = &structuredOutputs{Regex: &c.Regex}
	case *enginepb.SamplingParams_Grammar:
		f.StructuredOutputs = &structuredOutputs{Grammar: &c.Grammar}
	case *enginepb.SamplingParams_Choice:
		f.StructuredOutputs = &structuredOutputs{Choice: c.Choice.GetChoices()}
		if f.StructuredOutputs.Choice == nil {
			f.StructuredOutputs.Choice = []string{}
		}
	case *enginepb.SamplingParams_JsonObject:
		if c.JsonObject {
			f.ResponseFormat = &responseFormat{Type: "json_object"}
		}
	}
}

// grpcConstraintNames are the gRPC names of the HTTP fields grpcConstraint fills.
var grpcConstraintNames = []struct{ http, grpc string }{
	{"structured_outputs.json", "sampling_params.json_schema"},
	{"structured_outputs.regex", "sampling_params.regex"},
	{"structured_outputs.grammar", "sampling_params.grammar"},
	{"structured_outputs.choice", "sampling_params.choice"},
	{"response_format", "sampling_params.json_object"},
}

// grpcConstraintError names a constraint's error by its gRPC field.
func grpcConstraintError(e *APIError) *APIError {
	for _, n := range grpcConstraintNames {
		if e.Param == n.http {
			out := *e
			out.Param = n.grpc
			out.Message = strings.ReplaceAll(e.Message, n.http, n.grpc)
			return &out
		}
	}
	return e
}
