package kvcache

import (
	"errors"
	"fmt"
	"math"
)

var (
	// ErrKVCacheFull means a sequence needs more blocks than a group has in total: it can
	// never run, whatever else finishes.
	ErrKVCacheFull = errors.New("kvcache: request can never fit in the KV cache")
	// ErrNoFreeBlocks means an allocation does not fit in the free blocks right now; the
	// caller preempts another sequence or waits. Nothing was allocated.
	ErrNoFreeBlocks = errors.New("kvcache: not enough free blocks")
	// ErrInvalid is wrapped by configuration errors and by calls that break the protocol.
	ErrInvalid = errors.New("kvcache: invalid argument")
)

// Config sizes a Manager. Block counts include the null block, i.e. they are the first
// dimension of the device page pools; a count of 0 means the model has no layer of that
// attention type.
type Config struct {
	// PageSize is the number of token positions per block (> 0), shared by both groups.
	PageSize int
	// NumGlobalBlocks is the size of the full-attention page pools (0 or >= 2).
	NumGlobalBlocks int
	// NumSlidingBlocks is the size of the sliding-window page pools (0 or >= 2).
	NumSlidingBlocks int
	// SlidingWindow is the number of keys a sliding layer attends to, itself included
	// (Gemma 3: 512 or 1024). Required when NumSlidingBlocks > 0.
	SlidingWindow int
	// EnablePrefixCaching keeps full blocks findable by content after they are freed.
	EnablePrefixCaching bool
}

func (c Config) validate() error {
	switch {
	case c.PageSize <= 0:
		return fmt.Errorf("%w: PageSize %d must be > 0", ErrInvalid, c.PageSize)
	case c.NumGlobalBlocks < 0 || c.NumGlobalBlocks == 1:
		return fmt.Errorf("%w: NumGlobalBlocks %d must be 0 (no global layers) or >= 2 (null block + 1)", ErrInvalid, c.NumGlobalBlocks)
	case c.NumSlidingBlocks < 0 || c.NumSlidingBlocks == 1:
		return fmt.Errorf("%w: NumSlidingBlocks %d must be 0 (no sliding layers) or >= 2 (null block + 1)", ErrInvalid, c.NumSlidingBlocks)
	case c.NumGlobalBlocks == 0 && c.NumSlidingBlocks == 0:
		return fmt.Errorf("%w: NumGlobalBlocks and NumSlidingBlocks are both 0", ErrInvalid)
	case c.NumSlidingBlocks > 0 && c.SlidingWindow <= 0:
		return fmt.Errorf("%w: SlidingWindow %d must be > 0 with sliding blocks", ErrInvalid, c.SlidingWindow)
	case int64(c.NumGlobalBlocks) > 1<<31-1 || int64(c.NumSlidingBlocks) > 1<<31-1:
		return fmt.Errorf("%w: block counts must fit in int32", ErrInvalid)
	}
	return nil
}

// Manager allocates the blocks of both groups for many sequences and runs the prefix
// cache. Create it with NewManager; see the package documentation for the protocol.
type Manager struct {
	cfg      Config
	pageSize int
	window   int
	global   *blockPool // nil without global layers
	sliding  *blockPool // nil without sliding layers
	caching  bool
	hasher   hasher

	// Lookup's results live here until the next Lookup (no allocation per admission).
	hitGlobal, hitSliding []int32

	prefixQueries, prefixHits int64
}

// Seq is one sequence's block tables. The zero value is an empty sequence; the scheduler
// keeps one per request and passes it to the Manager's methods.
type Seq struct {
	global  []int32 // logical block j -> block id
	sliding []int32 // same, NullBlock where the block left the window
	hashes  []BlockHash
	// keys are the sequence's content keys (SetContentKeys), hashed into its blocks.
	keys []ContentKey
	// Blocks [0, reg*) have been offered to the prefix cache.
	regGlobal, regSliding int
}

// SetContentKeys sets what the sequence's positions depend on beyond their token ids (its
// images); call it before the first Lookup. keys is kept, not copied.
func (s *Seq) SetContentKeys(keys []ContentKey) { s.keys = keys }

// GlobalBlocks is the global group's block table: entry j holds logical block j. It is
// owned by the Manager and changes with the next Allocate, Commit or Free.
func (s *Seq) GlobalBlocks() []int32 { return s.global }

// SlidingBlocks is the sliding group's block table, NullBlock where a block has been freed.
// Same ownership as GlobalBlocks.
func (s *Seq) SlidingBlocks() []int32 { return s.sliding }

