package server

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	"strings"
	"time"
)

// Config is the server's configuration. The integrator fills it from flags and the
// environment; DefaultConfig gives the documented defaults.
type Config struct {
	// Grammars compiles structured outputs (response_format, structured_outputs, guided_*);
	// nil refuses them with a 400.
	Grammars GrammarCompiler

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

	// IdleTimeout closes keep-alive connections idle that long (default 60s).
	IdleTimeout time.Duration
	// BodyReadTimeout bounds reading one request's body (default 30s): a slower body is
	// cut off with 408.
	BodyReadTimeout time.Duration
	// MaxHeaderBytes bounds a request's header (default 64 KiB); a bigger one gets 431.
	MaxHeaderBytes int
	// MaxTokenizeBodyBytes bounds /tokenize and /detokenize bodies (default 1 MiB), and
	// MaxTokenizeTokens the tokens they take or return (default 131072).
	MaxTokenizeBodyBytes int64
	MaxTokenizeTokens    int

	// QueueCapacity is how many sequences the engine can hold at once, running and waiting
	// (max-num-seqs + max-queue-len); a request with more choices (prompts × n) can never be
	// admitted and is refused with 400. 0 = unchecked.
	QueueCapacity int
	// PriorityScheduling is --scheduling-policy priority: a request's priority goes to the
	// engine. Off (fcfs), a non-zero priority is a 400, as in vLLM.
	PriorityScheduling bool
	// Defaults are the sampling parameters a request gets when it leaves them out (vLLM's
	// --generation-config: the checkpoint's generation_config.json); nil fields keep
	// vLLM's defaults.
	Defaults GenerationDefaults

	// Version is what /version reports.
	Version string
	// Logger receives the server's logs (default slog.Default()).
	Logger *slog.Logger

	// Images takes chat image parts (image_url) for a vision model; nil refuses them with
	// a 400 naming the part (a text-only checkpoint).
	Images ImageInput
	// MaxImagesPerPrompt is --limit-mm-per-prompt's image count (default 16).
	MaxImagesPerPrompt int
	// MaxImageBytes bounds one image's encoded bytes, data URL or fetched (default 20 MiB).
	MaxImageBytes int64
	// AllowedMediaDomains are the hosts http(s) image URLs may name (vLLM's
	// --allowed-media-domains); empty: only data URLs.
	AllowedMediaDomains []string
	// MediaFetchTimeout bounds fetching one image (default 10s).
	MediaFetchTimeout time.Duration
	// MediaClient fetches image URLs (default: a client following redirects to allowed
	// hosts only).
	MediaClient *http.Client
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
	DefaultIdleTimeout         = 60 * time.Second
	DefaultBodyReadTimeout     = 30 * time.Second
	DefaultMaxHeaderBytes      = 64 << 10
	DefaultMaxTokenizeBody     = 1 << 20
	DefaultMaxTokenizeTokens   = 1 << 17
)

// GenerationDefaults override vLLM's defaults for parameters a request leaves out.
type GenerationDefaults struct {
	Temperature       *float64
	TopK              *int
	TopP              *float64
	MinP              *float64
	RepetitionPenalty *float64
	// MaxTokens is generation_config.json's max_new_tokens: the default max_tokens where
	// the endpoint's own default would be larger.
	MaxTokens *int
}

// IsZero reports whether no default is set.
func (d GenerationDefaults) IsZero() bool {
	return d.Temperature == nil && d.TopK == nil && d.TopP == nil && d.MinP == nil && d.RepetitionPenalty == nil && d.MaxTokens == nil
}

// LogValue lists the defaults that are set.
func (d GenerationDefaults) LogValue() slog.Value {
	var attrs []slog.Attr
	if d.Temperature != nil {
		attrs = append(attrs, slog.Float64("temperature", *d.Temperature))
	}
	if d.TopK != nil {
		attrs = append(attrs, slog.Int("top_k", *d.TopK))
	}
	if d.TopP != nil {
		attrs = append(attrs, slog.Float64("top_p", *d.TopP))
	}
	if d.MinP != nil {
		attrs = append(attrs, slog.Float64("min_p", *d.MinP))
	}
	if d.RepetitionPenalty != nil {
		attrs = append(attrs, slog.Float64("repetition_penalty", *d.RepetitionPenalty))
	}
	if d.MaxTokens != nil {
		attrs = append(attrs, slog.Int("max_tokens", *d.MaxTokens))
	}
	return slog.GroupValue(attrs...)
}

// maxChoices bounds prompts × n in one request, so one request cannot flood the engine.
const maxChoices = 1024

// maxN is OpenAI's upper bound for n.
const maxN = 128

