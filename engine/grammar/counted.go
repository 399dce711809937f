package grammar

import (
	"fmt"
	"sort"
	"sync"
)

// Length-bounded JSON strings ({"type":"string","maxLength":45}) have one automaton state
// per character count, and a whole-trie walk per state would make every token of such a
// string a cold mask. Instead one walk of the vocabulary against the unbounded string
// body (shared by every grammar) records, per token, how many characters it adds and
// whether (and after how many characters) it closes the string; the entry for count p is
// then read off sorted lists.

// countedString maps the char-boundary states of a length-bounded string rule to the
// number of characters before them.
type countedString struct {
	min, max int // max < 0: unbounded
	count    map[int32]int
}

func (c *countedString) hasState(s int32) bool {
	_, ok := c.count[s]
	return ok
}

// newCountedString finds the state after '"' plus p characters, for each p.
func newCountedString(d *dfa, min, max int) *countedString {
	s := d.step(0, '"')
	if s < 0 || d.calls != nil {
		return nil
	}
	c := &countedString{min: min, max: max, count: map[int32]int{}}
	for p := 0; ; p++ {
		if _, seen := c.count[s]; seen {
			break // the unbounded tail loops on one state
		}
		c.count[s] = p
		if max >= 0 && p == max {
			break
		}
		if s = d.step(s, 'a'); s < 0 {
			break
		}
	}
	return c
}

// stringWalk is the vocabulary's tokens classified against the string body.
type stringWalk struct {
	content, contentN []int32 // tokens inside the string, by characters needed (ascending)
	close, closeN     []int32 // tokens ending right after the closing quote, by characters before it
	tail, tailN       []int32 // tokens that close the string and go on, by characters before the quote
	tailByte          []byte  // the byte after the quote
	never             []int32 // text tokens in none of the above
}

type stringWalkOnce struct {
	once sync.Once
	w    *stringWalk
}

func (v *Vocabulary) stringWalk() *stringWalk {
	v.strWalk.once.Do(func() { v.strWalk.w = v.walkString() })
	return v.strWalk.w
}

func (v *Vocabulary) walkString() *stringWalk {
	d, err := compileExpr(eSeq(eByte('"'), eStar(jsonChar()), eByte('"')))
	if err != nil {
		panic(err) // a fixed expression
	}
	inside := d.step(0, '"')
	// The automaton is not minimal: the states between characters are the ones reached
	// by '"' then some 'a's.
	boundary := map[int32]bool{}
	for s := inside; s >= 0 && !boundary[s]; s = d.step(s, 'a') {
		boundary[s] = true
	}
	type pos struct {
		state, chars int32
	}
	type item struct{ id, n int32 }
	var content, closes []item
	type tailItem struct {
		id, n int32
		b     byte
	}
	var tails []tailItem
	levels := make([]pos, v.maxDepth+2)
	levels[0] = pos{inside, 0}
	seen := make([]bool, v.size)
	n := int32(len(v.nodeByte))
	for i := int32(1); i < n; {
		dep := v.nodeDepth[i]
		par := levels[dep-1]
		t := d.step(par.state, v.nodeByte[i])
		if t < 0 {
			i = v.nodeEnd[i]
			continue
		}
		toks := v.toks[v.nodeTok[i]:v.nodeTok[i+1]]
		if d.final[t] {
			for _, id := range toks {
				closes = append(closes, item{id, par.chars})
				seen[id] = true
			}
			// Every token below continues after the quote: group by the next byte.
			for c := i + 1; c < v.nodeEnd[i]; c = v.nodeEnd[c] {
				for _, id := range v.toks[v.nodeTok[c]:v.nodeTok[v.nodeEnd[c]]] {
					tails = append(tails, tailItem{id, par.chars, v.nodeByte[c]})
					seen[id] = true
				}
			}
			i = v.nodeEnd[i]
			continue
		}
		chars := par.chars
		atBoundary := boundary[t]
		if atBoundary {
			chars++
		}
		need := chars
		if !atBoundary {
			need++ // a partial character still needs its place
		}
		for _, id := range toks {
			content = append(content, item{id, need})
			seen[id] = true
		}
		levels[dep] = pos{t, chars}
		i++
	}
	sort.SliceStable(content, func(a, b int) bool { return content[a].n < content[b].n })
	sort.SliceStable(closes, func(a, b int) bool { return closes[a].n < closes[b].n })
	sort.SliceStable(tails, func(a, b int) bool { return tails[a].n < tails[b].n })
	w := &stringWalk{}
	for _, it := range content {
		w.content = append(w.content, it.id)
		w.contentN = append(w.contentN, it.n)
	}
	for _, it := range closes {
		w.close = append(w.close, it.id)
		w.closeN = append(w.closeN, it.n)
	}
	for _, it := range tails {
		w.tail = append(w.tail, it.id)
		w.tailN = append(w.tailN, it.n)
		w.tailByte = append(w.tailByte, it.b)
	}
	for _, id := range v.toks {
		if !seen[id] {
			w.never = append(w.never, id)
		}
	}
	return w
}

