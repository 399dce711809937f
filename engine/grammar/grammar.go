package grammar

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"math/bits"
	"sync"
	"sync/atomic"
)

// Grammar is a compiled grammar bound to a Vocabulary: one byte automaton per rule (with
// call edges between rules), static analyses of them, and the lazily filled per-state
// token-mask cache. It is immutable apart from that cache (filled atomically), and safe
// for concurrent use by any number of Matchers.
type Grammar struct {
	vocab *Vocabulary
	rules []*dfa
	names []string // rule names for errors and debugging
	root  int32

	firstAny    [][]byteSet // per rule, per state: bytes that can be consumed next without popping
	nullable    []bool
	canComplete [][]bool        // per rule, per state: the rule can finish from here consuming nothing
	follow      []byteSet       // bytes that can come right after a rule returns, in any context
	follow2     []*[256]byteSet // follow2[r][b1] = bytes that can come right after b1 in follow(r)
	cache       [][]atomic.Pointer[maskEntry]
	counted     map[int32]*countedString // string rules with only length bounds
	plainState  [][]bool                 // no call edges and cannot complete: see plain
	// fingerprints of call-free rules (with their follow sets): their cache entries
	// depend on nothing else, so grammars share them through the vocabulary.
	fingerprints []*[32]byte
}

// entryKey names a shared cache entry: a call-free rule's fingerprint and a state.
type entryKey struct {
	fp     [32]byte
	state  int32
	follow byteSet
}

// jsonFollow is what may follow a JSON value or key in compact output (separators and
// closers; whitespace stays out: it starts a quarter of the vocabulary).
var jsonFollow = setOf(",:]}")

// maxSharedEntries bounds the vocabulary-wide entry cache (entries are a few KB to
// ~1 MB; most schemas reuse the same string and number rules).
const maxSharedEntries = 2048

// sharedEntries is embedded in Vocabulary.
type sharedEntries struct {
	shared      sync.Map // entryKey → *maskEntry
	sharedCount atomic.Int64
}

// fingerprint hashes a call-free automaton and its follow set.
func (d *dfa) fingerprint() *[32]byte {
	h := sha256.New()
	var buf [8]byte
	h.Write(d.classOf[:])
	for _, t := range d.next {
		binary.LittleEndian.PutUint32(buf[:4], uint32(t))
		h.Write(buf[:4])
	}
	for _, f := range d.final {
		if f {
			h.Write([]byte{1})
		} else {
			h.Write([]byte{0})
		}
	}
	var out [32]byte
	h.Sum(out[:0])
	return &out
}

// maskEntry is what one rule state allows regardless of what lies below it on the stack
// (XGrammar's adaptive token mask): tokens accepted within the frame (or frames it
// pushes), and tokens that need the real stack because they may pop the frame.
type maskEntry struct {
	// Accepted ids are the union of lists, or (inverted) the text tokens minus the
	// union of lists; either way plus the union of extra. Lists may be shared slices.
	inverted  bool
	lists     [][]int32
	extra     [][]int32
	uncertain []int32 // ids to check against the real stack, best in trie (byte) order
}

// ruleSet is what a front end produces: rule exprs (index = rule id) and the root.
type ruleSet struct {
	exprs   []*expr
	names   []string
	root    int
	counted map[int][2]int // rules that are JSON strings with length bounds {min, max (-1: none)}
}

func (rs *ruleSet) add(name string) int {
	rs.exprs = append(rs.exprs, nil)
	rs.names = append(rs.names, name)
	return len(rs.exprs) - 1
}

