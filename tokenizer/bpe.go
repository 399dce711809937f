package tokenizer

import (
	"math"
	"math/bits"
	"strings"
	"unicode/utf8"
)

// bpeModel is HF's BPE model (tokenizers/src/models/bpe) for what tokenizer.json files
// use: a vocab, ranked merges, byte fallback, an optional unk token.
type bpeModel struct {
	vocab        map[string]int32
	merges       mergeTable
	charBMP      []int32 // id of the one-character piece for runes < 0x10000, or -1
	charHi       map[rune]int32
	byteIDs      [256]int32 // ids of "<0xNN>", -1 where missing
	byteFallback bool
	unk          int32 // -1: no unk token
	fuseUnk      bool
	ignoreMerges bool

	// Sub-word splitting (see initSplit): split before a space mark when the symbol
	// before it ends with a rune that no merge joins to a following space mark.
	splitSpace bool
	joinASCII  [utf8.RuneSelf]bool
	joinOther  map[rune]bool
}

// spaceMark is the SentencePiece space, which the normalizer puts in place of ' '.
const spaceMark = '▁'

func (m *bpeModel) initChars(pieces []string) {
	m.charBMP = make([]int32, 1<<16)
	for i := range m.charBMP {
		m.charBMP[i] = -1
	}
	m.charHi = map[rune]int32{}
	for id, p := range pieces {
		if p == "" {
			continue
		}
		r, size := utf8.DecodeRuneInString(p)
		if size != len(p) || (r == utf8.RuneError && size == 1) {
			continue
		}
		if r < 1<<16 {
			m.charBMP[r] = int32(id)
		} else {
			m.charHi[r] = int32(id)
		}
	}
}

func (m *bpeModel) charID(r rune) int32 {
	if r < 1<<16 {
		return m.charBMP[r]
	}
	if id, ok := m.charHi[r]; ok {
		return id
	}
	return -1
}

// initSplit decides whether words may be cut into sub-words before each space mark.
// HF runs BPE on whole pre-tokenized words; for Gemma that is a whole line, since its
// Split(" ") pre-tokenizer runs after ' ' became '▁'. Cutting a word between symbols L and
// R is exact when no merge ever joins a symbol ending like L to one starting like R: the
// merges on each side then happen in the same order as in the whole word. So the cut is
// made before a '▁' unless the symbol before it ends with a rune that ends the left part
// of some merge whose right part starts with '▁' (in Gemma 3 only '>', from "> </").
// Unknown characters must be impossible (complete byte fallback), because HF fuses unk
// runs across the whole word.
func (m *bpeModel) initSplit(pieces []string) {
	if m.ignoreMerges || !m.byteFallback || m.charID(spaceMark) < 0 {
		return
	}
	for _, id := range m.byteIDs {
		if id < 0 {
			return
		}
	}
	m.joinOther = map[rune]bool{}
	m.merges.each(func(a, b int32) {
		if !strings.HasPrefix(pieces[b], string(spaceMark)) {
			return
		}
		last, _ := utf8.DecodeLastRuneInString(pieces[a])
		if last == spaceMark {
			return
		}
		if last < utf8.RuneSelf {
			m.joinASCII[last] = true
		} else {
			m.joinOther[last] = true
		}
	})
	m.splitSpace = true
}

func (m *bpeModel) joinsSpace(last rune) bool {
	if last < utf8.RuneSelf {
		return m.joinASCII[last]
	}
	return m.joinOther[last]
}

// byteRune stands for the last rune of a "<0xNN>" symbol in the join test.
const byteRune = '>'

// appendWord runs BPE over one pre-tokenized word and appends the ids to out.
func (m *bpeModel) appendWord(out []int32, word []byte, ws *workspace) []int32 {
	if len(word) == 0 {
		return out
	}
	if m.ignoreMerges {
		if id, ok := m.vocab[string(word)]; ok {
			return append(out, id)
		}
	}
	syms := ws.syms[:0]
	unkID, unkPending := int32(-1), false
	last := rune(-1) // last rune of the newest symbol, for the sub-word cut
	for i := 0; i < len(word); {
		r, size := rune(word[i]), 1
		if r >= utf8.RuneSelf {
			r, size = utf8.DecodeRune(word[i:])
		}
		if m.splitSpace && r == spaceMark && last != spaceMark && len(syms) > 0 && !m.joinsSpace(last) {
			out = m.appendMerged(out, syms, ws)
			syms = syms[:0]
		}
		if id := m.charID(r); id >= 0 {
			if unkPending {
				syms = append(syms, unkID)
				unkPending = false
			}
			syms = append(syms, id)
			last = r
		} else if m.byteFallback && m.hasBytes(word[i:i+size]) {
			// HF adds the byte tokens without flushing a pending unk.
			for j := i; j < i+size; j++ {
				syms = append(syms, m.byteIDs[word[j]])
			}
			last = byteRune
		} else if m.unk >= 0 {
			if unkPending && !m.fuseUnk {
				syms = append(syms, unkID)
			}
			unkID, unkPending = m.unk, true
		}
		i += size
	}
	if unkPending {
		syms = append(syms, unkID)
	}
	out = m.appendMerged(out, syms, ws)
	ws.syms = syms
	return out
}

