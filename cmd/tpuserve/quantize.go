package main

import (
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/tpuserve/tpuserve/model"
	"github.com/tpuserve/tpuserve/model/quant"
)

func init() {
	register("quantize", "write a compressed-tensors int8 (W8A8) or FP8 checkpoint from a bf16 one", runQuantize)
}

func runQuantize(args []string, _ io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("quantize", flag.ContinueOnError)
	fs.SetOutput(stderr)
	src := fs.String("model", "", "unquantized checkpoint directory (required)")
	dst := fs.String("out", "", "output directory (required)")
	q := fs.String("quantization", "int8", "int8 (W8A8), fp8 (FP8-dynamic), int8-weight-only or fp8-weight-only")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if *src == "" || *dst == "" {
		return errors.New("--model and --out are required")
	}
	mode, err := quant.ParseMode(*q)
	if err != nil {
		return err
	}
	if err := model.QuantizeCheckpoint(*src, *dst, mode, model.LogProgress); err != nil {
		return err
	}
	_, err = fmt.Fprintf(stdout, "%s: %s checkpoint\n", *dst, mode)
	return err
}