// DefaultConfig returns a Config with the defaults filled in; ServedModelNames and
// MaxModelLen still need setting.
func DefaultConfig() Config {
	return Config{
		Host:                 DefaultHost,
		Port:                 DefaultPort,
		GRPCPort:             DefaultGRPCPort,
		MaxRequestBodyBytes:  DefaultMaxRequestBodyBytes,
		ShutdownTimeout:      DefaultShutdownTimeout,
		RetryAfter:           DefaultRetryAfter,
		MaxLogprobs:          DefaultMaxLogprobs,
		IdleTimeout:          DefaultIdleTimeout,
		BodyReadTimeout:      DefaultBodyReadTimeout,
		MaxHeaderBytes:       DefaultMaxHeaderBytes,
		MaxTokenizeBodyBytes: DefaultMaxTokenizeBody,
		MaxTokenizeTokens:    DefaultMaxTokenizeTokens,
		MaxImagesPerPrompt:   DefaultMaxImagesPerPrompt,
		MaxImageBytes:        DefaultMaxImageBytes,
		MediaFetchTimeout:    DefaultMediaFetchTimeout,
		Version:              "dev",
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
	durations := []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{{"IdleTimeout", &c.IdleTimeout, DefaultIdleTimeout}, {"BodyReadTimeout", &c.BodyReadTimeout, DefaultBodyReadTimeout}}
	for _, d := range durations {
		if *d.v == 0 {
			*d.v = d.def
		} else if *d.v < 0 {
			errs = append(errs, fmt.Errorf("%s: must be positive, got %s", d.name, *d.v))
		}
	}
	if c.MaxHeaderBytes == 0 {
		c.MaxHeaderBytes = DefaultMaxHeaderBytes
	} else if c.MaxHeaderBytes < 0 {
		errs = append(errs, fmt.Errorf("MaxHeaderBytes: must be positive, got %d", c.MaxHeaderBytes))
	}
	if c.MaxTokenizeBodyBytes == 0 {
		c.MaxTokenizeBodyBytes = min(DefaultMaxTokenizeBody, c.MaxRequestBodyBytes)
	} else if c.MaxTokenizeBodyBytes < 0 {
		errs = append(errs, fmt.Errorf("MaxTokenizeBodyBytes: must be positive, got %d", c.MaxTokenizeBodyBytes))
	}
	if c.MaxTokenizeTokens == 0 {
		c.MaxTokenizeTokens = DefaultMaxTokenizeTokens
	} else if c.MaxTokenizeTokens < 0 {
		errs = append(errs, fmt.Errorf("MaxTokenizeTokens: must be positive, got %d", c.MaxTokenizeTokens))
	}
	if c.MaxImagesPerPrompt == 0 {
		c.MaxImagesPerPrompt = DefaultMaxImagesPerPrompt
	} else if c.MaxImagesPerPrompt < 0 {
		errs = append(errs, fmt.Errorf("MaxImagesPerPrompt: must be >= 0, got %d", c.MaxImagesPerPrompt))
	}
	if c.MaxImageBytes == 0 {
		c.MaxImageBytes = DefaultMaxImageBytes
	} else if c.MaxImageBytes < 0 {
		errs = append(errs, fmt.Errorf("MaxImageBytes: must be positive, got %d", c.MaxImageBytes))
	}
	if c.MediaFetchTimeout == 0 {
		c.MediaFetchTimeout = DefaultMediaFetchTimeout
	} else if c.MediaFetchTimeout < 0 {
		errs = append(errs, fmt.Errorf("MediaFetchTimeout: must be positive, got %s", c.MediaFetchTimeout))
	}
	for i, d := range c.AllowedMediaDomains {
		c.AllowedMediaDomains[i] = strings.ToLower(strings.TrimSpace(d))
	}
	if c.QueueCapacity < 0 {
		errs = append(errs, fmt.Errorf("QueueCapacity: must be >= 0, got %d", c.QueueCapacity))
	}
	if err := c.Defaults.check(c.VocabSize); err != nil {
		errs = append(errs, err)
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
		slog.Duration("idle_timeout", c.IdleTimeout), slog.Duration("body_read_timeout", c.BodyReadTimeout),
		slog.Int("max_header_bytes", c.MaxHeaderBytes), slog.Int("queue_capacity", c.QueueCapacity),
		slog.Bool("priority_scheduling", c.PriorityScheduling), slog.Any("generation_defaults", c.Defaults),
	)
}

// check validates the defaults with the ranges requests get, so that a bad
// generation_config.json fails at start-up rather than in every request.
func (d GenerationDefaults) check(vocab int) error {
	bad := func(name string, v any) error {
		return fmt.Errorf("Defaults: %s = %v is out of range", name, v)
	}
	switch {
	case d.Temperature != nil && !(*d.Temperature >= 0 && *d.Temperature <= 2):
		return bad("temperature", *d.Temperature)
	case d.TopP != nil && !(*d.TopP > 0 && *d.TopP <= 1):
		return bad("top_p", *d.TopP)
	case d.MinP != nil && !(*d.MinP >= 0 && *d.MinP <= 1):
		return bad("min_p", *d.MinP)
	case d.RepetitionPenalty != nil && !(*d.RepetitionPenalty > 0 && *d.RepetitionPenalty <= math.MaxFloat32):
		return bad("repetition_penalty", *d.RepetitionPenalty)
	case d.TopK != nil && (*d.TopK < -1 || (vocab > 0 && *d.TopK > vocab)):
		return bad("top_k", *d.TopK)
	case d.MaxTokens != nil && *d.MaxTokens < 1:
		return bad("max_tokens", *d.MaxTokens)
	}
	return nil
}
