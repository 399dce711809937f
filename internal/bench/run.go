package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
)

// Config is a benchmark run's settings. Zero values take the documented defaults.
type Config struct {
	// BaseURL of the server, e.g. http://127.0.0.1:8000 (required).
	BaseURL string
	// Endpoint path, default /v1/completions.
	Endpoint string
	// Model sent in each request; empty asks the server's /v1/models for its first model.
	Model string
	// RequestRate in requests per second; 0 or +Inf sends every request at once.
	RequestRate float64
	// Burstiness is the Gamma shape of inter-arrival times; default 1 (Poisson).
	Burstiness float64
	// MaxConcurrency caps requests in flight; 0 means no cap.
	MaxConcurrency int
	// IgnoreEOS asks the server to generate max_tokens tokens whatever it samples.
	IgnoreEOS bool
	// Percentiles to report for every metric; default [99].
	Percentiles []float64
	// Goodput SLOs in milliseconds by metric name (ttft, tpot, e2el); empty: no goodput.
	Goodput map[string]float64
	// Seed of the arrival process (the dataset has its own rng).
	Seed uint64
	// APIKey, when set, is sent as a bearer token.
	APIKey string
	// ReadyTimeout, when > 0, retries the first prompt as a test request until it
	// succeeds or this much time has passed, before the measured run (vLLM's ready check).
	ReadyTimeout time.Duration
	// NumWarmups requests with the first prompt run before the measured run.
	NumWarmups int
	// Progress, when non-nil, receives a progress bar.
	Progress io.Writer
	// HTTPClient overrides the default client (no overall timeout, keep-alive).
	HTTPClient *http.Client
	// Logger for notices (default slog.Default()).
	Logger *slog.Logger
}

// GoodputMetrics are the metric names --goodput accepts.
var GoodputMetrics = []string{"ttft", "tpot", "e2el"}

// ParseGoodput parses vLLM's --goodput values: "KEY:MS" pairs separated by spaces or
// given as several values, KEY one of ttft, tpot, e2el.
func ParseGoodput(values []string) (map[string]float64, error) {
	out := map[string]float64{}
	for _, v := range values {
		for _, pair := range strings.Fields(v) {
			k, ms, ok := strings.Cut(pair, ":")
			if !ok {
				return nil, fmt.Errorf("%w: goodput: %q is not KEY:MILLISECONDS", ErrConfig, pair)
			}
			valid := false
			for _, m := range GoodputMetrics {
				valid = valid || m == k
			}
			if !valid {
				return nil, fmt.Errorf("%w: goodput: unknown metric %q (want ttft, tpot or e2el)", ErrConfig, k)
			}
			var f float64
			if _, err := fmt.Sscan(ms, &f); err != nil || f < 0 || math.IsNaN(f) || math.IsInf(f, 0) {
				return nil, fmt.Errorf("%w: goodput: %s: %q is not a non-negative number of milliseconds", ErrConfig, k, ms)
			}
			out[k] = f
		}
	}
	return out, nil
}

