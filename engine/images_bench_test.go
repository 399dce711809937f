package engine

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// BenchmarkImageTTFT: time to first token of the vision fixture's one-image prompt (31
// tokens, 16 of them the image's) through the engine, every program precompiled, against
// the same prompt with its soft tokens as plain text ids (no image: the text-only
// baseline of the same length) and the vision program alone (bucket 1, features left on
// the device): the tower's share of the image request's TTFT.
func BenchmarkImageTTFT(b *testing.B) {
	m, enc, images := visionFixture(b)
	g := visionGolden(b)
	ids := g.Sequences[0].IDs
	textIDs := make([]int32, len(ids))
	for i, id := range ids {
		if id >= 509 { // boi, eoi, soft tokens → ordinary ids
			id = 100 + int32(i)
		}
		textIDs[i] = id
	}
	e, err := New(Config{Model: m, Vision: enc, MaxImagesPerStep: 2, Precompile: PrecompileAll, Logger: discardLogger(),
		NewDecoder:           func(skip bool) StreamDecoder { return &textDecoder{skip: skip} },
		Scheduler:            SchedulerConfig{MaxNumSeqs: 4, MaxNumBatchedTokens: 64, MaxModelLen: 96},
		DisablePrefixCaching: true, PageSize: 16})
	if err != nil {
		b.Fatal(err)
	}
	defer e.Close()
	ttft := func(b *testing.B, prompt []int32, imgs []Image) {
		for i := 0; b.Loop(); i++ {
			start := time.Now()
			ch, err := e.Submit(context.Background(), Request{ID: fmt.Sprint(i), PromptIDs: prompt, Params: greedyParams(1), Images: imgs})
			if err != nil {
				b.Fatal(err)
			}
			for ev := range ch {
				if ev.Err != nil {
					b.Fatal(ev.Err)
				}
			}
			_ = time.Since(start)
		}
		b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N), "µs/request")
	}
	b.Run("image-prompt", func(b *testing.B) { ttft(b, ids, images[:1]) })
	b.Run("text-prompt-same-length", func(b *testing.B) { ttft(b, textIDs, nil) })
	b.Run("vision-program-alone", func(b *testing.B) {
		rows := 2 * 16
		for b.Loop() {
			t, err := enc.EncodeRows([][]float32{images[0].Pixels}, rows)
			if err != nil {
				b.Fatal(err)
			}
			t.FinalizeAll()
		}
		b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N), "µs/image")
	})
}
