package grammar

import (
	"fmt"
	"strconv"
	"unicode"
	"unicode/utf8"
)

// CompileGBNF compiles a grammar in llama.cpp's GBNF syntax (see doc.go); the output must
// be a sentence of its "root" rule.
func CompileGBNF(v *Vocabulary, src string, opts ...Option) (*Grammar, error) {
	p := &gbnfParser{src: src, ids: map[string]int{}, rs: &ruleSet{}}
	if err := p.parse(); err != nil {
		return nil, err
	}
	root, ok := p.ids["root"]
	if !ok {
		return nil, fmt.Errorf("%w: no rule named \"root\"", ErrInvalidGrammar)
	}
	for name, id := range p.ids {
		if p.rs.exprs[id] == nil {
			return nil, fmt.Errorf("%w: rule %q is used but not defined", ErrInvalidGrammar, name)
		}
	}
	p.rs.root = root
	return newGrammar(v, p.rs)
}

type gbnfParser struct {
	src string
	pos int
	ids map[string]int
	rs  *ruleSet
}

func (p *gbnfParser) errorf(format string, args ...any) error {
	line := 1
	col := 1
	for i := 0; i < p.pos && i < len(p.src); i++ {
		if p.src[i] == '\n' {
			line++
			col = 1
		} else {
			col++
		}
	}
	return fmt.Errorf("%w: line %d column %d: %s", ErrInvalidGrammar, line, col, fmt.Sprintf(format, args...))
}

// skip skips spaces and comments; newlines too when nl is set.
func (p *gbnfParser) skip(nl bool) {
	for p.pos < len(p.src) {
		c := p.src[p.pos]
		switch {
		case c == ' ' || c == '\t' || c == '\r':
			p.pos++
		case c == '\n' && nl:
			p.pos++
		case c == '#':
			for p.pos < len(p.src) && p.src[p.pos] != '\n' {
				p.pos++
			}
		default:
			return
		}
	}
}

func isNameChar(c byte) bool {
	return c == '-' || c == '_' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
}

func (p *gbnfParser) name() string {
	start := p.pos
	for p.pos < len(p.src) && isNameChar(p.src[p.pos]) {
		p.pos++
	}
	return p.src[start:p.pos]
}

func (p *gbnfParser) ruleID(name string) int {
	if id, ok := p.ids[name]; ok {
		return id
	}
	id := p.rs.add(name)
	p.ids[name] = id
	return id
}

func (p *gbnfParser) parse() error {
	for {
		p.skip(true)
		if p.pos >= len(p.src) {
			return nil
		}
		name := p.name()
		if name == "" {
			return p.errorf("expected a rule name")
		}
		p.skip(false)
		if !p.consume("::=") {
			return p.errorf("expected ::= after %q", name)
		}
		e, err := p.alternatives(false)
		if err != nil {
			return err
		}
		id := p.ruleID(name)
		if p.rs.exprs[id] != nil {
			return p.errorf("rule %q defined twice", name)
		}
		p.rs.exprs[id] = e
	}
}

func (p *gbnfParser) consume(s string) bool {
	if len(p.src)-p.pos >= len(s) && p.src[p.pos:p.pos+len(s)] == s {
		p.pos += len(s)
		return true
	}
	return false
}

// alternatives parses seq ('|' seq)*; nested: inside parentheses, where newlines do not
// end the rule.
func (p *gbnfParser) alternatives(nested bool) (*expr, error) {
	var alts []*expr
	for {
		s, err := p.sequence(nested)
		if err != nil {
			return nil, err
		}
		alts = append(alts, s)
		p.skip(nested)
		if p.pos < len(p.src) && p.src[p.pos] == '|' {
			p.pos++
			p.skip(true)
			continue
		}
		return eAlt(alts...), nil
	}
}

func (p *gbnfParser) sequence(nested bool) (*expr, error) {
	var items []*expr
	for {
		p.skip(nested)
		if p.pos >= len(p.src) {
			break
		}
		c := p.src[p.pos]
		var item *expr
		switch {
		case c == '"':
			p.pos++
			var lit []byte
			for {
				if p.pos >= len(p.src) {
					return nil, p.errorf("unterminated string")
				}
				if p.src[p.pos] == '"' {
					p.pos++
					break
				}
				r, err := p.char()
				if err != nil {
					return nil, err
				}
				lit = utf8.AppendRune(lit, r)
			}
			item = eLit(string(lit))
		case c == '[':
			e, err := p.class()
			if err != nil {
				return nil, err
			}
			item = e
		case c == '.':
			p.pos++
			item = anyChar(rawChars, true)
		case c == '(':
			p.pos++
			p.skip(true)
			e, err := p.alternatives(true)
			if err != nil {
				return nil, err
			}
			p.skip(true)
			if !p.consume(")") {
				return nil, p.errorf("expected )")
			}
			item = e
		case isNameChar(c):
			save := p.pos
			name := p.name()
			p.skip(false)
			if p.consume("::=") {
				// The next rule starts here (rules may be separated by one newline).
				p.pos = save
				return eSeq(items...), nil
			}
			item = eCall(p.ruleID(name))
		default:
			return eSeq(items...), nil
		}
		item, err := p.postfix(item)
		if err != nil {
			return nil, err
		}
		items = append(items, item)
	}
	return eSeq(items...), nil
}

