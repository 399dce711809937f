package server

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// Server serves the OpenAI-compatible HTTP API, /metrics and the gRPC API over one Engine
// and Tokenizer. Create it with New and run it with Serve.
type Server struct {
	cfg Config
	// eng is nil until the engine is ready (New without one, then SetEngine): the ports
	// are bound and /health answers 503 while the model loads.
	eng       atomic.Pointer[engineBox]
	engineSet chan struct{}
	tok       Tokenizer
	log       *slog.Logger
	modelName string
	created   int64
	// fingerprint is chat's system_fingerprint: the build and the model.
	fingerprint string

	metrics *metrics
	handler http.Handler
	grpc    *grpc.Server
	health  *health.Server

	// hardCtx is the parent of every request's context; cancelling it aborts whatever is
	// still running when the shutdown timeout expires.
	hardCtx    context.Context
	hardCancel context.CancelFunc

	shuttingDown atomic.Bool
	inflight     atomic.Int64 // HTTP and gRPC handlers running
	served       atomic.Bool

	// live maps gRPC request ids to their cancel functions (for Abort).
	liveMu sync.Mutex
	live   map[string]context.CancelFunc

	ready      chan struct{}
	listenOnce sync.Once
	listenErr  error
	hl, gl     net.Listener
	addrMu     sync.Mutex
	httpAddr   net.Addr
	grpcAddr   net.Addr
}

// engineBox lets an interface value sit in an atomic.Pointer.
type engineBox struct{ Engine }

// errEngineLoading is the cause of a 503 answered before SetEngine.
var errEngineLoading = errors.New("the model is still loading")

var ginModeOnce sync.Once

