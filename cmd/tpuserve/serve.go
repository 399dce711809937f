package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/pkg/core/dtypes"

	"github.com/tpuserve/tpuserve/engine"
	"github.com/tpuserve/tpuserve/engine/grammar"
	"github.com/tpuserve/tpuserve/internal/plan"
	"github.com/tpuserve/tpuserve/kvcache"
	"github.com/tpuserve/tpuserve/model"
	"github.com/tpuserve/tpuserve/model/quant"
	"github.com/tpuserve/tpuserve/server"
	"github.com/tpuserve/tpuserve/tokenizer"
)

func init() {
	register("serve", "serve the OpenAI-compatible HTTP API and gRPC (default: the built-in tiny demo model on the CPU)", runServe)
}

// serveOptions are the serve command's settings: flags, each also read from the
// environment as TPUSERVE_<FLAG> (upper case, dashes as underscores) when not given.
type serveOptions struct {
	model, tokenizerDir, backend, dtype   string
	host                                  string
	port, grpcPort                        int
	servedModelName                       string
	maxModelLen, maxNumSeqs, maxBatched   int
	kvCacheMemory, deviceMemory           string
	apiKey                                string
	tensorParallel, maxQueueLen, pageSize int
	shutdownTimeout                       time.Duration
	seed                                  uint64
	precompile                            string
	quantization                          string
	kvCacheDType                          string
	minTokenBucket                        int
	disablePrefixCaching                  bool
	logLevel                              string
	schedulingPolicy, generationConfig    string
	pjrtAutoInstall                       bool
	idleTimeout, bodyReadTimeout          time.Duration
	speculativeConfig                     string
	images                                imageOptions
}

