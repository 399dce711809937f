package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/tpuserve/tpuserve/model"
)

// visionFixture is the tiny vision checkpoint kept once in the repository, under the
// vision package's testdata (provenance: model/vision/testdata/PROVENANCE.md).
const visionFixture = "../../model/vision/testdata/gemma3-tiny-vision"

// TestForwardImagesMatchHF: `tpuserve forward --image …` on the fixture's three sequences
// (one image; two images; an image right after <bos>) writes logits within 1e-3 of HF's at
// every position.
func TestForwardImagesMatchHF(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(visionFixture, "golden.json"))
	if err != nil {
		t.Fatal(err)
	}
	var meta struct {
		Images    []string `json:"images"`
		Sequences []struct {
			Images []int   `json:"images"`
			IDs    []int32 `json:"ids"`
		} `json:"sequences"`
	}
	if err := json.Unmarshal(data, &meta); err != nil {
		t.Fatal(err)
	}
	golden, err := model.ReadSafetensors(filepath.Join(visionFixture, "golden.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	for i, seq := range meta.Sequences {
		t.Run(fmt.Sprintf("seq%d", i), func(t *testing.T) {
			ids := make([]string, len(seq.IDs))
			for k, id := range seq.IDs {
				ids[k] = strconv.Itoa(int(id))
			}
			out := filepath.Join(t.TempDir(), "logits.safetensors")
			args := []string{"forward", "--model", visionFixture, "--tokens", strings.Join(ids, ","), "--out", out}
			for _, j := range seq.Images {
				args = append(args, "--image", filepath.Join(visionFixture, "images", meta.Images[j]))
			}
			var stdout, stderr bytes.Buffer
			if code := run(args, nil, &stdout, &stderr); code != 0 {
				t.Fatalf("forward exited %d: %s", code, stderr.String())
			}
			got, err := model.ReadSafetensors(out)
			if err != nil {
				t.Fatal(err)
			}
			a := tensors.MustCopyFlatData[float32](got["logits"])
			b := tensors.MustCopyFlatData[float32](golden[fmt.Sprintf("seq%d.logits_f32", i)])
			if len(a) != len(b) {
				t.Fatalf("logits have %d values, HF's %d", len(a), len(b))
			}
			d := 0.0
			for k := range a {
				d = math.Max(d, math.Abs(float64(a[k]-b[k])))
			}
			t.Logf("seq%d: max |Δ logits| = %.3g", i, d)
			if d > 1e-3 {
				t.Errorf("max |Δ logits| = %g, want ≤ 1e-3", d)
			}
		})
	}
}

func TestForwardImageErrors(t *testing.T) {
	img := filepath.Join(visionFixture, "images", "gray.png")
	notImage := filepath.Join(visionFixture, "config.json")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--model", "tiny", "--tokens", "2,3", "--image", img}, "no vision tower"},
		{[]string{"--model", visionFixture, "--tokens", "2,3", "--image", img}, "0 image placeholder runs"},
		{[]string{"--model", visionFixture, "--tokens", "2,509,511,510", "--image", img}, "1 image tokens at position 2"},
		{[]string{"--model", visionFixture, "--tokens", "2,3", "--image", notImage}, "config.json"},
		{[]string{"--model", visionFixture, "--tokens", "2,3", "--image", img, "--image-mask", "causal"}, `image mask "causal"`},
	} {
		var stdout, stderr bytes.Buffer
		args := append([]string{"forward", "--out", filepath.Join(t.TempDir(), "x.safetensors")}, tc.args...)
		if code := run(args, nil, &stdout, &stderr); code == 0 || !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("%v: exit %d, stderr %q, want it to contain %q", tc.args, code, stderr.String(), tc.want)
		}
	}
}