func newGrammar(v *Vocabulary, rs *ruleSet) (*Grammar, error) {
	g := &Grammar{vocab: v, root: int32(rs.root), names: rs.names}
	g.rules = make([]*dfa, len(rs.exprs))
	for i, e := range rs.exprs {
		if e == nil {
			return nil, fmt.Errorf("%w: rule %q has no definition", ErrInvalidGrammar, rs.names[i])
		}
		if e.kind == exDFA && e.dfa.calls == nil {
			g.rules[i] = e.dfa // already deterministic; keeps its state marks
			continue
		}
		d, err := compileExpr(e)
		if err != nil {
			return nil, fmt.Errorf("rule %q: %w", rs.names[i], err)
		}
		g.rules[i] = d
	}
	g.analyse()
	if err := g.checkLeftRecursion(); err != nil {
		return nil, err
	}
	g.computeFollow2()
	g.counted = map[int32]*countedString{}
	for r, b := range rs.counted {
		if cs := newCountedString(g.rules[r], b[0], b[1]); cs != nil {
			g.counted[int32(r)] = cs
		}
	}
	g.plainState = make([][]bool, len(g.rules))
	for i, r := range g.rules {
		g.plainState[i] = make([]bool, r.numStates())
		for st := range g.plainState[i] {
			g.plainState[i][st] = !g.canComplete[i][st] && (r.calls == nil || len(r.calls[st]) == 0)
		}
	}
	g.fingerprints = make([]*[32]byte, len(g.rules))
	for i, r := range g.rules {
		if r.calls == nil {
			g.fingerprints[i] = r.fingerprint()
		}
	}
	g.cache = make([][]atomic.Pointer[maskEntry], len(g.rules))
	for i, r := range g.rules {
		g.cache[i] = make([]atomic.Pointer[maskEntry], r.numStates())
	}
	return g, nil
}

// analyse computes nullable, canComplete, firstAny and follow by fixed points.
func (g *Grammar) analyse() {
	n := len(g.rules)
	g.nullable = make([]bool, n)
	g.canComplete = make([][]bool, n)
	g.firstAny = make([][]byteSet, n)
	for i, r := range g.rules {
		g.canComplete[i] = make([]bool, r.numStates())
		g.firstAny[i] = make([]byteSet, r.numStates())
		copy(g.canComplete[i], r.final)
	}
	for changed := true; changed; {
		changed = false
		for i, r := range g.rules {
			if r.calls == nil {
				continue
			}
			for s := range r.calls {
				if g.canComplete[i][s] {
					continue
				}
				for _, ce := range r.calls[s] {
					if g.canComplete[ce.rule][0] && g.canComplete[i][ce.to] {
						g.canComplete[i][s] = true
						changed = true
						break
					}
				}
			}
		}
	}
	for i := range g.rules {
		g.nullable[i] = g.canComplete[i][0]
	}
	// firstAny: direct byte transitions, plus the callee's first bytes, plus (callee
	// nullable) the return state's first bytes.
	for i, r := range g.rules {
		classBytes := make([]byteSet, r.nclass)
		for b := 0; b < 256; b++ {
			classBytes[r.classOf[b]].add(byte(b))
		}
		for s := 0; s < r.numStates(); s++ {
			row := r.next[s*r.nclass : (s+1)*r.nclass]
			for c, t := range row {
				if t >= 0 {
					g.firstAny[i][s].union(classBytes[c])
				}
			}
		}
	}
	for changed := true; changed; {
		changed = false
		for i, r := range g.rules {
			if r.calls == nil {
				continue
			}
			for s := range r.calls {
				for _, ce := range r.calls[s] {
					if g.firstAny[i][s].union(g.firstAny[ce.rule][0]) {
						changed = true
					}
					if g.nullable[ce.rule] && g.firstAny[i][s].union(g.firstAny[i][ce.to]) {
						changed = true
					}
				}
			}
		}
	}
	// follow(R) ⊇ firstAny(ret) for every call of R; ⊇ follow(P) when P can complete
	// from ret.
	g.follow = make([]byteSet, n)
	for changed := true; changed; {
		changed = false
		for i, r := range g.rules {
			if r.calls == nil {
				continue
			}
			for s := range r.calls {
				for _, ce := range r.calls[s] {
					if g.follow[ce.rule].union(g.firstAny[i][ce.to]) {
						changed = true
					}
					if g.canComplete[i][ce.to] && g.follow[ce.rule].union(g.follow[i]) {
						changed = true
					}
				}
			}
		}
	}
}

// checkLeftRecursion rejects a rule that can call itself before consuming a byte: the
// stack would grow without bound.
func (g *Grammar) checkLeftRecursion() error {
	// edges[r] = rules r may call at a position reached without consuming.
	n := len(g.rules)
	edges := make([][]int32, n)
	for i, r := range g.rules {
		if r.calls == nil {
			continue
		}
		seen := make([]bool, r.numStates())
		stack := []int32{0}
		seen[0] = true
		for len(stack) > 0 {
			s := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			for _, ce := range r.calls[s] {
				edges[i] = append(edges[i], ce.rule)
				if g.nullable[ce.rule] && !seen[ce.to] {
					seen[ce.to] = true
					stack = append(stack, ce.to)
				}
			}
		}
	}
	color := make([]uint8, n)
	var visit func(r int32) error
	visit = func(r int32) error {
		color[r] = 1
		for _, c := range edges[r] {
			switch color[c] {
			case 1:
				return fmt.Errorf("%w: rule %q is left-recursive", ErrInvalidGrammar, g.names[c])
			case 0:
				if err := visit(c); err != nil {
					return err
				}
			}
		}
		color[r] = 2
		return nil
	}
	for r := 0; r < n; r++ {
		if color[r] == 0 {
			if err := visit(int32(r)); err != nil {
				return err
			}
		}
	}
	return nil
}

