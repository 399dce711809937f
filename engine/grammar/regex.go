package grammar

import (
	"fmt"
	"regexp/syntax"
	"unicode"
	"unicode/utf8"
)

// charMode says how a regex's characters become bytes: as their UTF-8 encoding (free
// text), or as they appear inside a JSON string literal (escaped where JSON requires).
type charMode uint8

const (
	rawChars charMode = iota
	jsonChars
)

// parseRegex parses RE2 syntax (Perl flags: ^ and $ match at the text's ends, . does
// not match a newline).
func parseRegex(pattern string) (*syntax.Regexp, error) {
	re, err := syntax.Parse(pattern, syntax.Perl)
	if err != nil {
		return nil, fmt.Errorf("%w: %q: %v", ErrInvalidRegex, pattern, err)
	}
	return re.Simplify(), nil
}

// regexExpr converts an anchored regex (the whole text must match) into an expr.
func regexExpr(pattern string, mode charMode) (*expr, error) {
	re, err := parseRegex(pattern)
	if err != nil {
		return nil, err
	}
	// An explicit ^...$ in an already anchored match is harmless.
	return convertAnchored(re, mode, true, pattern)
}

// searchRegexExpr converts a JSON Schema "pattern": the regex may match anywhere in the
// string unless it is anchored with ^ and/or $.
func searchRegexExpr(pattern string, mode charMode) (*expr, error) {
	re, err := parseRegex(pattern)
	if err != nil {
		return nil, err
	}
	return convertAnchored(re, mode, false, pattern)
}

func convertAnchored(re *syntax.Regexp, mode charMode, anchored bool, pattern string) (*expr, error) {
	if re.Op == syntax.OpCapture {
		return convertAnchored(re.Sub[0], mode, anchored, pattern)
	}
	if re.Op == syntax.OpAlternate && hasAnchor(re) {
		var alts []*expr
		for _, sub := range re.Sub {
			e, err := convertAnchored(sub, mode, anchored, pattern)
			if err != nil {
				return nil, err
			}
			alts = append(alts, e)
		}
		return eAlt(alts...), nil
	}
	subs := []*syntax.Regexp{re}
	if re.Op == syntax.OpConcat {
		subs = re.Sub
	}
	begin, end := anchored, anchored
	for len(subs) > 0 && isBegin(subs[0]) {
		begin = true
		subs = subs[1:]
	}
	for len(subs) > 0 && isEnd(subs[len(subs)-1]) {
		end = true
		subs = subs[:len(subs)-1]
	}
	var parts []*expr
	if !begin {
		parts = append(parts, eStar(anyChar(mode, true)))
	}
	for _, s := range subs {
		e, err := convertRegex(s, mode, pattern)
		if err != nil {
			return nil, err
		}
		parts = append(parts, e)
	}
	if !end {
		parts = append(parts, eStar(anyChar(mode, true)))
	}
	return eSeq(parts...), nil
}

// hasAnchor reports whether ^ or $ occurs anywhere in re.
func hasAnchor(re *syntax.Regexp) bool {
	if isBegin(re) || isEnd(re) {
		return true
	}
	for _, sub := range re.Sub {
		if hasAnchor(sub) {
			return true
		}
	}
	return false
}

func isBegin(re *syntax.Regexp) bool {
	return re.Op == syntax.OpBeginText || re.Op == syntax.OpBeginLine
}

func isEnd(re *syntax.Regexp) bool {
	return re.Op == syntax.OpEndText || re.Op == syntax.OpEndLine
}

func convertRegex(re *syntax.Regexp, mode charMode, pattern string) (*expr, error) {
	switch re.Op {
	case syntax.OpNoMatch:
		return eNothing, nil
	case syntax.OpEmptyMatch:
		return eEmpty, nil
	case syntax.OpLiteral:
		var parts []*expr
		for _, r := range re.Rune {
			if re.Flags&syntax.FoldCase != 0 {
				var rs []rune
				rs = append(rs, r, r)
				for f := unicode.SimpleFold(r); f != r; f = unicode.SimpleFold(f) {
					rs = append(rs, f, f)
				}
				parts = append(parts, classExpr(rs, mode))
			} else {
				parts = append(parts, classExpr([]rune{r, r}, mode))
			}
		}
		return eSeq(parts...), nil
	case syntax.OpCharClass:
		return classExpr(re.Rune, mode), nil
	case syntax.OpAnyCharNotNL:
		return anyChar(mode, false), nil
	case syntax.OpAnyChar:
		return anyChar(mode, true), nil
	case syntax.OpCapture:
		return convertRegex(re.Sub[0], mode, pattern)
	case syntax.OpStar, syntax.OpPlus, syntax.OpQuest, syntax.OpRepeat:
		sub, err := convertRegex(re.Sub[0], mode, pattern)
		if err != nil {
			return nil, err
		}
		switch re.Op {
		case syntax.OpStar:
			return eStar(sub), nil
		case syntax.OpPlus:
			return eRepeat(sub, 1, -1), nil
		case syntax.OpQuest:
			return eOpt(sub), nil
		}
		return eRepeat(sub, re.Min, re.Max), nil
	case syntax.OpConcat, syntax.OpAlternate:
		var parts []*expr
		for _, s := range re.Sub {
			e, err := convertRegex(s, mode, pattern)
			if err != nil {
				return nil, err
			}
			parts = append(parts, e)
		}
		if re.Op == syntax.OpConcat {
			return eSeq(parts...), nil
		}
		return eAlt(parts...), nil
	}
	return nil, fmt.Errorf("%w: %q: %s is not supported (anchors only at the ends; no word boundaries)", ErrInvalidRegex, pattern, re.Op)
}