func (m *bpeModel) hasBytes(s []byte) bool {
	for i := 0; i < len(s); i++ {
		if m.byteIDs[s[i]] < 0 {
			return false
		}
	}
	return true
}

// smallWord is the symbol count up to which the quadratic merge loop is used; it beats
// the heap on short words. Both give the same result (tested).
var smallWord = 48

// appendMerged applies the merges to syms (clobbering it) and appends the result.
func (m *bpeModel) appendMerged(out, syms []int32, ws *workspace) []int32 {
	switch {
	case len(syms) <= 1:
		return append(out, syms...)
	case len(syms) <= smallWord:
		return append(out, m.mergeSmall(syms, ws)...)
	default:
		return m.mergeHeap(out, syms, ws)
	}
}

const noRank = math.MaxInt32

// mergeSmall repeatedly merges the adjacent pair with the lowest rank, leftmost first:
// the order HF's priority queue pops them in.
func (m *bpeModel) mergeSmall(ids []int32, ws *workspace) []int32 {
	n := len(ids)
	ranks := grow(ws.ranks, n-1)
	next := grow(ws.newIDs, n-1)
	for i := 0; i < n-1; i++ {
		ranks[i], next[i] = m.merges.get(ids[i], ids[i+1])
	}
	for n > 1 {
		best, br := -1, int32(noRank)
		for i, r := range ranks[:n-1] {
			if r < br {
				best, br = i, r
			}
		}
		if best < 0 {
			break
		}
		// Symbol best+1 and pair best+1 go; pairs best-1 and best are looked up again.
		ids[best] = next[best]
		copy(ids[best+1:], ids[best+2:n])
		if best+2 < n-1 {
			copy(ranks[best+1:], ranks[best+2:n-1])
			copy(next[best+1:], next[best+2:n-1])
		}
		n--
		if best > 0 {
			ranks[best-1], next[best-1] = m.merges.get(ids[best-1], ids[best])
		}
		if best < n-1 {
			ranks[best], next[best] = m.merges.get(ids[best], ids[best+1])
		}
	}
	ws.ranks, ws.newIDs = ranks, next
	return ids[:n]
}

func grow(s []int32, n int) []int32 {
	if cap(s) < n {
		return make([]int32, n, 2*n)
	}
	return s[:n]
}

// queued is one candidate merge in mergeHeap's priority queue.
type queued struct {
	rank, pos, id int32
}

func (a queued) less(b queued) bool {
	return a.rank < b.rank || (a.rank == b.rank && a.pos < b.pos)
}

// mergeHeap is HF's Word::merge_all: a priority queue of candidate merges ordered by
// (rank, position), symbols in a linked list, stale entries skipped when popped.
func (m *bpeModel) mergeHeap(out, ids []int32, ws *workspace) []int32 {
	n := len(ids)
	prev := grow(ws.prev, n)
	next := grow(ws.next, n)
	alive := ws.alive[:0]
	for i := range n {
		prev[i], next[i] = int32(i-1), int32(i+1)
		alive = append(alive, true)
	}
	next[n-1] = -1
	h := ws.heap[:0]
	for i := 0; i < n-1; i++ {
		if r, id := m.merges.get(ids[i], ids[i+1]); r != noRank {
			h = append(h, queued{r, int32(i), id})
		}
	}
	heapInit(h)
	for len(h) > 0 {
		top := h[0]
		h = heapPop(h)
		p := top.pos
		if !alive[p] || next[p] < 0 {
			continue
		}
		q := next[p]
		// A stale entry: the pair at p changed since it was queued.
		if _, id := m.merges.get(ids[p], ids[q]); id != top.id {
			continue
		}
		ids[p] = top.id
		alive[q] = false
		next[p] = next[q]
		if next[q] >= 0 {
			prev[next[q]] = p
		}
		if pp := prev[p]; pp >= 0 {
			if r, id := m.merges.get(ids[pp], ids[p]); r != noRank {
				h = heapPush(h, queued{r, pp, id})
			}
		}
		if nn := next[p]; nn >= 0 {
			if r, id := m.merges.get(ids[p], ids[nn]); r != noRank {
				h = heapPush(h, queued{r, p, id})
			}
		}
	}
	for i := int32(0); i >= 0; i = next[i] {
		out = append(out, ids[i])
	}
	ws.prev, ws.next, ws.alive, ws.heap = prev, next, alive, h
	return out
}