func serveFlags(stderr io.Writer) (*flag.FlagSet, *serveOptions) {
	o := &serveOptions{}
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.model, "model", "tiny", "checkpoint directory, or a preset with seeded random weights ("+strings.Join(model.PresetNames(), ", ")+")")
	fs.StringVar(&o.tokenizerDir, "tokenizer", defaultTokenizerDir(), "tokenizer directory (tokenizer.json and tokenizer_config.json) or a tokenizer.json file (default: the model directory, else .cache/tokenizer)")
	fs.StringVar(&o.backend, "backend", "go", "compute backend: go (pure-Go CPU), xla:cpu, xla:cuda, xla:tpu or xla:/abs/plugin.so")
	fs.StringVar(&o.dtype, "dtype", "f32", "compute dtype: f32 or bf16")
	fs.StringVar(&o.host, "host", server.DefaultHost, "HTTP listen host")
	fs.IntVar(&o.port, "port", server.DefaultPort, "HTTP port")
	fs.IntVar(&o.grpcPort, "grpc-port", server.DefaultGRPCPort, "gRPC port (negative: off)")
	fs.StringVar(&o.servedModelName, "served-model-name", "", "model name(s) clients use, comma-separated (default: the --model value)")
	fs.IntVar(&o.maxModelLen, "max-model-len", 2048, "most tokens (prompt + output) per request")
	fs.IntVar(&o.maxNumSeqs, "max-num-seqs", 32, "most requests running at once")
	fs.IntVar(&o.maxBatched, "max-num-batched-tokens", 512, "most tokens computed in one step")
	fs.StringVar(&o.kvCacheMemory, "kv-cache-memory", "256MiB", "device memory for the KV cache (e.g. 4GiB); ignored with --device-memory")
	fs.StringVar(&o.deviceMemory, "device-memory", "", "memory of one device (e.g. 16GiB): size the KV cache from the memory plan (weights, activations, workspace) and refuse what cannot fit")
	fs.StringVar(&o.apiKey, "api-key", "", "require 'Authorization: Bearer KEY' on /v1/* and gRPC")
	fs.IntVar(&o.tensorParallel, "tensor-parallel-size", 1, "devices to split the model over (see docs/tpu.md)")
	fs.IntVar(&o.maxQueueLen, "max-queue-len", 0, "most waiting requests before 429 (default 4 × max-num-seqs)")
	fs.IntVar(&o.pageSize, "block-size", 16, "tokens per KV cache block")
	fs.DurationVar(&o.shutdownTimeout, "shutdown-timeout", server.DefaultShutdownTimeout, "how long in-flight requests may finish after SIGTERM")
	fs.Uint64Var(&o.seed, "seed", 0, "seed of a preset's random weights")
	fs.StringVar(&o.precompile, "precompile", engine.PrecompileAll, "compile the whole program set at start-up (all), or each program on first use (none: development only)")
	fs.StringVar(&o.quantization, "quantization", "", "weights: int8 (W8A8), int8-weight-only, fp8, fp8-weight-only or none (default: the checkpoint's quantization_config, else none)")
	fs.StringVar(&o.kvCacheDType, "kv-cache-dtype", "auto", "KV cache storage: auto (the compute dtype), int8 or fp8 (1 byte per element and a scale per position and kv head: about twice the tokens in the same memory; see docs/quantization.md); not with --tensor-parallel-size > 1")
	fs.IntVar(&o.minTokenBucket, "min-token-bucket", 0, "smallest token bucket of the program set (default: 1 on the CPU, 16 on accelerators)")
	fs.BoolVar(&o.disablePrefixCaching, "no-enable-prefix-caching", false, "turn the prefix cache off")
	fs.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&o.schedulingPolicy, "scheduling-policy", "fcfs", "fcfs (arrival order; a request with a non-zero priority is refused) or priority (lower priority values first)")
	fs.StringVar(&o.generationConfig, "generation-config", "auto", "sampling defaults for what requests leave out: auto (the checkpoint's generation_config.json), vllm (vLLM's defaults) or a directory with a generation_config.json")
	fs.StringVar(&o.speculativeConfig, "speculative-config", "", `speculative decoding as vLLM's JSON, e.g. {"method":"ngram","num_speculative_tokens":4,"prompt_lookup_max":4,"prompt_lookup_min":2} (prompt lookup; a draft model not with --tensor-parallel-size > 1)`)
	fs.BoolVar(&o.pjrtAutoInstall, "pjrt-auto-install", false, "let an xla: backend download a missing PJRT plugin (off: TPU nodes often have no internet access)")
	fs.DurationVar(&o.idleTimeout, "idle-timeout", server.DefaultIdleTimeout, "close keep-alive HTTP connections idle this long")
	fs.DurationVar(&o.bodyReadTimeout, "body-read-timeout", server.DefaultBodyReadTimeout, "most time a client may take to send a request body (slower: 408)")
	fs.StringVar(&o.images.allowedMediaDomains, "allowed-media-domains", "", "hosts whose http(s) image URLs may be fetched, comma-separated (default: none, data URLs only)")
	fs.StringVar(&o.images.limitMMPerPrompt, "limit-mm-per-prompt", "", `most images per prompt, as {"image": N} (default 16; 0 refuses images)`)
	fs.StringVar(&o.images.imageMask, "image-mask", model.ImageMaskHF453, "attention among image tokens: "+model.ImageMaskHF453+" (transformers 4.53, the reference: image tokens within mm_tokens_per_image positions) or "+model.ImageMaskPerImage+" (within each image only)")
	fs.IntVar(&o.images.maxImagesPerStep, "max-images-per-step", 4, "most images one engine step encodes (sizes every step program's image input)")
	fs.Int64Var(&o.images.maxImageBytes, "max-image-bytes", server.DefaultMaxImageBytes, "largest encoded image accepted, data URL or fetched")
	return fs, o
}

// defaultTokenizerDir is where `make tokenizer` puts the real tokenizer.
func defaultTokenizerDir() string {
	return envOr("TPUSERVE_TOKENIZER_DIR", filepath.Join(".cache", "tokenizer"))
}

// applyEnv sets every flag not given on the command line from TPUSERVE_<NAME>.
func applyEnv(fs *flag.FlagSet) error {
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if given[f.Name] || err != nil {
			return
		}
		env := "TPUSERVE_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := os.LookupEnv(env); ok && v != "" {
			if e := fs.Set(f.Name, v); e != nil {
				err = fmt.Errorf("%s=%q: %w", env, v, e)
			}
		}
	})
	return err
}

