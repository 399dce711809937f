package grammar

// expr is the grammar IR that every front end (JSON Schema, regex, GBNF, choice) builds:
// a regular expression over bytes whose leaves may also call other rules. Each rule's
// expr becomes one byte automaton with call edges (a recursive transition network).
type expr struct {
	kind     exprKind
	set      byteSet // exSet
	kids     []*expr // exSeq, exAlt; exRepeat has one kid
	min, max int     // exRepeat; max < 0 means unbounded
	rule     int     // exCall
	dfa      *dfa    // exDFA: an already determinized call-free automaton, embedded
}

type exprKind uint8

const (
	exEmpty   exprKind = iota // the empty string
	exNothing                 // the empty language (matches nothing)
	exSet                     // one byte from set
	exSeq
	exAlt
	exRepeat
	exCall
	exDFA
)

// byteSet is a set of bytes as a 256-bit bitmap.
type byteSet [4]uint64

func (s *byteSet) add(b byte)      { s[b>>6] |= 1 << (b & 63) }
func (s *byteSet) has(b byte) bool { return s[b>>6]&(1<<(b&63)) != 0 }
func (s *byteSet) addRange(lo, hi byte) {
	for c := int(lo); c <= int(hi); c++ {
		s.add(byte(c))
	}
}
func (s *byteSet) union(o byteSet) bool {
	changed := false
	for i := range s {
		n := s[i] | o[i]
		if n != s[i] {
			s[i] = n
			changed = true
		}
	}
	return changed
}
func (s byteSet) empty() bool { return s[0]|s[1]|s[2]|s[3] == 0 }

var (
	eEmpty   = &expr{kind: exEmpty}
	eNothing = &expr{kind: exNothing}
)

func eByte(b byte) *expr {
	e := &expr{kind: exSet}
	e.set.add(b)
	return e
}

func eRange(lo, hi byte) *expr {
	e := &expr{kind: exSet}
	e.set.addRange(lo, hi)
	return e
}

func eSetOf(s byteSet) *expr {
	if s.empty() {
		return eNothing
	}
	return &expr{kind: exSet, set: s}
}

// eLit matches exactly the bytes of s.
func eLit(s string) *expr {
	if s == "" {
		return eEmpty
	}
	if len(s) == 1 {
		return eByte(s[0])
	}
	kids := make([]*expr, len(s))
	for i := 0; i < len(s); i++ {
		kids[i] = eByte(s[i])
	}
	return &expr{kind: exSeq, kids: kids}
}

func eSeq(kids ...*expr) *expr {
	var flat []*expr
	for _, k := range kids {
		switch k.kind {
		case exEmpty:
			continue
		case exNothing:
			return eNothing
		case exSeq:
			flat = append(flat, k.kids...)
		default:
			flat = append(flat, k)
		}
	}
	switch len(flat) {
	case 0:
		return eEmpty
	case 1:
		return flat[0]
	}
	return &expr{kind: exSeq, kids: flat}
}

func eAlt(kids ...*expr) *expr {
	var flat []*expr
	for _, k := range kids {
		switch k.kind {
		case exNothing:
			continue
		case exAlt:
			flat = append(flat, k.kids...)
		default:
			flat = append(flat, k)
		}
	}
	switch len(flat) {
	case 0:
		return eNothing
	case 1:
		return flat[0]
	}
	return &expr{kind: exAlt, kids: flat}
}

// eRepeat matches kid between min and max times (max < 0: unbounded).
func eRepeat(kid *expr, min, max int) *expr {
	if max == 0 {
		return eEmpty
	}
	if kid.kind == exEmpty {
		return eEmpty
	}
	if kid.kind == exNothing {
		if min == 0 {
			return eEmpty
		}
		return eNothing
	}
	if min == 1 && max == 1 {
		return kid
	}
	return &expr{kind: exRepeat, kids: []*expr{kid}, min: min, max: max}
}

func eStar(kid *expr) *expr { return eRepeat(kid, 0, -1) }
func eOpt(kid *expr) *expr  { return eRepeat(kid, 0, 1) }
func eCall(rule int) *expr  { return &expr{kind: exCall, rule: rule} }
func eDFA(d *dfa) *expr     { return &expr{kind: exDFA, dfa: d} }