func (c Config) withDefaults() (Config, error) {
	if c.BaseURL == "" {
		return c, fmt.Errorf("%w: base-url: required", ErrConfig)
	}
	u, err := url.Parse(c.BaseURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return c, fmt.Errorf("%w: base-url: %q is not an http(s) URL", ErrConfig, c.BaseURL)
	}
	c.BaseURL = strings.TrimRight(c.BaseURL, "/")
	if c.Endpoint == "" {
		c.Endpoint = "/v1/completions"
	}
	if !strings.HasSuffix(c.Endpoint, "completions") || strings.HasSuffix(c.Endpoint, "chat/completions") {
		return c, fmt.Errorf("%w: endpoint: %q: only the completions API (/v1/completions) is supported", ErrConfig, c.Endpoint)
	}
	if c.RequestRate == 0 {
		c.RequestRate = math.Inf(1)
	}
	if c.Burstiness == 0 {
		c.Burstiness = 1
	}
	if c.MaxConcurrency < 0 {
		return c, fmt.Errorf("%w: max-concurrency: %d must not be negative", ErrConfig, c.MaxConcurrency)
	}
	if c.NumWarmups < 0 {
		return c, fmt.Errorf("%w: num-warmups: %d must not be negative", ErrConfig, c.NumWarmups)
	}
	if len(c.Percentiles) == 0 {
		c.Percentiles = []float64{99}
	}
	for _, p := range c.Percentiles {
		if !(p >= 0 && p <= 100) {
			return c, fmt.Errorf("%w: metric-percentiles: %v is not in [0, 100]", ErrConfig, p)
		}
	}
	for k := range c.Goodput {
		if k != "ttft" && k != "tpot" && k != "e2el" {
			return c, fmt.Errorf("%w: goodput: unknown metric %q", ErrConfig, k)
		}
	}
	if c.HTTPClient == nil {
		idle := max(c.MaxConcurrency, 256)
		c.HTTPClient = &http.Client{Transport: &http.Transport{
			Proxy:               nil, // the benchmark talks to the server directly
			MaxIdleConns:        idle,
			MaxIdleConnsPerHost: idle,
			IdleConnTimeout:     60 * time.Second,
			DisableCompression:  true, // compression would batch events and skew ITL
		}}
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c, nil
}

// firstModel asks GET /v1/models for the first model's id, like vLLM when --model is absent.
func firstModel(ctx context.Context, c Config) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.BaseURL+"/v1/models", nil)
	if err != nil {
		return "", err
	}
	if c.APIKey != "" {
		req.Header.Set("Authorization", "Bearer "+c.APIKey)
	}
	resp, err := c.HTTPClient.Do(req)
	if err != nil {
		return "", fmt.Errorf("bench: list models: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("bench: list models: HTTP %d", resp.StatusCode)
	}
	var list struct {
		Data []struct {
			ID string `json:"id"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&list); err != nil {
		return "", fmt.Errorf("bench: list models: %w", err)
	}
	if len(list.Data) == 0 || list.Data[0].ID == "" {
		return "", fmt.Errorf("bench: list models: the server lists no model; pass --model")
	}
	return list.Data[0].ID, nil
}

// Run benchmarks the server with reqs and returns the measurements. It fails only when the
// run cannot start (see the package doc); failed requests are counted in the result.
func Run(ctx context.Context, cfg Config, reqs []SampleRequest) (*Result, error) {
	ownClient := cfg.HTTPClient == nil
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if ownClient {
		// Leave no keep-alive connections (and their goroutines) behind.
		defer cfg.HTTPClient.CloseIdleConnections()
	}
	if len(reqs) == 0 {
		return nil, fmt.Errorf("%w: no requests to send", ErrConfig)
	}
	rng := rand.New(rand.NewPCG(cfg.Seed, 0x7470757365727665))
	schedule, err := Schedule(len(reqs), cfg.RequestRate, cfg.Burstiness, rng)
	if err != nil {
		return nil, err
	}
	if cfg.Model == "" {
		if cfg.Model, err = firstModel(ctx, cfg); err != nil {
			return nil, err
		}
	}
	cl := &client{http: cfg.HTTPClient, url: cfg.BaseURL + cfg.Endpoint, model: cfg.Model, apiKey: cfg.APIKey, ignoreEOS: cfg.IgnoreEOS}

	if cfg.ReadyTimeout > 0 {
		if err := waitReady(ctx, cl, reqs[0], cfg.ReadyTimeout); err != nil {
			return nil, err
		}
	}
	for i := 0; i < cfg.NumWarmups; i++ {
		if o := cl.do(ctx, reqs[0]); !o.Success {
			cfg.Logger.Warn("bench: warm-up request failed", "error", o.Error)
		}
	}

	var sem chan struct{}
	if cfg.MaxConcurrency > 0 {
		sem = make(chan struct{}, cfg.MaxConcurrency)
	}
	bar := newProgress(cfg.Progress, len(reqs))
	outputs := make([]RequestOutput, len(reqs))
	var wg sync.WaitGroup
	start := time.Now()
	timer := time.NewTimer(0)
	defer timer.Stop()
	<-timer.C
	for i, req := range reqs {
		if wait := time.Until(start.Add(schedule[i])); wait > 0 {
			timer.Reset(wait)
			select {
			case <-timer.C:
			case <-ctx.Done():
			}
		}
		arrival := time.Now()
		wg.Add(1)
		go func() {
			defer wg.Done()
			if sem != nil {
				select {
				case sem <- struct{}{}:
					defer func() { <-sem }()
				case <-ctx.Done():
					outputs[i] = RequestOutput{Error: ctx.Err().Error(), PromptLen: req.PromptLen, Start: time.Now()}
					bar.add()
					return
				}
			}
			o := cl.do(ctx, req)
			o.QueueTime = o.Start.Sub(arrival)
			outputs[i] = o
			bar.add()
		}()
	}
	wg.Wait()
	duration := time.Since(start)
	bar.finish()

	res := &Result{
		Date:           start,
		ModelID:        cfg.Model,
		NumPrompts:     len(reqs),
		RequestRate:    cfg.RequestRate,
		Burstiness:     cfg.Burstiness,
		MaxConcurrency: cfg.MaxConcurrency,
		Duration:       duration,
		Start:          start,
		Outputs:        outputs,
		Percentiles:    cfg.Percentiles,
		Goodput:        cfg.Goodput,
	}
	res.Metrics = ComputeMetrics(outputs, duration, cfg.Percentiles, cfg.Goodput)
	if n := countNoUsage(outputs); n > 0 {
		cfg.Logger.Warn("bench: the server sent no usage for some requests; their output tokens are counted as chunks", "requests", n)
	}
	return res, nil
}

func countNoUsage(outs []RequestOutput) int {
	n := 0
	for _, o := range outs {
		if o.Success && !o.UsageReported {
			n++
		}
	}
	return n
}

// waitReady sends the test request until one succeeds or the timeout passes.
func waitReady(ctx context.Context, cl *client, req SampleRequest, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	backoff := 100 * time.Millisecond
	for {
		o := cl.do(ctx, req)
		if o.Success {
			return nil
		}
		if time.Now().Add(backoff).After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("bench: initial test request failed (is the server up, and are --base-url and --model right?): %s", o.Error)
		}
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}
