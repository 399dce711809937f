package model_test

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/gomlx/gomlx/pkg/core/shapes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/tpuserve/tpuserve/model"
)

func TestConfigParsing(t *testing.T) {
	tiny, err := os.ReadFile(filepath.Join("testdata", "gemma3-tiny", "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := model.ParseConfig(tiny)
	if err != nil {
		t.Fatal(err)
	}
	wantTypes := []string{"sliding_attention", "sliding_attention", "full_attention", "sliding_attention", "sliding_attention", "full_attention"}
	if strings.Join(cfg.LayerTypes, ",") != strings.Join(wantTypes, ",") || cfg.RopeScalingFactor != 8 || cfg.QueryPreAttnScalar != 24 {
		t.Errorf("parsed %+v", cfg)
	}
	mm, err := model.LoadConfig(filepath.Join("testdata", "gemma3-tiny-mm"))
	if err != nil {
		t.Fatal(err)
	}
	if !mm.Multimodal || mm.VocabSize != 512 || strings.Join(mm.LayerTypes, ",") != strings.Join(wantTypes, ",") {
		t.Errorf("multimodal parsed %+v", mm)
	}

	// Defaults for omitted fields; layer_types wins over the pattern.
	minimal := `{"model_type":"gemma3_text","hidden_size":64,"intermediate_size":128,"num_hidden_layers":3,
		"num_attention_heads":2,"num_key_value_heads":1,"head_dim":32,"vocab_size":100,"sliding_window_pattern":2,
		"layer_types":["full_attention","sliding_attention","full_attention"]}`
	c, err := model.ParseConfig([]byte(minimal))
	if err != nil {
		t.Fatal(err)
	}
	if c.RMSNormEps != 1e-6 || c.RopeTheta != 1e6 || c.RopeLocalBaseFreq != 1e4 || c.SlidingWindow != 4096 || c.MaxPositionEmbeddings != 131072 ||
		c.QueryPreAttnScalar != 256 || !c.IsGlobal(0) || c.IsGlobal(1) || c.RopeScalingFactor != 1 {
		t.Errorf("defaults/layer_types: %+v", c)
	}

	for _, name := range model.PresetNames() {
		p, err := model.Preset(name)
		if err != nil {
			t.Fatalf("preset %s: %v", name, err)
		}
		if name == "gemma3-27b" && (p.NumGlobalLayers() != 10 || !p.IsGlobal(59) || p.IsGlobal(60) || p.QueryPreAttnScalar != 168) {
			t.Errorf("27b preset: %d global layers", p.NumGlobalLayers())
		}
	}

	bad := []struct {
		json, want string
	}{
		{`not json`, "not a JSON object"},
		{`{"model_type":"llama"}`, `model_type "llama"`},
		{`{"model_type":"gemma3"}`, "text_config is missing"},
		{`{"model_type":"gemma3","text_config":7}`, "text_config is not an object"},
		{`{"model_type":"gemma3_text","hidden_size":"big","intermediate_size":128,"num_hidden_layers":2}`, "field hidden_size"},
		{`{"model_type":"gemma3_text","hidden_size":0,"intermediate_size":128,"num_hidden_layers":2}`, "field hidden_size must be > 0"},
		{`{"model_type":"gemma3_text","num_attention_heads":3,"num_key_value_heads":2}`, "field num_attention_heads (3) must be a multiple"},
		{`{"model_type":"gemma3_text","head_dim":7}`, "field head_dim must be even"},
		{`{"model_type":"gemma3_text","hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,"layer_types":["full_attention"]}`, "field layer_types has 1 entries"},
		{`{"model_type":"gemma3_text","hidden_size":64,"intermediate_size":128,"num_hidden_layers":1,"layer_types":["chunked"]}`, `field layer_types[0] is "chunked"`},
		{`{"model_type":"gemma3_text","rope_scaling":{"rope_type":"yarn","factor":2}}`, `field rope_scaling.rope_type "yarn"`},
		{`{"model_type":"gemma3_text","rope_scaling":{"rope_type":"linear"}}`, "field rope_scaling.factor is missing"},
		{`{"model_type":"gemma3_text","final_logit_softcapping":30.0}`, "softcapping"},
		{`{"model_type":"gemma3_text","hidden_activation":"relu"}`, `field hidden_activation "relu"`},
		{`{"model_type":"gemma3_text","rms_norm_eps":-1}`, "field rms_norm_eps"},
		{`{"model_type":"gemma3_text","eos_token_id":"x"}`, "field eos_token_id"},
		{`{"model_type":"gemma3_text","query_pre_attn_scalar":0}`, "field query_pre_attn_scalar"},
	}
	// The cases that test other fields get the required sizes.
	const sizes = `"hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,`
	for i, tc := range bad {
		if strings.HasPrefix(tc.json, `{"model_type":"gemma3_text",`) && !strings.Contains(tc.json, "num_hidden_layers") {
			bad[i].json = strings.Replace(tc.json, `{"model_type":"gemma3_text",`, `{"model_type":"gemma3_text",`+sizes, 1)
		}
	}
	bad = append(bad,
		struct{ json, want string }{`{"model_type":"gemma3_text","intermediate_size":128,"num_hidden_layers":2}`, "field hidden_size is missing"},
		struct{ json, want string }{`{"model_type":"gemma3","text_config":{"hidden_size":64,"num_hidden_layers":2}}`, "field intermediate_size is missing"},
		struct{ json, want string }{`{"model_type":"gemma3_text","hidden_size":64,"intermediate_size":128}`, "field num_hidden_layers is missing"},
	)
	for _, tc := range bad {
		_, err := model.ParseConfig([]byte(tc.json))
		if err == nil || !errors.Is(err, model.ErrConfig) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseConfig(%s): error %v, want one containing %q", tc.json, err, tc.want)
		}
	}
	if _, err := model.Preset("gemma3-2b"); err == nil || !strings.Contains(err.Error(), `unknown preset "gemma3-2b"`) {
		t.Errorf("unknown preset: %v", err)
	}
}

// copyFixture copies the tiny checkpoint to a temp dir for tests that damage it.
func copyFixture(t *testing.T, name string) string {
	t.Helper()
	src := filepath.Join("testdata", name)
	dst := t.TempDir()
	entries, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		data, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

func loadErr(dir string) error {
	cfg, err := model.LoadConfig(dir)
	if err != nil {
		return err
	}
	ck, err := model.OpenCheckpoint(dir)
	if err != nil {
		return err
	}
	defer ck.Close()
	w, err := model.LoadWeights(ck, &cfg, dtypes.Float32, nil)
	if err == nil {
		w.Finalize()
	}
	return err
}

func TestCheckpointErrors(t *testing.T) {
	const st = "model.safetensors"
	writeHeader := func(t *testing.T, dir string, header string, dataLen int) {
		buf := make([]byte, 8)
		binary.LittleEndian.PutUint64(buf, uint64(len(header)))
		buf = append(buf, header...)
		buf = append(buf, make([]byte, dataLen)...)
		if err := os.WriteFile(filepath.Join(dir, st), buf, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cases := []struct {
		name   string
		damage func(t *testing.T, dir string)
		want   []string
	}{
		{"truncated file", func(t *testing.T, dir string) {
			p := filepath.Join(dir, st)
			fi, _ := os.Stat(p)
			if err := os.Truncate(p, fi.Size()-1000); err != nil {
				t.Fatal(err)
			}
		}, []string{"is truncated", st}},
		{"short file", func(t *testing.T, dir string) {
			_ = os.WriteFile(filepath.Join(dir, st), []byte{1, 2}, 0o644)
		}, []string{"too short", st}},
		{"header length beyond file", func(t *testing.T, dir string) {
			buf := make([]byte, 16)
			binary.LittleEndian.PutUint64(buf, 1<<40)
			_ = os.WriteFile(filepath.Join(dir, st), buf, 0o644)
		}, []string{"corrupt header", st}},
		{"header not JSON", func(t *testing.T, dir string) { writeHeader(t, dir, "{not json", 0) }, []string{"corrupt header", st}},
		{"bad offsets", func(t *testing.T, dir string) {
			writeHeader(t, dir, `{"model.norm.weight":{"dtype":"F32","shape":[4],"data_offsets":[8,0]}}`, 16)
		}, []string{"model.norm.weight", "bad data_offsets"}},
		{"size mismatch", func(t *testing.T, dir string) {
			writeHeader(t, dir, `{"model.norm.weight":{"dtype":"F32","shape":[4],"data_offsets":[0,8]}}`, 16)
		}, []string{"model.norm.weight", "needs 16 bytes"}},
		{"unknown dtype", func(t *testing.T, dir string) {
			writeHeader(t, dir, `{"model.norm.weight":{"dtype":"Q4","shape":[4],"data_offsets":[0,4]}}`, 16)
		}, []string{"model.norm.weight", `unknown dtype "Q4"`}},
		{"missing tensor", func(t *testing.T, dir string) {
			ts, err := model.ReadSafetensors(filepath.Join(dir, st))
			if err != nil {
				t.Fatal(err)
			}
			delete(ts, "model.layers.3.mlp.up_proj.weight")
			if err := model.WriteSafetensors(filepath.Join(dir, st), ts); err != nil {
				t.Fatal(err)
			}
		}, []string{"model.layers.3.mlp.up_proj.weight is missing"}},
		{"mis-shaped tensor", func(t *testing.T, dir string) {
			ts, err := model.ReadSafetensors(filepath.Join(dir, st))
			if err != nil {
				t.Fatal(err)
			}
			ts["model.layers.1.self_attn.k_proj.weight"] = tensors.FromShape(shapes.Make(dtypes.BFloat16, 32, 128))
			if err := model.WriteSafetensors(filepath.Join(dir, st), ts); err != nil {
				t.Fatal(err)
			}
		}, []string{"model.layers.1.self_attn.k_proj.weight", "shape [32 128]", "needs [64 128]", st}},
		{"no weights", func(t *testing.T, dir string) { _ = os.Remove(filepath.Join(dir, st)) }, []string{"neither model.safetensors"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := copyFixture(t, "gemma3-tiny")
			tc.damage(t, dir)
			err := loadErr(dir)
			if err == nil || !errors.Is(err, model.ErrWeights) {
				t.Fatalf("error %v, want ErrWeights", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
	t.Run("index names a shard without the tensor", func(t *testing.T) {
		dir := copyFixture(t, "gemma3-tiny-mm")
		p := filepath.Join(dir, "model.safetensors.index.json")
		data, _ := os.ReadFile(p)
		data = []byte(strings.Replace(string(data), `"language_model.model.norm.weight": "model-00002-of-00002.safetensors"`,
			`"language_model.model.norm.weight": "model-00002-of-00002.safetensors", "language_model.model.extra": "model-00001-of-00002.safetensors"`, 1))
		_ = os.WriteFile(p, data, 0o644)
		err := loadErr(dir)
		if err == nil || !strings.Contains(err.Error(), "language_model.model.extra") {
			t.Fatalf("error %v", err)
		}
	})
}

func TestBatchInputErrors(t *testing.T) {
	cfg, err := model.LoadConfig(filepath.Join("testdata", "gemma3-tiny"))
	if err != nil {
		t.Fatal(err)
	}
	layout := model.KVLayout{PageSize: 4, NumGlobalPages: 64, NumSlidingPages: 64}
	ok := model.ContiguousChunk([]int32{2, 5, 9}, 4, false)
	cases := []struct {
		name  string
		chunk model.SeqChunk
		want  string
	}{
		{"token beyond vocab", model.ContiguousChunk([]int32{2, 512}, 4, false), "token id 512 is outside the vocabulary [0, 512)"},
		{"negative token", model.ContiguousChunk([]int32{-1}, 4, false), "token id -1"},
		{"position beyond max", func() model.SeqChunk {
			c := ok
			c.StartPos = cfg.MaxPositionEmbeddings - 1
			c.GlobalBlocks = make([]int32, cfg.MaxPositionEmbeddings/4+1)
			for i := range c.GlobalBlocks {
				c.GlobalBlocks[i] = 1
			}
			return c
		}(), "beyond max_position_embeddings 4096"},
		{"blocks do not cover", func() model.SeqChunk { c := ok; c.StartPos = 8; return c }(), "do not cover position 10"},
		{"page outside pool", func() model.SeqChunk { c := ok; c.GlobalBlocks = []int32{99}; return c }(), "page 99, outside 1..63"},
		{"null page", func() model.SeqChunk { c := ok; c.SlidingBlocks = []int32{0}; return c }(), "sliding block 0 is page 0"},
		{"empty", model.SeqChunk{}, "has no tokens"},
	}
	for _, tc := range cases {
		_, err := model.BuildBatch(&cfg, layout, []model.SeqChunk{tc.chunk}, model.BatchShape{T: 8, B: 2, Q: 8, EG: 4000, ES: 2 * model.SlidingPagesPerRow(&cfg, 4, 8), N: 8})
		if err == nil || !errors.Is(err, model.ErrInput) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want one containing %q", tc.name, err, tc.want)
		}
	}
	if _, err := model.BuildBatch(&cfg, layout, []model.SeqChunk{ok}, model.BatchShape{T: 2, B: 1, Q: 3, EG: 1, ES: 9, N: 1}); err == nil ||
		!strings.Contains(err.Error(), "bucket is") {
		t.Errorf("too small bucket: %v", err)
	}
}

func TestBackendSpecErrors(t *testing.T) {
	for _, tc := range []struct{ spec, want string }{
		{"cuda", `unknown backend "cuda"`},
		{"xla:", "names no PJRT plugin"},
		{"xla:relative/plugin.so", "must be absolute"},
		{"xla:/nonexistent/pjrt_plugin.so", "no such file"},
	} {
		if _, err := model.NewBackend(tc.spec); err == nil || !errors.Is(err, model.ErrBackend) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("NewBackend(%q): %v, want %q", tc.spec, err, tc.want)
		}
	}
}