// New checks cfg and builds a Server; it does not listen yet. eng may be nil: the server
// can then Listen (and Serve) while the model loads, answering /health with 503, gRPC
// health with NOT_SERVING and generation requests with 503, until SetEngine.
func New(cfg Config, eng Engine, tok Tokenizer) (*Server, error) {
	if tok == nil {
		return nil, errors.New("server: New: nil Tokenizer")
	}
	cfg, err := cfg.withDefaults(tok)
	if err != nil {
		return nil, fmt.Errorf("server: invalid config: %w", err)
	}
	ginModeOnce.Do(func() { gin.SetMode(gin.ReleaseMode) })
	s := &Server{
		cfg:         cfg,
		engineSet:   make(chan struct{}),
		tok:         tok,
		log:         cfg.Logger,
		modelName:   cfg.ServedModelNames[0],
		created:     time.Now().Unix(),
		fingerprint: fingerprint(cfg.Version, cfg.ModelRoot, cfg.ServedModelNames[0]),
		live:        make(map[string]context.CancelFunc),
		ready:       make(chan struct{}),
	}
	s.hardCtx, s.hardCancel = context.WithCancel(context.Background())
	s.metrics = newMetrics(s.modelName, cfg.MaxModelLen, s.engine)
	s.handler = s.routes()
	s.grpc, s.health = s.newGRPC()
	if eng != nil {
		if err := s.SetEngine(eng); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// SetEngine makes the server take work: /health turns 200 and gRPC health SERVING. It may
// be called once (New with an engine calls it). An engine that implements StepObserver is
// given the metrics' step callback.
func (s *Server) SetEngine(eng Engine) error {
	if eng == nil {
		return errors.New("server: SetEngine: nil Engine")
	}
	if !s.eng.CompareAndSwap(nil, &engineBox{eng}) {
		return errors.New("server: SetEngine called twice")
	}
	if so, ok := eng.(StepObserver); ok {
		so.SetStepObserver(s.metrics.observeStep)
	}
	close(s.engineSet)
	if !s.shuttingDown.Load() {
		s.setServing(healthpb.HealthCheckResponse_SERVING)
	}
	s.log.Info("engine ready: serving requests")
	return nil
}

// EngineReady is closed once the server has its engine.
func (s *Server) EngineReady() <-chan struct{} { return s.engineSet }

// engine is the Engine, or nil while the model loads.
func (s *Server) engine() Engine {
	if b := s.eng.Load(); b != nil {
		return b.Engine
	}
	return nil
}

// fingerprint is a short stable hash of the build and the model.
func fingerprint(parts ...string) string {
	h := fnv.New64a()
	for _, p := range parts {
		h.Write([]byte(p))
		h.Write([]byte{0})
	}
	return fmt.Sprintf("fp_%012x", h.Sum64()>>16)
}

// Handler is the HTTP handler (for tests and embedding); Serve uses it.
func (s *Server) Handler() http.Handler { return s.handler }

// Ready is closed once the server listens (Listen, or Serve); HTTPAddr and GRPCAddr are
// valid after it.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// HTTPAddr is the address HTTP listens on (nil before Ready).
func (s *Server) HTTPAddr() net.Addr {
	s.addrMu.Lock()
	defer s.addrMu.Unlock()
	return s.httpAddr
}

// GRPCAddr is the address gRPC listens on (nil before Ready or when gRPC is off).
func (s *Server) GRPCAddr() net.Addr {
	s.addrMu.Lock()
	defer s.addrMu.Unlock()
	return s.grpcAddr
}

// Serve listens for HTTP and gRPC and serves until ctx is cancelled or a listener fails.
// On cancellation it shuts down gracefully: listeners close at once, in-flight requests may
// finish within Config.ShutdownTimeout, then the rest are aborted (streams end with
// finish_reason "abort", waiting non-streaming requests get 503). It returns nil after a
// shutdown that ctx asked for. Serve may be called once.
func (s *Server) Serve(ctx context.Context) error {
	if !s.served.CompareAndSwap(false, true) {
		return errors.New("server: Serve called twice")
	}
	defer s.hardCancel()
	if err := s.Listen(); err != nil {
		return err
	}
	hl, gl := s.hl, s.gl
	hs := &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       s.cfg.IdleTimeout,
		MaxHeaderBytes:    s.cfg.MaxHeaderBytes,
		BaseContext:       func(net.Listener) context.Context { return s.hardCtx },
		// Accept errors and the like are worth seeing at the default level.
		ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	errc := make(chan error, 2)
	go func() { errc <- ignoreClosed(hs.Serve(hl)) }()
	if gl != nil {
		go func() { errc <- s.grpc.Serve(gl) }()
	}

	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-errc:
		if serveErr != nil {
			serveErr = fmt.Errorf("server: serve: %w", serveErr)
		}
	}
	s.shutdown(hs, gl != nil)
	return serveErr
}

func ignoreClosed(err error) error {
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Listen binds the HTTP and gRPC ports (or takes the injected listeners) without serving
// yet, so that a port in use fails before a long model load; Serve calls it if it was not
// called. Connections wait in the listen backlog until Serve starts.
func (s *Server) Listen() error {
	s.listenOnce.Do(func() {
		s.hl, s.gl, s.listenErr = s.listen()
		if s.listenErr != nil {
			return
		}
		s.addrMu.Lock()
		s.httpAddr = s.hl.Addr()
		if s.gl != nil {
			s.grpcAddr = s.gl.Addr()
		}
		s.addrMu.Unlock()
		close(s.ready)
		attrs := []any{"http", s.hl.Addr().String(), "model", s.modelName, "engine_ready", s.engine() != nil}
		if s.gl != nil {
			attrs = append(attrs, "grpc", s.gl.Addr().String())
		}
		s.log.Info("server listening", attrs...)
	})
	return s.listenErr
}

func (s *Server) listen() (hl, gl net.Listener, err error) {
	hl = s.cfg.HTTPListener
	if hl == nil {
		hl, err = net.Listen("tcp", net.JoinHostPort(s.cfg.Host, strconv.Itoa(s.cfg.Port)))
		if err != nil {
			return nil, nil, fmt.Errorf("server: HTTP listen: %w", err)
		}
	}
	gl = s.cfg.GRPCListener
	if gl == nil && s.cfg.GRPCPort >= 0 {
		gl, err = net.Listen("tcp", net.JoinHostPort(s.cfg.Host, strconv.Itoa(s.cfg.GRPCPort)))
		if err != nil {
			hl.Close()
			return nil, nil, fmt.Errorf("server: gRPC listen: %w", err)
		}
	}
	return hl, gl, nil
}

// abortGrace is how long handlers get to write their final "abort" messages after the
// shutdown timeout aborts them, before connections are closed.
const abortGrace = 5 * time.Second

func (s *Server) shutdown(hs *http.Server, withGRPC bool) {
	start := time.Now()
	s.shuttingDown.Store(true)
	// Health watchers see NOT_SERVING at once; their streams are ended below, once the
	// requests have drained, so that an open Watch does not hold the shutdown up.
	s.health.Shutdown()
	s.log.Info("server shutting down", "in_flight", s.inflight.Load(), "timeout", s.cfg.ShutdownTimeout)

	sdCtx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
	defer cancel()
	grpcDone := make(chan struct{})
	go func() {
		if withGRPC {
			s.grpc.GracefulStop() // no new RPCs; returns once Stop below ends the rest
		}
		close(grpcDone)
	}()
	httpErr := hs.Shutdown(sdCtx)
	// Wait for the engine RPCs only (s.inflight counts HTTP handlers and the tpuserve
	// service, not health watches or reflection streams).
	for s.inflight.Load() > 0 && sdCtx.Err() == nil {
		time.Sleep(5 * time.Millisecond)
	}
	if httpErr != nil || sdCtx.Err() != nil {
		// Timeout: abort what is left and give the handlers a moment to say so.
		s.log.Warn("shutdown timeout: aborting in-flight requests", "in_flight", s.inflight.Load())
		s.hardCancel()
		deadline := time.Now().Add(abortGrace)
		for s.inflight.Load() > 0 && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		hs.Close()
	}
	s.grpc.Stop()
	<-grpcDone
	s.log.Info("server stopped", "took", time.Since(start).Round(time.Millisecond))
}

// routes builds the gin router.
func (s *Server) routes() http.Handler {
	r := gin.New()
	r.HandleMethodNotAllowed = true
	r.ContextWithFallback = true
	r.Use(s.recovery, s.track)
	r.NoRoute(func(c *gin.Context) {
		s.writeError(c, &APIError{Status: http.StatusNotFound, Type: typeNotFound, Code: codeNotFound,
			Message: fmt.Sprintf("no route for %s %s", c.Request.Method, truncate(c.Request.URL.Path, 200))})
	})
	r.NoMethod(func(c *gin.Context) {
		s.writeError(c, &APIError{Status: http.StatusMethodNotAllowed, Type: typeInvalidRequest, Code: codeMethodNotAllowed,
			Message: fmt.Sprintf("method %s is not allowed on %s", c.Request.Method, truncate(c.Request.URL.Path, 200))})
	})

	r.GET("/health", s.handleHealth)
	r.GET("/ping", s.handleHealth)
	r.GET("/version", func(c *gin.Context) { s.writeJSON(c, http.StatusOK, map[string]string{"version": s.cfg.Version}) })
	// OpenMetrics when the scraper asks for it (Accept), the text format otherwise.
	metricsHandler := promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{
		ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelWarn), EnableOpenMetrics: true})
	r.GET("/metrics", gin.WrapH(metricsHandler))
	// Tokenizing is compute: behind the API key, with small bodies.
	tokenizeBody := s.limitBody(func() int64 { return s.cfg.MaxTokenizeBodyBytes })
	r.POST("/tokenize", s.auth, s.requireJSON, tokenizeBody, s.handleTokenize)
	r.POST("/detokenize", s.auth, s.requireJSON, tokenizeBody, s.handleDetokenize)

	body := s.limitBody(func() int64 { return s.cfg.MaxRequestBodyBytes })
	v1 := r.Group("/v1", s.auth)
	v1.GET("/models", s.handleModels)
	v1.GET("/models/:model", s.handleModel)
	v1.POST("/completions", s.requireJSON, body, s.handleCompletions)
	v1.POST("/chat/completions", s.requireJSON, body, s.handleChat)
	v1.POST("/responses", s.requireJSON, body, s.handleResponses)
	v1.GET("/responses/:id", s.handleResponseNotStored)
	v1.POST("/responses/:id/cancel", s.handleResponseNotStored)
	s.unsupportedAPIs(r, v1)
	return r
}