// anyChar is one character: any code point (nl: including '\n').
func anyChar(mode charMode, nl bool) *expr {
	if nl {
		return classExpr([]rune{0, unicode.MaxRune}, mode)
	}
	return classExpr([]rune{0, '\n' - 1, '\n' + 1, unicode.MaxRune}, mode)
}

// classExpr matches one character from rune ranges (pairs lo, hi).
func classExpr(ranges []rune, mode charMode) *expr {
	var alts []*expr
	for i := 0; i+1 < len(ranges); i += 2 {
		lo, hi := ranges[i], ranges[i+1]
		if mode == jsonChars {
			// Characters JSON escapes: controls, '"', '\'.
			for _, c := range []rune{'"', '\\'} {
				if lo <= c && c <= hi {
					alts = append(alts, eLit(`\`+string(c)))
				}
			}
			for c := lo; c <= hi && c < 0x20; c++ {
				alts = append(alts, jsonControlEscape(byte(c)))
			}
			if lo <= '/' && '/' <= hi {
				alts = append(alts, eLit(`\/`))
			}
			alts = append(alts, utf8RangeExpr(max(lo, 0x20), min(hi, '"'-1)))
			alts = append(alts, utf8RangeExpr(max(lo, '"'+1), min(hi, '\\'-1)))
			alts = append(alts, utf8RangeExpr(max(lo, '\\'+1), hi))
			continue
		}
		alts = append(alts, utf8RangeExpr(lo, hi))
	}
	return eAlt(alts...)
}

// jsonControlEscape is how JSON (and Python's json.dumps) writes a control character:
// \b \t \n \f \r, else \u00xx (either hex case).
func jsonControlEscape(c byte) *expr {
	switch c {
	case '\b':
		return eLit(`\b`)
	case '\t':
		return eLit(`\t`)
	case '\n':
		return eLit(`\n`)
	case '\f':
		return eLit(`\f`)
	case '\r':
		return eLit(`\r`)
	}
	hex := func(d byte) *expr {
		const digits = "0123456789abcdef"
		if d < 10 {
			return eByte(digits[d])
		}
		return eAlt(eByte(digits[d]), eByte(digits[d]-'a'+'A'))
	}
	return eSeq(eLit(`\u00`), hex(c>>4), hex(c&15))
}

// utf8RangeExpr matches the UTF-8 encoding of one code point in [lo, hi] (surrogates
// excluded), split into byte-range sequences.
func utf8RangeExpr(lo, hi rune) *expr {
	var alts []*expr
	var split func(lo, hi rune)
	split = func(lo, hi rune) {
		if lo > hi {
			return
		}
		if lo <= 0xDFFF && hi >= 0xD800 {
			split(lo, 0xD7FF)
			split(0xE000, hi)
			return
		}
		for _, m := range []rune{0x7F, 0x7FF, 0xFFFF} {
			if lo <= m && hi > m {
				split(lo, m)
				split(m+1, hi)
				return
			}
		}
		if hi < 0x80 {
			alts = append(alts, eRange(byte(lo), byte(hi)))
			return
		}
		n := utf8.RuneLen(lo)
		for i := 1; i < n; i++ {
			m := rune(1)<<(6*i) - 1
			if lo&^m != hi&^m {
				if lo&m != 0 {
					split(lo, lo|m)
					split((lo|m)+1, hi)
					return
				}
				if hi&m != m {
					split(lo, (hi&^m)-1)
					split(hi&^m, hi)
					return
				}
			}
		}
		var a, b [4]byte
		utf8.EncodeRune(a[:], lo)
		utf8.EncodeRune(b[:], hi)
		parts := make([]*expr, n)
		for i := 0; i < n; i++ {
			parts[i] = eRange(a[i], b[i])
		}
		alts = append(alts, eSeq(parts...))
	}
	if hi > unicode.MaxRune {
		hi = unicode.MaxRune
	}
	split(lo, hi)
	return eAlt(alts...)
}