// Vocabulary returns the vocabulary the grammar was compiled for.
func (g *Grammar) Vocabulary() *Vocabulary { return g.vocab }

// NumRules and NumStates describe the compiled size (for logs and benchmarks).
func (g *Grammar) NumRules() int { return len(g.rules) }

func (g *Grammar) NumStates() int {
	n := 0
	for _, r := range g.rules {
		n += r.numStates()
	}
	return n
}

// frame is one stack entry: a rule and the state in it; parent is the frame below
// (an index into the walker's arena), bottomParent at the bottom of a real stack, or
// unknownParent in a mask-cache computation.
type frame struct {
	rule, state, parent int32
}

const (
	bottomParent  int32 = -1
	unknownParent int32 = -2
)

// walker advances sets of stacks by one byte. Stacks are persistent linked lists in an
// arena that callers truncate to undo speculative steps.
type walker struct {
	g       *Grammar
	arena   []frame
	visited []frame
	popped  bool // a stack popped an unknownParent frame on a byte in its follow set
	// followOverride, when set, replaces the base rule's follow set (for entries shared
	// between grammars, whose follow sets differ).
	followOverride *byteSet
}

func (w *walker) newFrame(f frame) int32 {
	w.arena = append(w.arena, f)
	return int32(len(w.arena) - 1)
}

// step returns, appended to out, the stacks that result from consuming b on each of in.
func (w *walker) step(in []int32, b byte, out []int32) []int32 {
	w.popped = false
	for _, fi := range in {
		w.visited = w.visited[:0]
		out = w.expand(fi, b, out)
	}
	return out
}

func (w *walker) expand(fi int32, b byte, out []int32) []int32 {
	f := w.arena[fi]
	g := w.g
	r := g.rules[f.rule]
	final := r.final[f.state]
	if !g.canComplete[f.rule][f.state] && !g.firstAny[f.rule][f.state].has(b) {
		return out
	}
	for _, v := range w.visited {
		if v == f {
			return out
		}
	}
	w.visited = append(w.visited, f)
	if t := r.step(f.state, b); t >= 0 {
		nf := frame{f.rule, t, f.parent}
		dup := false
		for _, o := range out {
			if w.arena[o] == nf {
				dup = true
				break
			}
		}
		if !dup {
			out = append(out, w.newFrame(nf))
		}
	}
	if r.calls != nil {
		for _, ce := range r.calls[f.state] {
			if !g.firstAny[ce.rule][0].has(b) && !g.nullable[ce.rule] {
				continue
			}
			ret := w.newFrame(frame{f.rule, ce.to, f.parent})
			callee := w.newFrame(frame{ce.rule, 0, ret})
			out = w.expand(callee, b, out)
		}
	}
	if final {
		switch {
		case f.parent >= 0:
			out = w.expand(f.parent, b, out)
		case f.parent == unknownParent:
			if w.followOverride != nil && w.followOverride.has(b) || w.followOverride == nil && g.follow[f.rule].has(b) {
				w.popped = true
			}
		}
	}
	return out
}

// canEnd reports whether the stack at fi can finish without consuming anything.
func (w *walker) canEnd(fi int32) bool {
	for fi >= 0 {
		f := w.arena[fi]
		if !w.g.canComplete[f.rule][f.state] {
			return false
		}
		fi = f.parent
	}
	return fi == bottomParent
}