func runServe(args []string, _ io.Reader, _, stderr io.Writer) error {
	fs, o := serveFlags(stderr)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if err := applyEnv(fs); err != nil {
		return err
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	slog.SetDefault(log)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return serve(ctx, o, log, nil)
}

// validateServeOptions refuses settings that would otherwise be replaced by a default or
// fail deep inside the engine, naming the flag.
func validateServeOptions(o *serveOptions) error {
	var errs []error
	positive := []struct {
		flag string
		v    int
	}{
		{"--max-num-seqs", o.maxNumSeqs}, {"--max-num-batched-tokens", o.maxBatched}, {"--max-model-len", o.maxModelLen},
		{"--block-size", o.pageSize}, {"--tensor-parallel-size", o.tensorParallel},
	}
	for _, f := range positive {
		if f.v <= 0 {
			errs = append(errs, fmt.Errorf("%s %d must be > 0", f.flag, f.v))
		}
	}
	if o.maxNumSeqs > 0 && o.maxBatched > 0 && o.maxBatched < o.maxNumSeqs {
		errs = append(errs, fmt.Errorf("--max-num-batched-tokens %d must be >= --max-num-seqs %d (every running request decodes a token per step)", o.maxBatched, o.maxNumSeqs))
	}
	if m := o.images.imageMask; m != model.ImageMaskHF453 && m != model.ImageMaskPerImage {
		errs = append(errs, fmt.Errorf("--image-mask %q must be %s or %s", m, model.ImageMaskHF453, model.ImageMaskPerImage))
	}
	if o.images.maxImagesPerStep <= 0 {
		errs = append(errs, fmt.Errorf("--max-images-per-step %d must be > 0", o.images.maxImagesPerStep))
	}
	if _, err := parseLimitMM(o.images.limitMMPerPrompt); err != nil {
		errs = append(errs, err)
	}
	if o.maxQueueLen < -1 {
		errs = append(errs, fmt.Errorf("--max-queue-len %d must be >= 0 (0: 4 × max-num-seqs), or -1 for no limit", o.maxQueueLen))
	}
	if o.port < 0 || o.port > 65535 {
		errs = append(errs, fmt.Errorf("--port %d is not a TCP port", o.port))
	}
	if o.grpcPort > 65535 {
		errs = append(errs, fmt.Errorf("--grpc-port %d is not a TCP port", o.grpcPort))
	}
	for _, d := range []struct {
		flag string
		v    time.Duration
	}{{"--shutdown-timeout", o.shutdownTimeout}, {"--idle-timeout", o.idleTimeout}, {"--body-read-timeout", o.bodyReadTimeout}} {
		if d.v <= 0 {
			errs = append(errs, fmt.Errorf("%s %s must be > 0", d.flag, d.v))
		}
	}
	if m, err := model.ParseKVCacheDType(o.kvCacheDType); err != nil {
		errs = append(errs, fmt.Errorf("--kv-cache-dtype: %w", err))
	} else if m.Quantized() && o.tensorParallel > 1 {
		errs = append(errs, fmt.Errorf("--kv-cache-dtype %s: a quantized KV cache is not supported with --tensor-parallel-size %d", o.kvCacheDType, o.tensorParallel))
	}
	if o.schedulingPolicy != "fcfs" && o.schedulingPolicy != "priority" {
		errs = append(errs, fmt.Errorf("--scheduling-policy %q: want fcfs or priority", o.schedulingPolicy))
	}
	if o.generationConfig == "" {
		errs = append(errs, errors.New("--generation-config: want auto, vllm or a directory"))
	}
	if o.speculativeConfig != "" {
		if sc, err := engine.ParseSpeculativeConfig(o.speculativeConfig); err != nil {
			errs = append(errs, fmt.Errorf("--speculative-config: %w", err))
		} else if sc.Method == engine.SpecMethodDraftModel && o.tensorParallel > 1 {
			errs = append(errs, fmt.Errorf("--speculative-config: a draft model is not supported with --tensor-parallel-size %d (method ngram is)", o.tensorParallel))
		}
	}
	return errors.Join(errs...)
}

// modelConfig reads the model's configuration without its weights: config.json of a
// checkpoint directory, or a preset.
func modelConfig(name string) (model.Config, error) {
	if isDirWith(name, "config.json") {
		return model.LoadConfig(name)
	}
	if st, err := os.Stat(name); err == nil && st.IsDir() {
		return model.Config{}, fmt.Errorf("--model %s: the directory has no config.json", name)
	}
	cfg, err := model.Preset(name)
	if err != nil {
		return model.Config{}, fmt.Errorf("--model %q is neither a checkpoint directory nor a preset: %w", name, err)
	}
	return cfg, nil
}

// checkVocab compares the tokenizer with the embedding's rows before the weights load. A
// tokenizer with more ids is accepted when every extra id is a special token (Gemma 3's
// <image_soft_token>, id 262144, beyond a text-only checkpoint's 262,144 rows): plain text
// does not produce them, and a prompt that does is refused with 400 naming the id.
func checkVocab(tok *tokenizer.Tokenizer, rows int, log *slog.Logger) error {
	n := tok.VocabSize()
	if n <= rows {
		return nil
	}
	var extra []string
	for id := rows; id < n; id++ {
		if !tok.IsSpecial(int32(id)) {
			piece, _ := tok.TokenString(int32(id))
			return fmt.Errorf("the tokenizer has %d tokens but the model only %d embedding rows, and id %d (%q) is not a special token", n, rows, id, piece)
		}
		if len(extra) < 4 {
			piece, _ := tok.TokenString(int32(id))
			extra = append(extra, piece)
		}
	}
	log.Warn("the tokenizer has special tokens beyond the model's embedding rows; prompts containing them are refused",
		"tokenizer_vocab", n, "embedding_rows", rows, "extra_tokens", extra)
	return nil
}

// generationDefaults resolves --generation-config: auto reads the checkpoint's
// generation_config.json (none for a preset), vllm keeps vLLM's defaults, anything else is
// a directory holding a generation_config.json.
func generationDefaults(o *serveOptions, log *slog.Logger) (server.GenerationDefaults, error) {
	dir := o.generationConfig
	switch dir {
	case "vllm":
		return server.GenerationDefaults{}, nil
	case "auto":
		dir = o.model
		if !isDirWith(dir, model.GenerationConfigFile) {
			return server.GenerationDefaults{}, nil
		}
	default:
		if !isDirWith(dir, model.GenerationConfigFile) {
			return server.GenerationDefaults{}, fmt.Errorf("--generation-config %s: no %s there", dir, model.GenerationConfigFile)
		}
	}
	gc, err := model.LoadGenerationConfig(dir)
	if err != nil {
		return server.GenerationDefaults{}, fmt.Errorf("--generation-config %s: %w", o.generationConfig, err)
	}
	d := server.GenerationDefaults{Temperature: gc.Temperature, TopK: gc.TopK, TopP: gc.TopP, MinP: gc.MinP,
		RepetitionPenalty: gc.RepetitionPenalty, MaxTokens: gc.MaxNewTokens}
	if !d.IsZero() {
		log.Info("default sampling parameters come from the checkpoint's generation_config.json (--generation-config vllm for vLLM's)",
			"dir", dir, "defaults", d)
	}
	return d, nil
}

// serve builds everything from the options and serves until ctx ends. The ports are bound
// before the model loads (a port in use fails at once; /health answers 503 and gRPC health
// NOT_SERVING while it loads). ready, if not nil, receives the server once its engine is
// ready (tests use it).
func serve(ctx context.Context, o *serveOptions, log *slog.Logger, ready func(*server.Server)) error {
	log.Info("tpuserve starting", "version", version, "model", o.model, "tokenizer", o.tokenizerDir,
		"backend", o.backend, "dtype", o.dtype, "host", o.host, "port", o.port, "grpc_port", o.grpcPort,
		"max_model_len", o.maxModelLen, "max_num_seqs", o.maxNumSeqs, "max_num_batched_tokens", o.maxBatched,
		"kv_cache_memory", o.kvCacheMemory, "kv_cache_dtype", o.kvCacheDType, "tensor_parallel_size", o.tensorParallel, "block_size", o.pageSize,
		"max_queue_len", o.maxQueueLen, "shutdown_timeout", o.shutdownTimeout, "prefix_caching", !o.disablePrefixCaching,
		"api_key_set", o.apiKey != "", "precompile", o.precompile, "scheduling_policy", o.schedulingPolicy,
		"generation_config", o.generationConfig, "speculative_config", o.speculativeConfig)
	if err := validateServeOptions(o); err != nil {
		return err
	}
	model.SetPJRTAutoInstall(o.pjrtAutoInstall)
	dtype, err := model.ParseDType(o.dtype)
	if err != nil {
		return err
	}
	mcfg, err := modelConfig(o.model)
	if err != nil {
		return err
	}
	kvBytes, err := kvBudget(o, dtype, log)
	if err != nil {
		return err
	}
	tokPath := o.tokenizerDir
	if tokPath == defaultTokenizerDir() && isDirWith(o.model, "tokenizer.json") {
		tokPath = o.model // a checkpoint that ships its tokenizer
	}
	t0 := time.Now()
	tok, err := loadTokenizer(tokPath)
	if err != nil {
		return fmt.Errorf("--tokenizer %s (run `make tokenizer` to fetch Gemma 3's): %w", tokPath, err)
	}
	log.Info("tokenizer loaded", "path", tokPath, "vocab", tok.VocabSize(), "elapsed", time.Since(t0).Round(time.Millisecond))
	if err := checkVocab(tok, mcfg.VocabSize, log); err != nil {
		return err
	}
	defaults, err := generationDefaults(o, log)
	if err != nil {
		return err
	}
	names := []string{}
	for _, n := range strings.Split(o.servedModelName, ",") {
		if n = strings.TrimSpace(n); n != "" {
			names = append(names, n)
		}
	}
	if len(names) == 0 {
		names = []string{o.model}
	}
	queueLen := o.maxQueueLen
	if queueLen == 0 {
		queueLen = 4 * o.maxNumSeqs // the engine's default
	}
	cfg := server.DefaultConfig()
	cfg.Host, cfg.Port, cfg.GRPCPort = o.host, o.port, o.grpcPort
	cfg.ServedModelNames, cfg.ModelRoot, cfg.MaxModelLen = names, o.model, o.maxModelLen
	cfg.APIKey, cfg.ShutdownTimeout, cfg.Version, cfg.Logger = o.apiKey, o.shutdownTimeout, version, log
	cfg.IdleTimeout, cfg.BodyReadTimeout = o.idleTimeout, o.bodyReadTimeout
	// Prompt ids must have an embedding row.
	cfg.VocabSize = min(tok.VocabSize(), mcfg.VocabSize)
	if queueLen > 0 {
		cfg.QueueCapacity = o.maxNumSeqs + queueLen
	}
	cfg.PriorityScheduling = o.schedulingPolicy == "priority"
	cfg.Defaults = defaults
	// Structured outputs: grammars over the tokenizer's vocabulary, compiled once per
	// schema text (an LRU of compiled grammars).
	t0 = time.Now()
	vocab, err := grammar.VocabularyFromTokenizer(tok)
	if err != nil {
		return fmt.Errorf("structured outputs: %w", err)
	}
	vocab.Warm()
	cfg.Grammars = grammar.NewCache(vocab, 256)
	log.Info("structured outputs ready", "vocab", vocab.Size(), "elapsed", time.Since(t0).Round(time.Millisecond))
	vcfg, err := setupImages(o, &mcfg, tok, &cfg, log)
	if err != nil {
		return err
	}
	srv, err := server.New(cfg, nil, tokenizerAdapter{tok})
	if err != nil {
		return err
	}
	if err := srv.Listen(); err != nil {
		return err
	}
	serveCtx, stopServing := context.WithCancel(ctx)
	defer stopServing()
	served := make(chan error, 1)
	go func() { served <- srv.Serve(serveCtx) }()
	// fail stops the server (it answered 503 while loading) and reports err.
	fail := func(err error) error {
		stopServing()
		<-served
		return err
	}

	backend, err := model.NewBackend(o.backend)
	if err != nil {
		return fail(err)
	}
	ecfg := engine.Config{}
	var mc *model.Config
	loadOpts := model.LoadOptions{Model: o.model, DType: dtype, Seed: o.seed, Quantization: o.quantization}
	if o.tensorParallel == 1 {
		m, err := model.Load(backend, loadOpts)
		if err != nil {
			return fail(err)
		}
		defer m.Close()
		ecfg.Model, mc = m, &m.Config
	} else {
		m, err := model.LoadShardedModel(backend, loadOpts, o.tensorParallel)
		if err != nil {
			return fail(err)
		}
		defer m.Close()
		ecfg.Sharded, mc = m, &m.Config
	}
	if vcfg != nil {
		// The tower is replicated under tensor parallelism (see docs/perf-vision.md).
		enc, err := loadVisionTower(o, backend, dtype, mc, vcfg)
		if err != nil {
			return fail(err)
		}
		defer enc.Close()
		ecfg.Vision, ecfg.MaxImagesPerStep = enc, o.images.maxImagesPerStep
	}
	// Rows beyond the tokenizer's vocabulary (multimodal padding) are never sampled.
	mc.TextVocabSize = min(mc.TextVocabSize, tok.VocabSize())
	// Instruction-tuned Gemma 3 stops on <eos> and <end_of_turn>.
	for _, id := range tok.StopIDs() {
		if int(id) < mc.VocabSize && !containsInt(mc.EOSTokenIDs, int(id)) {
			mc.EOSTokenIDs = append(mc.EOSTokenIDs, int(id))
		}
	}
	policy := engine.PolicyFCFS
	if o.schedulingPolicy == "priority" {
		policy = engine.PolicyPriority
	}
	minTokens := o.minTokenBucket
	if minTokens == 0 {
		minTokens = plan.DefaultMinTokens(o.backend)
	}
	var spec *engine.SpeculativeConfig
	var draft *model.Model
	if o.speculativeConfig != "" {
		if spec, err = engine.ParseSpeculativeConfig(o.speculativeConfig); err != nil {
			return fail(fmt.Errorf("--speculative-config: %w", err))
		}
		if spec.Method == engine.SpecMethodDraftModel {
			if draft, err = loadDraft(backend, spec.Model, mc, dtype, o.seed, tok, log); err != nil {
				return fail(fmt.Errorf("--speculative-config: %w", err))
			}
			defer draft.Close()
		}
	}
	t0 = time.Now()
	eng, err := engine.New(engine.Config{
		Model:      ecfg.Model,
		Sharded:    ecfg.Sharded,
		NewDecoder: func(skip bool) engine.StreamDecoder { return tok.NewStreamDecoder(skip) },
		Scheduler: engine.SchedulerConfig{
			MaxNumSeqs: o.maxNumSeqs, MaxNumBatchedTokens: o.maxBatched, MaxModelLen: o.maxModelLen, Policy: policy, Logger: log,
		},
		PageSize: o.pageSize, KVCacheBytes: kvBytes, KVCacheDType: o.kvCacheDType, DisablePrefixCaching: o.disablePrefixCaching,
		MaxQueueLen: o.maxQueueLen, Precompile: o.precompile, Logger: log, MinTokenBucket: minTokens,
		Speculative: spec, DraftModel: draft,
		Vision: ecfg.Vision, MaxImagesPerStep: ecfg.MaxImagesPerStep,
	})
	if err != nil {
		if spec != nil {
			err = fmt.Errorf("%w (--speculative-config %s)", err, o.speculativeConfig)
		}
		return fail(err)
	}
	defer eng.Close()
	log.Info("engine ready", "elapsed", time.Since(t0).Round(time.Millisecond))
	if ctx.Err() != nil {
		return <-served // stopped while loading
	}
	if err := srv.SetEngine(engineAdapter{eng}); err != nil {
		return fail(err)
	}
	if ready != nil {
		ready(srv)
	}
	return <-served
}

// kvBudget is the KV cache bytes per device: from the memory plan when --device-memory is
// given (refusing a configuration that cannot fit, with the numbers), else --kv-cache-memory.
func kvBudget(o *serveOptions, dtype dtypes.DType, log *slog.Logger) (int64, error) {
	if o.deviceMemory == "" {
		// On xla the chips are devices and the plan sizes each one's cache; the pure-Go
		// backend runs them side by side on a virtual mesh (tests and demos), each with
		// --kv-cache-memory of cache.
		if o.tensorParallel > 1 && strings.HasPrefix(o.backend, "xla") {
			return 0, fmt.Errorf("--tensor-parallel-size %d needs --device-memory (one device's memory, e.g. 16GiB) to plan the split", o.tensorParallel)
		}
		b, err := plan.ParseByteSize(o.kvCacheMemory)
		if err != nil {
			return 0, fmt.Errorf("--kv-cache-memory: %w", err)
		}
		return b, nil
	}
	mem, err := plan.ParseByteSize(o.deviceMemory)
	if err != nil {
		return 0, fmt.Errorf("--device-memory: %w", err)
	}
	cfg, err := modelConfig(o.model)
	if err != nil {
		return 0, err
	}
	// The weights the loader will place: the checkpoint's quantization_config as
	// --quantization resolves it (the plan then counts 1 byte per quantized parameter and
	// the scales).
	if cfg.Quantization, err = quant.Resolve(cfg.Quantization, o.quantization); err != nil {
		return 0, fmt.Errorf("--quantization: %w", err)
	}
	format := model.FormatBF16
	if dtype == dtypes.Float32 {
		format = model.FormatF32
	}
	specTokens := 0
	if sp, err := engine.ParseSpeculativeConfig(o.speculativeConfig); o.speculativeConfig != "" && err == nil {
		specTokens = sp.NumSpeculativeTokens
	}
	if sp, err := engine.ParseSpeculativeConfig(o.speculativeConfig); o.speculativeConfig != "" && err == nil && sp.Method == engine.SpecMethodDraftModel {
		// The draft's weights sit beside the target's (its activations are smaller than
		// the target's and run after them; its KV pools share the KV budget, see engine).
		dcfg, err := modelConfig(sp.Model)
		if err != nil {
			return 0, fmt.Errorf("--speculative-config draft model: %w", err)
		}
		draftBytes := dcfg.NumParams() * int64(dtype.Size())
		if draftBytes >= mem {
			return 0, fmt.Errorf("--speculative-config: the draft model %s (%s of weights) does not fit the device memory %s", sp.Model, plan.FormatBytes(draftBytes), plan.FormatBytes(mem))
		}
		log.Info("memory plan: the draft model's weights", "model", sp.Model, "bytes", plan.FormatBytes(draftBytes))
		mem -= draftBytes
	}
	mopts := plan.MemoryOptions{
		TP: o.tensorParallel, DeviceMemoryBytes: mem, Format: format, MaxModelLen: o.maxModelLen,
		MaxNumSeqs: o.maxNumSeqs, MaxNumBatchedTokens: o.maxBatched, PageSize: o.pageSize, KVCacheDType: o.kvCacheDType,
		SpecTokens: specTokens,
	}
	if err := planVision(o, &cfg, dtype, &mopts); err != nil {
		return 0, err
	}
	mp, err := plan.PlanMemory(&cfg, mopts)
	if err != nil {
		return 0, fmt.Errorf("memory plan (tpuserve plan shows it in full): %w", err)
	}
	log.Info("memory plan per device", "device", plan.FormatBytes(mem), "weights", plan.FormatBytes(mp.WeightBytesPerChip),
		"activations", plan.FormatBytes(mp.Activations.Peak), "workspace", plan.FormatBytes(mp.WorkspaceBytes),
		"kv_cache", plan.FormatBytes(mp.KVBytesPerChip), "kv_tokens", mp.KVTokens)
	return mp.KVBytesPerChip, nil
}

// loadDraft loads the draft model of --speculative-config (a checkpoint directory or a
// preset with seeded random weights) and refuses one whose tokenizer differs from the
// target's: a checkpoint's own tokenizer.json must have the same pieces.
func loadDraft(backend backends.Backend, name string, target *model.Config, dtype dtypes.DType, seed uint64, tok *tokenizer.Tokenizer, log *slog.Logger) (*model.Model, error) {
	// The vocabulary first, from the config alone: a mismatch is refused before loading.
	dcfg, err := modelConfig(name)
	if err != nil {
		return nil, fmt.Errorf("draft model: %w", err)
	}
	if dcfg.VocabSize != target.VocabSize {
		return nil, fmt.Errorf("draft model %s: its vocabulary has %d rows, the target's %d: the draft must share the target's tokenizer", name, dcfg.VocabSize, target.VocabSize)
	}
	if isDirWith(name, "tokenizer.json") {
		dt, err := loadTokenizer(name)
		if err != nil {
			return nil, fmt.Errorf("draft model %s: its tokenizer: %w", name, err)
		}
		if err := sameTokenizer(tok, dt); err != nil {
			return nil, fmt.Errorf("draft model %s: %w", name, err)
		}
	}
	t0 := time.Now()
	m, err := model.Load(backend, model.LoadOptions{Model: name, DType: dtype, Seed: seed})
	if err != nil {
		return nil, fmt.Errorf("draft model %s: %w", name, err)
	}
	// As the target's: rows beyond the tokenizer are never proposed.
	m.Config.TextVocabSize = min(m.Config.TextVocabSize, tok.VocabSize())
	log.Info("draft model loaded", "model", name, "params", m.Config.NumParams(), "elapsed", time.Since(t0).Round(time.Millisecond))
	return m, nil
}

// sameTokenizer reports how two tokenizers differ, if they do.
func sameTokenizer(a, b *tokenizer.Tokenizer) error {
	if a.VocabSize() != b.VocabSize() {
		return fmt.Errorf("its tokenizer has %d tokens, the target's %d", b.VocabSize(), a.VocabSize())
	}
	for id := int32(0); int(id) < a.VocabSize(); id++ {
		pa, _ := a.TokenString(id)
		pb, _ := b.TokenString(id)
		if pa != pb {
			return fmt.Errorf("its tokenizer's token %d is %q, the target's %q", id, pb, pa)
		}
	}
	return nil
}

func isDirWith(dir, file string) bool {
	fi, err := os.Stat(filepath.Join(dir, file))
	return err == nil && !fi.IsDir()
}

func containsInt(xs []int, x int) bool {
	for _, v := range xs {
		if v == x {
			return true
		}
	}
	return false
}

// engineAdapter maps the engine's errors onto the server's classes (429, 400, 503).
type engineAdapter struct{ e *engine.Engine }

func (a engineAdapter) Submit(ctx context.Context, req engine.Request) (<-chan engine.Event, error) {
	ch, err := a.e.Submit(ctx, req)
	switch {
	case err == nil:
		return ch, nil
	case errors.Is(err, engine.ErrQueueFull):
		return nil, fmt.Errorf("%w: %w", server.ErrQueueFull, err)
	case errors.Is(err, kvcache.ErrKVCacheFull):
		return nil, fmt.Errorf("%w: %w", server.ErrRequestTooLarge, err)
	case errors.Is(err, engine.ErrInvalidRequest), errors.Is(err, engine.ErrPromptTooLong):
		return nil, fmt.Errorf("%w: %w", server.ErrInvalidRequest, err)
	case errors.Is(err, engine.ErrClosed):
		return nil, fmt.Errorf("%w: %w", server.ErrShuttingDown, err)
	}
	return nil, err
}

func (a engineAdapter) Stats() engine.Stats { return a.e.Stats() }

// SetStepObserver feeds vllm:iteration_tokens_total from the engine's steps.
func (a engineAdapter) SetStepObserver(f func(int)) { a.e.SetStepObserver(f) }

// Health makes /health and the gRPC health checks follow the engine.
func (a engineAdapter) Health() error { return a.e.Health() }

// tokenizerAdapter gives the server the tokenizer with the server's chat message type.
type tokenizerAdapter struct{ *tokenizer.Tokenizer }

func (a tokenizerAdapter) ApplyChatTemplate(msgs []server.ChatMessage, addGenerationPrompt bool) (string, error) {
	return a.Tokenizer.ApplyChatTemplate(tokenizerMessages(msgs), addGenerationPrompt)
}

// ApplyToolChatTemplate renders chats with tools, tool calls and tool results.
func (a tokenizerAdapter) ApplyToolChatTemplate(msgs []server.ChatMessage, tools [][]byte, addGenerationPrompt bool) (string, error) {
	return a.Tokenizer.ApplyToolChatTemplate(tokenizerMessages(msgs), tools, addGenerationPrompt)
}

func tokenizerMessages(msgs []server.ChatMessage) []tokenizer.Message {
	out := make([]tokenizer.Message, len(msgs))
	for i, m := range msgs {
		out[i] = tokenizer.Message{Role: m.Role, Content: m.Content}
		if m.Parts != nil {
			out[i].Parts = make([]tokenizer.ContentPart, len(m.Parts))
			for j, p := range m.Parts {
				out[i].Parts[j] = tokenizer.ContentPart{Type: p.Type, Text: p.Text}
			}
		}
		for _, c := range m.ToolCalls {
			out[i].ToolCalls = append(out[i].ToolCalls, tokenizer.ToolCall{Name: c.Name, Arguments: c.Arguments})
		}
	}
	return out
}
