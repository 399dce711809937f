package grammar

import (
	"fmt"
)

// Matcher is one request's position in a Grammar: the set of parse stacks that the
// tokens accepted so far lead to. It is cheap to create (NewMatcher) and to Clone, and is
// not safe for concurrent use; many Matchers may share one Grammar.
type Matcher struct {
	g          *Grammar
	w          walker
	stacks     []int32 // tops of the live stacks, in w.arena
	terminated bool    // an end-of-sequence token was accepted

	// Scratch reused across calls so that masks do not allocate.
	bufA, bufB []int32
	levels     [][]int32
	marks      []int
	scratch    []uint32
	seen       []frame
	intern     map[frame]int32
}

// NewMatcher returns a matcher at the start of the grammar.
func (g *Grammar) NewMatcher() *Matcher {
	m := &Matcher{g: g}
	m.w.g = g
	depth := g.vocab.maxDepth + 2
	m.levels = make([][]int32, depth)
	m.marks = make([]int, depth)
	m.Reset()
	return m
}

// Reset returns the matcher to the start of the grammar.
func (m *Matcher) Reset() {
	m.w.arena = m.w.arena[:0]
	m.stacks = append(m.stacks[:0], m.w.newFrame(frame{m.g.root, 0, bottomParent}))
	m.terminated = false
}

// Clone returns an independent copy of the matcher's state (for speculative decoding or
// beam search).
func (m *Matcher) Clone() *Matcher {
	c := m.g.NewMatcher()
	c.w.arena = append(c.w.arena[:0], m.w.arena...)
	c.stacks = append(c.stacks[:0], m.stacks...)
	c.terminated = m.terminated
	return c
}

// Grammar returns the grammar the matcher follows.
func (m *Matcher) Grammar() *Grammar { return m.g }

// IsTerminated reports whether an end-of-sequence token has been accepted.
func (m *Matcher) IsTerminated() bool { return m.terminated }

// CanEnd reports whether the text so far is a complete sentence of the grammar, i.e.
// whether an end-of-sequence token is allowed now.
func (m *Matcher) CanEnd() bool {
	if m.terminated {
		return false
	}
	for _, s := range m.stacks {
		if m.w.canEnd(s) {
			return true
		}
	}
	return false
}

// Advance accepts token id: its bytes must continue the grammar (or, for an
// end-of-sequence id, the grammar must be able to end). A rejected token leaves the
// state unchanged and returns an error wrapping ErrRejected.
func (m *Matcher) Advance(id int32) error {
	if m.terminated {
		return fmt.Errorf("%w: token %d after the end of sequence", ErrRejected, id)
	}
	v := m.g.vocab
	if id < 0 || int(id) >= v.size {
		return fmt.Errorf("%w: token %d outside the vocabulary (size %d)", ErrRejected, id, v.size)
	}
	if v.isEOS(id) {
		if !m.CanEnd() {
			return fmt.Errorf("%w: end of sequence (token %d) before the grammar is complete", ErrRejected, id)
		}
		m.terminated = true
		return nil
	}
	t := v.tokens[id]
	if t == nil {
		return fmt.Errorf("%w: token %d has no text (a special token)", ErrRejected, id)
	}
	if err := m.AdvanceBytes(t); err != nil {
		return fmt.Errorf("token %d %q: %w", id, t, err)
	}
	return nil
}

// AdvanceBytes accepts raw bytes (e.g. a forced prefix). On rejection the state is
// unchanged.
func (m *Matcher) AdvanceBytes(t []byte) error {
	if m.terminated {
		return fmt.Errorf("%w: bytes after the end of sequence", ErrRejected)
	}
	mark := len(m.w.arena)
	cur := append(m.bufA[:0], m.stacks...)
	next := m.bufB[:0]
	for i, b := range t {
		next = m.w.step(cur, b, next[:0])
		if len(next) == 0 {
			m.w.arena = m.w.arena[:mark]
			m.bufA, m.bufB = cur, next
			return fmt.Errorf("%w: byte %d (%q) not allowed", ErrRejected, i, b)
		}
		cur, next = next, cur
	}
	m.compact(cur)
	m.bufA, m.bufB = cur, next
	return nil
}