// unsupportedAPIs answers the OpenAI and vLLM routes of non-generative models with 400
// "The model does not support … API", as vLLM does for a generative model, not 404.
func (s *Server) unsupportedAPIs(root *gin.Engine, v1 *gin.RouterGroup) {
	refuse := func(api string) gin.HandlerFunc {
		return func(c *gin.Context) {
			s.writeError(c, &APIError{Status: http.StatusBadRequest, Type: typeInvalidRequest, Code: codeUnsupported,
				Message: fmt.Sprintf("The model does not support %s API", api)})
		}
	}
	for path, api := range map[string]string{
		"/embeddings": "Embeddings", "/audio/transcriptions": "Transcriptions", "/audio/translations": "Translations",
		"/audio/speech": "Speech", "/images/generations": "Images", "/images/edits": "Images",
		"/images/variations": "Images", "/rerank": "Rerank", "/score": "Score", "/moderations": "Moderations",
	} {
		v1.POST(path, refuse(api))
	}
	for path, api := range map[string]string{
		"/pooling": "Pooling", "/classify": "Classification", "/score": "Score", "/rerank": "Rerank",
		"/v2/rerank": "Rerank",
	} {
		root.POST(path, s.auth, refuse(api))
	}
}

// requireJSON answers 415 unless the body is declared application/json (any parameters):
// a cross-site form or a no-cors fetch can post text/plain (or no type) without a CORS
// preflight, so only JSON is taken, as vLLM's validate_json_request does.
func (s *Server) requireJSON(c *gin.Context) {
	ct := c.GetHeader("Content-Type")
	mt, _, err := mime.ParseMediaType(ct)
	if err == nil && mt == "application/json" {
		return
	}
	got := "no Content-Type"
	if ct != "" {
		got = "Content-Type " + strconv.Quote(truncate(ct, 100))
	}
	s.writeError(c, &APIError{Status: http.StatusUnsupportedMediaType, Type: typeInvalidRequest, Code: codeUnsupportedMedia,
		Message: fmt.Sprintf("Unsupported Media Type: only 'application/json' is allowed, got %s", got)})
	c.Abort()
}