func (p *gbnfParser) postfix(item *expr) (*expr, error) {
	for p.pos < len(p.src) {
		switch p.src[p.pos] {
		case '*':
			item = eStar(item)
		case '+':
			item = eRepeat(item, 1, -1)
		case '?':
			item = eOpt(item)
		case '{':
			p.pos++
			p.skip(false)
			lo, ok := p.number()
			if !ok {
				return nil, p.errorf("expected a repetition count")
			}
			hi := lo
			p.skip(false)
			if p.consume(",") {
				p.skip(false)
				if n, ok := p.number(); ok {
					hi = n
				} else {
					hi = -1
				}
				p.skip(false)
			}
			if !p.consume("}") || (hi >= 0 && hi < lo) {
				return nil, p.errorf("bad repetition {%d,%d}", lo, hi)
			}
			if lo > maxCountedRepeat || hi > maxCountedRepeat {
				return nil, p.errorf("repetition count above %d", maxCountedRepeat)
			}
			item = eRepeat(item, lo, hi)
			continue
		default:
			return item, nil
		}
		p.pos++
	}
	return item, nil
}

func (p *gbnfParser) number() (int, bool) {
	start := p.pos
	for p.pos < len(p.src) && p.src[p.pos] >= '0' && p.src[p.pos] <= '9' {
		p.pos++
	}
	n, err := strconv.Atoi(p.src[start:p.pos])
	return n, err == nil
}

// char reads one possibly escaped character of a string or class.
func (p *gbnfParser) char() (rune, error) {
	if p.src[p.pos] != '\\' {
		r, size := utf8.DecodeRuneInString(p.src[p.pos:])
		p.pos += size
		return r, nil
	}
	p.pos++
	if p.pos >= len(p.src) {
		return 0, p.errorf("dangling escape")
	}
	c := p.src[p.pos]
	p.pos++
	hexLen := 0
	switch c {
	case 'n':
		return '\n', nil
	case 't':
		return '\t', nil
	case 'r':
		return '\r', nil
	case 'x':
		hexLen = 2
	case 'u':
		hexLen = 4
	case 'U':
		hexLen = 8
	case '\\', '"', '[', ']', '-', '^':
		return rune(c), nil
	default:
		return 0, p.errorf("unknown escape \\%c", c)
	}
	if p.pos+hexLen > len(p.src) {
		return 0, p.errorf("short \\%c escape", c)
	}
	n, err := strconv.ParseUint(p.src[p.pos:p.pos+hexLen], 16, 32)
	if err != nil || n > unicode.MaxRune {
		return 0, p.errorf("bad \\%c escape", c)
	}
	p.pos += hexLen
	return rune(n), nil
}

func (p *gbnfParser) class() (*expr, error) {
	p.pos++ // '['
	negate := false
	if p.pos < len(p.src) && p.src[p.pos] == '^' {
		negate = true
		p.pos++
	}
	var ranges []rune
	for {
		if p.pos >= len(p.src) {
			return nil, p.errorf("unterminated character class")
		}
		if p.src[p.pos] == ']' {
			p.pos++
			break
		}
		lo, err := p.char()
		if err != nil {
			return nil, err
		}
		hi := lo
		if p.pos+1 < len(p.src) && p.src[p.pos] == '-' && p.src[p.pos+1] != ']' {
			p.pos++
			if hi, err = p.char(); err != nil {
				return nil, err
			}
			if hi < lo {
				return nil, p.errorf("bad range %q-%q", lo, hi)
			}
		}
		ranges = append(ranges, lo, hi)
	}
	if negate {
		ranges = complementRanges(ranges)
	}
	return classExpr(ranges, rawChars), nil
}

// complementRanges returns the code points not in ranges (pairs lo, hi).
func complementRanges(ranges []rune) []rune {
	// Sort and merge, then take the gaps.
	type span struct{ lo, hi rune }
	var spans []span
	for i := 0; i+1 < len(ranges); i += 2 {
		spans = append(spans, span{ranges[i], ranges[i+1]})
	}
	for i := 1; i < len(spans); i++ {
		for j := i; j > 0 && spans[j].lo < spans[j-1].lo; j-- {
			spans[j], spans[j-1] = spans[j-1], spans[j]
		}
	}
	var out []rune
	next := rune(0)
	for _, s := range spans {
		if s.lo > next {
			out = append(out, next, s.lo-1)
		}
		if s.hi+1 > next {
			next = s.hi + 1
		}
	}
	if next <= unicode.MaxRune {
		out = append(out, next, unicode.MaxRune)
	}
	return out
}