// entry returns the mask cache entry of a rule state, computing it on first use.
func (g *Grammar) entry(w *walker, rule, state int32) *maskEntry {
	p := &g.cache[rule][state]
	if e := p.Load(); e != nil {
		return e
	}
	var e *maskEntry
	fp := g.fingerprints[rule]
	if cr := g.counted[rule]; cr != nil && cr.hasState(state) {
		e = g.countedEntry(cr, rule, state)
	} else if ls := g.rules[rule].likeString; ls != nil && ls[state] {
		e = g.stringLikeEntry(rule, state)
	} else if fp != nil {
		// The shared entry is computed with the follow set widened to everything that can
		// follow a JSON value, so that schemas share it; this grammar's own follow set then
		// narrows its uncertain tokens.
		follow := g.follow[rule]
		follow.union(jsonFollow)
		key := entryKey{*fp, state, follow}
		var shared *maskEntry
		if x, ok := g.vocab.shared.Load(key); ok {
			shared = x.(*maskEntry)
		} else {
			w.followOverride = &follow
			shared = g.computeEntry(w, rule, state)
			w.followOverride = nil
			if g.vocab.sharedCount.Add(1) <= maxSharedEntries {
				g.vocab.shared.Store(key, shared)
			}
		}
		e = g.narrowUncertain(shared, rule, state)
	} else {
		e = g.computeEntry(w, rule, state)
	}
	if !p.CompareAndSwap(nil, e) {
		return p.Load()
	}
	return e
}

// narrowUncertain drops the uncertain tokens of a call-free rule's shared entry that
// leave the rule on a byte outside this grammar's follow set.
func (g *Grammar) narrowUncertain(e *maskEntry, rule, state int32) *maskEntry {
	d := g.rules[rule]
	follow := g.follow[rule]
	var keep []int32
	for _, id := range e.uncertain {
		t := g.vocab.tokens[id]
		s := state
		for i := 0; i < len(t); i++ {
			// The frame may return after any final state; the byte after it must follow.
			if d.final[s] && follow.has(t[i]) && (i+1 == len(t) || g.follow2[rule][t[i]].has(t[i+1])) {
				keep = append(keep, id)
				break
			}
			if s = d.step(s, t[i]); s < 0 {
				break
			}
		}
	}
	out := *e
	out.uncertain = keep
	return &out
}

// computeEntry walks the whole token trie from a frame whose parent is unknown,
// pruning a subtree as soon as no stack survives and the frame has not popped.
func (g *Grammar) computeEntry(w *walker, rule, state int32) *maskEntry {
	v := g.vocab
	mark := len(w.arena)
	defer func() { w.arena = w.arena[:mark] }()
	depth := v.maxDepth + 1
	levels := make([][]int32, depth+1)
	marks := make([]int, depth+1)
	// A stack returned from the base frame (to its unknown caller): verified once the two
	// bytes after the return are a pair follow2 allows; pending holds the first of them
	// while the second is not yet read.
	verified := make([]bool, depth+1)
	pending := make([]int16, depth+1)
	pending[0] = -1
	f2 := g.follow2[rule]
	if w.followOverride != nil {
		f2 = &anyPair
	}
	// A level is "fast" when it is one stack whose top can neither call nor return: the
	// next byte is one table lookup, and the frame stays out of the arena.
	fast := make([]bool, depth+1)
	fastFrame := make([]frame, depth+1)
	levels[0] = []int32{w.newFrame(frame{rule, state, unknownParent})}
	marks[0] = len(w.arena)
	if g.plainState[rule][state] {
		fast[0], fastFrame[0] = true, frame{rule, state, unknownParent}
	}
	var unc []int32
	acc := make([]uint32, v.words)
	n := int32(len(v.nodeByte))
	for i := int32(1); i < n; {
		d := v.nodeDepth[i]
		b := v.nodeByte[i]
		ver := verified[d-1] || pending[d-1] >= 0 && f2[pending[d-1]].has(b)
		pend := int16(-1)
		alive := false
		if fast[d-1] {
			f := fastFrame[d-1]
			r := g.rules[f.rule]
			if t := r.next[int(f.state)*r.nclass+int(r.classOf[b])]; t >= 0 {
				alive = true
				marks[d] = marks[d-1]
				if g.plainState[f.rule][t] {
					fast[d], fastFrame[d] = true, frame{f.rule, t, f.parent}
				} else {
					fast[d] = false
					w.arena = w.arena[:marks[d-1]]
					levels[d] = append(levels[d][:0], w.newFrame(frame{f.rule, t, f.parent}))
					marks[d] = len(w.arena)
				}
			}
		} else {
			w.arena = w.arena[:marks[d-1]]
			levels[d] = w.step(levels[d-1], b, levels[d][:0])
			if w.popped {
				pend = int16(b)
			}
			if alive = len(levels[d]) > 0; alive {
				marks[d] = len(w.arena)
				fast[d] = false
				if len(levels[d]) == 1 {
					if f := w.arena[levels[d][0]]; g.plainState[f.rule][f.state] {
						fast[d], fastFrame[d] = true, f
					}
				}
			}
		}
		if !alive {
			switch {
			case ver:
				unc = append(unc, v.toks[v.nodeTok[i]:v.nodeTok[v.nodeEnd[i]]]...)
			case pend >= 0:
				// Returned on b: the token may end here, or go on with a byte that can
				// follow b.
				unc = append(unc, v.toks[v.nodeTok[i]:v.nodeTok[i+1]]...)
				for c := i + 1; c < v.nodeEnd[i]; c = v.nodeEnd[c] {
					if f2[b].has(v.nodeByte[c]) {
						unc = append(unc, v.toks[v.nodeTok[c]:v.nodeTok[v.nodeEnd[c]]]...)
					}
				}
			}
			i = v.nodeEnd[i]
			continue
		}
		verified[d], pending[d] = ver, pend
		for _, id := range v.toks[v.nodeTok[i]:v.nodeTok[i+1]] {
			acc[id>>5] |= 1 << (id & 31)
		}
		i++
	}
	e := &maskEntry{uncertain: unc}
	// Store whichever of accepted / not accepted is shorter.
	count := 0
	for _, word := range acc {
		count += bits.OnesCount32(word)
	}
	if count > len(v.toks)/2 {
		e.inverted = true
		var list []int32
		for wi, word := range v.textMask {
			for rest := word &^ acc[wi]; rest != 0; rest &= rest - 1 {
				list = append(list, int32(wi*32+bits.TrailingZeros32(rest)))
			}
		}
		e.lists = [][]int32{list}
	} else {
		list := make([]int32, 0, count)
		for wi, word := range acc {
			for rest := word; rest != 0; rest &= rest - 1 {
				list = append(list, int32(wi*32+bits.TrailingZeros32(rest)))
			}
		}
		e.lists = [][]int32{list}
	}
	return e
}

