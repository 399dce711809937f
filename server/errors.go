package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"
)

// Sentinel errors an Engine's Submit (or a final Event's Err) wraps so that the server
// answers with the right status. The engine package cannot import server (server imports
// engine's types), so the integrator's adapter translates: for example
//
//	if errors.Is(err, engine.ErrQueueFull) { err = fmt.Errorf("%w: %w", server.ErrQueueFull, err) }
//
// Errors wrapping none of these are internal: a 500 whose details go only to the log.
var (
	// ErrQueueFull: the engine's request queue is at its limit. HTTP 429 with Retry-After;
	// gRPC ResourceExhausted.
	ErrQueueFull = errors.New("request queue is full")
	// ErrRequestTooLarge: the request can never fit the KV cache (prompt plus max_tokens).
	// HTTP 400 with the error's text; gRPC InvalidArgument.
	ErrRequestTooLarge = errors.New("request too large for the KV cache")
	// ErrInvalidRequest: the engine rejected the request's parameters. HTTP 400 with the
	// error's text; gRPC InvalidArgument.
	ErrInvalidRequest = errors.New("invalid request")
	// ErrShuttingDown: the engine no longer accepts work. HTTP 503; gRPC Unavailable.
	ErrShuttingDown = errors.New("server is shutting down")
)

// Error types and codes of the OpenAI error object.
const (
	typeInvalidRequest = "invalid_request_error"
	typeAuthentication = "authentication_error"
	typeNotFound       = "not_found_error"
	typeRateLimit      = "rate_limit_error"
	typeServer         = "server_error"
	typeUnavailable    = "service_unavailable_error"

	codeInvalidValue     = "invalid_value"
	codeInvalidType      = "invalid_type"
	codeInvalidJSON      = "invalid_json"
	codeMissing          = "missing_required_parameter"
	codeUnsupported      = "unsupported_parameter"
	codeContextLength    = "context_length_exceeded"
	codeModelNotFound    = "model_not_found"
	codeInvalidAPIKey    = "invalid_api_key"
	codeTooLarge         = "request_too_large"
	codeRateLimit        = "rate_limit_exceeded"
	codeInternal         = "internal_error"
	codeUnavailable      = "service_unavailable"
	codeNotFound         = "not_found"
	codeMethodNotAllowed = "method_not_allowed"
	codeUnsupportedMedia = "unsupported_media_type"
	codeTimeout          = "request_timeout"
)

// APIError is an error answered to the client as OpenAI's error object:
// {"error":{"message","type","param","code"}}.
type APIError struct {
	Status  int    // HTTP status
	Message string // shown to the client
	Type    string
	Param   string // the offending parameter, "" when none
	Code    string
	// RetryAfter, when positive, is sent as the Retry-After header (whole seconds).
	RetryAfter time.Duration
	// cause is logged, never sent.
	cause error
}

func (e *APIError) Error() string {
	if e.Param != "" {
		return fmt.Sprintf("%d %s (param %s): %s", e.Status, e.Code, e.Param, e.Message)
	}
	return fmt.Sprintf("%d %s: %s", e.Status, e.Code, e.Message)
}

func (e *APIError) Unwrap() error { return e.cause }

// errorBody is the JSON shape of an APIError.
type errorBody struct {
	Error errorObject `json:"error"`
}

type errorObject struct {
	Message string  `json:"message"`
	Type    string  `json:"type"`
	Param   *string `json:"param"`
	Code    string  `json:"code"`
}

func (e *APIError) body() errorBody {
	o := errorObject{Message: e.Message, Type: e.Type, Code: e.Code}
	if e.Param != "" {
		p := e.Param
		o.Param = &p
	}
	return errorBody{Error: o}
}

func (e *APIError) retryAfterHeader() string {
	secs := int((e.RetryAfter + time.Second - 1) / time.Second)
	return strconv.Itoa(max(secs, 1))
}

// badParam is a 400 for parameter param.
func badParam(param, format string, args ...any) *APIError {
	return &APIError{Status: http.StatusBadRequest, Type: typeInvalidRequest, Param: param, Code: codeInvalidValue,
		Message: fmt.Sprintf(format, args...)}
}

// unsupported is a 400 for a parameter this server does not implement.
func unsupported(param, format string, args ...any) *APIError {
	e := badParam(param, format, args...)
	e.Code = codeUnsupported
	return e
}

func internalError(requestID string, cause error) *APIError {
	msg := "internal server error"
	if requestID != "" {
		msg += " (request " + requestID + ")"
	}
	return &APIError{Status: http.StatusInternalServerError, Type: typeServer, Code: codeInternal, Message: msg, cause: cause}
}

// classifyEngineError maps an error from Engine.Submit or a final Event to the answer.
func (s *Server) classifyEngineError(requestID string, err error) *APIError {
	var api *APIError
	switch {
	case errors.As(err, &api):
		return api
	case errors.Is(err, errEngineLoading):
		return &APIError{Status: http.StatusServiceUnavailable, Type: typeUnavailable, Code: codeUnavailable,
			Message: "the model is still loading; retry later", RetryAfter: s.cfg.RetryAfter, cause: err}
	case errors.Is(err, ErrQueueFull):
		return &APIError{Status: http.StatusTooManyRequests, Type: typeRateLimit, Code: codeRateLimit,
			Message: "the server's request queue is full; retry later", RetryAfter: s.cfg.RetryAfter, cause: err}
	case errors.Is(err, ErrRequestTooLarge), errors.Is(err, ErrInvalidRequest):
		return &APIError{Status: http.StatusBadRequest, Type: typeInvalidRequest, Code: codeInvalidValue, Message: err.Error(), cause: err}
	case errors.Is(err, ErrShuttingDown), errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return &APIError{Status: http.StatusServiceUnavailable, Type: typeUnavailable, Code: codeUnavailable,
			Message: "the server is shutting down or the request was cancelled", cause: err}
	default:
		return internalError(requestID, err)
	}
}
