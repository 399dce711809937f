package model

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

// GenerationConfigFile is the checkpoint file with the model creator's sampling defaults.
const GenerationConfigFile = "generation_config.json"

// GenerationConfig holds the sampling defaults of a generation_config.json that vLLM's
// --generation-config auto applies to requests that leave them out. A nil field is not
// set, or set to transformers' own default (vLLM takes GenerationConfig.to_diff_dict(),
// which drops those: temperature 1, top_k 50, top_p 1, repetition_penalty 1).
type GenerationConfig struct {
	Temperature       *float64
	TopK              *int
	TopP              *float64
	MinP              *float64
	RepetitionPenalty *float64
	// MaxNewTokens becomes the default max_tokens.
	MaxNewTokens *int
}

// LoadGenerationConfig reads DIR/generation_config.json.
func LoadGenerationConfig(dir string) (GenerationConfig, error) {
	path := filepath.Join(dir, GenerationConfigFile)
	data, err := os.ReadFile(path)
	if err != nil {
		return GenerationConfig{}, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	g, err := ParseGenerationConfig(data)
	if err != nil {
		return GenerationConfig{}, fmt.Errorf("%s: %w", path, err)
	}
	return g, nil
}

// ParseGenerationConfig parses a generation_config.json; a field of the wrong type is an
// error naming it.
func ParseGenerationConfig(data []byte) (GenerationConfig, error) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		return GenerationConfig{}, fmt.Errorf("%w: not a JSON object: %w", ErrConfig, err)
	}
	var g GenerationConfig
	floats := []struct {
		name string
		into **float64
		hf   float64 // transformers' default, dropped as vLLM's to_diff_dict does
	}{
		{"temperature", &g.Temperature, 1}, {"top_p", &g.TopP, 1}, {"repetition_penalty", &g.RepetitionPenalty, 1},
		{"min_p", &g.MinP, -1},
	}
	for _, f := range floats {
		v, ok := raw[f.name]
		if !ok || string(v) == "null" {
			continue
		}
		var x float64
		if err := json.Unmarshal(v, &x); err != nil {
			return GenerationConfig{}, fmt.Errorf("%w: field %s: %w", ErrConfig, f.name, err)
		}
		if x != f.hf {
			*f.into = &x
		}
	}
	ints := []struct {
		name string
		into **int
		hf   int
	}{{"top_k", &g.TopK, 50}, {"max_new_tokens", &g.MaxNewTokens, -1}}
	for _, f := range ints {
		v, ok := raw[f.name]
		if !ok || string(v) == "null" {
			continue
		}
		var x int
		if err := json.Unmarshal(v, &x); err != nil {
			return GenerationConfig{}, fmt.Errorf("%w: field %s: %w", ErrConfig, f.name, err)
		}
		if x != f.hf {
			*f.into = &x
		}
	}
	return g, nil
}
