package kvcache

import "testing"

// TestTruncateReleasesBlocks: Truncate frees the blocks past a position in both groups
// and refuses to drop a block already in the prefix cache.
func TestTruncateReleasesBlocks(t *testing.T) {
	m, err := NewManager(Config{PageSize: 4, NumGlobalBlocks: 10, NumSlidingBlocks: 10, SlidingWindow: 4, EnablePrefixCaching: true})
	if err != nil {
		t.Fatal(err)
	}
	var seq Seq
	if err := m.Allocate(&seq, nil, 0, 14); err != nil {
		t.Fatal(err)
	}
	toks := make([]int32, 14)
	for i := range toks {
		toks[i] = int32(10 + i)
	}
	if err := m.Commit(&seq, toks, 9); err != nil { // two full blocks registered
		t.Fatal(err)
	}
	if err := m.Truncate(&seq, 9); err != nil {
		t.Fatal(err)
	}
	if len(seq.GlobalBlocks()) != 3 || len(seq.SlidingBlocks()) != 3 {
		t.Errorf("after truncating to 9 positions: %d global, %d sliding blocks; want 3", len(seq.GlobalBlocks()), len(seq.SlidingBlocks()))
	}
	if err := m.Truncate(&seq, 4); err == nil {
		t.Errorf("truncating into a registered block: no error")
	}
	m.Free(&seq)
	if err := m.CheckAllFree(); err != nil {
		t.Error(err)
	}
}