// recovery turns a handler panic into a 500 that says nothing about the cause.
func (s *Server) recovery(c *gin.Context) {
	defer func() {
		if p := recover(); p != nil {
			if p == http.ErrAbortHandler {
				panic(p)
			}
			s.log.Error("handler panic", "path", c.Request.URL.Path, "panic", p, "stack", string(debug.Stack()))
			if !c.Writer.Written() {
				s.writeError(c, internalError("", fmt.Errorf("panic: %v", p)))
			}
			c.Abort()
		}
	}()
	c.Next()
}

// track counts in-flight handlers, so that shutdown knows when they are done.
// It also stamps the arrival time (the engine's ArrivalTime, so TTFT and e2e latency
// include decoding and tokenizing) and logs each request at debug level.
func (s *Server) track(c *gin.Context) {
	s.inflight.Add(1)
	defer s.inflight.Add(-1)
	start := time.Now()
	c.Set(arrivalKey, start)
	c.Next()
	if s.log.Enabled(c.Request.Context(), slog.LevelDebug) {
		s.log.Debug("http request", "method", c.Request.Method, "path", c.Request.URL.Path, "status", c.Writer.Status(),
			"request_id", c.Writer.Header().Get("X-Request-Id"), "took", time.Since(start))
	}
}

const arrivalKey = "tpuserve.arrival"

// auth checks the Bearer API key on /v1/* and the tokenizer endpoints.
func (s *Server) auth(c *gin.Context) {
	if s.cfg.APIKey == "" {
		return
	}
	got, ok := strings.CutPrefix(c.GetHeader("Authorization"), "Bearer ")
	if !ok || subtle.ConstantTimeCompare([]byte(strings.TrimSpace(got)), []byte(s.cfg.APIKey)) != 1 {
		c.Header("WWW-Authenticate", `Bearer realm="tpuserve"`)
		s.writeError(c, &APIError{Status: http.StatusUnauthorized, Type: typeAuthentication, Code: codeInvalidAPIKey,
			Message: "missing or incorrect API key; send it as 'Authorization: Bearer <key>'"})
		c.Abort()
	}
}

