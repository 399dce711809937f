package plan_test

import (
	"testing"

	"github.com/tpuserve/tpuserve/internal/plan"
	"github.com/tpuserve/tpuserve/model"
)

// TestSpecTokensInThePlan: with speculation the step set holds the verify programs (and a
// draft model's programs), K+1 must fit an attention row, and the memory plan sizes the
// sampler for K+1 positions per running sequence.
func TestSpecTokensInThePlan(t *testing.T) {
	cfg := preset(t, "gemma3-1b")
	opts := plan.StepOptions{MaxNumSeqs: 64, MaxNumBatchedTokens: 512, MaxModelLen: 2048, PageSize: 16}
	base, err := plan.NewStepSet(&cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	opts.SpecTokens = 4
	spec, err := plan.NewStepSet(&cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	count := func(s *plan.StepSet, k plan.ProgramKind) int {
		n := 0
		for _, p := range s.Programs() {
			if p.Kind == k {
				n++
			}
		}
		return n
	}
	if count(base, plan.KindVerify) != 0 || count(spec, plan.KindVerify) != 3 || count(spec, plan.KindVerifyFull) != 3 {
		t.Errorf("verify programs: %d without speculation, %d + %d with (want 0; 3 + 3: rows 1, 8, 64)",
			count(base, plan.KindVerify), count(spec, plan.KindVerify), count(spec, plan.KindVerifyFull))
	}
	opts.DraftModel = true
	withDraft, err := plan.NewStepSet(&cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := count(withDraft, plan.KindDraftStep), len(spec.Steps()); got != want {
		t.Errorf("%d draft steps, want one per step shape (%d)", got, want)
	}
	if rows, ok := withDraft.RowsFor(plan.KindDraftPropose, 3); !ok || rows != 4 {
		t.Errorf("draft_propose rows for 3: %d, %v", rows, ok)
	}
	opts.DraftModel, opts.SpecTokens = false, 16
	if _, err := plan.NewStepSet(&cfg, opts); err == nil {
		t.Errorf("K = 16 with SegmentLen 16: no error")
	}
	mo := plan.MemoryOptions{DeviceMemoryBytes: 16 << 30, MaxNumSeqs: 64, MaxNumBatchedTokens: 512, MaxModelLen: 2048, Format: model.FormatBF16}
	p0, err := plan.PlanMemory(&cfg, mo)
	if err != nil {
		t.Fatal(err)
	}
	mo.SpecTokens = 4
	p4, err := plan.PlanMemory(&cfg, mo)
	if err != nil {
		t.Fatal(err)
	}
	if p4.KVBytesPerChip >= p0.KVBytesPerChip {
		t.Errorf("K = 4 leaves the KV cache %d bytes, without %d: the verify rows are not counted", p4.KVBytesPerChip, p0.KVBytesPerChip)
	}
	t.Logf("activations peak %d → %d bytes with K = 4", p0.Activations.Peak, p4.Activations.Peak)
}
