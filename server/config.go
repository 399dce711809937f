package server

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"
)

// Config is the server's configuration. The integrator fills it from flags and the
// environment; DefaultConfig gives the documented defaults.
type Config struct {
	// Host and Port are where HTTP listens (default 0.0.0.0:8000). Port 0 picks a free port
	// (see HTTPAddr).
	Host string
	Port int
	// GRPCPort is where gRPC listens on Host (default 50051); 0 picks a free port, a
	// negative value turns gRPC off.
	GRPCPort int
	// HTTPListener and GRPCListener, when set, are used instead of Host/Port/GRPCPort (tests
	// pass loopback listeners on port 0). Serve closes them.
	HTTPListener net.Listener
	GRPCListener net.Listener

	// ServedModelNames are the names clients may put in "model"; the first is the one
	// responses carry. Required.
	ServedModelNames []string
	// ModelRoot is the model's path or name, reported as "root" by /v1/models.
	ModelRoot string
	// MaxModelLen is the most tokens (prompt plus output) a request may use. Required.
	MaxModelLen int
	// VocabSize bounds token ids in prompts; 0 takes the tokenizer's VocabSize.
	VocabSize int

	// APIKey, when set, is required as "Authorization: Bearer <key>" on /v1/* (as vLLM
	// does) and on the tpuserve gRPC service (not on grpc.health.v1).
	APIKey string
	// MaxRequestBodyBytes: larger bodies get 413 (default 32 MiB). Also gRPC's receive limit.
	MaxRequestBodyBytes int64
	// ShutdownTimeout is how long in-flight requests may run after shutdown starts before
	// they are aborted (default 30s).
	ShutdownTimeout time.Duration
	// RetryAfter is sent with 429 answers (default 1s).
	RetryAfter time.Duration
	// MaxLogprobs bounds logprobs/top_logprobs (default 20, vLLM's max_logprobs).
	MaxLogprobs int

	// Version is what /version reports.
	Version string
	// Logger receives the server's logs (default slog.Default()).
	Logger *slog.Logger
}

// Defaults of Config.
const (
	DefaultHost                = "0.0.0.0"
	DefaultPort                = 8000
	DefaultGRPCPort            = 50051
	DefaultMaxRequestBodyBytes = 32 << 20
	DefaultShutdownTimeout     = 30 * time.Second
	DefaultRetryAfter          = time.Second
	DefaultMaxLogprobs         = 20
)

// maxChoices bounds prompts × n in one request, so one request cannot flood the engine.
const maxChoices = 1024

// maxN is OpenAI's upper bound for n.
const maxN = 128

// DefaultConfig returns a Config with the defaults filled in; ServedModelNames and
// MaxModelLen still need setting.
func DefaultConfig() Config {
	return Config{
		Host:                DefaultHost,
		Port:                DefaultPort,
		GRPCPort:            DefaultGRPCPort,
		MaxRequestBodyBytes: DefaultMaxRequestBodyBytes,
		ShutdownTimeout:     DefaultShutdownTimeout,
		RetryAfter:          DefaultRetryAfter,
		MaxLogprobs:         DefaultMaxLogprobs,
		Version:             "dev",
	}
}

// withDefaults fills zero fields with defaults and checks the rest.
func (c Config) withDefaults(tok Tokenizer) (Config, error) {
	var errs []error
	if len(c.ServedModelNames) == 0 {
		errs = append(errs, errors.New("ServedModelNames: at least one name is required"))
	}
	for i, n := range c.ServedModelNames {
		if n == "" {
			errs = append(errs, fmt.Errorf("ServedModelNames[%d]: empty name", i))
		}
	}
	if c.MaxModelLen <= 0 {
		errs = append(errs, fmt.Errorf("MaxModelLen: must be positive, got %d", c.MaxModelLen))
	}
	if c.Port < 0 || c.Port > 65535 {
		errs = append(errs, fmt.Errorf("Port: %d is not a TCP port", c.Port))
	}
	if c.GRPCPort > 65535 {
		errs = append(errs, fmt.Errorf("GRPCPort: %d is not a TCP port", c.GRPCPort))
	}
	if c.VocabSize == 0 && tok != nil {
		c.VocabSize = tok.VocabSize()
	}
	if c.VocabSize <= 0 {
		errs = append(errs, fmt.Errorf("VocabSize: must be positive, got %d", c.VocabSize))
	}
	if c.MaxRequestBodyBytes == 0 {
		c.MaxRequestBodyBytes = DefaultMaxRequestBodyBytes
	} else if c.MaxRequestBodyBytes < 0 {
		errs = append(errs, fmt.Errorf("MaxRequestBodyBytes: must be positive, got %d", c.MaxRequestBodyBytes))
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = DefaultShutdownTimeout
	} else if c.ShutdownTimeout < 0 {
		errs = append(errs, fmt.Errorf("ShutdownTimeout: must be positive, got %s", c.ShutdownTimeout))
	}
	if c.RetryAfter <= 0 {
		c.RetryAfter = DefaultRetryAfter
	}
	if c.MaxLogprobs == 0 {
		c.MaxLogprobs = DefaultMaxLogprobs
	} else if c.MaxLogprobs < 0 {
		errs = append(errs, fmt.Errorf("MaxLogprobs: must be positive, got %d", c.MaxLogprobs))
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Version == "" {
		c.Version = "dev"
	}
	return c, errors.Join(errs...)
}

// LogValue lets the integrator log the configuration once at start-up (the API key is
// redacted).
func (c Config) LogValue() slog.Value {
	key := ""
	if c.APIKey != "" {
		key = "(set)"
	}
	return slog.GroupValue(
		slog.String("host", c.Host), slog.Int("port", c.Port), slog.Int("grpc_port", c.GRPCPort),
		slog.Any("served_model_names", c.ServedModelNames), slog.String("model_root", c.ModelRoot),
		slog.Int("max_model_len", c.MaxModelLen), slog.Int("vocab_size", c.VocabSize),
		slog.String("api_key", key), slog.Int64("max_request_body_bytes", c.MaxRequestBodyBytes),
		slog.Duration("shutdown_timeout", c.ShutdownTimeout), slog.Int("max_logprobs", c.MaxLogprobs),
	)
}
