package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/tpuserve/tpuserve/model"
	"github.com/tpuserve/tpuserve/model/vision"
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
	var images imageFiles
	fs.Var(&images, "image", "image file (PNG, JPEG, WebP, GIF) for the next placeholder run of the tokens, in order; repeat for more")
	imageMask := fs.String("image-mask", model.ImageMaskHF453, "attention among image tokens: "+model.ImageMaskHF453+" (transformers 4.53: image tokens within mm_tokens_per_image positions) or "+model.ImageMaskPerImage)
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
	var logits *tensors.Tensor
	if len(images) == 0 {
		logits, err = m.ForwardLogits(ids)
	} else {
		logits, err = forwardImages(m, *modelSpec, dtype, ids, images, *imageMask)
	}
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

// imageFiles collects repeated --image flags.
type imageFiles []string

func (f *imageFiles) String() string     { return strings.Join(*f, ",") }
func (f *imageFiles) Set(v string) error { *f = append(*f, v); return nil }

// forwardImages preprocesses the image files as Gemma3ImageProcessor does, runs the vision
// tower (features left on the device as the step's image rows) and the prefill with the
// features spliced into the placeholder runs of ids, in order.
func forwardImages(m *model.Model, dir string, dtype dtypes.DType, ids []int32, files []string, mask string) (*tensors.Tensor, error) {
	if !m.Config.Vision {
		return nil, fmt.Errorf("--image: the model %s has no vision tower (a text-only config)", dir)
	}
	vcfg, err := vision.LoadConfig(dir)
	if err != nil {
		return nil, err
	}
	if err := m.Config.SetImageMask(mask, vcfg.MMTokensPerImage); err != nil {
		return nil, fmt.Errorf("--image-mask: %w", err)
	}
	pcfg, err := vision.LoadPreprocessorConfig(dir)
	if err != nil {
		return nil, err
	}
	proc, err := vision.NewProcessor(pcfg)
	if err != nil {
		return nil, err
	}
	var pixels [][]float32
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("--image: %w", err)
		}
		pp, err := proc.Preprocess(data)
		if err != nil {
			return nil, fmt.Errorf("--image %s: %w", f, err)
		}
		pixels = append(pixels, pp.Images...) // pan-and-scan crops follow their image
	}
	chunks, err := vcfg.ChunkImages(ids, 0)
	if err != nil {
		return nil, fmt.Errorf("--tokens: %w", err)
	}
	if len(chunks) != len(pixels) {
		return nil, fmt.Errorf("--tokens has %d image placeholder runs, --image gives %d images (crops included)", len(chunks), len(pixels))
	}
	enc, err := vision.LoadEncoder(m.Backend, dir, dtype)
	if err != nil {
		return nil, err
	}
	defer enc.Close()
	rows := len(pixels) * vcfg.MMTokensPerImage
	if err := enc.PrecompileRows(rows, len(pixels)); err != nil {
		return nil, err
	}
	embeds, err := enc.EncodeRows(pixels, rows)
	if err != nil {
		return nil, err
	}
	defer embeds.FinalizeAll()
	return m.ForwardLogitsImages(ids, chunks, embeds)
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