// NumBlocks is the number of logical blocks the sequence's tables cover.
func (s *Seq) NumBlocks() int { return max(len(s.global), len(s.sliding)) }

// Hit is the result of a prefix-cache lookup: NumTokens (a multiple of PageSize) tokens
// whose KV is already in the cache. Its block lists belong to the Manager and stay valid
// until the next Lookup.
type Hit struct {
	NumTokens int
	global    []int32
	sliding   []int32
}

// NewManager builds the pools of both groups.
func NewManager(cfg Config) (*Manager, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	m := &Manager{cfg: cfg, pageSize: cfg.PageSize, window: cfg.SlidingWindow, caching: cfg.EnablePrefixCaching}
	if cfg.NumGlobalBlocks > 0 {
		m.global = newBlockPool(cfg.NumGlobalBlocks, cfg.EnablePrefixCaching)
	}
	if cfg.NumSlidingBlocks > 0 {
		m.sliding = newBlockPool(cfg.NumSlidingBlocks, cfg.EnablePrefixCaching)
	}
	return m, nil
}

// Config returns the configuration the Manager was built with.
func (m *Manager) Config() Config { return m.cfg }

// PageSize is the number of token positions per block.
func (m *Manager) PageSize() int { return m.pageSize }

// HasGlobal and HasSliding say which groups exist.
func (m *Manager) HasGlobal() bool  { return m.global != nil }
func (m *Manager) HasSliding() bool { return m.sliding != nil }

// SlidingFirstBlock is the first logical block the sliding layers read when the first
// query of a step is at position startPos: floor(max(0, startPos-window+1) / PageSize).
// Blocks before it are free (NullBlock in the table). It is 0 without sliding layers.
func (m *Manager) SlidingFirstBlock(startPos int) int {
	if m.sliding == nil {
		return 0
	}
	return max(0, startPos-m.window+1) / m.pageSize
}

// MaxBlocksPerSeq returns the most blocks one sequence can hold at once in each group when
// its KV covers kvTokens positions and it computes at most maxChunk tokens per step.
func (m *Manager) MaxBlocksPerSeq(kvTokens, maxChunk int) (global, sliding int) {
	total := ceilDiv(kvTokens, m.pageSize)
	if m.global != nil {
		global = total
	}
	if m.sliding != nil {
		maxChunk = min(max(maxChunk, 1), kvTokens)
		// Between the first key of the window of a step's first query and the end of the
		// chunk lie at most window-1+chunk positions, which touch at most one extra block.
		sliding = min(total, ceilDiv(m.window-1+maxChunk, m.pageSize)+1)
	}
	return global, sliding
}

// MaxChunkTokens is the largest number of tokens one sequence may compute in a step so
// that, whatever its length, its sliding blocks fit the sliding pool on their own:
// ceil((window-1+n)/PageSize)+1 <= usable sliding blocks. It is at least 1, and
// unbounded (math.MaxInt) without sliding layers. Schedulers cap prefill chunks by it.
func (m *Manager) MaxChunkTokens() int {
	if m.sliding == nil {
		return math.MaxInt
	}
	return max(1, (m.sliding.usable()-1)*m.pageSize-(m.window-1))
}

// CheckFits returns an error wrapping ErrKVCacheFull when a sequence whose KV covers
// kvTokens positions, computed at most maxChunk tokens per step, needs more blocks than a
// group has in total.
func (m *Manager) CheckFits(kvTokens, maxChunk int) error {
	g, s := m.MaxBlocksPerSeq(kvTokens, maxChunk)
	if m.global != nil && g > m.global.usable() {
		return fmt.Errorf("%w: %d tokens need %d global blocks of %d tokens, the cache has %d",
			ErrKVCacheFull, kvTokens, g, m.pageSize, m.global.usable())
	}
	if m.sliding != nil && s > m.sliding.usable() {
		return fmt.Errorf("%w: %d tokens in chunks of %d need %d sliding-window blocks, the cache has %d",
			ErrKVCacheFull, kvTokens, maxChunk, s, m.sliding.usable())
	}
	return nil
}

