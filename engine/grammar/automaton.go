package grammar

import (
	"encoding/binary"
	"fmt"
	"sort"
)

// Size limits: a schema whose automata would exceed them is an ErrTooLarge error rather
// than minutes of compilation or gigabytes of tables.
const (
	maxNFAStates = 400_000
	maxDFAStates = 60_000
)

// dfa is a deterministic byte automaton; in a rule it may also have call edges (push a
// frame for another rule, continue at `to` when it returns). State 0 is the start.
type dfa struct {
	classOf [256]uint8 // byte → equivalence class
	nclass  int
	next    []int32 // next[state*nclass+class], -1 for no transition
	final   []bool
	calls   [][]callEdge // per state; nil when the automaton has no calls

	// likeString marks, in a call-free automaton that is a JSON string minus some
	// strings, the states between characters: every token inside a string is accepted
	// there (see stringLikeEntry). Nil for other automata.
	likeString []bool
	pairA      []int32 // product: the state of the first operand, per state
}

type callEdge struct {
	rule int32
	to   int32
}

func (d *dfa) numStates() int { return len(d.final) }

func (d *dfa) step(state int32, b byte) int32 {
	return d.next[int(state)*d.nclass+int(d.classOf[b])]
}

// nfa is a Thompson automaton: byte-range edges, epsilon edges and call edges.
type nfa struct {
	states []nfaState
	err    error
}

type nfaState struct {
	edges []nfaEdge
	eps   []int32
	calls []callEdge
}

type nfaEdge struct {
	lo, hi byte
	to     int32
}

func (n *nfa) add() int32 {
	if len(n.states) >= maxNFAStates {
		if n.err == nil {
			n.err = fmt.Errorf("%w: more than %d automaton states (a large repetition count?)", ErrTooLarge, maxNFAStates)
		}
		return 0
	}
	n.states = append(n.states, nfaState{})
	return int32(len(n.states) - 1)
}

// build adds e between new states and returns them.
func (n *nfa) build(e *expr) (start, end int32) {
	start = n.add()
	end = n.add()
	if n.err != nil {
		return start, end
	}
	switch e.kind {
	case exEmpty:
		n.states[start].eps = append(n.states[start].eps, end)
	case exNothing:
	case exSet:
		for lo := 0; lo < 256; {
			if !e.set.has(byte(lo)) {
				lo++
				continue
			}
			hi := lo
			for hi+1 < 256 && e.set.has(byte(hi+1)) {
				hi++
			}
			n.states[start].edges = append(n.states[start].edges, nfaEdge{byte(lo), byte(hi), end})
			lo = hi + 1
		}
	case exSeq:
		cur := start
		for _, k := range e.kids {
			s, t := n.build(k)
			n.states[cur].eps = append(n.states[cur].eps, s)
			cur = t
		}
		n.states[cur].eps = append(n.states[cur].eps, end)
	case exAlt:
		for _, k := range e.kids {
			s, t := n.build(k)
			n.states[start].eps = append(n.states[start].eps, s)
			n.states[t].eps = append(n.states[t].eps, end)
		}
	case exRepeat:
		kid := e.kids[0]
		cur := start
		for i := 0; i < e.min && n.err == nil; i++ {
			s, t := n.build(kid)
			n.states[cur].eps = append(n.states[cur].eps, s)
			cur = t
		}
		if e.max < 0 {
			s, t := n.build(kid)
			n.states[cur].eps = append(n.states[cur].eps, s, end)
			n.states[t].eps = append(n.states[t].eps, s, end)
		} else {
			for i := e.min; i < e.max && n.err == nil; i++ {
				s, t := n.build(kid)
				n.states[cur].eps = append(n.states[cur].eps, s, end)
				cur = t
			}
			n.states[cur].eps = append(n.states[cur].eps, end)
		}
	case exCall:
		n.states[start].calls = append(n.states[start].calls, callEdge{int32(e.rule), end})
	case exDFA:
		d := e.dfa
		base := int32(len(n.states))
		for i := 0; i < d.numStates(); i++ {
			n.add()
		}
		if n.err != nil {
			return start, end
		}
		n.states[start].eps = append(n.states[start].eps, base)
		ranges := d.classRanges()
		for s := 0; s < d.numStates(); s++ {
			st := &n.states[base+int32(s)]
			for c := 0; c < d.nclass; c++ {
				t := d.next[s*d.nclass+c]
				if t < 0 {
					continue
				}
				for _, r := range ranges[c] {
					st.edges = append(st.edges, nfaEdge{r[0], r[1], base + t})
				}
			}
			if d.calls != nil {
				for _, ce := range d.calls[s] {
					st.calls = append(st.calls, callEdge{ce.rule, base + ce.to})
				}
			}
			if d.final[s] {
				st.eps = append(st.eps, end)
			}
		}
	}
	return start, end
}