// compact copies the live stacks into a fresh arena, sharing equal frames, so the arena
// does not grow with the text and duplicate stacks collapse.
func (m *Matcher) compact(tops []int32) {
	old := m.w.arena
	fresh := make([]frame, 0, 16)
	if m.intern == nil {
		m.intern = map[frame]int32{}
	}
	clear(m.intern)
	var copyFrame func(fi int32) int32
	copyFrame = func(fi int32) int32 {
		if fi < 0 {
			return fi
		}
		f := old[fi]
		f.parent = copyFrame(f.parent)
		if id, ok := m.intern[f]; ok {
			return id
		}
		fresh = append(fresh, f)
		id := int32(len(fresh) - 1)
		m.intern[f] = id
		return id
	}
	m.stacks = m.stacks[:0]
	for _, t := range tops {
		id := copyFrame(t)
		dup := false
		for _, s := range m.stacks {
			if s == id {
				dup = true
				break
			}
		}
		if !dup {
			m.stacks = append(m.stacks, id)
		}
	}
	m.w.arena = fresh
}

// FillMask writes the allowed next tokens into mask (bit i of mask[i/32] set when token i
// is allowed), which must have at least Vocabulary().MaskWords() words; words beyond
// (a model's padded vocabulary rows) are cleared. End-of-sequence tokens are allowed
// exactly when CanEnd. After termination nothing is allowed.
func (m *Matcher) FillMask(mask []uint32) error {
	v := m.g.vocab
	if len(mask) < v.words {
		return fmt.Errorf("grammar: mask has %d words, the vocabulary needs %d", len(mask), v.words)
	}
	clear(mask)
	mask = mask[:v.words]
	if m.terminated {
		return nil
	}
	m.seen = m.seen[:0]
	for _, s := range m.stacks {
		f := m.w.arena[s]
		e := m.g.entry(&m.w, f.rule, f.state)
		key := frame{f.rule, f.state, 0}
		seen := false
		for _, k := range m.seen {
			if k == key {
				seen = true
				break
			}
		}
		if !seen {
			m.seen = append(m.seen, key)
			m.applyEntry(e, mask, len(m.stacks) == 1)
		}
		m.checkUncertain(s, e.uncertain, mask)
	}
	if m.CanEnd() {
		for _, id := range v.eos {
			mask[id>>5] |= 1 << (id & 31)
		}
	}
	return nil
}

// applyEntry ORs the context-independent part of e into mask; only (the matcher has
// one stack) lets it write the mask directly.
func (m *Matcher) applyEntry(e *maskEntry, mask []uint32, only bool) {
	v := m.g.vocab
	if !e.inverted {
		for _, l := range e.lists {
			for _, id := range l {
				mask[id>>5] |= 1 << (id & 31)
			}
		}
		for _, l := range e.extra {
			for _, id := range l {
				mask[id>>5] |= 1 << (id & 31)
			}
		}
		return
	}
	dst := mask
	if !only {
		if m.scratch == nil {
			m.scratch = make([]uint32, v.words)
		}
		dst = m.scratch
	}
	copy(dst, v.textMask)
	for _, l := range e.lists {
		for _, id := range l {
			dst[id>>5] &^= 1 << (id & 31)
		}
	}
	for _, l := range e.extra {
		for _, id := range l {
			dst[id>>5] |= 1 << (id & 31)
		}
	}
	if !only {
		for i, w := range dst {
			mask[i] |= w
		}
	}
}

// checkUncertain runs each uncertain token against the real stack at top, sharing the
// work for common prefixes (the list is in byte order).
func (m *Matcher) checkUncertain(top int32, unc []int32, mask []uint32) {
	if len(unc) == 0 {
		return
	}
	v := m.g.vocab
	w := &m.w
	base := len(w.arena)
	m.levels[0] = append(m.levels[0][:0], top)
	m.marks[0] = base
	valid := 0
	var prev []byte
	for _, id := range unc {
		if mask[id>>5]&(1<<(id&31)) != 0 {
			continue
		}
		t := v.tokens[id]
		d := 0
		for d < len(t) && d < len(prev) && d < valid && t[d] == prev[d] {
			d++
		}
		ok := true
		for d < len(t) {
			if len(m.levels[d]) == 0 {
				ok = false
				break
			}
			w.arena = w.arena[:m.marks[d]]
			m.levels[d+1] = w.step(m.levels[d], t[d], m.levels[d+1][:0])
			d++
			m.marks[d] = len(w.arena)
		}
		valid = d
		prev = t
		if ok && len(m.levels[d]) > 0 {
			mask[id>>5] |= 1 << (id & 31)
		}
	}
	w.arena = w.arena[:base]
}