// Lookup finds the longest cached prefix of tokens for an empty seq: whole blocks only, and
// never the last token (it must be recomputed). It also computes the chained hashes of
// tokens' full blocks into seq (kept across preemption). With prefix caching off, or a seq
// that already holds blocks, the hit is empty. Lookup takes no reference: pass the hit to
// Allocate, before any other Lookup.
func (m *Manager) Lookup(seq *Seq, tokens []int32) Hit {
	if !m.caching || seq.NumBlocks() > 0 || len(tokens) < 2 {
		return Hit{}
	}
	maxBlocks := (len(tokens) - 1) / m.pageSize
	seq.hashes = m.hasher.extend(seq.hashes, tokens, seq.keys, m.pageSize, maxBlocks)
	hashes := seq.hashes[:maxBlocks]

	n := maxBlocks
	m.hitGlobal = m.hitGlobal[:0]
	if m.global != nil {
		for i, h := range hashes {
			id, ok := m.global.lookup(h)
			if !ok {
				n = i
				break
			}
			m.hitGlobal = append(m.hitGlobal, id)
		}
	}
	m.hitSliding = m.hitSliding[:0]
	if m.sliding != nil {
		n = m.slidingHit(hashes[:n])
		m.hitGlobal = m.hitGlobal[:min(len(m.hitGlobal), n)]
	}
	return Hit{NumTokens: n * m.pageSize, global: m.hitGlobal, sliding: m.hitSliding}
}

// slidingHit returns the longest n <= len(hashes) such that the sliding layers can resume
// after n blocks: the ceil((window-1)/PageSize) blocks before block n are cached, or all of
// blocks [0, n) are when n is shorter than that. It leaves the hit's table in m.hitSliding
// with NullBlock for the blocks the window no longer needs.
func (m *Manager) slidingHit(hashes []BlockHash) int {
	need := ceilDiv(m.window-1, m.pageSize)
	m.hitSliding = m.hitSliding[:0]
	for range hashes {
		m.hitSliding = append(m.hitSliding, NullBlock)
	}
	if need == 0 {
		return len(hashes)
	}
	run := 0
	for i := len(hashes) - 1; i >= 0; i-- {
		id, ok := m.sliding.lookup(hashes[i])
		if !ok {
			run = 0
			continue
		}
		m.hitSliding[i] = id
		if run++; run >= need {
			// Entries before i are still NullBlock (the scan runs backwards); entries of a
			// broken run after the window are cut off.
			m.hitSliding = m.hitSliding[:i+run]
			return i + run
		}
	}
	// No full window anywhere: the run that reached block 0 (possibly empty) is a hit,
	// because a prefix shorter than the window needs every block from the start.
	m.hitSliding = m.hitSliding[:run]
	return run
}

// Allocate gives seq the blocks to compute numNew tokens after its first numComputed
// (prefix hit included). hit is the result of Lookup for an empty seq (numComputed must
// equal hit.NumTokens) or nil. Before counting, sliding blocks that the window of position
// numComputed no longer reaches are freed. It returns an error wrapping ErrNoFreeBlocks,
// leaving the tables as they were apart from that sliding cleanup, when either group is
// short of free blocks (blocks taken back from the prefix cache count as allocated).
func (m *Manager) Allocate(seq *Seq, hit *Hit, numComputed, numNew int) error {
	if numComputed < 0 || numNew < 0 {
		return fmt.Errorf("%w: numComputed %d, numNew %d", ErrInvalid, numComputed, numNew)
	}
	var hitG, hitS []int32
	if hit != nil && hit.NumTokens > 0 {
		if seq.NumBlocks() > 0 || numComputed != hit.NumTokens {
			return fmt.Errorf("%w: a prefix hit of %d tokens needs an empty sequence and numComputed = %d (sequence has %d blocks, numComputed %d)",
				ErrInvalid, hit.NumTokens, hit.NumTokens, seq.NumBlocks(), numComputed)
		}
		hitG, hitS = hit.global, hit.sliding
	}
	total := ceilDiv(numComputed+numNew, m.pageSize)
	if m.global != nil && total < len(seq.global) || m.sliding != nil && total < len(seq.sliding) {
		// Tables only grow; a smaller total means the caller's position went backwards.
		return fmt.Errorf("%w: %d tokens need %d blocks but the sequence holds %d", ErrInvalid,
			numComputed+numNew, total, seq.NumBlocks())
	}
	m.removeSkipped(seq, numComputed)

	var needG, needS int
	if m.global != nil {
		needG = total - len(seq.global) - len(hitG)
		if needG+m.global.countFree(hitG) > m.global.numFree {
			return ErrNoFreeBlocks
		}
	}
	if m.sliding != nil {
		needS = total - len(seq.sliding) - len(hitS)
		if needS+m.sliding.countFree(hitS) > m.sliding.numFree {
			return ErrNoFreeBlocks
		}
	}
	if hit != nil && hit.NumTokens > 0 {
		for _, id := range hitG {
			m.global.touch(id)
		}
		seq.global = append(seq.global, hitG...)
		seq.regGlobal = len(hitG)
		for _, id := range hitS {
			if id != NullBlock {
				m.sliding.touch(id)
			}
		}
		seq.sliding = append(seq.sliding, hitS...)
		seq.regSliding = len(hitS)
	}
	if needG > 0 {
		seq.global = m.global.allocate(seq.global, needG)
	}
	if needS > 0 {
		seq.sliding = m.sliding.allocate(seq.sliding, needS)
	}
	return nil
}

