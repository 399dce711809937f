package engine

import (
	"fmt"
	"testing"

	"github.com/tpuserve/tpuserve/kvcache"
)

// TestSchedulerSpeculation: a decode carries the proposer's tokens within its limits
// (max_tokens, max_model_len, the budget left for the other running requests); after
// verification only the accepted run counts as computed, the blocks that held just
// rejected tokens go back to the pools (sliding ones too), no block holding a rejected
// token is registered in the prefix cache, and the accepted tokens and the next token are
// appended.
func TestSchedulerSpeculation(t *testing.T) {
	kvCfg := withCaching(kvcache.Config{PageSize: 4, NumGlobalBlocks: 40, NumSlidingBlocks: 40, SlidingWindow: 8})
	s := newTestScheduler(t, SchedulerConfig{MaxNumSeqs: 4, MaxNumBatchedTokens: 64, MaxModelLen: 40}, kvCfg)
	proposals := []int32{7, 7, 7, 7, 7, 7}
	s.SetSpeculation(5, func(tokens []int32, k int) []int32 { return proposals[:k] })
	if err := s.Add(req("a", prompt(1, 6), 12)); err != nil {
		t.Fatal(err)
	}
	step(t, s, []string{"a:6"}) // the prompt; output 100
	plan, err := s.Schedule()
	if err != nil {
		t.Fatal(err)
	}
	ps := plan.Seqs[0]
	if len(ps.TokenIDs) != 1 || len(ps.Draft) != 5 || ps.StartPos != 6 || len(ps.GlobalBlocks) != 3 {
		t.Fatalf("decode with proposals: %d tokens, draft %v at %d, %d global blocks (want 1, 5 proposals, 6, 3 blocks)", len(ps.TokenIDs), ps.Draft, ps.StartPos, len(ps.GlobalBlocks))
	}
	used := s.KV().Stats().Global.NumFree
	// One proposal accepted: positions 6 (the last output) and 7 (the proposal) computed.
	if _, err := s.UpdateFromOutputSpec(plan, []int32{55}, [][]int32{{7}}); err != nil {
		t.Fatal(err)
	}
	r := s.reqs["a"]
	if r.numComputed != 8 || fmt.Sprint(r.tokens[6:]) != "[100 7 55]" {
		t.Fatalf("after one accepted: %d computed, outputs %v", r.numComputed, r.tokens[6:])
	}
	if got := len(r.kv.GlobalBlocks()); got != 2 {
		t.Errorf("%d global blocks held for 8 computed positions, want 2 (the third held only rejected tokens)", got)
	}
	if free := s.KV().Stats().Global.NumFree; free != used+1 {
		t.Errorf("free global blocks %d after the rejection, %d before: want one back", free, used)
	}
	if err := s.KV().CheckInvariants(); err != nil {
		t.Fatal(err)
	}
	// Only the two full blocks of computed positions are in the prefix cache: a prompt of
	// the prefix and the rejected proposals hits at most those 8 positions.
	probe := append(append([]int32(nil), r.tokens[:8]...), 7, 7, 7, 7, 1)
	var seq kvcache.Seq
	if hit := s.KV().Lookup(&seq, probe); hit.NumTokens != 8 {
		t.Errorf("prefix hit of %d tokens over the rejected proposals, want 8", hit.NumTokens)
	}
	// Limits: 8 computed + 1 uncomputed token, outputs 3 of 12: at most 12-3-1 = 8 proposals,
	// capped by K = 5; near max_model_len 40 fewer.
	plan, _ = s.Schedule()
	if n := len(plan.Seqs[0].Draft); n != 5 {
		t.Errorf("%d proposals, want 5", n)
	}
	// Nothing accepted: numComputed advances by the decoded token alone.
	if _, err := s.UpdateFromOutputSpec(plan, []int32{56}, [][]int32{nil}); err != nil {
		t.Fatal(err)
	}
	if r.numComputed != 9 || len(r.kv.GlobalBlocks()) != 3 {
		t.Errorf("after none accepted: %d computed, %d blocks; want 9, 3", r.numComputed, len(r.kv.GlobalBlocks()))
	}
	// An accepted list that is not a prefix of the proposals is refused.
	plan, _ = s.Schedule()
	if _, err := s.UpdateFromOutputSpec(plan, []int32{1}, [][]int32{{8}}); err == nil {
		t.Errorf("accepted [8] for proposals %v: no error", plan.Seqs[0].Draft)
	}
	if err := s.Abandon(plan); err != nil {
		t.Fatal(err)
	}
	// max_tokens: at 10 of 12 outputs a step may emit two tokens, so one proposal.
	for len(r.tokens)-r.numPrompt < 10 {
		plan, _ = s.Schedule()
		if _, err := s.UpdateFromOutputSpec(plan, []int32{57}, [][]int32{nil}); err != nil {
			t.Fatal(err)
		}
	}
	plan, _ = s.Schedule()
	if n := len(plan.Seqs[0].Draft); n != 1 {
		t.Errorf("10 of 12 outputs: %d proposals, want 1 (two tokens at most)", n)
	}
	if err := s.Abandon(plan); err != nil {
		t.Fatal(err)
	}
	if err := s.Finish("a"); err != nil {
		t.Fatal(err)
	}
}