func heapInit(h []queued) {
	for i := len(h)/2 - 1; i >= 0; i-- {
		heapDown(h, i)
	}
}

func heapPush(h []queued, x queued) []queued {
	h = append(h, x)
	i := len(h) - 1
	for i > 0 {
		parent := (i - 1) / 2
		if !h[i].less(h[parent]) {
			break
		}
		h[i], h[parent] = h[parent], h[i]
		i = parent
	}
	return h
}

func heapPop(h []queued) []queued {
	last := len(h) - 1
	h[0] = h[last]
	h = h[:last]
	heapDown(h, 0)
	return h
}

func heapDown(h []queued, i int) {
	for {
		l := 2*i + 1
		if l >= len(h) {
			return
		}
		small := l
		if r := l + 1; r < len(h) && h[r].less(h[l]) {
			small = r
		}
		if !h[small].less(h[i]) {
			return
		}
		h[i], h[small] = h[small], h[i]
		i = small
	}
}

// mergeTable maps a pair of ids to the merge's rank and the merged id. It is an
// open-addressing hash table with key and value side by side (one cache line per probe):
// lookups are the hot loop of BPE, and a Go map of 515k entries is several times slower.
type mergeTable struct {
	slots []mergeSlot
	mask  uint64
	shift uint // 64 - log2(len(slots)): the slot is the top bits of key * φ
	n     int
}

type mergeSlot struct {
	key uint64 // left<<32 | right; emptyKey where free
	val uint64 // rank<<32 | merged id
}

const emptyKey = ^uint64(0)

// newMergeTable sizes the table for about hint merges (it grows if there are more).
func newMergeTable(hint int) mergeTable {
	size := 1 << 4
	for size < 2*hint {
		size <<= 1
	}
	t := mergeTable{}
	t.alloc(size)
	return t
}

func (t *mergeTable) alloc(size int) {
	t.slots = make([]mergeSlot, size)
	for i := range t.slots {
		t.slots[i].key = emptyKey
	}
	t.mask = uint64(size - 1)
	t.shift = uint(64 - bits.TrailingZeros(uint(size)))
	t.n = 0
}

// slot is Fibonacci hashing: the high bits of the product depend on every bit of k.
func (t *mergeTable) slot(k uint64) uint64 {
	return (k * 0x9E3779B97F4A7C15) >> t.shift
}

func (t *mergeTable) put(a, b, rank, id int32) {
	if 2*(t.n+1) > len(t.slots) {
		old := t.slots
		t.alloc(2 * len(old))
		for _, s := range old {
			if s.key != emptyKey {
				t.insert(s.key, s.val)
			}
		}
	}
	t.insert(uint64(uint32(a))<<32|uint64(uint32(b)), uint64(uint32(rank))<<32|uint64(uint32(id)))
}

func (t *mergeTable) insert(k, v uint64) {
	for i := t.slot(k); ; i = (i + 1) & t.mask {
		switch t.slots[i].key {
		case emptyKey:
			t.slots[i] = mergeSlot{k, v}
			t.n++
			return
		case k:
			t.slots[i].val = v
			return
		}
	}
}

// get returns the rank and merged id of the pair (a, b), or noRank.
func (t *mergeTable) get(a, b int32) (rank, id int32) {
	k := uint64(uint32(a))<<32 | uint64(uint32(b))
	for i := t.slot(k); ; i = (i + 1) & t.mask {
		s := &t.slots[i]
		switch s.key {
		case k:
			return int32(s.val >> 32), int32(uint32(s.val))
		case emptyKey:
			return noRank, -1
		}
	}
}

func (t *mergeTable) each(fn func(a, b int32)) {
	for _, s := range t.slots {
		if s.key != emptyKey {
			fn(int32(s.key>>32), int32(uint32(s.key)))
		}
	}
}
