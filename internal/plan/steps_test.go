package plan_test

import (
	"testing"

	"github.com/tpuserve/tpuserve/internal/plan"
	"github.com/tpuserve/tpuserve/model"
)

// TestStepSetCounts pins the size of the program set for a few configurations, so a change
// that grows it is seen; the production ones must stay within the TPU budget of 48.
func TestStepSetCounts(t *testing.T) {
	for _, tc := range []struct {
		name   string
		preset string
		opts   plan.StepOptions
		steps  int
		total  int
	}{
		{"27b v5e-8 8k", "gemma3-27b", plan.StepOptions{MaxNumSeqs: 128, MaxNumBatchedTokens: 2048, MaxModelLen: 8192, PageSize: 16, MinTokens: 32}, 35, 47},
		{"27b v5e-8 32k", "gemma3-27b", plan.StepOptions{MaxNumSeqs: 128, MaxNumBatchedTokens: 2048, MaxModelLen: 32768, PageSize: 16, MinTokens: 32}, 35, 47},
		{"serve defaults (cpu)", "tiny", plan.StepOptions{MaxNumSeqs: 32, MaxNumBatchedTokens: 512, MaxModelLen: 2048, PageSize: 16}, 48, 61},
		{"vllm defaults on a gpu", "gemma3-4b", plan.StepOptions{MaxNumSeqs: 256, MaxNumBatchedTokens: 8192, MaxModelLen: 8192, PageSize: 16, MinTokens: 32}, 45, 58},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := preset(t, tc.preset)
			s, err := plan.NewStepSet(&cfg, tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			if got := len(s.Steps()); got != tc.steps {
				t.Errorf("%d step programs, pinned %d", got, tc.steps)
			}
			if got := len(s.Programs()); got != tc.total {
				t.Errorf("%d programs in all, pinned %d", got, tc.total)
			}
			if tc.preset == "gemma3-27b" && len(s.Programs()) > 48 {
				t.Errorf("%d programs for the production configuration, the budget is 48", len(s.Programs()))
			}
		})
	}
}

// TestStepForCoversEveryStep: every step the scheduler can plan (up to MaxNumBatchedTokens
// tokens, sequences up to MaxModelLen) maps to a member that holds it — rows included, for
// the worst mix of sequences — and the member is the smallest: the next smaller token
// bucket or page width would not hold it.
func TestStepForCoversEveryStep(t *testing.T) {
	cfg := preset(t, "tiny")
	opts := plan.StepOptions{MaxNumSeqs: 8, MaxNumBatchedTokens: 100, MaxModelLen: 1000, PageSize: 16}
	s, err := plan.NewStepSet(&cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	layout := model.KVLayout{PageSize: 16, NumGlobalPages: 1 << 12, NumSlidingPages: 1 << 12}
	for tokens := 1; tokens <= opts.MaxNumBatchedTokens; tokens += 3 {
		for seqs := 1; seqs <= min(tokens, opts.MaxNumSeqs); seqs++ {
			for _, ctx := range []int{0, 17, 300, opts.MaxModelLen - tokens} {
				// seqs sequences share the tokens; the first gets the remainder (worst rows).
				var chunks []model.SeqChunk
				pages := 1
				for i := 0; i < seqs; i++ {
					n := tokens / seqs
					if i == 0 {
						n += tokens % seqs
					}
					start := max(0, min(ctx, opts.MaxModelLen-n))
					end := start + n
					blocks := make([]int32, (end+15)/16)
					for j := range blocks {
						blocks[j] = int32(j + 1)
					}
					pages = max(pages, len(blocks))
					first := max(0, start-cfg.SlidingWindow+1) / 16
					chunks = append(chunks, model.SeqChunk{Tokens: make([]int32, n), StartPos: start, GlobalBlocks: blocks, SlidingBlocks: blocks[first:], SlidingFirstBlock: first})
				}
				need := func(q int) model.BatchShape { return model.NeededShape(&cfg, layout, chunks, q) }
				shape, ok := s.StepFor(need)
				if !ok {
					t.Fatalf("no member for %d tokens over %d pages", tokens, pages)
				}
				if _, err := model.BuildBatch(&cfg, layout, chunks, shape); err != nil {
					t.Fatalf("%d tokens in %d seqs at %d: member %+v does not hold it: %v", tokens, seqs, ctx, shape, err)
				}
			}
		}
	}
	if _, ok := s.StepFor(func(q int) model.BatchShape {
		return model.BatchShape{T: opts.MaxNumBatchedTokens + 1, Q: q, EG: 1, ES: 1}
	}); ok {
		t.Errorf("a step over the token budget found a member")
	}
	if _, ok := s.StepFor(func(q int) model.BatchShape {
		return model.BatchShape{T: 1, B: 1, Q: q, EG: (opts.MaxModelLen+15)/16 + 1, ES: 1}
	}); ok {
		t.Errorf("a sequence over max-model-len found a member")
	}
}

// TestStepSetBadOptions: options that cannot make a set name the field.
func TestStepSetBadOptions(t *testing.T) {
	cfg := preset(t, "tiny")
	for _, o := range []plan.StepOptions{
		{MaxNumSeqs: 0, MaxNumBatchedTokens: 8, MaxModelLen: 8, PageSize: 4},
		{MaxNumSeqs: 16, MaxNumBatchedTokens: 8, MaxModelLen: 8, PageSize: 4},
		{MaxNumSeqs: 1, MaxNumBatchedTokens: 8, MaxModelLen: 8, PageSize: 0},
	} {
		if _, err := plan.NewStepSet(&cfg, o); err == nil {
			t.Errorf("%+v: no error", o)
		}
	}
}

// TestStepSetVision: a vision model's step set adds only the vision programs (image buckets
// 1, 2, 4), and every step shape carries the image rows.
func TestStepSetVision(t *testing.T) {
	cfg, err := model.Preset("gemma3-4b")
	if err != nil {
		t.Fatal(err)
	}
	opts := plan.StepOptions{MaxNumSeqs: 8, MaxNumBatchedTokens: 512, MaxModelLen: 4096, PageSize: 16}
	text, err := plan.NewStepSet(&cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := plan.NewStepSet(&cfg, plan.StepOptions{MaxNumSeqs: 8, MaxNumBatchedTokens: 512, MaxModelLen: 4096, PageSize: 16, MaxImagesPerStep: 4, ImageTokens: 256}); err == nil {
		t.Error("images for a model without a vision tower: want an error")
	}
	cfg.Vision = true
	opts.MaxImagesPerStep, opts.ImageTokens = 4, 256
	vis, err := plan.NewStepSet(&cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := len(vis.Programs()), len(text.Programs())+3; got != want {
		t.Errorf("%d programs, want %d (the text set's + 3 vision buckets)", got, want)
	}
	for _, s := range vis.Steps() {
		if s.M != 4*256 {
			t.Fatalf("step %+v: M = %d, want %d", s, s.M, 4*256)
		}
	}
	if n, ok := vis.RowsFor(plan.KindVision, 3); !ok || n != 4 || vis.MaxImages() != 4 || vis.ImageRows() != 1024 {
		t.Errorf("RowsFor(vision, 3) = %d %v, MaxImages %d, ImageRows %d", n, ok, vis.MaxImages(), vis.ImageRows())
	}
}
