package kvcache

import (
	"testing"
)

// newTestManager builds a Manager and, at the end of the test, fails it unless every block
// is back in its pool and the pools are consistent. Tests must Free all their sequences.
func newTestManager(t testing.TB, cfg Config) *Manager {
	t.Helper()
	m, err := NewManager(cfg)
	if err != nil {
		t.Fatalf("NewManager(%+v): %v", cfg, err)
	}
	t.Cleanup(func() {
		if err := m.CheckAllFree(); err != nil {
			t.Errorf("after the test: %v", err)
		}
	})
	return m
}

// seqTokens returns n deterministic tokens; different salts give different contents.
func seqTokens(salt, n int) []int32 {
	out := make([]int32, n)
	for i := range out {
		out[i] = int32(salt*100003 + i*7 + 1)
	}
	return out
}

// mustAllocate allocates and fails the test on error.
func mustAllocate(t testing.TB, m *Manager, s *Seq, hit *Hit, computed, n int) {
	t.Helper()
	if err := m.Allocate(s, hit, computed, n); err != nil {
		t.Fatalf("Allocate(computed=%d, new=%d): %v", computed, n, err)
	}
}

// mustCommit commits and fails the test on error.
func mustCommit(t testing.TB, m *Manager, s *Seq, tokens []int32, computed int) {
	t.Helper()
	if err := m.Commit(s, tokens, computed); err != nil {
		t.Fatalf("Commit(%d): %v", computed, err)
	}
}

// prefill runs a sequence's tokens[:n] through Lookup, Allocate and Commit in one step and
// returns the hit length.
func prefill(t testing.TB, m *Manager, s *Seq, tokens []int32, n int) int {
	t.Helper()
	hit := m.Lookup(s, tokens[:n])
	mustAllocate(t, m, s, &hit, hit.NumTokens, n-hit.NumTokens)
	mustCommit(t, m, s, tokens, n)
	return hit.NumTokens
}