// limitBody reads the whole body (at most limit() bytes, else 413) into the context,
// within BodyReadTimeout (else 408: a client trickling its body would hold a handler).
func (s *Server) limitBody(limit func() int64) gin.HandlerFunc {
	return func(c *gin.Context) {
		limit := limit()
		tooLarge := &APIError{Status: http.StatusRequestEntityTooLarge, Type: typeInvalidRequest, Code: codeTooLarge,
			Message: fmt.Sprintf("the request body is larger than the limit of %d bytes", limit)}
		if c.Request.ContentLength > limit {
			s.writeError(c, tooLarge)
			c.Abort()
			return
		}
		rc := http.NewResponseController(c.Writer)
		deadlineSet := rc.SetReadDeadline(time.Now().Add(s.cfg.BodyReadTimeout)) == nil
		body, err := io.ReadAll(http.MaxBytesReader(c.Writer, c.Request.Body, limit))
		if deadlineSet {
			_ = rc.SetReadDeadline(time.Time{})
		}
		if err != nil {
			var mbe *http.MaxBytesError
			switch {
			case errors.As(err, &mbe):
				s.writeError(c, tooLarge)
			case errors.Is(err, os.ErrDeadlineExceeded):
				c.Header("Connection", "close")
				s.writeError(c, &APIError{Status: http.StatusRequestTimeout, Type: typeInvalidRequest, Code: codeTimeout,
					Message: fmt.Sprintf("the request body was not received within %s", s.cfg.BodyReadTimeout)})
			default:
				s.writeError(c, &APIError{Status: http.StatusBadRequest, Type: typeInvalidRequest, Code: codeInvalidJSON,
					Message: "could not read the request body"})
			}
			c.Abort()
			return
		}
		c.Set(bodyKey, body)
	}
}

const bodyKey = "tpuserve.body"

func requestBody(c *gin.Context) []byte {
	b, _ := c.Get(bodyKey)
	body, _ := b.([]byte)
	return body
}

// writeJSON writes v without HTML escaping ("<bos>" stays readable).
func (s *Server) writeJSON(c *gin.Context, status int, v any) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		s.log.Error("encode response", "err", err)
		status, buf = http.StatusInternalServerError, bytes.Buffer{}
		_ = json.NewEncoder(&buf).Encode(internalError("", err).body())
	}
	c.Data(status, "application/json", buf.Bytes())
}

// writeError answers with OpenAI's error object; 5xx causes go to the log only.
func (s *Server) writeError(c *gin.Context, e *APIError) {
	if e.Status >= 500 {
		s.log.Error("request failed", "path", c.Request.URL.Path, "status", e.Status, "err", e.cause)
	} else {
		s.log.Debug("request rejected", "path", c.Request.URL.Path, "status", e.Status, "code", e.Code, "param", e.Param, "msg", e.Message)
	}
	if e.RetryAfter > 0 {
		c.Header("Retry-After", e.retryAfterHeader())
	}
	s.writeJSON(c, e.Status, e.body())
}

// healthErr is nil while the server takes work.
func (s *Server) healthErr() error {
	if s.shuttingDown.Load() {
		return ErrShuttingDown
	}
	eng := s.engine()
	if eng == nil {
		return errEngineLoading
	}
	if hc, ok := eng.(HealthChecker); ok {
		if err := hc.Health(); err != nil {
			return fmt.Errorf("engine unhealthy: %w", err)
		}
	}
	return nil
}

func (s *Server) handleHealth(c *gin.Context) {
	if err := s.healthErr(); err != nil {
		s.log.Warn("health check failed", "err", err)
		c.Status(http.StatusServiceUnavailable)
		return
	}
	c.Status(http.StatusOK)
}

func (s *Server) modelCards() []modelCard {
	cards := make([]modelCard, 0, len(s.cfg.ServedModelNames))
	root := s.cfg.ModelRoot
	if root == "" {
		root = s.modelName
	}
	for _, name := range s.cfg.ServedModelNames {
		cards = append(cards, modelCard{
			ID: name, Object: "model", Created: s.created, OwnedBy: "tpuserve", Root: root,
			MaxModelLen: s.cfg.MaxModelLen,
			Permission: []modelPermission{{ID: "modelperm-" + name, Object: "model_permission", Created: s.created,
				AllowSampling: true, AllowLogprobs: true, AllowView: true, Organization: "*"}},
		})
	}
	return cards
}