// classRanges lists, per class, the maximal byte ranges in it.
func (d *dfa) classRanges() [][][2]byte {
	out := make([][][2]byte, d.nclass)
	for lo := 0; lo < 256; {
		c := d.classOf[lo]
		hi := lo
		for hi+1 < 256 && d.classOf[hi+1] == c {
			hi++
		}
		out[c] = append(out[c], [2]byte{byte(lo), byte(hi)})
		lo = hi + 1
	}
	return out
}

// compileExpr turns e into a trimmed DFA (subset construction).
func compileExpr(e *expr) (*dfa, error) {
	var n nfa
	start, end := n.build(e)
	if n.err != nil {
		return nil, n.err
	}
	return n.determinize(start, end)
}

func (n *nfa) determinize(start, accept int32) (*dfa, error) {
	d := &dfa{}
	// Byte classes: boundaries of every edge's range.
	var cut [257]bool
	for i := range n.states {
		for _, e := range n.states[i].edges {
			cut[e.lo] = true
			cut[int(e.hi)+1] = true
		}
	}
	cls := -1
	for b := 0; b < 256; b++ {
		if b == 0 || cut[b] {
			cls++
		}
		d.classOf[b] = uint8(cls)
	}
	d.nclass = cls + 1

	stamp := make([]int32, len(n.states))
	for i := range stamp {
		stamp[i] = -1
	}
	var gen int32
	closure := func(seeds []int32, buf []int32) []int32 {
		gen++
		buf = buf[:0]
		stack := append([]int32(nil), seeds...)
		for len(stack) > 0 {
			s := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			if stamp[s] == gen {
				continue
			}
			stamp[s] = gen
			buf = append(buf, s)
			stack = append(stack, n.states[s].eps...)
		}
		// Keep only the states that matter for what follows (byte or call edges, or the
		// accept state): equivalent positions reached through different branches then
		// become one DFA state, which keeps automata small and makes the states between
		// characters of a string canonical (counted.go relies on it).
		kept := buf[:0]
		for _, s := range buf {
			if len(n.states[s].edges) > 0 || len(n.states[s].calls) > 0 || s == accept {
				kept = append(kept, s)
			}
		}
		buf = kept
		sort.Slice(buf, func(i, j int) bool { return buf[i] < buf[j] })
		return buf
	}
	key := func(set []int32) string {
		b := make([]byte, 4*len(set))
		for i, s := range set {
			binary.LittleEndian.PutUint32(b[4*i:], uint32(s))
		}
		return string(b)
	}
	index := map[string]int32{}
	var sets [][]int32
	hasCalls := false
	intern := func(set []int32) (int32, error) {
		if len(set) == 0 {
			return -1, nil
		}
		k := key(set)
		if id, ok := index[k]; ok {
			return id, nil
		}
		if len(sets) >= maxDFAStates {
			return 0, fmt.Errorf("%w: more than %d states in one rule's automaton", ErrTooLarge, maxDFAStates)
		}
		id := int32(len(sets))
		index[k] = id
		sets = append(sets, append([]int32(nil), set...))
		return id, nil
	}
	if startSet := closure([]int32{start}, nil); len(startSet) == 0 {
		// The empty language: a lone dead start state.
		sets = append(sets, nil)
	} else if _, err := intern(startSet); err != nil {
		return nil, err
	}
	var buf []int32
	buckets := make([][]int32, d.nclass)
	for si := 0; si < len(sets); si++ {
		set := sets[si]
		final := false
		for _, s := range set {
			if s == accept {
				final = true
			}
		}
		d.final = append(d.final, final)
		row := make([]int32, d.nclass)
		// Classes are byte intervals in order, so an edge covers a run of classes.
		for c := range buckets {
			buckets[c] = buckets[c][:0]
		}
		for _, s := range set {
			for _, e := range n.states[s].edges {
				for c := d.classOf[e.lo]; ; c++ {
					buckets[c] = append(buckets[c], e.to)
					if c == d.classOf[e.hi] {
						break
					}
				}
			}
		}
		for c := 0; c < d.nclass; c++ {
			buf = closure(buckets[c], buf)
			id, err := intern(buf)
			if err != nil {
				return nil, err
			}
			row[c] = id
		}
		d.next = append(d.next, row...)
		// Calls: one edge per callee, to the closure of all its return states.
		var calls []callEdge
		byRule := map[int32][]int32{}
		var order []int32
		for _, s := range set {
			for _, ce := range n.states[s].calls {
				if _, ok := byRule[ce.rule]; !ok {
					order = append(order, ce.rule)
				}
				byRule[ce.rule] = append(byRule[ce.rule], ce.to)
			}
		}
		for _, r := range order {
			buf = closure(byRule[r], buf)
			id, err := intern(buf)
			if err != nil {
				return nil, err
			}
			calls = append(calls, callEdge{r, id})
			hasCalls = true
		}
		d.calls = append(d.calls, calls)
	}
	if !hasCalls {
		d.calls = nil
	}
	return d.trim(), nil
}

