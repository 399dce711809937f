package grammar

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

var digit = eRange('0', '9')

// bound is one end of a numeric range; inf: unbounded.
type bound struct {
	v    int64
	excl bool
	inf  bool
}

// uintDigits matches the decimal digits (no leading zeros) of integers in [a, b]; b < 0
// means unbounded. a >= 0.
func uintRange(a, b int64) *expr {
	if b >= 0 && a > b {
		return eNothing
	}
	as := strconv.FormatInt(a, 10)
	var alts []*expr
	maxLen := len(as)
	if b >= 0 {
		maxLen = len(strconv.FormatInt(b, 10))
	}
	for l := len(as); l <= maxLen; l++ {
		lo := strings.Repeat("9", 0)
		if l == len(as) {
			lo = as
		} else {
			lo = "1" + strings.Repeat("0", l-1)
		}
		hi := strings.Repeat("9", l)
		if b >= 0 && l == maxLen {
			hi = strconv.FormatInt(b, 10)
		}
		alts = append(alts, sameLenRange(lo, hi))
	}
	if b < 0 {
		// Every integer with more digits than a.
		alts = append(alts, eSeq(eRange('1', '9'), eRepeat(digit, len(as), -1)))
	}
	return eAlt(alts...)
}

// sameLenRange matches digit strings of one length between lo and hi (lo <= hi).
func sameLenRange(lo, hi string) *expr {
	if len(lo) == 0 {
		return eEmpty
	}
	if lo == hi {
		return eLit(lo)
	}
	if lo[0] == hi[0] {
		return eSeq(eByte(lo[0]), sameLenRange(lo[1:], hi[1:]))
	}
	n := len(lo) - 1
	loZero := strings.Trim(lo[1:], "0") == ""
	hiNine := strings.Trim(hi[1:], "9") == ""
	start, end := lo[0], hi[0]
	var alts []*expr
	if !loZero {
		alts = append(alts, eSeq(eByte(lo[0]), sameLenRange(lo[1:], strings.Repeat("9", n))))
		start++
	}
	if !hiNine {
		alts = append(alts, eSeq(eByte(hi[0]), sameLenRange(strings.Repeat("0", n), hi[1:])))
		end--
	}
	if start <= end {
		alts = append(alts, eSeq(eRange(start, end), eRepeat(digit, n, n)))
	}
	return eAlt(alts...)
}

// integerRange matches JSON integers in [lo, hi] (inclusive bounds; inf for none).
func integerRange(lo, hi bound) *expr {
	var alts []*expr
	// Non-negative part.
	if hi.inf || hi.v >= 0 {
		a := int64(0)
		if !lo.inf && lo.v > 0 {
			a = lo.v
		}
		b := int64(-1)
		if !hi.inf {
			b = hi.v
		}
		alts = append(alts, uintRange(a, b))
	}
	// Negative part: magnitudes in [max(1, -hi), -lo].
	if lo.inf || lo.v < 0 {
		a := int64(1)
		if !hi.inf && -hi.v > 1 {
			a = -hi.v
		}
		b := int64(-1)
		if !lo.inf {
			b = -lo.v
		}
		if b < 0 || a <= b {
			alts = append(alts, eSeq(eByte('-'), uintRange(a, b)))
		}
	}
	return eAlt(alts...)
}

var (
	fracAny     = eOpt(eSeq(eByte('.'), eRepeat(digit, 1, -1)))
	fracZero    = eOpt(eSeq(eByte('.'), eRepeat(eByte('0'), 1, -1)))
	fracNonzero = eSeq(eByte('.'), eStar(digit), eRange('1', '9'), eStar(digit))
	exponent    = eOpt(eSeq(eAlt(eByte('e'), eByte('E')), eOpt(eAlt(eByte('+'), eByte('-'))), eRepeat(digit, 1, -1)))
)

// magnitude matches I[.F] (no sign, no exponent) with value m in the range; lo.v >= 0.
func magnitude(lo, hi bound) *expr {
	var alts []*expr
	l := lo.v
	if !hi.inf && hi.v < l {
		return eNothing
	}
	if !hi.inf && hi.v == l {
		if lo.excl || hi.excl {
			return eNothing
		}
		return eSeq(uintRange(l, l), fracZero)
	}
	// I == lo.
	if lo.excl {
		alts = append(alts, eSeq(uintRange(l, l), fracNonzero))
	} else {
		alts = append(alts, eSeq(uintRange(l, l), fracAny))
	}
	// lo < I < hi.
	if hi.inf {
		alts = append(alts, eSeq(uintRange(l+1, -1), fracAny))
	} else {
		if l+1 <= hi.v-1 {
			alts = append(alts, eSeq(uintRange(l+1, hi.v-1), fracAny))
		}
		if !hi.excl {
			alts = append(alts, eSeq(uintRange(hi.v, hi.v), fracZero))
		}
	}
	return eAlt(alts...)
}