// RecordPrefixQuery adds one admission's figures to the prefix-cache counters (tokens
// looked up, tokens hit). The scheduler calls it once per admitted request.
func (m *Manager) RecordPrefixQuery(queried, hit int) {
	if m.caching {
		m.prefixQueries += int64(queried)
		m.prefixHits += int64(hit)
	}
}

// Commit is called after a step computed seq's KV up to position numComputed (exclusive):
// it registers the newly full blocks in the prefix cache (tokens must hold at least
// numComputed tokens) and frees the sliding blocks that the window of the next query
// (position numComputed) no longer reaches.
func (m *Manager) Commit(seq *Seq, tokens []int32, numComputed int) error {
	if numComputed > len(tokens) || ceilDiv(numComputed, m.pageSize) > seq.NumBlocks() {
		return fmt.Errorf("%w: commit of %d tokens (have %d tokens, %d blocks)", ErrInvalid,
			numComputed, len(tokens), seq.NumBlocks())
	}
	if m.caching {
		full := numComputed / m.pageSize
		if full > seq.regGlobal || full > seq.regSliding {
			seq.hashes = m.hasher.extend(seq.hashes, tokens, seq.keys, m.pageSize, full)
		}
		if m.global != nil {
			for i := seq.regGlobal; i < full; i++ {
				m.global.register(seq.global[i], seq.hashes[i])
			}
			seq.regGlobal = max(seq.regGlobal, full)
		}
		if m.sliding != nil {
			for i := seq.regSliding; i < full; i++ {
				m.sliding.register(seq.sliding[i], seq.hashes[i])
			}
			seq.regSliding = max(seq.regSliding, full)
		}
	}
	m.removeSkipped(seq, numComputed)
	return nil
}

// removeSkipped frees the sliding blocks wholly before the window of a query at position
// pos, last block first (so the older block stays cached longer), like vLLM.
func (m *Manager) removeSkipped(seq *Seq, pos int) {
	if m.sliding == nil {
		return
	}
	skipped := min(m.SlidingFirstBlock(pos), len(seq.sliding))
	for i := skipped - 1; i >= 0; i-- {
		id := seq.sliding[i]
		if id == NullBlock {
			break // everything before was freed earlier
		}
		m.sliding.release(id)
		seq.sliding[i] = NullBlock
	}
}

// Free releases all of seq's blocks (last block first, so a prefix's tail is evicted before
// its head) and empties its tables. The block hashes are kept: the tokens they describe
// are still the sequence's, so a preempted sequence needs not rehash them.
func (m *Manager) Free(seq *Seq) {
	for i := len(seq.global) - 1; i >= 0; i-- {
		m.global.release(seq.global[i])
	}
	for i := len(seq.sliding) - 1; i >= 0; i-- {
		m.sliding.release(seq.sliding[i])
	}
	seq.global, seq.sliding = seq.global[:0], seq.sliding[:0]
	seq.regGlobal, seq.regSliding = 0, 0
}

// GroupStats describes one group's pool. Block counts exclude the null block.
type GroupStats struct {
	NumBlocks int
	NumFree   int // free blocks, cached ones included
	NumCached int // blocks findable by the prefix cache (in use or free)
	Evictions int64
}

// Usage is the fraction of the group's blocks in use (0..1).
func (g GroupStats) Usage() float64 {
	if g.NumBlocks == 0 {
		return 0
	}
	return float64(g.NumBlocks-g.NumFree) / float64(g.NumBlocks)
}

// Stats is a snapshot of the Manager for metrics.
type Stats struct {
	Global, Sliding GroupStats // zero for an absent group
	// PrefixQueries and PrefixHits count tokens over admissions, cumulative.
	PrefixQueries, PrefixHits int64
}

// Usage is the fraction of KV blocks in use, taken as the fuller of the two groups: that is
// the one that makes the scheduler preempt.
func (s Stats) Usage() float64 { return max(s.Global.Usage(), s.Sliding.Usage()) }