func (s *Server) handleModels(c *gin.Context) {
	s.writeJSON(c, http.StatusOK, modelList{Object: "list", Data: s.modelCards()})
}

func (s *Server) handleModel(c *gin.Context) {
	name := c.Param("model")
	for _, card := range s.modelCards() {
		if card.ID == name {
			s.writeJSON(c, http.StatusOK, card)
			return
		}
	}
	_, e := s.checkModel(name)
	s.writeError(c, e)
}

func (s *Server) handleTokenize(c *gin.Context) {
	var req tokenizeRequest
	if e := decodeJSON(requestBody(c), &req); e != nil {
		s.writeError(c, e)
		return
	}
	if _, e := s.checkModel(req.Model); e != nil {
		s.writeError(c, e)
		return
	}
	var ids []int32
	switch {
	case req.Messages != nil && req.Prompt != nil:
		s.writeError(c, badParam("prompt", "give either prompt or messages, not both"))
		return
	case req.Prompt != nil:
		add := true
		if req.AddSpecialTokens != nil {
			add = *req.AddSpecialTokens
		}
		ids = s.tok.Encode(*req.Prompt, add)
	case req.Messages != nil:
		msgs, e := convertMessages(req.Messages)
		if e == nil {
			if imgs := chatImages(msgs); len(imgs) > 0 {
				e = unsupported(imgs[0].param, "%s: /tokenize does not take image parts", imgs[0].param)
			}
		}
		if e != nil {
			s.writeError(c, e)
			return
		}
		addGen := true
		if req.AddGenerationPrompt != nil {
			addGen = *req.AddGenerationPrompt
		}
		text, e := s.renderChat(msgs, nil, addGen)
		if e != nil {
			s.writeError(c, e)
			return
		}
		add := false
		if req.AddSpecialTokens != nil {
			add = *req.AddSpecialTokens
		}
		ids = s.tok.Encode(text, add)
	default:
		s.writeError(c, &APIError{Status: http.StatusBadRequest, Type: typeInvalidRequest, Code: codeMissing, Param: "prompt",
			Message: "prompt (a string) or messages is required"})
		return
	}
	if len(ids) > s.cfg.MaxTokenizeTokens {
		s.writeError(c, badParam("prompt", "the input tokenizes to %d tokens, more than this endpoint's limit of %d", len(ids), s.cfg.MaxTokenizeTokens))
		return
	}
	resp := tokenizeResponse{Count: len(ids), MaxModelLen: s.cfg.MaxModelLen, Tokens: ids}
	if resp.Tokens == nil {
		resp.Tokens = []int32{}
	}
	if req.ReturnTokenStrs {
		resp.TokenStrs = make([]string, len(ids))
		for i, id := range ids {
			resp.TokenStrs[i], _ = s.tok.TokenString(id)
		}
	}
	s.writeJSON(c, http.StatusOK, resp)
}

func (s *Server) handleDetokenize(c *gin.Context) {
	var req detokenizeRequest
	if e := decodeJSON(requestBody(c), &req); e != nil {
		s.writeError(c, e)
		return
	}
	if _, e := s.checkModel(req.Model); e != nil {
		s.writeError(c, e)
		return
	}
	if len(bytes.TrimSpace(req.Tokens)) == 0 || string(bytes.TrimSpace(req.Tokens)) == "null" {
		s.writeError(c, &APIError{Status: http.StatusBadRequest, Type: typeInvalidRequest, Code: codeMissing, Param: "tokens",
			Message: "tokens is required"})
		return
	}
	ids, e := s.parseTokenIDs("tokens", req.Tokens)
	if e != nil {
		s.writeError(c, e)
		return
	}
	if len(ids) > s.cfg.MaxTokenizeTokens {
		s.writeError(c, badParam("tokens", "%d tokens is more than this endpoint's limit of %d", len(ids), s.cfg.MaxTokenizeTokens))
		return
	}
	text, err := s.tok.Decode(ids, false)
	if err != nil {
		s.writeError(c, badParam("tokens", "tokens cannot be decoded: %v", err))
		return
	}
	s.writeJSON(c, http.StatusOK, detokenizeResponse{Prompt: text})
}
