package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/tpuserve/tpuserve/internal/plan"
	"github.com/tpuserve/tpuserve/model"
	"github.com/tpuserve/tpuserve/model/quant"
	"github.com/tpuserve/tpuserve/model/vision"
)

var updateDocs = flag.Bool("update-docs", false, "rewrite the `tpuserve plan` outputs quoted in docs/*.md")

func runCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(args, strings.NewReader(""), &out, &errb)
	return code, out.String(), errb.String()
}

func TestPlanTable(t *testing.T) {
	code, out, errs := runCLI(t, "plan", "--model", "gemma3-27b", "--tp", "8", "--device-memory", "16GiB")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	for _, want := range []string{
		"plan: gemma3-27b, bf16 weights, TP=8 (mesh tp=8), 16.0 GiB per chip",
		"per chip: 4 heads, 2 kv heads",
		"model.layers.*.mlp.down_proj.weight ×62", "row", "vocab", "kv-head",
		"weights", "6.29 GiB", "(50.3 GiB for the model)",
		"largest of 47 programs: step T=2048 B=256 Q=16 EG=32768 ES=4352",
		"KV cache", "sequences of 8192",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("plan output lacks %q:\n%s", want, out)
		}
	}
	// --tensor-parallel-size is the same flag; --tensors lists every layer.
	_, out2, _ := runCLI(t, "plan", "--model", "gemma3-27b", "--tensor-parallel-size", "8", "--tensors")
	if !strings.Contains(out2, "model.layers.61.mlp.down_proj.weight") || strings.Contains(out2, "×62") {
		t.Errorf("--tensors did not list every tensor")
	}
}