// numberRange matches JSON numbers in a range with integral bounds. Exponents are only
// allowed when the range is unbounded or [0, ∞).
func numberRange(lo, hi bound) *expr {
	if lo.inf && hi.inf {
		return eSeq(eOpt(eByte('-')), eAlt(eByte('0'), eSeq(eRange('1', '9'), eStar(digit))), fracAny, exponent)
	}
	if hi.inf && !lo.inf && lo.v == 0 && !lo.excl {
		return eSeq(eAlt(eByte('0'), eSeq(eRange('1', '9'), eStar(digit))), fracAny, exponent)
	}
	var alts []*expr
	// x >= 0 part.
	if hi.inf || hi.v >= 0 {
		l := bound{v: 0}
		if !lo.inf && lo.v >= 0 {
			l = lo
		}
		alts = append(alts, magnitude(l, hi))
	}
	// x < 0 part: m = -x in (max(0, -hi)..., -lo].
	if lo.inf || lo.v < 0 {
		l := bound{v: 0, excl: true}
		if !hi.inf && hi.v < 0 {
			l = bound{v: -hi.v, excl: hi.excl}
		}
		h := bound{inf: true}
		if !lo.inf {
			h = bound{v: -lo.v, excl: lo.excl}
		}
		alts = append(alts, eSeq(eByte('-'), magnitude(l, h)))
	}
	return eAlt(alts...)
}

// fbound is one end of a range of JSON numbers (any decimal bound); inf: unbounded.
type fbound struct {
	f    float64
	excl bool
	inf  bool
}

// decimalParts splits |f| into integer and fraction digits (no trailing zeros).
func decimalParts(f float64) (int64, string) {
	s := strconv.FormatFloat(math.Abs(f), 'f', -1, 64)
	ip, fp, _ := strings.Cut(s, ".")
	i, _ := strconv.ParseInt(ip, 10, 64)
	return i, strings.TrimRight(fp, "0")
}

// fracGE matches fraction digit strings D (after the '.') with 0.D >= 0.S (strict: >);
// emptyOK says whether D may be empty (no fraction at all).
func fracGE(s string, strict bool) (emptyOK bool, nonEmpty *expr) {
	s = strings.TrimRight(s, "0")
	if s == "" {
		if strict {
			return false, eSeq(eStar(digit), eRange('1', '9'), eStar(digit))
		}
		return true, eRepeat(digit, 1, -1)
	}
	restOK, rest := fracGE(s[1:], strict)
	alts := []*expr{eSeq(eByte(s[0]), optIf(restOK, rest))}
	if s[0] < '9' {
		alts = append(alts, eSeq(eRange(s[0]+1, '9'), eStar(digit)))
	}
	return false, eAlt(alts...)
}

// fracLE matches fraction digit strings D with 0.D <= 0.S (strict: <).
func fracLE(s string, strict bool) (emptyOK bool, nonEmpty *expr) {
	s = strings.TrimRight(s, "0")
	if s == "" {
		if strict {
			return false, eNothing
		}
		return true, eRepeat(eByte('0'), 1, -1)
	}
	restOK, rest := fracLE(s[1:], strict)
	alts := []*expr{eSeq(eByte(s[0]), optIf(restOK, rest))}
	if s[0] > '0' {
		alts = append(alts, eSeq(eRange('0', s[0]-1), eStar(digit)))
	}
	return true, eAlt(alts...)
}

// optIf is e or (emptyOK) e-or-nothing.
func optIf(emptyOK bool, e *expr) *expr {
	if emptyOK {
		return eOpt(e)
	}
	return e
}

// fraction is the optional ".D" part for a digit-string language.
func fraction(emptyOK bool, nonEmpty *expr) *expr {
	f := eSeq(eByte('.'), nonEmpty)
	if emptyOK {
		return eOpt(f)
	}
	return f
}

// magnitudeDec matches I[.F] (no sign, no exponent) with lo <= value <= hi (exclusive
// where marked); lo.f >= 0.
func magnitudeDec(lo, hi fbound) (*expr, error) {
	li, lf := decimalParts(lo.f)
	if hi.inf {
		ok, ne := fracGE(lf, lo.excl)
		return eAlt(eSeq(uintRange(li, li), fraction(ok, ne)), eSeq(uintRange(li+1, -1), fracAny)), nil
	}
	if hi.f < lo.f || hi.f == lo.f && (lo.excl || hi.excl) {
		return eNothing, nil
	}
	hiI, hf := decimalParts(hi.f)
	if hiI == li {
		okA, a := fracGE(lf, lo.excl)
		okB, b := fracLE(hf, hi.excl)
		da, err := compileExpr(fraction(okA, a))
		if err != nil {
			return nil, err
		}
		db, err := compileExpr(fraction(okB, b))
		if err != nil {
			return nil, err
		}
		both, err := product(da, db, false)
		if err != nil {
			return nil, err
		}
		return eSeq(uintRange(li, li), eDFA(both)), nil
	}
	okA, a := fracGE(lf, lo.excl)
	okB, b := fracLE(hf, hi.excl)
	alts := []*expr{eSeq(uintRange(li, li), fraction(okA, a)), eSeq(uintRange(hiI, hiI), fraction(okB, b))}
	if li+1 <= hiI-1 {
		alts = append(alts, eSeq(uintRange(li+1, hiI-1), fracAny))
	}
	return eAlt(alts...), nil
}

