package kvcache

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"
)

// fakeDevice records which token each (block, slot) of each group holds, the way the device
// pools would hold that token's K and V. It checks that a step only writes blocks its
// sequence owns alone and that every position a step reads holds the right token, which is
// what prefix hits, sliding frees and evictions must preserve.
type fakeDevice struct {
	m                *Manager
	global, sliding  [][]int32 // [block][slot] = token+1, 0 = never written
	writes, readHits int
	prefixHits       int // tokens served by Lookup (some admissions then fail and retry)
}

func newFakeDevice(m *Manager) *fakeDevice {
	d := &fakeDevice{m: m}
	mk := func(p *blockPool) [][]int32 {
		if p == nil {
			return nil
		}
		out := make([][]int32, len(p.blocks))
		for i := range out {
			out[i] = make([]int32, m.pageSize)
		}
		return out
	}
	d.global, d.sliding = mk(m.global), mk(m.sliding)
	return d
}

// step writes tokens[start:end] and checks the reads of queries start..end-1.
func (d *fakeDevice) step(s *Seq, tokens []int32, start, end int) error {
	P := d.m.pageSize
	type group struct {
		name  string
		pool  *blockPool
		table []int32
		mem   [][]int32
		from  int // first position read
	}
	groups := []group{}
	if d.m.global != nil {
		groups = append(groups, group{"global", d.m.global, s.global, d.global, 0})
	}
	if d.m.sliding != nil {
		first := d.m.SlidingFirstBlock(start)
		for j := 0; j < first && j < len(s.sliding); j++ {
			if s.sliding[j] != NullBlock {
				return fmt.Errorf("sliding block %d before first block %d still held", j, first)
			}
		}
		groups = append(groups, group{"sliding", d.m.sliding, s.sliding, d.sliding, max(0, start-d.m.window+1)})
	}
	for _, g := range groups {
		if len(g.table) < ceilDiv(end, P) {
			return fmt.Errorf("%s: table of %d blocks for %d tokens", g.name, len(g.table), end)
		}
		for p := start; p < end; p++ {
			id := g.table[p/P]
			if id == NullBlock || g.pool.blocks[id].ref != 1 {
				return fmt.Errorf("%s: position %d writes block %d (ref %d)", g.name, p, id, g.pool.blocks[id].ref)
			}
			g.mem[id][p%P] = tokens[p] + 1
			d.writes++
		}
		for p := g.from; p < end; p++ {
			id := g.table[p/P]
			if id == NullBlock || g.mem[id][p%P] != tokens[p]+1 {
				return fmt.Errorf("%s: position %d reads block %d slot %d = %d, want token %d",
					g.name, p, id, p%P, g.mem[id][p%P]-1, tokens[p])
			}
			if p < start {
				d.readHits++
			}
		}
	}
	return nil
}

// TestRandomizedAgainstFakeDevice drives many sequences with shared prefixes, chunking,
// preemption and aborts through small caches and checks every read against what was written.
func TestRandomizedAgainstFakeDevice(t *testing.T) {
	var hitReads, preemptions int
	for trial := range 60 {
		rng := rand.New(rand.NewPCG(uint64(trial), 7))
		page := []int{1, 2, 4, 16}[rng.IntN(4)]
		cfg := Config{PageSize: page, EnablePrefixCaching: trial%5 != 4}
		if rng.IntN(4) != 0 {
			cfg.NumGlobalBlocks = 2 + rng.IntN(200/page+8)
		}
		if cfg.NumGlobalBlocks == 0 || rng.IntN(4) != 0 {
			cfg.NumSlidingBlocks = 2 + rng.IntN(120/page+8)
			cfg.SlidingWindow = 1 + rng.IntN(24)
		}
		t.Run(fmt.Sprintf("%d_%+v", trial, cfg), func(t *testing.T) {
			h, p := runRandomTrial(t, rng, cfg)
			hitReads, preemptions = hitReads+h, preemptions+p
		})
	}
	// The trials must exercise what they claim to.
	if hitReads == 0 || preemptions == 0 {
		t.Fatalf("prefix-hit tokens %d, preemptions %d: the scenario is too tame", hitReads, preemptions)
	}
	t.Logf("prefix-hit tokens %d, preemptions %d", hitReads, preemptions)
}

type randSeq struct {
	seq      Seq
	family   int
	tokens   []int32
	target   int
	computed int
	active   bool
	done     bool
}

func runRandomTrial(t *testing.T, rng *rand.Rand, cfg Config) (hitReads, preemptions int) {
	m := newTestManager(t, cfg)
	d := newFakeDevice(m)
	const maxChunk = 8
	// Token at position p of family f: families share their first tokens with each other
	// up to a family-dependent point, so hits of different lengths happen.
	tokenAt := func(f, p int) int32 {
		if p < 4*f {
			return int32(p)
		}
		return int32(1000*f + p)
	}
	var seqs []*randSeq
	for range 24 {
		f := rng.IntN(4)
		prompt := 1 + rng.IntN(40)
		s := &randSeq{family: f, target: prompt + rng.IntN(12)}
		for p := range prompt {
			s.tokens = append(s.tokens, tokenAt(f, p))
		}
		if err := m.CheckFits(s.target, maxChunk); err != nil {
			if !errors.Is(err, ErrKVCacheFull) {
				t.Fatal(err)
			}
			continue // can never run here
		}
		seqs = append(seqs, s)
	}
	for step := 0; step < 400; step++ {
		allDone := true
		for _, s := range seqs {
			if s.done {
				continue
			}
			allDone = false
			if rng.IntN(50) == 0 { // abort
				m.Free(&s.seq)
				s.done = true
				continue
			}
			var hit Hit
			if !s.active {
				if rng.IntN(3) == 0 {
					continue // stays waiting this step
				}
				hit = m.Lookup(&s.seq, s.tokens)
				s.computed = hit.NumTokens
				d.prefixHits += hit.NumTokens
			}
			n := min(1+rng.IntN(maxChunk), len(s.tokens)-s.computed)
			if err := m.Allocate(&s.seq, &hit, s.computed, n); err != nil {
				if !errors.Is(err, ErrNoFreeBlocks) {
					t.Fatal(err)
				}
				if s.active {
					preemptions++
				}
				m.Free(&s.seq) // preempt (or fail admission) and retry later
				s.active, s.computed = false, 0
				continue
			}
			s.active = true
			if err := d.step(&s.seq, s.tokens, s.computed, s.computed+n); err != nil {
				t.Fatalf("step %d: %v", step, err)
			}
			s.computed += n
			mustCommit(t, m, &s.seq, s.tokens, s.computed)
			if s.computed == len(s.tokens) { // sample
				s.tokens = append(s.tokens, tokenAt(s.family, len(s.tokens)))
				if len(s.tokens) >= s.target {
					m.Free(&s.seq)
					s.done = true
				}
			}
		}
		if err := m.CheckInvariants(); err != nil {
			t.Fatalf("step %d: %v", step, err)
		}
		if allDone {
			break
		}
	}
	for _, s := range seqs {
		m.Free(&s.seq)
	}
	if len(seqs) > 0 && d.writes == 0 {
		t.Fatal("nothing ran")
	}
	return d.prefixHits, preemptions
}