// countedEntry is the mask entry of a length-bounded string rule after p characters.
func (g *Grammar) countedEntry(c *countedString, rule, state int32) *maskEntry {
	w := g.vocab.stringWalk()
	p := c.count[state]
	room := int32(1 << 30)
	if c.max >= 0 {
		room = int32(c.max - p)
	}
	least := int32(max(c.min-p, 0))
	upTo := func(ns []int32, limit int32) int {
		return sort.Search(len(ns), func(i int) bool { return ns[i] > limit })
	}
	k := upTo(w.contentN, room)
	ca, cb := upTo(w.closeN, least-1), upTo(w.closeN, room)
	ta, tb := upTo(w.tailN, least-1), upTo(w.tailN, room)
	if cb < ca {
		cb = ca
	}
	if tb < ta {
		tb = ta
	}
	e := &maskEntry{}
	follow := g.follow[rule]
	for i := ta; i < tb; i++ {
		if follow.has(w.tailByte[i]) {
			e.uncertain = append(e.uncertain, w.tail[i])
		}
	}
	closing := w.close[ca:cb]
	if k+len(closing) > len(g.vocab.toks)/2 {
		e.inverted = true
		e.lists = [][]int32{w.content[k:], w.never, w.close, w.tail}
		e.extra = [][]int32{closing}
	} else {
		e.lists = [][]int32{w.content[:k], closing}
	}
	return e
}

// stringLikeEntry is the entry of a state between characters of a string automaton
// that accepts every token inside a string (likeString): all of those, plus the tokens
// that close the string, checked one by one against the automaton.
func (g *Grammar) stringLikeEntry(rule, state int32) *maskEntry {
	v := g.vocab
	w := v.stringWalk()
	d := g.rules[rule]
	follow := g.follow[rule]
	e := &maskEntry{inverted: true, lists: [][]int32{w.never, w.close, w.tail}}
	var closing []int32
	for _, id := range w.close {
		if d.matchesFrom(state, v.tokens[id]) {
			closing = append(closing, id)
		}
	}
	e.extra = [][]int32{closing}
	for _, id := range w.tail {
		t := v.tokens[id]
		s := state
		for i, b := range t {
			if s = d.step(s, b); s < 0 {
				break
			}
			if d.final[s] {
				if i+1 < len(t) && follow.has(t[i+1]) {
					e.uncertain = append(e.uncertain, id)
				}
				break
			}
		}
	}
	return e
}

// matchesFrom reports whether a call-free automaton goes from state to a final state on
// exactly b.
func (d *dfa) matchesFrom(state int32, b []byte) bool {
	s := state
	for _, c := range b {
		if s = d.step(s, c); s < 0 {
			return false
		}
	}
	return d.final[s]
}

var jsonCharDFA = sync.OnceValue(func() *dfa {
	d, err := compileExpr(jsonChar())
	if err != nil {
		panic(err) // a fixed expression
	}
	return d
})

// countedStringDFA builds the automaton of a JSON string of min..max characters (max < 0:
// unbounded) directly, one copy of the character automaton per position: subset
// construction on the repeated expression takes seconds for bounds in the thousands.
func countedStringDFA(min, max int) (*dfa, error) {
	ch := jsonCharDFA()
	// The character automaton: start 0, one final state (a whole character), the rest
	// mid-character states.
	finalCh := int32(-1)
	for s, f := range ch.final {
		if f {
			if finalCh >= 0 {
				return nil, fmt.Errorf("grammar: internal: the character automaton has several final states")
			}
			finalCh = int32(s)
		}
	}
	positions := max + 1
	if max < 0 {
		positions = min + 1
	}
	// Per position: the character automaton's states except its final one.
	per := ch.numStates() - 1
	index := func(s int32) int32 { // character state → offset within a position
		if s > finalCh {
			return s - 1
		}
		return s
	}
	total := 2 + positions*per
	if total > maxDFAStates*4 {
		return nil, fmt.Errorf("%w: a string of up to %d characters", ErrTooLarge, max)
	}
	out := &dfa{}
	// Classes: the character automaton's, with '"' apart (it closes the string).
	quoteCls := uint8(ch.nclass)
	out.classOf = ch.classOf
	// '"' may share a class with other bytes in ch (bytes that start no character).
	out.classOf['"'] = quoteCls
	out.nclass = ch.nclass + 1
	const open, end = 0, 1
	out.next = make([]int32, total*out.nclass)
	for i := range out.next {
		out.next[i] = -1
	}
	out.final = make([]bool, total)
	out.final[end] = true
	state := func(p int, s int32) int32 { return int32(2 + p*per + int(index(s))) }
	out.next[open*out.nclass+int(quoteCls)] = state(0, 0)
	for p := 0; p < positions; p++ {
		nextP := p + 1
		if max < 0 && nextP > min {
			nextP = min // unbounded: the last position loops
		}
		canGrow := max < 0 || p < max
		for s := int32(0); s < int32(ch.numStates()); s++ {
			if s == finalCh {
				continue
			}
			from := state(p, s)
			if s == 0 && p >= min {
				out.next[int(from)*out.nclass+int(quoteCls)] = end
			}
			if !canGrow {
				continue
			}
			for c := 0; c <= ch.nclass; c++ {
				cc := c
				if c == ch.nclass { // '"' inside an escape behaves as its old class
					if s == 0 {
						continue
					}
					cc = int(ch.classOf['"'])
				}
				t := ch.next[int(s)*ch.nclass+cc]
				if t < 0 {
					continue
				}
				if t == finalCh {
					out.next[int(from)*out.nclass+c] = state(nextP, 0)
				} else {
					out.next[int(from)*out.nclass+c] = state(p, t)
				}
			}
		}
	}
	return out.trim(), nil
}
