package main

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/tpuserve/tpuserve/model"
)

// tinyFixture is the HF-golden checkpoint the model package's tests use.
var tinyFixture = filepath.Join("..", "..", "model", "testdata", "gemma3-tiny")

// TestQuantizeThenForward: `tpuserve quantize` writes a checkpoint whose `forward` logits
// equal those of `forward --quantization` on the bf16 checkpoint, for int8 and FP8; and
// `forward --quantization int8-weight-only` on the written W8A8 checkpoint differs from its
// default (the checkpoint's own W8A8 semantics).
func TestQuantizeThenForward(t *testing.T) {
	const tokens = "2,450,319,352,499,17"
	forward := func(t *testing.T, args ...string) []float32 {
		t.Helper()
		out := filepath.Join(t.TempDir(), "logits.safetensors")
		var stdout, stderr bytes.Buffer
		if code := run(append([]string{"forward", "--tokens", tokens, "--out", out}, args...), nil, &stdout, &stderr); code != 0 {
			t.Fatalf("forward %v exited %d: %s", args, code, stderr.String())
		}
		got, err := model.ReadSafetensors(out)
		if err != nil {
			t.Fatal(err)
		}
		return tensors.MustCopyFlatData[float32](got["logits"])
	}
	for _, mode := range []string{"int8", "fp8"} {
		t.Run(mode, func(t *testing.T) {
			dir := t.TempDir()
			var stdout, stderr bytes.Buffer
			if code := run([]string{"quantize", "--model", tinyFixture, "--out", dir, "--quantization", mode}, nil, &stdout, &stderr); code != 0 {
				t.Fatalf("quantize exited %d: %s", code, stderr.String())
			}
			if !strings.Contains(stdout.String(), mode) {
				t.Errorf("quantize printed %q", stdout.String())
			}
			written := forward(t, "--model", dir)
			atLoad := forward(t, "--model", tinyFixture, "--quantization", mode)
			plain := forward(t, "--model", tinyFixture)
			weightOnly := forward(t, "--model", dir, "--quantization", mode+"-weight-only")
			same, movedByQuant, movedByActs := true, false, false
			for i := range written {
				same = same && written[i] == atLoad[i]
				movedByQuant = movedByQuant || written[i] != plain[i]
				movedByActs = movedByActs || written[i] != weightOnly[i]
			}
			if !same || !movedByQuant || !movedByActs {
				t.Errorf("written == quantize-at-load: %v (want true); differs from bf16: %v, from weight-only: %v (want true)", same, movedByQuant, movedByActs)
			}
		})
	}
}

func TestQuantizeFlagErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"quantize", "--model", tinyFixture}, "--model and --out are required"},
		{[]string{"quantize", "--model", tinyFixture, "--out", "/tmp/none", "--quantization", "int4"}, `--quantization "int4"`},
		{[]string{"quantize", "--model", tinyFixture, "--out", "/tmp/none", "--quantization", "none"}, "needs a quantization mode"},
		{[]string{"quantize", "--model", tinyFixture + "-w8a8", "--out", "/tmp/none"}, "already quantized"},
		{[]string{"forward", "--model", tinyFixture, "--tokens", "1", "--out", "/tmp/none", "--quantization", "q4"}, `--quantization "q4"`},
	} {
		var stdout, stderr bytes.Buffer
		if code := run(tc.args, nil, &stdout, &stderr); code == 0 || !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("%v: exit %d, stderr %q, want it to contain %q", tc.args, code, stderr.String(), tc.want)
		}
	}
}
