package vision

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestImageSpans(t *testing.T) {
	cfg, err := LoadConfig(fixtureDir)
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(fixtureDir, "golden.json"))
	if err != nil {
		t.Fatal(err)
	}
	var g struct {
		Sequences []struct {
			Images []int   `json:"images"`
			IDs    []int32 `json:"ids"`
		} `json:"sequences"`
	}
	if err := json.Unmarshal(data, &g); err != nil {
		t.Fatal(err)
	}
	for i, seq := range g.Sequences {
		spans, err := cfg.ImageSpans(seq.IDs)
		if err != nil {
			t.Fatalf("seq%d: %v", i, err)
		}
		if len(spans) != len(seq.Images) {
			t.Errorf("seq%d: %d spans for %d images", i, len(spans), len(seq.Images))
		}
		for _, s := range spans {
			if s.Len != 16 || seq.IDs[s.Start-1] != 509 || seq.IDs[s.Start+s.Len] != 510 {
				t.Errorf("seq%d: span %+v", i, s)
			}
		}
	}
	ph := cfg.PlaceholderIDs()
	ok := append(append([]int32{2}, ph...), ph...)
	if spans, err := cfg.ImageSpans(ok); err != nil || !slices.Equal(spans, []Span{{2, 16}, {20, 16}}) {
		t.Errorf("two placeholders back to back: %v %v", spans, err)
	}
	bad := map[string][]int32{
		"short run": append([]int32{509}, append(slices.Repeat([]int32{511}, 15), 510)...),
		"no boi":    append(slices.Repeat([]int32{511}, 16), 510),
		"no eoi":    append([]int32{509}, slices.Repeat([]int32{511}, 16)...),
		"long run":  append([]int32{509}, append(slices.Repeat([]int32{511}, 17), 510)...),
		"wrong boi": append([]int32{7}, append(slices.Repeat([]int32{511}, 16), 510)...),
	}
	for name, ids := range bad {
		if _, err := cfg.ImageSpans(ids); !errors.Is(err, ErrInput) {
			t.Errorf("%s: %v, want ErrInput", name, err)
		}
	}
}
