package model_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/tpuserve/tpuserve/model"
)

func TestParseGenerationConfig(t *testing.T) {
	// Gemma 3 IT's generation_config.json.
	g, err := model.ParseGenerationConfig([]byte(`{"bos_token_id": 2, "cache_implementation": "hybrid", "do_sample": true,
		"eos_token_id": [1, 106], "pad_token_id": 0, "top_k": 64, "top_p": 0.95, "transformers_version": "4.50.0.dev0"}`))
	if err != nil {
		t.Fatal(err)
	}
	if g.TopK == nil || *g.TopK != 64 || g.TopP == nil || *g.TopP != 0.95 || g.Temperature != nil || g.MinP != nil || g.MaxNewTokens != nil {
		t.Errorf("Gemma 3 IT: %+v", g)
	}
	// transformers' own defaults are not overrides (vLLM reads to_diff_dict()).
	g, err = model.ParseGenerationConfig([]byte(`{"temperature": 1.0, "top_k": 50, "top_p": 1.0, "repetition_penalty": 1.0, "min_p": 0.1, "max_new_tokens": 100}`))
	if err != nil {
		t.Fatal(err)
	}
	if g.Temperature != nil || g.TopK != nil || g.TopP != nil || g.RepetitionPenalty != nil || g.MinP == nil || *g.MinP != 0.1 || g.MaxNewTokens == nil || *g.MaxNewTokens != 100 {
		t.Errorf("defaults dropped, the rest kept: %+v", g)
	}
	for _, bad := range []struct{ json, want string }{{`[]`, "not a JSON object"}, {`{"top_k": "many"}`, "field top_k"}, {`{"temperature": true}`, "field temperature"}} {
		if _, err := model.ParseGenerationConfig([]byte(bad.json)); !errors.Is(err, model.ErrConfig) || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%s: %v", bad.json, err)
		}
	}
}