// numberRangeDec matches JSON numbers between decimal bounds. Exponents only when the
// range is unbounded or [0, ∞).
func numberRangeDec(lo, hi fbound) (*expr, error) {
	if lo.inf && hi.inf || hi.inf && !lo.inf && lo.f == 0 && !lo.excl {
		return numberRange(bound{v: int64(lo.f), inf: lo.inf}, bound{inf: true}), nil
	}
	var alts []*expr
	if hi.inf || hi.f >= 0 {
		l := fbound{f: 0}
		if !lo.inf && lo.f >= 0 {
			l = lo
		}
		e, err := magnitudeDec(l, hi)
		if err != nil {
			return nil, err
		}
		alts = append(alts, e)
	}
	if lo.inf || lo.f < 0 {
		l := fbound{f: 0, excl: true}
		if !hi.inf && hi.f < 0 {
			l = fbound{f: -hi.f, excl: hi.excl}
		}
		h := fbound{inf: true}
		if !lo.inf {
			h = fbound{f: -lo.f, excl: lo.excl}
		}
		e, err := magnitudeDec(l, h)
		if err != nil {
			return nil, err
		}
		alts = append(alts, eSeq(eByte('-'), e))
	}
	return eAlt(alts...), nil
}

// multipleOfDFA matches JSON numbers without exponent that are multiples of p·10^-d:
// it reads the digits tracking the value scaled by 10^d modulo p. allowFrac: fraction
// digits may appear (only zeros beyond the d-th).
func multipleOfDFA(p int64, d int, allowFrac bool) (*dfa, error) {
	if p <= 0 || p*int64(d+3) > 20000 {
		return nil, fmt.Errorf("%w: a remainder automaton for divisor %d·10^-%d", ErrTooLarge, p, d)
	}
	out := &dfa{}
	const (
		clsOther = iota
		clsMinus
		clsDot
		clsDigit0 // ... clsDigit0+9
	)
	for b := 0; b < 256; b++ {
		out.classOf[b] = clsOther
	}
	out.classOf['-'] = clsMinus
	out.classOf['.'] = clsDot
	for c := 0; c < 10; c++ {
		out.classOf['0'+c] = uint8(clsDigit0 + c)
	}
	out.nclass = clsDigit0 + 10
	pow := make([]int64, d+1) // 10^k mod p
	pow[0] = 1 % p
	for k := 1; k <= d; k++ {
		pow[k] = pow[k-1] * 10 % p
	}
	// States: 0 start, 1 after '-', 2 after a leading '0', then int(r), frac(r, j) for
	// j in 0..d (j digits read; j == d also covers trailing zeros).
	intBase := int32(3)
	fracBase := intBase + int32(p)
	n := int(fracBase) + int(p)*(d+1)
	out.next = make([]int32, n*out.nclass)
	for i := range out.next {
		out.next[i] = -1
	}
	out.final = make([]bool, n)
	set := func(s int32, cls int, t int32) { out.next[int(s)*out.nclass+cls] = t }
	intState := func(r int64) int32 { return intBase + int32(r) }
	fracState := func(r int64, j int) int32 { return fracBase + int32(r)*int32(d+1) + int32(j) }
	for _, s := range []int32{0, 1} {
		set(s, clsDigit0, 2)
		for c := 1; c < 10; c++ {
			set(s, clsDigit0+c, intState(int64(c)%p))
		}
	}
	set(0, clsMinus, 1)
	out.final[2] = true // 0
	if allowFrac {
		set(2, clsDot, fracState(0, 0))
	}
	for r := int64(0); r < p; r++ {
		s := intState(r)
		out.final[s] = r*pow[d]%p == 0
		for c := 0; c < 10; c++ {
			set(s, clsDigit0+c, intState((r*10+int64(c))%p))
		}
		if allowFrac {
			set(s, clsDot, fracState(r, 0))
		}
		for j := 0; j <= d; j++ {
			fs := fracState(r, j)
			out.final[fs] = j > 0 && r*pow[d-j]%p == 0
			if j < d {
				for c := 0; c < 10; c++ {
					set(fs, clsDigit0+c, fracState((r*10+int64(c))%p, j+1))
				}
			} else {
				set(fs, clsDigit0, fs)
			}
		}
	}
	// fracState(r, d) after a digit beyond d: only '0' keeps it; reached from j = d-1.
	return out.trim(), nil
}