func TestPlanJSON(t *testing.T) {
	code, out, errs := runCLI(t, "plan", "--model", "gemma3-12b", "--tp", "4", "--device-memory", "16GB", "--dtype", "int8",
		"--max-model-len", "4096", "--max-num-seqs", "32", "--max-num-batched-tokens", "1024", "--workspace", "512MiB", "--json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	var got planOutput
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("%v:\n%s", err, out)
	}
	cfg, err := model.Preset("gemma3-12b")
	if err != nil {
		t.Fatal(err)
	}
	want, err := plan.PlanMemory(&cfg, plan.MemoryOptions{TP: 4, DeviceMemoryBytes: 16e9, Format: model.FormatInt8, MaxModelLen: 4096,
		MaxNumSeqs: 32, MaxNumBatchedTokens: 1024, WorkspaceBytes: 512 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if got.Memory == nil || got.Memory.KVBytesPerChip != want.KVBytesPerChip || got.Memory.GlobalBlocks != want.GlobalBlocks ||
		got.Memory.WeightBytesPerChip != want.WeightBytesPerChip {
		t.Errorf("JSON memory plan %+v, want %+v", got.Memory, want)
	}
	if got.Sharding == nil || got.Sharding.TP != 4 || len(got.Sharding.Weights) != len(model.QuantizedTensorSpecs(&cfg, quant.Int8, dtypes.BFloat16)) || got.Error != "" {
		t.Errorf("JSON sharding plan: %+v (error %q)", got.Sharding, got.Error)
	}
}

// TestPlanQuantization: 27B on a v5e-4 (TP 4, 16 GiB chips) does not fit in bf16 and does
// with int8 weights; --quantization int8 and the older --dtype int8 plan the same, fp8
// plans the same bytes, and the plan says what the quantized weights free.
func TestPlanQuantization(t *testing.T) {
	args := []string{"plan", "--model", "gemma3-27b", "--tp", "4", "--max-num-seqs", "64", "--max-model-len", "4096"}
	if code, _, errs := runCLI(t, args...); code != 1 || !strings.Contains(errs, "does not fit") {
		t.Fatalf("27B bf16 on TP 4: exit %d, %s (want: does not fit)", code, errs)
	}
	code, out, errs := runCLI(t, append(args, "--quantization", "int8")...)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	_, old, _ := runCLI(t, append(args, "--dtype", "int8")...)
	if old != out {
		t.Errorf("--dtype int8 and --quantization int8 differ:\n%s\n---\n%s", old, out)
	}
	cfg, err := model.Preset("gemma3-27b")
	if err != nil {
		t.Fatal(err)
	}
	want, err := plan.PlanMemory(&cfg, plan.MemoryOptions{TP: 4, DeviceMemoryBytes: 16 << 30, Format: model.FormatInt8, MaxModelLen: 4096,
		MaxNumSeqs: 64, MaxNumBatchedTokens: 2048})
	if err != nil {
		t.Fatal(err)
	}
	bf, _ := plan.PlanMemory(&cfg, plan.MemoryOptions{TP: 4, DeviceMemoryBytes: 16 << 30, MaxModelLen: 4096, MaxNumSeqs: 64, MaxNumBatchedTokens: 2048})
	for _, line := range []string{
		"plan: gemma3-27b, int8 weights, TP=4",
		fmt.Sprintf("  tokens                      %d", want.KVTokens),
		"model.layers.*.mlp.down_proj.weight_scale ×62",
		// bf16 weights leave no KV cache at TP 4 (the plan says so); int8 frees the difference.
		fmt.Sprintf("quantized weights free %s per chip for the KV cache (bf16 weights: %s per chip",
			plan.FormatBytes(bf.WeightBytesPerChip-want.WeightBytesPerChip), plan.FormatBytes(bf.WeightBytesPerChip)),
	} {
		if !strings.Contains(out, line) {
			t.Errorf("output lacks %q:\n%s", line, out)
		}
	}
	_, fp8, _ := runCLI(t, append(args, "--quantization", "fp8")...)
	if !strings.Contains(fp8, "plan: gemma3-27b, fp8 weights") || !regexp.MustCompile(`\n  weights +`+regexp.QuoteMeta(plan.FormatBytes(want.WeightBytesPerChip))+" ").MatchString(fp8) {
		t.Errorf("fp8 plan:\n%s", fp8)
	}
}

// TestPlanKVCacheDType: --kv-cache-dtype int8 plans the 1-byte cache (the header says so,
// the tokens are the memory plan's) and a bad value is refused naming the flag.
func TestPlanKVCacheDType(t *testing.T) {
	code, out, errs := runCLI(t, "plan", "--model", "gemma3-27b", "--tp", "8", "--max-num-seqs", "64", "--max-model-len", "4096", "--kv-cache-dtype", "int8")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	cfg, err := model.Preset("gemma3-27b")
	if err != nil {
		t.Fatal(err)
	}
	want, err := plan.PlanMemory(&cfg, plan.MemoryOptions{TP: 8, DeviceMemoryBytes: 16 << 30, MaxModelLen: 4096, MaxNumSeqs: 64,
		MaxNumBatchedTokens: 2048, KVCacheDType: "int8"})
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{"plan: gemma3-27b, bf16 weights, int8 KV cache, TP=8", fmt.Sprintf("  tokens                      %d\n", want.KVTokens),
		fmt.Sprintf("KV of one sequence of 4096  %s per chip", plan.FormatBytes(want.SeqKVBytesPerChip))} {
		if !strings.Contains(out, line) {
			t.Errorf("output lacks %q:\n%s", line, out)
		}
	}
	if code, _, errs := runCLI(t, "plan", "--kv-cache-dtype", "int4"); code != 1 || !strings.Contains(errs, "--kv-cache-dtype") {
		t.Errorf("--kv-cache-dtype int4: exit %d, %s", code, errs)
	}
}

func TestPlanCheckpointDir(t *testing.T) {
	cfg, err := model.Preset("gemma3-4b")
	if err != nil {
		t.Fatal(err)
	}
	hub, err := model.HubConfig(&cfg, true)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "config.json"), hub, 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errs := runCLI(t, "plan", "--model", dir, "--tp", "8", "--max-num-seqs", "16", "--max-num-batched-tokens", "512")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	if !strings.Contains(out, "TP=8 (mesh tp=4 × tp_rep=2)") || !strings.Contains(out, "each kv head on 2 chips") {
		t.Errorf("4B at TP=8 should replicate each kv head on 2 chips:\n%s", out)
	}
}

func TestPlanErrors(t *testing.T) {
	for _, tc := range []struct {
		name   string
		args   []string
		stderr string
		stdout string // the partial plan, when it does not fit
	}{
		{"tp", []string{"--tp", "3"}, "tensor-parallel size 3 neither divides nor is a multiple of the 32 attention heads of model.layers.*.self_attn.q_proj.weight [4096 5376]", ""},
		{"one chip", []string{"--tp", "1"}, "does not fit in device memory: ", "weights"},
		{"dtype", []string{"--dtype", "int4"}, "--dtype", ""},
		{"quantization", []string{"--quantization", "int4"}, "--quantization", ""},
		{"quantization f32", []string{"--quantization", "int8", "--dtype", "f32"}, "--quantization int8: quantized weights are planned with bf16 compute", ""},
		{"quantization vs dtype", []string{"--quantization", "fp8", "--dtype", "int8"}, "--quantization fp8 contradicts --dtype int8", ""},
		{"memory", []string{"--device-memory", "16XB"}, "--device-memory", ""},
		{"model", []string{"--model", "no-such-model"}, "neither a checkpoint directory nor a preset", ""},
		{"args", []string{"extra"}, "unexpected arguments", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errs := runCLI(t, append([]string{"plan"}, tc.args...)...)
			if code != 1 || !strings.Contains(errs, tc.stderr) {
				t.Errorf("exit %d, stderr %q; want 1 and %q", code, errs, tc.stderr)
			}
			if tc.stdout != "" && !strings.Contains(out, tc.stdout) {
				t.Errorf("stdout lacks the partial plan (%q):\n%s", tc.stdout, out)
			}
		})
	}
}

