package kvcache

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestPoolNullBlockNeverHandedOut(t *testing.T) {
	for _, n := range []int{2, 3, 17} {
		p := newBlockPool(n, true)
		got := p.allocate(nil, p.numFree)
		if len(got) != n-1 {
			t.Fatalf("n=%d: allocated %d blocks, want %d", n, len(got), n-1)
		}
		for _, id := range got {
			if id == NullBlock {
				t.Fatalf("n=%d: null block handed out", n)
			}
		}
		p.release(NullBlock) // must be a no-op
		for i := len(got) - 1; i >= 0; i-- {
			p.release(got[i])
		}
		if err := p.check(); err != nil || p.numFree != n-1 {
			t.Fatalf("n=%d: after freeing all: %v, numFree %d", n, err, p.numFree)
		}
	}
}

func TestPoolLRUOrder(t *testing.T) {
	tests := []struct {
		name     string
		freeSeq  []int32 // blocks 1..4 are allocated, then freed in this order
		touch    []int32 // then taken back (prefix hit) and released again
		wantNext []int32 // the order the pool hands blocks out afterwards
	}{
		{"initial order", nil, nil, []int32{1, 2, 3, 4, 5, 6}},
		{"freed order", []int32{3, 1, 4, 2}, nil, []int32{5, 6, 3, 1, 4, 2}},
		{"touched block moves to tail", []int32{1, 2, 3, 4}, []int32{2}, []int32{5, 6, 1, 3, 4, 2}},
		{"touch order kept", []int32{1, 2, 3, 4}, []int32{4, 1}, []int32{5, 6, 2, 3, 4, 1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := newBlockPool(7, true)
			if tc.freeSeq != nil {
				held := p.allocate(nil, 4)
				if !slices.Equal(held, []int32{1, 2, 3, 4}) {
					t.Fatalf("first allocation %v", held)
				}
				for _, id := range tc.freeSeq {
					p.release(id)
				}
			}
			for _, id := range tc.touch {
				p.touch(id)
			}
			for _, id := range tc.touch {
				p.release(id)
			}
			if err := p.check(); err != nil {
				t.Fatal(err)
			}
			got := p.allocate(nil, p.numFree)
			if !slices.Equal(got, tc.wantNext) {
				t.Fatalf("allocation order %v, want %v", got, tc.wantNext)
			}
		})
	}
}

func TestPoolRefCounts(t *testing.T) {
	p := newBlockPool(4, true)
	ids := p.allocate(nil, 1)
	id := ids[0]
	p.register(id, BlockHash{1})
	p.touch(id) // a second sequence shares it
	steps := []struct {
		op       string
		wantRef  int32
		wantFree bool
	}{
		{"release", 1, false},
		{"release", 0, true},
		{"touch", 1, false},
		{"touch", 2, false},
		{"release", 1, false},
		{"release", 0, true},
	}
	for i, s := range steps {
		if s.op == "touch" {
			p.touch(id)
		} else {
			p.release(id)
		}
		b := p.blocks[id]
		if b.ref != s.wantRef || b.free != s.wantFree {
			t.Fatalf("step %d (%s): ref %d free %v, want %d %v", i, s.op, b.ref, b.free, s.wantRef, s.wantFree)
		}
		if err := p.check(); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		if got, ok := p.lookup(BlockHash{1}); !ok || got != id {
			t.Fatalf("step %d: cached block lost (%d, %v)", i, got, ok)
		}
	}
}

func TestPoolEvictionAndDuplicates(t *testing.T) {
	p := newBlockPool(4, true) // 3 usable
	ids := p.allocate(nil, 2)
	p.register(ids[0], BlockHash{1})
	p.register(ids[1], BlockHash{1}) // same content computed twice: not cached twice
	if p.blocks[ids[1]].hashed {
		t.Fatal("duplicate content registered twice")
	}
	p.release(ids[0])
	p.release(ids[1])
	// Free list: 3, ids[0] (cached), ids[1]. Allocating 2 evicts ids[0]'s hash.
	got := p.allocate(nil, 2)
	if !slices.Equal(got, []int32{3, ids[0]}) {
		t.Fatalf("allocated %v, want [3 %d]", got, ids[0])
	}
	if _, ok := p.lookup(BlockHash{1}); ok || p.evictions != 1 {
		t.Fatalf("hash still cached after eviction (evictions %d)", p.evictions)
	}
	for _, id := range got {
		p.release(id)
	}
	if err := p.check(); err != nil {
		t.Fatal(err)
	}
}

func TestConfigValidation(t *testing.T) {
	tests := []struct {
		name  string
		cfg   Config
		field string // "" = valid
	}{
		{"valid both", Config{PageSize: 16, NumGlobalBlocks: 10, NumSlidingBlocks: 10, SlidingWindow: 512}, ""},
		{"valid global only", Config{PageSize: 16, NumGlobalBlocks: 2}, ""},
		{"valid sliding only", Config{PageSize: 16, NumSlidingBlocks: 2, SlidingWindow: 4}, ""},
		{"page size", Config{PageSize: 0, NumGlobalBlocks: 10}, "PageSize"},
		{"global one block", Config{PageSize: 16, NumGlobalBlocks: 1}, "NumGlobalBlocks"},
		{"sliding negative", Config{PageSize: 16, NumGlobalBlocks: 4, NumSlidingBlocks: -1}, "NumSlidingBlocks"},
		{"no groups", Config{PageSize: 16}, "both 0"},
		{"window missing", Config{PageSize: 16, NumSlidingBlocks: 4}, "SlidingWindow"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewManager(tc.cfg)
			if tc.field == "" {
				if err != nil {
					t.Fatalf("unexpected error %v", err)
				}
				return
			}
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.field) {
				t.Fatalf("error %v, want ErrInvalid naming %q", err, tc.field)
			}
		})
	}
}
