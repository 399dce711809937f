package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/signal"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/tpuserve/tpuserve/internal/bench"
)

func init() {
	register("bench", "load-test an OpenAI-compatible server like `vllm bench serve` (TTFT, TPOT, ITL, E2EL, throughput)", runBench)
}

// goodputPair is one vLLM --goodput value.
var goodputPair = regexp.MustCompile(`^(ttft|tpot|e2el):`)

// joinGoodput folds vLLM's multi-value form (--goodput ttft:500 tpot:50) into one flag
// value, since Go's flag package takes one value per flag.
func joinGoodput(args []string) []string {
	var out []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--goodput" || a == "-goodput" {
			vals := []string{}
			for i+1 < len(args) && goodputPair.MatchString(args[i+1]) {
				vals = append(vals, args[i+1])
				i++
			}
			out = append(out, a+"="+strings.Join(vals, " "))
			continue
		}
		out = append(out, a)
	}
	return out
}

// multiFlag collects a repeatable string flag.
type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, " ") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

func runBench(args []string, _ io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	baseURL := fs.String("base-url", "", "server base URL (default http://HOST:PORT)")
	host := fs.String("host", "127.0.0.1", "server host when --base-url is not given")
	port := fs.Int("port", 8000, "server port when --base-url is not given")
	endpoint := fs.String("endpoint", "/v1/completions", "API endpoint (completions API only)")
	model := fs.String("model", "", "model name to send (default: the server's first model in /v1/models)")
	datasetName := fs.String("dataset-name", "", "random or sharegpt (default: sharegpt with --dataset-path, else random)")
	datasetPath := fs.String("dataset-path", "", "ShareGPT JSON file")
	numPrompts := fs.Int("num-prompts", 1000, "number of prompts to send")
	inLen := fs.Int("random-input-len", 1024, "random dataset: mean input tokens")
	outLen := fs.Int("random-output-len", 128, "random dataset: mean output tokens (max_tokens)")
	ratio := fs.Float64("random-range-ratio", 0, "random dataset: lengths drawn from [L(1-r), L(1+r)], r in [0,1)")
	prefixLen := fs.Int("random-prefix-len", 0, "random dataset: shared prefix tokens")
	tokenRange := fs.String("random-token-range", fmt.Sprintf("%d:%d", bench.DefaultTokenLo, bench.DefaultTokenHi), "random dataset: token ids LO:HI (half-open) used in prompts; for --model tiny use e.g. 10:512")
	sharegptOut := fs.Int("sharegpt-output-len", 0, "ShareGPT: fixed max_tokens (default: about the recorded answer's length)")
	rate := fs.String("request-rate", "inf", "requests per second (inf: all at once)")
	burstiness := fs.Float64("burstiness", 1, "Gamma shape of inter-arrival times: 1 Poisson, <1 burstier, >1 more regular")
	maxConc := fs.Int("max-concurrency", 0, "most requests in flight (0: no cap)")
	ignoreEOS := fs.Bool("ignore-eos", false, "ask the server to generate max_tokens tokens (vLLM's ignore_eos)")
	seed := fs.Uint64("seed", 0, "random seed of the dataset and the arrivals")
	var goodput multiFlag
	fs.Var(&goodput, "goodput", `SLOs as "ttft:MS tpot:MS e2el:MS" (vLLM form accepted: --goodput ttft:500 tpot:50)`)
	percentiles := fs.String("metric-percentiles", "99", "comma-separated percentiles to report")
	resultJSON := fs.String("result-json", "", "write the result JSON (vLLM key names) to FILE")
	chart := fs.String("chart", "", "write a self-contained HTML chart (latency CDFs, throughput) to FILE")
	noBar := fs.Bool("disable-tqdm", false, "no progress bar")
	ready := fs.Int("ready-check-timeout-sec", 600, "retry the first prompt until it succeeds for up to this many seconds (0: skip)")
	warmups := fs.Int("num-warmups", 0, "warm-up requests before the measured run")
	apiKey := fs.String("api-key", os.Getenv("OPENAI_API_KEY"), "bearer token (default $OPENAI_API_KEY)")
	if err := fs.Parse(joinGoodput(args)); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}

	cfg := bench.Config{
		BaseURL: *baseURL, Endpoint: *endpoint, Model: *model, Burstiness: *burstiness,
		MaxConcurrency: *maxConc, IgnoreEOS: *ignoreEOS, Seed: *seed, APIKey: *apiKey,
		ReadyTimeout: time.Duration(*ready) * time.Second, NumWarmups: *warmups,
	}
	if cfg.BaseURL == "" {
		cfg.BaseURL = fmt.Sprintf("http://%s:%d", *host, *port)
	}
	r, err := strconv.ParseFloat(*rate, 64)
	if err != nil {
		return fmt.Errorf("--request-rate: %q is not a number or inf", *rate)
	}
	cfg.RequestRate = r
	for _, p := range strings.Split(*percentiles, ",") {
		v, err := strconv.ParseFloat(strings.TrimSpace(p), 64)
		if err != nil {
			return fmt.Errorf("--metric-percentiles: %q is not a number", p)
		}
		cfg.Percentiles = append(cfg.Percentiles, v)
	}
	if cfg.Goodput, err = bench.ParseGoodput(goodput); err != nil {
		return err
	}
	if !*noBar {
		cfg.Progress = stderr
	}

	rng := rand.New(rand.NewPCG(*seed, 0x64617461))
	name := *datasetName
	if name == "" {
		name = "random"
		if *datasetPath != "" {
			name = "sharegpt"
		}
	}
	var reqs []bench.SampleRequest
	switch name {
	case "random":
		lo, hi, ok := strings.Cut(*tokenRange, ":")
		tlo, err1 := strconv.Atoi(lo)
		thi, err2 := strconv.Atoi(hi)
		if !ok || err1 != nil || err2 != nil {
			return fmt.Errorf("--random-token-range: %q is not LO:HI", *tokenRange)
		}
		reqs, err = bench.RandomDataset(bench.RandomOptions{
			NumPrompts: *numPrompts, InputLen: *inLen, OutputLen: *outLen, RangeRatio: *ratio,
			PrefixLen: *prefixLen, TokenLo: tlo, TokenHi: thi,
		}, rng)
	case "sharegpt":
		if *datasetPath == "" {
			return fmt.Errorf("--dataset-name sharegpt needs --dataset-path")
		}
		reqs, err = bench.LoadShareGPT(bench.ShareGPTOptions{Path: *datasetPath, NumPrompts: *numPrompts, OutputLen: *sharegptOut}, rng)
	default:
		return fmt.Errorf("--dataset-name: %q (want random or sharegpt)", name)
	}
	if err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	fmt.Fprintf(stderr, "Traffic request rate: %s\nBurstiness factor: %g\nMaximum request concurrency: %d\n", *rate, *burstiness, *maxConc)
	res, err := bench.Run(ctx, cfg, reqs)
	if err != nil {
		return err
	}
	if err := res.Report(stdout); err != nil {
		return err
	}
	if *resultJSON != "" {
		if err := res.WriteJSON(*resultJSON); err != nil {
			return err
		}
	}
	if *chart != "" {
		f, err := os.Create(*chart)
		if err != nil {
			return fmt.Errorf("--chart: %w", err)
		}
		if err := bench.WriteChart(f, res); err != nil {
			f.Close()
			return err
		}
		if err := f.Close(); err != nil {
			return fmt.Errorf("--chart: %w", err)
		}
	}
	if res.Metrics.Completed == 0 {
		return fmt.Errorf("every request failed (first error: %s)", res.Outputs[0].Error)
	}
	return nil
}