// trim removes states from which no final state can be reached (call edges count as
// passable), renumbering the rest; the start state stays 0 even when it is dead.
func (d *dfa) trim() *dfa {
	ns := d.numStates()
	rev := make([][]int32, ns)
	for s := 0; s < ns; s++ {
		for c := 0; c < d.nclass; c++ {
			if t := d.next[s*d.nclass+c]; t >= 0 {
				rev[t] = append(rev[t], int32(s))
			}
		}
		if d.calls != nil {
			for _, ce := range d.calls[s] {
				rev[ce.to] = append(rev[ce.to], int32(s))
			}
		}
	}
	live := make([]bool, ns)
	var stack []int32
	for s := 0; s < ns; s++ {
		if d.final[s] {
			live[s] = true
			stack = append(stack, int32(s))
		}
	}
	for len(stack) > 0 {
		s := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		for _, p := range rev[s] {
			if !live[p] {
				live[p] = true
				stack = append(stack, p)
			}
		}
	}
	all := true
	for s := 1; s < ns; s++ {
		all = all && live[s]
	}
	if all {
		return d
	}
	remap := make([]int32, ns)
	cnt := int32(0)
	for s := 0; s < ns; s++ {
		if live[s] || s == 0 {
			remap[s] = cnt
			cnt++
		} else {
			remap[s] = -1
		}
	}
	out := &dfa{classOf: d.classOf, nclass: d.nclass}
	for s := 0; s < ns; s++ {
		if remap[s] < 0 {
			continue
		}
		if d.pairA != nil {
			out.pairA = append(out.pairA, d.pairA[s])
		}
		out.final = append(out.final, d.final[s])
		for c := 0; c < d.nclass; c++ {
			t := d.next[s*d.nclass+c]
			if t >= 0 {
				t = remap[t]
			}
			out.next = append(out.next, t)
		}
		if d.calls != nil {
			var calls []callEdge
			for _, ce := range d.calls[s] {
				if remap[ce.to] >= 0 {
					calls = append(calls, callEdge{ce.rule, remap[ce.to]})
				}
			}
			out.calls = append(out.calls, calls)
		}
	}
	return out
}

// product combines two call-free DFAs: intersection (a ∩ b) or difference (a \ b).
func product(a, b *dfa, difference bool) (*dfa, error) {
	out := &dfa{}
	// Combined classes: pairs of classes.
	pair := map[[2]uint8]uint8{}
	var reps []byte
	for x := 0; x < 256; x++ {
		k := [2]uint8{a.classOf[x], b.classOf[x]}
		c, ok := pair[k]
		if !ok {
			c = uint8(len(pair))
			pair[k] = c
			reps = append(reps, byte(x))
		}
		out.classOf[x] = c
	}
	out.nclass = len(pair)
	type st struct{ a, b int32 }
	index := map[st]int32{}
	var queue []st
	intern := func(s st) (int32, error) {
		if s.a < 0 || (!difference && s.b < 0) {
			return -1, nil
		}
		if id, ok := index[s]; ok {
			return id, nil
		}
		if len(queue) >= maxDFAStates {
			return 0, fmt.Errorf("%w: more than %d states combining automata", ErrTooLarge, maxDFAStates)
		}
		id := int32(len(queue))
		index[s] = id
		queue = append(queue, s)
		out.pairA = append(out.pairA, s.a)
		return id, nil
	}
	if _, err := intern(st{0, 0}); err != nil {
		return nil, err
	}
	for i := 0; i < len(queue); i++ {
		s := queue[i]
		fa := a.final[s.a]
		fb := s.b >= 0 && b.final[s.b]
		if difference {
			out.final = append(out.final, fa && !fb)
		} else {
			out.final = append(out.final, fa && fb)
		}
		for c := 0; c < out.nclass; c++ {
			r := reps[c]
			na := a.step(s.a, r)
			nb := int32(-1)
			if s.b >= 0 {
				nb = b.step(s.b, r)
			}
			id, err := intern(st{na, nb})
			if err != nil {
				return nil, err
			}
			out.next = append(out.next, id)
		}
	}
	return out.trim(), nil
}

// isEmpty reports whether a call-free DFA accepts nothing.
func (d *dfa) isEmpty() bool {
	seen := make([]bool, d.numStates())
	stack := []int32{0}
	seen[0] = true
	for len(stack) > 0 {
		s := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if d.final[s] {
			return false
		}
		for c := 0; c < d.nclass; c++ {
			if t := d.next[int(s)*d.nclass+c]; t >= 0 && !seen[t] {
				seen[t] = true
				stack = append(stack, t)
			}
		}
	}
	return true
}

// matches reports whether a call-free DFA accepts s.
func (d *dfa) matches(s []byte) bool {
	st := int32(0)
	for _, b := range s {
		st = d.step(st, b)
		if st < 0 {
			return false
		}
	}
	return d.final[st]
}