// docBlockRE finds the plan outputs quoted in the docs: the command in an HTML comment,
// its output (fenced or not), and an end marker.
var docBlockRE = regexp.MustCompile("(?s)<!-- tpuserve (plan [^>]*?) -->\n(.*?)<!-- end -->")

// TestPlanDocs checks that every `tpuserve plan` output quoted in docs/*.md is what the
// command prints now (the roofline figures in docs/perf-tp.md are generated this way);
// -update-docs rewrites them.
func TestPlanDocs(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join("..", "..", "docs", "*.md"))
	blocks := 0
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		changed := false
		text := docBlockRE.ReplaceAllStringFunc(string(data), func(block string) string {
			m := docBlockRE.FindStringSubmatch(block)
			blocks++
			code, out, errs := runCLI(t, strings.Fields(m[1])...)
			if code != 0 {
				t.Errorf("%s: tpuserve %s: exit %d: %s", f, m[1], code, errs)
				return block
			}
			body := out
			if strings.HasPrefix(m[2], "```") {
				body = "```\n" + out + "```\n"
			}
			if m[2] != body {
				if !*updateDocs {
					t.Errorf("%s: the output of `tpuserve %s` changed; run go test ./cmd/tpuserve -run TestPlanDocs -update-docs", f, m[1])
				}
				changed = true
			}
			return "<!-- tpuserve " + m[1] + " -->\n" + body + "<!-- end -->"
		})
		if changed && *updateDocs {
			if err := os.WriteFile(f, []byte(text), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	if blocks == 0 {
		t.Skip("no `<!-- tpuserve plan … -->` blocks in docs/*.md")
	}
}

// TestPlanVisionCheckpoint: `tpuserve plan` on a vision checkpoint counts the replicated
// tower's weights on every chip, takes them and any higher activation peak out of each
// chip's KV budget and lists the vision programs, at TP=1 and TP=2;
// --max-images-per-step 0 plans it text-only.
func TestPlanVisionCheckpoint(t *testing.T) {
	dir := writeVisionToy(t)
	vcfg, err := vision.LoadConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	planOf := func(tp int, images string) planOutput {
		t.Helper()
		code, out, errs := runCLI(t, "plan", "--model", dir, "--tp", fmt.Sprint(tp), "--dtype", "f32", "--device-memory", "4GiB",
			"--max-num-seqs", "8", "--max-num-batched-tokens", "256", "--max-images-per-step", images, "--json")
		if code != 0 {
			t.Fatalf("TP=%d: exit %d: %s", tp, code, errs)
		}
		var p planOutput
		if err := json.Unmarshal([]byte(out), &p); err != nil {
			t.Fatal(err)
		}
		return p
	}
	visionPrograms := func(p planOutput) int {
		n := 0
		for _, prog := range p.Programs {
			if prog.Kind == plan.KindVision {
				n++
			}
		}
		return n
	}
	for _, tp := range []int{1, 2} {
		text, images := planOf(tp, "0"), planOf(tp, "4")
		if got, want := images.Memory.WeightBytesPerChip-text.Memory.WeightBytesPerChip, vcfg.WeightBytes(dtypes.Float32); got != want {
			t.Errorf("TP=%d: the tower adds %d weight bytes per chip, want its weights' %d", tp, got, want)
		}
		// The image rows of every step shape may raise the activation peak too: it all
		// comes out of the KV budget.
		actDiff := images.Memory.Activations.Peak - text.Memory.Activations.Peak
		if got, want := text.Memory.KVBytesPerChip-images.Memory.KVBytesPerChip, vcfg.WeightBytes(dtypes.Float32)+actDiff; got != want || actDiff < 0 {
			t.Errorf("TP=%d: images take %d bytes of each chip's KV budget, want the tower's weights and %d more activation bytes: %d", tp, got, actDiff, want)
		}
		if n, m := visionPrograms(images), visionPrograms(text); n != 3 || m != 0 {
			t.Errorf("TP=%d: %d vision programs with 4 images a step (want 3: buckets 1, 2, 4), %d text-only", tp, n, m)
		}
	}
}
