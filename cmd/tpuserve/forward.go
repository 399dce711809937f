package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"

	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/tpuserve/tpuserve/model"
)

func init() {
	register("forward", "run one sequence through the model and write its logits [T, V] as safetensors", runForward)
}

func runForward(args []string, _ io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("forward", flag.ContinueOnError)
	fs.SetOutput(stderr)
	modelSpec := fs.String("model", "tiny", "checkpoint directory, or a preset with random weights: "+strings.Join(model.PresetNames(), ", "))
	tokensFlag := fs.String("tokens", "", "comma-separated token ids, e.g. 2,17,9 (required)")
	dtypeFlag := fs.String("dtype", "f32", "compute dtype: f32 or bf16")
	backendFlag := fs.String("backend", envOr("TPUSERVE_BACKEND", "go"), "go, xla:cpu, xla:cuda, xla:tpu or xla:/abs/plugin.so")
	seed := fs.Uint64("seed", 0, "seed of a preset's random weights")
	quantization := fs.String("quantization", "", "override the checkpoint's quantization_config: none, int8 (W8A8), int8-weight-only, fp8 (FP8-dynamic), fp8-weight-only (default: the checkpoint's own, else none)")
	out := fs.String("out", "", "output file (.safetensors) for tensor `logits` [T, V] float32 (required)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if *out == "" || *tokensFlag == "" {
		return errors.New("--tokens and --out are required")
	}
	ids, err := parseTokenList(*tokensFlag)
	if err != nil {
		return err
	}
	dtype, err := model.ParseDType(*dtypeFlag)
	if err != nil {
		return err
	}
	backend, err := model.NewBackend(*backendFlag)
	if err != nil {
		return err
	}
	m, err := model.Load(backend, model.LoadOptions{Model: *modelSpec, DType: dtype, Seed: *seed, Quantization: *quantization})
	if err != nil {
		return err
	}
	defer m.Close()
	logits, err := m.ForwardLogits(ids)
	if err != nil {
		return err
	}
	if err := model.WriteSafetensors(*out, map[string]*tensors.Tensor{"logits": logits}); err != nil {
		return fmt.Errorf("writing %s: %w", *out, err)
	}
	slog.Info("wrote logits", "file", *out, "shape", logits.Shape().String())
	_, err = fmt.Fprintf(stdout, "%s: logits %v\n", *out, logits.Shape().Dimensions)
	return err
}

// parseTokenList parses "2,17,9" into token ids.
func parseTokenList(s string) ([]int32, error) {
	parts := strings.Split(s, ",")
	ids := make([]int32, 0, len(parts))
	for _, p := range parts {
		p = strings.TrimSpace(p)
		v, err := strconv.ParseInt(p, 10, 32)
		if err != nil || v < 0 {
			return nil, fmt.Errorf("--tokens: %q is not a token id", p)
		}
		ids = append(ids, int32(v))
	}
	return ids, nil
}