// Stats returns a snapshot of the pools and the prefix-cache counters.
func (m *Manager) Stats() Stats {
	s := Stats{PrefixQueries: m.prefixQueries, PrefixHits: m.prefixHits}
	if m.global != nil {
		s.Global = m.global.stats()
	}
	if m.sliding != nil {
		s.Sliding = m.sliding.stats()
	}
	return s
}

func (p *blockPool) stats() GroupStats {
	return GroupStats{NumBlocks: p.usable(), NumFree: p.numFree, NumCached: len(p.cache), Evictions: p.evictions}
}

// Usage is Stats().Usage() without building the snapshot.
func (m *Manager) Usage() float64 {
	u := 0.0
	for _, p := range []*blockPool{m.global, m.sliding} {
		if p != nil {
			u = max(u, float64(p.usable()-p.numFree)/float64(p.usable()))
		}
	}
	return u
}

// CheckInvariants verifies both pools' internal consistency (free list, reference counts,
// prefix-cache map). Tests call it; it is O(blocks).
func (m *Manager) CheckInvariants() error {
	if m.global != nil {
		if err := m.global.check(); err != nil {
			return fmt.Errorf("global group: %w", err)
		}
	}
	if m.sliding != nil {
		if err := m.sliding.check(); err != nil {
			return fmt.Errorf("sliding group: %w", err)
		}
	}
	return nil
}

// CheckAllFree returns an error when any block is still referenced or the pools are
// inconsistent: after every sequence has been freed, every block must be back in its pool.
// Tests of the scheduler and the engine call it at teardown to catch leaks.
func (m *Manager) CheckAllFree() error {
	if err := m.CheckInvariants(); err != nil {
		return err
	}
	for _, g := range []struct {
		name string
		p    *blockPool
	}{{"global", m.global}, {"sliding", m.sliding}} {
		if g.p != nil && g.p.numFree != g.p.usable() {
			var held []int32
			for id := 1; id < len(g.p.blocks) && len(held) < 16; id++ {
				if g.p.blocks[id].ref > 0 {
					held = append(held, int32(id))
				}
			}
			return fmt.Errorf("kvcache: %s group leaks %d of %d blocks (first held: %v)",
				g.name, g.p.usable()-g.p.numFree, g.p.usable(), held)
		}
	}
	return nil
}

func ceilDiv(a, b int) int { return (a + b - 1) / b }

// ResetPrefixCache forgets every cached block (vLLM's reset_prefix_cache): the engine
// calls it when the device pools were reallocated, so no later lookup can hit a block whose
// K/V no longer exists. Every block must be free; otherwise it returns an error wrapping
// ErrInvalid and changes nothing.
func (m *Manager) ResetPrefixCache() error {
	for _, p := range []*blockPool{m.global, m.sliding} {
		if p != nil && p.numFree != p.usable() {
			return fmt.Errorf("%w: reset of the prefix cache with %d blocks in use", ErrInvalid, p.usable()-p.numFree)
		}
	}
	for _, p := range []*blockPool{m.global, m.sliding} {
		if p != nil {
			if err := p.resetCache(); err != nil {
				return err
			}
		}
	}
	return nil
}

// Truncate gives back the blocks of seq past the first numTokens positions: a speculative
// step allocated slots for every proposal, and those past the accepted run hold the K/V of
// rejected tokens. Such blocks were never offered to the prefix cache (Commit registers
// only blocks within the computed positions), so they go straight back to the free list;
// sliding blocks that already left the window are NullBlock and are skipped.
func (m *Manager) Truncate(seq *Seq, numTokens int) error {
	keep := ceilDiv(max(numTokens, 0), m.pageSize)
	if keep < seq.regGlobal && m.global != nil || keep < seq.regSliding && m.sliding != nil {
		return fmt.Errorf("%w: truncating to %d tokens would drop blocks already in the prefix cache", ErrInvalid, numTokens)
	}
	if m.global != nil {
		for i := len(seq.global) - 1; i >= keep; i-- {
			m.global.release(seq.global[i])
		}
		seq.global = seq.global[:min(keep, len(seq.global))]
	}
	if m.sliding != nil {
		for i := len(seq.sliding) - 1; i >= keep; i-- {
			if id := seq.sliding[i]; id != NullBlock {
				m.sliding.release(id)
			}
		}
		seq.sliding = seq.sliding[:min(keep, len(seq.sliding))]
	}
	return nil
}