// anyPair allows every byte after every byte (entries shared between grammars).
var anyPair = func() (p [256]byteSet) {
	for i := range p {
		p[i] = byteSet{^uint64(0), ^uint64(0), ^uint64(0), ^uint64(0)}
	}
	return
}()

// computeFollow2 finds, for every rule, which byte can come right after each byte that
// follows it: from each call site, the stacks one byte after the return state, and what
// they can consume next; plus the caller's own pairs where the caller can end there. It
// lets a mask entry drop, for example, " the" after a number (a space may follow one,
// a letter may not follow that space).
func (g *Grammar) computeFollow2() {
	n := len(g.rules)
	g.follow2 = make([]*[256]byteSet, n)
	for i := range g.follow2 {
		g.follow2[i] = new([256]byteSet)
	}
	w := &walker{g: g}
	type site struct{ caller, callee int32 }
	var inherit []site
	var stacks []int32
	for p, r := range g.rules {
		if r.calls == nil {
			continue
		}
		for _, edges := range r.calls {
			for _, ce := range edges {
				pairs := g.follow2[ce.rule]
				if g.canComplete[p][ce.to] {
					inherit = append(inherit, site{int32(p), ce.rule})
				}
				first := g.firstAny[p][ce.to]
				for b1 := 0; b1 < 256; b1++ {
					if !first.has(byte(b1)) {
						continue
					}
					w.arena = w.arena[:0]
					base := w.newFrame(frame{int32(p), ce.to, unknownParent})
					stacks = w.step([]int32{base}, byte(b1), stacks[:0])
					for _, top := range stacks {
						for fi := top; ; {
							f := w.arena[fi]
							pairs[b1].union(g.firstAny[f.rule][f.state])
							if !g.canComplete[f.rule][f.state] {
								break
							}
							if f.parent == unknownParent {
								pairs[b1].union(g.follow[p])
								break
							}
							fi = f.parent
						}
					}
				}
			}
		}
	}
	// A rule that returns at the end of its caller is followed by the caller's pairs.
	for changed := true; changed; {
		changed = false
		for _, st := range inherit {
			dst, src := g.follow2[st.callee], g.follow2[st.caller]
			for b := range dst {
				if dst[b].union(src[b]) {
					changed = true
				}
			}
		}
	}
}
