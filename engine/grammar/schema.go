package grammar

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/url"
	"strconv"
	"strings"
)

// CompileJSONSchema compiles a JSON Schema: the output must be one JSON value that the
// schema validates (within the coverage doc.go describes). Keywords it cannot enforce
// are errors (*UnsupportedError), never silently dropped.
func CompileJSONSchema(v *Vocabulary, schema []byte, opts ...Option) (*Grammar, error) {
	doc, err := parseJSON(schema)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidSchema, err)
	}
	sc := newSchemaCompiler(doc, buildOptions(opts))
	root := sc.rs.add("root")
	e, err := sc.compile(doc, "")
	if err != nil {
		return nil, err
	}
	sc.rs.exprs[root] = e
	sc.rs.root = root
	return newGrammar(v, sc.rs)
}

// CompileAnyJSON compiles "any JSON value" (OpenAI's json_object response format).
func CompileAnyJSON(v *Vocabulary, opts ...Option) (*Grammar, error) {
	return CompileJSONSchema(v, []byte(`{}`), opts...)
}

type schemaCompiler struct {
	strDFA *dfa // any JSON string, for object keys
	doc    any
	opts   options
	rs     *ruleSet
	refs   map[string]int // $ref target pointer → rule
	shared map[string]int // primitive rules by their constraints
	depth  int
}

func newSchemaCompiler(doc any, o options) *schemaCompiler {
	return &schemaCompiler{doc: doc, opts: o, rs: &ruleSet{}, refs: map[string]int{}, shared: map[string]int{}}
}

// Keywords that do not constrain instances (or that validators ignore).
var annotationKeywords = map[string]bool{
	"title": true, "description": true, "examples": true, "example": true, "default": true, "$schema": true,
	"$id": true, "id": true, "$comment": true, "deprecated": true, "readOnly": true, "writeOnly": true,
	"contentMediaType": true, "contentEncoding": true, "contentSchema": true, "$defs": true,
	"definitions": true, "$anchor": true, "$vocabulary": true, "$dynamicAnchor": true,
}

// Standard assertion keywords the engine cannot enforce: an error names them.
var unsupportedKeywords = []string{
	"not", "if", "then", "else",
	"propertyNames", "contains", "minContains", "maxContains", "unevaluatedProperties",
	"unevaluatedItems", "$dynamicRef", "$recursiveRef",
}

// Keywords handled per type.
var typeKeywords = map[string][]string{
	"string":  {"minLength", "maxLength", "pattern", "format"},
	"number":  {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"},
	"integer": {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"},
	"object":  {"properties", "required", "additionalProperties", "patternProperties", "minProperties", "maxProperties"},
	"array":   {"items", "prefixItems", "additionalItems", "minItems", "maxItems", "uniqueItems"},
}

var allTypes = []string{"null", "boolean", "object", "array", "string", "number", "integer"}

func unsupported(kw, path, detail string) error {
	return &UnsupportedError{Keyword: kw, Path: path, Detail: detail}
}

func invalid(path, format string, args ...any) error {
	if path == "" {
		path = "#"
	}
	return fmt.Errorf("%w: at %s: %s", ErrInvalidSchema, path, fmt.Sprintf(format, args...))
}

// Separators and whitespace.
func (sc *schemaCompiler) ws() *expr {
	if sc.opts.compact {
		return eEmpty
	}
	w := eAlt(eByte(' '), eByte('\t'), eByte('\n'), eByte('\r'))
	return eRepeat(w, 0, sc.opts.maxWS)
}

func (sc *schemaCompiler) itemSep() *expr {
	if sc.opts.compact {
		return eLit(sc.opts.itemSep)
	}
	return eSeq(sc.ws(), eByte(','), sc.ws())
}

func (sc *schemaCompiler) keySep() *expr {
	if sc.opts.compact {
		return eLit(sc.opts.keySep)
	}
	return eSeq(sc.ws(), eByte(':'), sc.ws())
}

func (sc *schemaCompiler) open(c byte) *expr  { return eSeq(eByte(c), sc.ws()) }
func (sc *schemaCompiler) close(c byte) *expr { return eSeq(sc.ws(), eByte(c)) }

// compile returns the expr of a value valid against schema s (at JSON pointer path).
func (sc *schemaCompiler) compile(s any, path string) (*expr, error) {
	sc.depth++
	defer func() { sc.depth-- }()
	if sc.depth > 200 {
		return nil, unsupported("$ref", path, "schema nesting deeper than 200 (non-productive recursion?)")
	}
	switch t := s.(type) {
	case bool:
		if t {
			return sc.anyValue(), nil
		}
		return eNothing, nil
	case *object:
		return sc.compileObject(t, path)
	}
	return nil, invalid(path, "a schema must be an object or a boolean, found %s", jsonTypeOf(s))
}

func (sc *schemaCompiler) compileObject(s *object, path string) (*expr, error) {
	if cands, ok := sc.enumCandidates(s, path); ok {
		if vals, ok := sc.validatedLiterals(s, cands); ok {
			return sc.literalRule(vals), nil
		}
	}
	if alts, ok, err := sc.splitDependencies(s, path); ok || err != nil {
		if err != nil {
			return nil, err
		}
		var out []*expr
		for _, alt := range alts {
			e, err := sc.compile(alt, path)
			if err != nil {
				return nil, err
			}
			out = append(out, e)
		}
		return eAlt(out...), nil
	}
	for _, kw := range unsupportedKeywords {
		if v, ok := s.get(kw); ok {
			if kw == "not" && onlyType(v) {
				continue
			}
			return nil, unsupported(kw, path, "")
		}
	}
	if ref, ok := s.get("$ref"); ok {
		rs, ok := ref.(string)
		if !ok {
			return nil, invalid(path, "$ref must be a string")
		}
		rest := without(s, "$ref")
		if !constrains(rest) || sc.refOnly() {
			return sc.refRule(rs, path)
		}
		target, tpath, err := sc.resolve(rs, path)
		if err != nil {
			return nil, err
		}
		merged, err := sc.merge(rest, target, path, tpath)
		if err != nil {
			return nil, err
		}
		return sc.compile(merged, path)
	}
	if all, ok := s.get("allOf"); ok {
		subs, ok := all.([]any)
		if !ok || len(subs) == 0 {
			return nil, invalid(path, "allOf must be a non-empty array")
		}
		merged := any(without(s, "allOf"))
		for i, sub := range subs {
			var err error
			merged, err = sc.merge(merged, sub, path, fmt.Sprintf("%s/allOf/%d", path, i))
			if err != nil {
				return nil, err
			}
		}
		return sc.compile(merged, path)
	}
	for _, kw := range []string{"anyOf", "oneOf"} {
		alts, ok := s.get(kw)
		if !ok {
			continue
		}
		subs, ok := alts.([]any)
		if !ok || len(subs) == 0 {
			return nil, invalid(path, "%s must be a non-empty array", kw)
		}
		rest := without(s, kw)
		if kw == "oneOf" {
			if sets, ok := requiredOnly(subs); ok {
				exact, err := exclusiveRequired(sets)
				if err != nil {
					return nil, unsupported("oneOf", path, err.Error())
				}
				subs = exact
				kw = "anyOf" // the rewritten alternatives are disjoint
			}
		}
		var out []*expr
		var merged []any
		for i, sub := range subs {
			p := fmt.Sprintf("%s/%s/%d", path, kw, i)
			alt := sub
			if constrains(rest) {
				m, err := sc.merge(rest, sub, path, p)
				if err != nil {
					return nil, err
				}
				alt = m
			}
			merged = append(merged, alt)
		}
		if kw == "oneOf" {
			// oneOf is enforced as anyOf, which is exact only when no value can match two
			// alternatives.
			for i := range merged {
				for j := i + 1; j < len(merged); j++ {
					if !sc.disjoint(merged[i], merged[j], 0) {
						return nil, unsupported("oneOf", path, fmt.Sprintf("alternatives %d and %d may both match a value", i, j))
					}
				}
			}
		}
		for i, alt := range merged {
			p := fmt.Sprintf("%s/%s/%d", path, kw, i)
			e, err := sc.compile(alt, p)
			if err != nil {
				return nil, err
			}
			out = append(out, e)
		}
		return eAlt(out...), nil
	}
	types, err := schemaTypes(s, path)
	if err != nil {
		return nil, err
	}
	if n, ok := s.get("not"); ok {
		// Only {"not": {"type": ...}} is supported (checked above): drop those types.
		excluded, err := schemaTypes(n.(*object), path+"/not")
		if err != nil {
			return nil, err
		}
		var kept []string
		for _, t := range types {
			if !contains(excluded, t) && !(t == "integer" && contains(excluded, "number")) {
				kept = append(kept, t)
			}
		}
		if contains(kept, "number") && contains(excluded, "integer") {
			return nil, unsupported("not", path, "numbers that are not integers")
		}
		types = kept
	}
	if c, ok := s.get("const"); ok {
		return sc.literalValues([]any{c}, types, path)
	}
	if en, ok := s.get("enum"); ok {
		vals, ok := en.([]any)
		if !ok {
			return nil, invalid(path, "enum must be an array")
		}
		return sc.literalValues(vals, types, path)
	}
	var alts []*expr
	hasNumber := contains(types, "number")
	for _, ty := range types {
		if ty == "integer" && hasNumber {
			continue
		}
		e, err := sc.compileType(s, ty, path)
		if err != nil {
			return nil, err
		}
		alts = append(alts, e)
	}
	return eAlt(alts...), nil
}

// onlyType reports whether a schema is an object whose only constraint is "type".
func onlyType(v any) bool {
	o, ok := v.(*object)
	if !ok {
		return false
	}
	_, hasType := o.get("type")
	for _, k := range o.keys {
		if k != "type" && !annotationKeywords[k] {
			return false
		}
	}
	return hasType
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// without returns a shallow copy of s without the given keyword.
func without(s *object, kw string) *object {
	o := newObject()
	for _, k := range s.keys {
		if k != kw {
			o.set(k, s.vals[k])
		}
	}
	return o
}

// constrains reports whether an object schema has any keyword besides annotations.
func constrains(s *object) bool {
	for _, k := range s.keys {
		if !annotationKeywords[k] {
			return true
		}
	}
	return false
}

func schemaTypes(s *object, path string) ([]string, error) {
	t, ok := s.get("type")
	if !ok {
		return allTypes, nil
	}
	var list []string
	switch tt := t.(type) {
	case string:
		list = []string{tt}
	case []any:
		for _, x := range tt {
			xs, ok := x.(string)
			if !ok {
				return nil, invalid(path, "type must be a string or an array of strings")
			}
			list = append(list, xs)
		}
	default:
		return nil, invalid(path, "type must be a string or an array of strings")
	}
	for _, x := range list {
		if !contains(allTypes, x) {
			return nil, invalid(path, "unknown type %q", x)
		}
	}
	return list, nil
}

// literalValues matches any of vals (enum/const) that has one of the allowed types.
func (sc *schemaCompiler) literalValues(vals []any, types []string, path string) (*expr, error) {
	var alts []any
	for _, v := range vals {
		vt := jsonTypeOf(v)
		if !contains(types, vt) && !(vt == "integer" && contains(types, "number")) {
			continue
		}
		alts = append(alts, v)
	}
	return sc.literalRule(alts), nil
}

// literalRule matches any of vals. More than a few become a shared rule of their own:
// inlined into an object's automaton, a long enum multiplies its states.
func (sc *schemaCompiler) literalRule(vals []any) *expr {
	alts := make([]*expr, len(vals))
	for i, v := range vals {
		alts[i] = sc.valueExpr(v)
	}
	if len(vals) <= 4 {
		return eAlt(alts...)
	}
	var key strings.Builder
	key.WriteString("enum")
	for _, v := range vals {
		key.WriteString(" " + canonicalJSON(v))
	}
	e, _ := sc.sharedRule(key.String(), func() (*expr, error) { return eAlt(alts...), nil })
	return e
}

// valueExpr matches one JSON value exactly (whitespace and separators as configured;
// strings as json.dumps writes them; numbers as written in the schema).
func (sc *schemaCompiler) valueExpr(v any) *expr {
	switch t := v.(type) {
	case nil:
		return eLit("null")
	case bool:
		if t {
			return eLit("true")
		}
		return eLit("false")
	case json.Number:
		return eLit(string(t))
	case string:
		return eLit(quoteJSON(t))
	case []any:
		if len(t) == 0 {
			return eSeq(sc.open('['), sc.close(']'))
		}
		parts := []*expr{sc.open('[')}
		for i, x := range t {
			if i > 0 {
				parts = append(parts, sc.itemSep())
			}
			parts = append(parts, sc.valueExpr(x))
		}
		return eSeq(append(parts, sc.close(']'))...)
	case *object:
		if len(t.keys) == 0 {
			return eSeq(sc.open('{'), sc.close('}'))
		}
		parts := []*expr{sc.open('{')}
		for i, k := range t.keys {
			if i > 0 {
				parts = append(parts, sc.itemSep())
			}
			parts = append(parts, eLit(quoteJSON(k)), sc.keySep(), sc.valueExpr(t.vals[k]))
		}
		return eSeq(append(parts, sc.close('}'))...)
	}
	return eNothing
}

func (sc *schemaCompiler) compileType(s *object, ty, path string) (*expr, error) {
	switch ty {
	case "null":
		return eLit("null"), nil
	case "boolean":
		return eAlt(eLit("true"), eLit("false")), nil
	case "string":
		return sc.stringType(s, path)
	case "number", "integer":
		return sc.numberType(s, ty, path)
	case "object":
		return sc.objectType(s, path)
	case "array":
		return sc.arrayType(s, path)
	}
	return nil, invalid(path, "unknown type %q", ty)
}

// sharedRule returns the rule named key, building it with body on first use; primitive
// rules are shared so that their token-mask cache entries are too.
func (sc *schemaCompiler) sharedRule(key string, body func() (*expr, error)) (*expr, error) {
	if r, ok := sc.shared[key]; ok {
		return eCall(r), nil
	}
	r := sc.rs.add(key)
	sc.shared[key] = r
	e, err := body()
	if err != nil {
		return nil, err
	}
	sc.rs.exprs[r] = e
	return eCall(r), nil
}

func (sc *schemaCompiler) anyValue() *expr {
	e, _ := sc.sharedRule("any", func() (*expr, error) {
		any := eCall(sc.shared["any"])
		str, _ := sc.plainString()
		num := numberRange(bound{inf: true}, bound{inf: true})
		num, _ = sc.sharedRule("number", func() (*expr, error) { return num, nil })
		member := eSeq(str, sc.keySep(), any)
		obj := eSeq(sc.open('{'), eOpt(eSeq(member, eStar(eSeq(sc.itemSep(), member)))), sc.close('}'))
		arr := eSeq(sc.open('['), eOpt(eSeq(any, eStar(eSeq(sc.itemSep(), any)))), sc.close(']'))
		return eAlt(obj, arr, str, num, eLit("true"), eLit("false"), eLit("null")), nil
	})
	return e
}

// jsonChar is one character of a JSON string body, raw or escaped.
func jsonChar() *expr {
	hex := eAlt(eRange('0', '9'), eRange('a', 'f'), eRange('A', 'F'))
	raw := eAlt(utf8RangeExpr(0x20, '"'-1), utf8RangeExpr('"'+1, '\\'-1), utf8RangeExpr('\\'+1, 0x10FFFF))
	esc := eSeq(eByte('\\'), eAlt(eSetOf(setOf(`"\/bfnrt`)), eSeq(eByte('u'), eRepeat(hex, 4, 4))))
	return eAlt(raw, esc)
}

func setOf(chars string) byteSet {
	var s byteSet
	for i := 0; i < len(chars); i++ {
		s.add(chars[i])
	}
	return s
}

func (sc *schemaCompiler) plainString() (*expr, error) {
	return sc.sharedRule("string", func() (*expr, error) {
		return eSeq(eByte('"'), eStar(jsonChar()), eByte('"')), nil
	})
}

func intKeyword(s *object, kw, path string) (int, bool, error) {
	v, ok := s.get(kw)
	if !ok {
		return 0, false, nil
	}
	n, isNum := v.(json.Number)
	if !isNum {
		return 0, false, invalid(path, "%s must be a number", kw)
	}
	f, err := n.Float64()
	if err != nil || f < 0 || f != math.Trunc(f) {
		return 0, false, invalid(path, "%s must be a non-negative integer", kw)
	}
	if f > 1e9 {
		f = 1e9
	}
	return int(f), true, nil
}

// maxCountedRepeat bounds minLength/maxLength/minItems/maxItems expansions.
const maxCountedRepeat = 5000

func (sc *schemaCompiler) stringType(s *object, path string) (*expr, error) {
	minL, hasMin, err := intKeyword(s, "minLength", path)
	if err != nil {
		return nil, err
	}
	maxL, hasMax, err := intKeyword(s, "maxLength", path)
	if err != nil {
		return nil, err
	}
	var pattern, format string
	if p, ok := s.get("pattern"); ok {
		if pattern, ok = p.(string); !ok {
			return nil, invalid(path, "pattern must be a string")
		}
	}
	if f, ok := s.get("format"); ok {
		fs, _ := f.(string)
		if _, known := formatRegex[fs]; known {
			format = fs
		} else if specFormats[fs] {
			return nil, unsupported("format", path, fmt.Sprintf("format %q", fs))
		}
	}
	if !hasMin && !hasMax && pattern == "" && format == "" {
		return sc.plainString()
	}
	if hasMax && maxL > maxCountedRepeat || minL > maxCountedRepeat {
		return nil, unsupported("maxLength", path, fmt.Sprintf("length bounds above %d are not supported", maxCountedRepeat))
	}
	key := fmt.Sprintf("string{%d,%d,%v}%q%q", minL, maxL, hasMax, pattern, format)
	if pattern == "" && format == "" {
		e, err := sc.sharedRule(key, func() (*expr, error) {
			mx := -1
			if hasMax {
				mx = maxL
			}
			d, err := countedStringDFA(minL, mx)
			if err != nil {
				return nil, err
			}
			return eDFA(d), nil
		})
		if err != nil {
			return nil, err
		}
		mx := -1
		if hasMax {
			mx = maxL
		}
		if sc.rs.counted == nil {
			sc.rs.counted = map[int][2]int{}
		}
		sc.rs.counted[e.rule] = [2]int{minL, mx}
		return e, nil
	}
	return sc.sharedRule(key, func() (*expr, error) {
		var body *expr
		if hasMin || hasMax {
			mx := -1
			if hasMax {
				mx = maxL
			}
			body = eRepeat(jsonChar(), minL, mx)
		}
		for _, re := range []struct {
			src    string
			search bool
		}{{pattern, true}, {formatRegex[format], false}} {
			if re.src == "" {
				continue
			}
			var pe *expr
			var err error
			if re.search {
				pe, err = searchRegexExpr(re.src, jsonChars)
			} else {
				pe, err = regexExpr(re.src, jsonChars)
			}
			if err != nil {
				return nil, fmt.Errorf("at %s: %w", orRoot(path), err)
			}
			if body == nil {
				body = pe
				continue
			}
			a, err := compileExpr(body)
			if err != nil {
				return nil, err
			}
			b, err := compileExpr(pe)
			if err != nil {
				return nil, err
			}
			d, err := product(a, b, false)
			if err != nil {
				return nil, err
			}
			body = eDFA(d)
		}
		return eSeq(eByte('"'), body, eByte('"')), nil
	})
}

func orRoot(path string) string {
	if path == "" {
		return "#"
	}
	return path
}

// numBound reads a numeric bound keyword (draft 4's boolean exclusive flags included).
func numKeyword(s *object, kw, path string) (float64, bool, error) {
	v, ok := s.get(kw)
	if !ok {
		return 0, false, nil
	}
	n, isNum := v.(json.Number)
	if !isNum {
		return 0, false, invalid(path, "%s must be a number", kw)
	}
	f, err := n.Float64()
	if err != nil {
		return 0, false, invalid(path, "%s: %v", kw, err)
	}
	return f, true, nil
}

func (sc *schemaCompiler) numberType(s *object, ty, path string) (*expr, error) {
	lo, hi := fbound{inf: true}, fbound{inf: true}
	// tighten keeps the stricter of a bound and a new one.
	tighten := func(b *fbound, f float64, excl bool, kw string, isLower bool) error {
		if math.Abs(f) > 1e15 {
			return unsupported(kw, path, "bounds beyond ±1e15 are not supported")
		}
		if b.inf || (isLower && (f > b.f || f == b.f && excl)) || (!isLower && (f < b.f || f == b.f && excl)) {
			*b = fbound{f: f, excl: excl}
		}
		return nil
	}
	minV, hasMin, err := numKeyword(s, "minimum", path)
	if err != nil {
		return nil, err
	}
	maxV, hasMax, err := numKeyword(s, "maximum", path)
	if err != nil {
		return nil, err
	}
	exMinBool, exMaxBool := false, false
	for _, kw := range []string{"exclusiveMinimum", "exclusiveMaximum"} {
		v, ok := s.get(kw)
		if !ok {
			continue
		}
		if b, isBool := v.(bool); isBool {
			if kw == "exclusiveMinimum" {
				exMinBool = b
			} else {
				exMaxBool = b
			}
			continue
		}
		f, _, err := numKeyword(s, kw, path)
		if err != nil {
			return nil, err
		}
		if err := tighten(map[bool]*fbound{true: &lo, false: &hi}[kw == "exclusiveMinimum"], f, true, kw, kw == "exclusiveMinimum"); err != nil {
			return nil, err
		}
	}
	if hasMin {
		if err := tighten(&lo, minV, exMinBool, "minimum", true); err != nil {
			return nil, err
		}
	}
	if hasMax {
		if err := tighten(&hi, maxV, exMaxBool, "maximum", false); err != nil {
			return nil, err
		}
	}
	var mulP int64
	mulD := 0
	if mv, ok := s.get("multipleOf"); ok {
		n, isNum := mv.(json.Number)
		f, err := n.Float64()
		if !isNum || err != nil || f <= 0 {
			return nil, invalid(path, "multipleOf must be a positive number")
		}
		ip, fp := decimalParts(f)
		if len(fp) > 6 || ip > 1e6 {
			return nil, unsupported("multipleOf", path, "a divisor with more than 6 decimals or above 1e6")
		}
		mulD = len(fp)
		frac, _ := strconv.ParseInt("0"+fp, 10, 64)
		mulP = ip*int64(math.Pow10(mulD)) + frac
	}
	key := fmt.Sprintf("%s[%v]%d/%d", ty, []fbound{lo, hi}, mulP, mulD)
	if lo.inf && hi.inf && mulP == 0 {
		key = ty
	}
	return sc.sharedRule(key, func() (*expr, error) {
		body, err := sc.numberBody(ty, lo, hi)
		if err != nil || mulP == 0 {
			return body, err
		}
		mul, err := multipleOfDFA(mulP, mulD, ty == "number")
		if err != nil {
			return nil, unsupported("multipleOf", path, "the divisor's automaton would be too large")
		}
		rng, err := compileExpr(body)
		if err != nil {
			return nil, err
		}
		both, err := product(rng, mul, false)
		if err != nil {
			return nil, err
		}
		return eDFA(both), nil
	})
}

// numberBody matches the numbers (or integers) in a range.
func (sc *schemaCompiler) numberBody(ty string, lo, hi fbound) (*expr, error) {
	{
		if ty == "number" {
			return numberRangeDec(lo, hi)
		}
		// Integers: exclusive and fractional bounds become inclusive integral ones.
		il, ih := bound{inf: lo.inf}, bound{inf: hi.inf}
		if !lo.inf {
			v := math.Ceil(lo.f)
			if lo.excl && v == lo.f {
				v++
			}
			il.v = int64(v)
		}
		if !hi.inf {
			v := math.Floor(hi.f)
			if hi.excl && v == hi.f {
				v--
			}
			ih.v = int64(v)
		}
		if !il.inf && !ih.inf && il.v > ih.v {
			return eNothing, nil
		}
		return integerRange(il, ih), nil
	}
}

type property struct {
	name     string
	value    *expr
	required bool
}

func (sc *schemaCompiler) objectType(s *object, path string) (*expr, error) {
	var props []property
	index := map[string]int{}
	if p, ok := s.get("properties"); ok {
		po, ok := p.(*object)
		if !ok {
			return nil, invalid(path, "properties must be an object")
		}
		for _, name := range po.keys {
			e, err := sc.compile(po.vals[name], path+"/properties/"+escapePointer(name))
			if err != nil {
				return nil, err
			}
			index[name] = len(props)
			props = append(props, property{name: name, value: e})
		}
	}
	// Additional members: keys matching patternProperties, then everything else.
	type keyed struct {
		key   *dfa
		value *expr
	}
	var extras []keyed
	var names []string
	for _, p := range props {
		names = append(names, p.name)
	}
	strDFA, err := sc.stringDFA()
	if err != nil {
		return nil, err
	}
	rest := strDFA
	if len(names) > 0 {
		alts := make([]*expr, len(names))
		for i, n := range names {
			alts[i] = eLit(quoteJSON(n))
		}
		named, err := compileExpr(eAlt(alts...))
		if err != nil {
			return nil, err
		}
		if rest, err = product(strDFA, named, true); err != nil {
			return nil, err
		}
		inside := strDFA.step(0, '"')
		rest.likeString = make([]bool, rest.numStates())
		for i, a := range rest.pairA {
			rest.likeString[i] = a == inside
		}
	}
	if pp, ok := s.get("patternProperties"); ok {
		ppo, ok := pp.(*object)
		if !ok {
			return nil, invalid(path, "patternProperties must be an object")
		}
		var keyDFAs []*dfa
		for _, pat := range ppo.keys {
			pe, err := searchRegexExpr(pat, jsonChars)
			if err != nil {
				return nil, fmt.Errorf("at %s/patternProperties: %w", orRoot(path), err)
			}
			kd, err := compileExpr(eSeq(eByte('"'), pe, eByte('"')))
			if err != nil {
				return nil, err
			}
			for _, n := range names {
				if kd.matches([]byte(quoteJSON(n))) {
					return nil, unsupported("patternProperties", path, fmt.Sprintf("pattern %q also matches property %q", pat, n))
				}
			}
			for _, other := range keyDFAs {
				both, err := product(kd, other, false)
				if err != nil {
					return nil, err
				}
				if !both.isEmpty() {
					return nil, unsupported("patternProperties", path, "overlapping patterns")
				}
			}
			keyDFAs = append(keyDFAs, kd)
			ve, err := sc.compile(ppo.vals[pat], path+"/patternProperties/"+escapePointer(pat))
			if err != nil {
				return nil, err
			}
			extras = append(extras, keyed{kd, ve})
			if rest, err = product(rest, kd, true); err != nil {
				return nil, err
			}
		}
	}
	var addl *expr
	if ap, ok := s.get("additionalProperties"); ok {
		if addl, err = sc.compile(ap, path+"/additionalProperties"); err != nil {
			return nil, err
		}
	} else {
		addl = sc.anyValue()
	}
	// Required names that are not properties must still appear: as extra members.
	if r, ok := s.get("required"); ok {
		list, ok := r.([]any)
		if !ok {
			return nil, invalid(path, "required must be an array")
		}
		for _, x := range list {
			name, ok := x.(string)
			if !ok {
				return nil, invalid(path, "required must list strings")
			}
			if i, ok := index[name]; ok {
				props[i].required = true
				continue
			}
			// Its value schema is the matching patternProperties one, else additional.
			val := addl
			for _, ex := range extras {
				if ex.key.matches([]byte(quoteJSON(name))) {
					val = ex.value
				}
			}
			index[name] = len(props)
			props = append(props, property{name: name, value: val, required: true})
		}
	}
	if addl.kind != exNothing {
		extras = append(extras, keyed{rest, addl})
	}
	nreq := 0
	for _, p := range props {
		if p.required {
			nreq++
		}
	}
	nonEmpty := false // minProperties 1 without required properties
	if v, ok, err := intKeyword(s, "minProperties", path); err != nil {
		return nil, err
	} else if ok && v > nreq {
		if v > 1 {
			return nil, unsupported("minProperties", path, "more than the required properties (and more than 1)")
		}
		nonEmpty = true
	}
	if v, ok, err := intKeyword(s, "maxProperties", path); err != nil {
		return nil, err
	} else if ok && (v < len(props) || len(extras) > 0) {
		if v < nreq {
			return eNothing, nil
		}
		return nil, unsupported("maxProperties", path, "fewer than the possible properties")
	}

	rule := sc.rs.add("object " + orRoot(path))
	var extraMember *expr
	if len(extras) > 0 {
		var alts []*expr
		for _, ex := range extras {
			key := eDFA(ex.key)
			if ex.key.likeString != nil {
				// Its own rule, so its states keep the string-like marks.
				r := sc.rs.add("key " + orRoot(path))
				sc.rs.exprs[r] = key
				key = eCall(r)
			} else if ex.key == strDFA {
				key, _ = sc.plainString()
			}
			alts = append(alts, eSeq(key, sc.keySep(), ex.value))
		}
		extraMember = eAlt(alts...)
	}
	member := func(p property) *expr {
		return eSeq(eLit(quoteJSON(p.name)), sc.keySep(), p.value)
	}
	// Build from the end: after[i] = members i.. once some member was written (each
	// starts with a separator); first[i] = members i.. when none was.
	n := len(props)
	var after, first *expr
	if extraMember != nil {
		after = eStar(eSeq(sc.itemSep(), extraMember))
		first = eOpt(eSeq(extraMember, after))
		if nonEmpty {
			first = eSeq(extraMember, after)
		}
	} else {
		after, first = eEmpty, eEmpty
		if nonEmpty {
			first = eNothing
		}
	}
	for i := n - 1; i >= 0; i-- {
		p := props[i]
		// after is linear: each optional member is an optional prefix of the tail.
		withoutSep := eSeq(member(p), after)
		if p.required {
			after = eSeq(sc.itemSep(), member(p), after)
			first = withoutSep
		} else {
			after = eSeq(eOpt(eSeq(sc.itemSep(), member(p))), after)
			first = eAlt(withoutSep, first)
		}
		// Long property lists: share the tail through a rule so the expression stays
		// linear in size.
		if i > 0 && (n-i)%8 == 0 {
			r := sc.rs.add(fmt.Sprintf("object %s members %d..", orRoot(path), i))
			sc.rs.exprs[r] = after
			after = eCall(r)
		}
	}
	sc.rs.exprs[rule] = eSeq(sc.open('{'), first, sc.close('}'))
	return eCall(rule), nil
}

func escapePointer(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "~", "~0"), "/", "~1")
}

func (sc *schemaCompiler) arrayType(s *object, path string) (*expr, error) {
	var prefix []*expr
	var rest *expr
	restSet := false
	prefixSchemas := func(list []any, kw string) error {
		for i, x := range list {
			e, err := sc.compile(x, fmt.Sprintf("%s/%s/%d", path, kw, i))
			if err != nil {
				return err
			}
			prefix = append(prefix, e)
		}
		return nil
	}
	if pi, ok := s.get("prefixItems"); ok {
		list, ok := pi.([]any)
		if !ok {
			return nil, invalid(path, "prefixItems must be an array")
		}
		if err := prefixSchemas(list, "prefixItems"); err != nil {
			return nil, err
		}
	}
	if it, ok := s.get("items"); ok {
		if list, isList := it.([]any); isList {
			// Draft 4–2019 tuple form; additionalItems is the rest.
			if err := prefixSchemas(list, "items"); err != nil {
				return nil, err
			}
			if ai, ok := s.get("additionalItems"); ok {
				e, err := sc.compile(ai, path+"/additionalItems")
				if err != nil {
					return nil, err
				}
				rest, restSet = e, true
			}
		} else {
			e, err := sc.compile(it, path+"/items")
			if err != nil {
				return nil, err
			}
			rest, restSet = e, true
		}
	}
	if !restSet {
		rest = sc.anyValue()
	}
	if u, ok := s.get("uniqueItems"); ok && u == true {
		return nil, unsupported("uniqueItems", path, "")
	}
	minI, _, err := intKeyword(s, "minItems", path)
	if err != nil {
		return nil, err
	}
	maxI, hasMax, err := intKeyword(s, "maxItems", path)
	if err != nil {
		return nil, err
	}
	if !hasMax {
		maxI = -1
	}
	if minI > maxCountedRepeat || maxI > maxCountedRepeat {
		return nil, unsupported("maxItems", path, fmt.Sprintf("item counts above %d are not supported", maxCountedRepeat))
	}
	if hasMax && maxI < minI {
		return eNothing, nil
	}
	sep := func(i int) *expr {
		if i == 0 {
			return eEmpty
		}
		return sc.itemSep()
	}
	var elems func(i int) *expr
	elems = func(i int) *expr {
		if maxI >= 0 && i >= maxI {
			return eEmpty
		}
		canStop := i >= minI
		if i < len(prefix) {
			next := eSeq(sep(i), prefix[i], elems(i+1))
			if canStop {
				return eAlt(eEmpty, next)
			}
			return next
		}
		if rest.kind == exNothing {
			if canStop {
				return eEmpty
			}
			return eNothing
		}
		need := max(minI-i, 0)
		upto := -1
		if maxI >= 0 {
			upto = maxI - i
		}
		if i > 0 {
			return eRepeat(eSeq(sc.itemSep(), rest), need, upto)
		}
		more := eRepeat(eSeq(sc.itemSep(), rest), max(need-1, 0), dec(upto))
		one := eSeq(rest, more)
		if need == 0 {
			return eOpt(one)
		}
		return one
	}
	rule := sc.rs.add("array " + orRoot(path))
	sc.rs.exprs[rule] = eSeq(sc.open('['), elems(0), sc.close(']'))
	return eCall(rule), nil
}

func dec(n int) int {
	if n < 0 {
		return n
	}
	return n - 1
}

// refRule returns a call to the rule for a $ref target, creating it (once per target,
// which makes recursive schemas work).
func (sc *schemaCompiler) refRule(ref, path string) (*expr, error) {
	target, tpath, err := sc.resolve(ref, path)
	if err != nil {
		return nil, err
	}
	if r, ok := sc.refs[tpath]; ok {
		return eCall(r), nil
	}
	r := sc.rs.add("ref " + orRoot(tpath))
	sc.refs[tpath] = r
	e, err := sc.compile(target, tpath)
	if err != nil {
		return nil, err
	}
	sc.rs.exprs[r] = e
	return eCall(r), nil
}

// resolve follows a $ref within the document ("#", "#/json/pointer").
func (sc *schemaCompiler) resolve(ref, path string) (any, string, error) {
	if !strings.HasPrefix(ref, "#") {
		return nil, "", unsupported("$ref", path, fmt.Sprintf("only references within the document are supported, not %q", ref))
	}
	frag := ref[1:]
	if f, err := url.PathUnescape(frag); err == nil {
		frag = f
	}
	if frag != "" && !strings.HasPrefix(frag, "/") {
		return nil, "", unsupported("$ref", path, fmt.Sprintf("anchor references (%q) are not supported", ref))
	}
	cur := sc.doc
	if frag != "" {
		for _, tok := range strings.Split(frag[1:], "/") {
			tok = strings.ReplaceAll(strings.ReplaceAll(tok, "~1", "/"), "~0", "~")
			switch c := cur.(type) {
			case *object:
				v, ok := c.get(tok)
				if !ok {
					return nil, "", invalid(path, "$ref %q: no %q", ref, tok)
				}
				cur = v
			case []any:
				i, err := strconv.Atoi(tok)
				if err != nil || i < 0 || i >= len(c) {
					return nil, "", invalid(path, "$ref %q: bad index %q", ref, tok)
				}
				cur = c[i]
			default:
				return nil, "", invalid(path, "$ref %q does not resolve", ref)
			}
		}
	}
	return cur, frag, nil
}

// errMergeFailed is what merge returns for combinations it cannot express.
var errMergeFailed = errors.New("cannot merge")

// merge combines two schemas into one that validates exactly what both validate (allOf),
// resolving $refs first. Combinations it cannot express exactly are UnsupportedErrors.
func (sc *schemaCompiler) merge(a, b any, path, bpath string) (any, error) {
	a, err := sc.deref(a, path)
	if err != nil {
		return nil, err
	}
	b, err = sc.deref(b, bpath)
	if err != nil {
		return nil, err
	}
	if ab, ok := a.(bool); ok {
		if !ab {
			return false, nil
		}
		return b, nil
	}
	if bb, ok := b.(bool); ok {
		if !bb {
			return false, nil
		}
		return a, nil
	}
	ao, ok1 := a.(*object)
	bo, ok2 := b.(*object)
	if !ok1 || !ok2 {
		return nil, invalid(path, "allOf members must be schemas")
	}
	// Nested allOf in either: flatten first.
	for _, x := range []**object{&ao, &bo} {
		if all, ok := (*x).get("allOf"); ok {
			subs, _ := all.([]any)
			merged := any(without(*x, "allOf"))
			for i, sub := range subs {
				m, err := sc.merge(merged, sub, path, fmt.Sprintf("%s/allOf/%d", bpath, i))
				if err != nil {
					return nil, err
				}
				merged = m
			}
			mo, ok := merged.(*object)
			if !ok {
				return merged, nil // false
			}
			*x = mo
		}
	}
	out := newObject()
	for _, k := range ao.keys {
		out.set(k, ao.vals[k])
	}
	for _, k := range bo.keys {
		bv := bo.vals[k]
		av, both := ao.get(k)
		if !both || annotationKeywords[k] {
			out.set(k, bv)
			continue
		}
		m, err := sc.mergeKeyword(k, av, bv, ao, bo, path)
		if err != nil {
			if errors.Is(err, errMergeFailed) {
				return nil, unsupported("allOf", path, fmt.Sprintf("cannot combine %q", k))
			}
			return nil, err
		}
		out.set(k, m)
	}
	// additionalProperties in one member restricts keys that member does not name.
	for _, pair := range [][2]*object{{ao, bo}, {bo, ao}} {
		x, y := pair[0], pair[1]
		ap, ok := x.get("additionalProperties")
		if !ok || ap == true {
			continue
		}
		xp, _ := x.get("properties")
		yp, _ := y.get("properties")
		xo, _ := xp.(*object)
		yo, _ := yp.(*object)
		if yo == nil {
			continue
		}
		for _, k := range yo.keys {
			if xo == nil {
				return nil, unsupported("allOf", path, "additionalProperties combined with other members' properties")
			}
			if _, ok := xo.get(k); !ok {
				return nil, unsupported("allOf", path, "additionalProperties combined with other members' properties")
			}
		}
	}
	return out, nil
}

// deref replaces a lone {"$ref": ...} (with siblings) by its merged target.
func (sc *schemaCompiler) deref(s any, path string) (any, error) {
	for i := 0; i < 50; i++ {
		o, ok := s.(*object)
		if !ok {
			return s, nil
		}
		ref, ok := o.get("$ref")
		if !ok {
			return s, nil
		}
		rs, _ := ref.(string)
		target, tpath, err := sc.resolve(rs, path)
		if err != nil {
			return nil, err
		}
		rest := without(o, "$ref")
		if !constrains(rest) || sc.refOnly() {
			s, path = target, tpath
			continue
		}
		return sc.merge(rest, target, path, tpath)
	}
	return nil, unsupported("$ref", path, "reference chain too long")
}

func (sc *schemaCompiler) mergeKeyword(k string, av, bv any, ao, bo *object, path string) (any, error) {
	num := func(v any) (float64, bool) {
		n, ok := v.(json.Number)
		if !ok {
			return 0, false
		}
		f, err := n.Float64()
		return f, err == nil
	}
	pick := func(larger bool) (any, error) {
		x, ok1 := num(av)
		y, ok2 := num(bv)
		if !ok1 || !ok2 {
			return nil, errMergeFailed
		}
		if (x > y) == larger {
			return av, nil
		}
		return bv, nil
	}
	switch k {
	case "minLength", "minItems", "minProperties", "minimum":
		if k == "minimum" && (hasBool(ao, "exclusiveMinimum") || hasBool(bo, "exclusiveMinimum")) {
			break
		}
		return pick(true)
	case "maxLength", "maxItems", "maxProperties", "maximum":
		if k == "maximum" && (hasBool(ao, "exclusiveMaximum") || hasBool(bo, "exclusiveMaximum")) {
			break
		}
		return pick(false)
	case "exclusiveMinimum":
		if _, ok := av.(bool); !ok {
			return pick(true)
		}
	case "exclusiveMaximum":
		if _, ok := av.(bool); !ok {
			return pick(false)
		}
	case "required":
		al, _ := av.([]any)
		bl, _ := bv.([]any)
		seen := map[string]bool{}
		var out []any
		for _, x := range append(append([]any{}, al...), bl...) {
			if s, ok := x.(string); ok && !seen[s] {
				seen[s] = true
				out = append(out, s)
			}
		}
		return out, nil
	case "type":
		at, err1 := schemaTypes(ao, path)
		bt, err2 := schemaTypes(bo, path)
		if err1 != nil || err2 != nil {
			return nil, errMergeFailed
		}
		var out []any
		for _, t := range at {
			switch {
			case contains(bt, t):
				out = append(out, t)
			case t == "number" && contains(bt, "integer"), t == "integer" && contains(bt, "number"):
				out = append(out, "integer")
			}
		}
		if len(out) == 0 {
			return nil, unsupported("allOf", path, "members allow no common type")
		}
		return out, nil
	case "enum", "const":
		al, bl := av, bv
		if k == "const" {
			al, bl = []any{av}, []any{bv}
		}
		alist, _ := al.([]any)
		blist, _ := bl.([]any)
		inB := map[string]bool{}
		for _, x := range blist {
			inB[canonicalJSON(x)] = true
		}
		var out []any
		for _, x := range alist {
			if inB[canonicalJSON(x)] {
				out = append(out, x)
			}
		}
		if k == "const" {
			if len(out) == 0 {
				return nil, errMergeFailed
			}
			return out[0], nil
		}
		return out, nil
	case "properties", "patternProperties":
		ap, ok1 := av.(*object)
		bp, ok2 := bv.(*object)
		if !ok1 || !ok2 {
			return nil, errMergeFailed
		}
		out := newObject()
		for _, name := range ap.keys {
			out.set(name, ap.vals[name])
		}
		for _, name := range bp.keys {
			if x, ok := ap.get(name); ok {
				all := newObject()
				all.set("allOf", []any{x, bp.vals[name]})
				out.set(name, all)
			} else {
				out.set(name, bp.vals[name])
			}
		}
		return out, nil
	case "items", "additionalProperties", "additionalItems":
		if _, isList := av.([]any); isList {
			break
		}
		if _, isList := bv.([]any); isList {
			break
		}
		all := newObject()
		all.set("allOf", []any{av, bv})
		return all, nil
	case "anyOf", "oneOf":
		// (A1|A2) ∧ (B1|B2) = (A1∧B1)|(A1∧B2)|...: fine while small.
		al, _ := av.([]any)
		bl, _ := bv.([]any)
		if len(al)*len(bl) > 16 {
			return nil, errMergeFailed
		}
		var out []any
		for _, x := range al {
			for _, y := range bl {
				all := newObject()
				all.set("allOf", []any{x, y})
				out = append(out, all)
			}
		}
		return out, nil
	}
	if canonicalJSON(av) == canonicalJSON(bv) {
		return av, nil
	}
	return nil, errMergeFailed
}

func hasBool(o *object, k string) bool {
	v, ok := o.get(k)
	if !ok {
		return false
	}
	_, isBool := v.(bool)
	return isBool
}

func (sc *schemaCompiler) stringDFA() (*dfa, error) {
	if sc.strDFA == nil {
		d, err := compileExpr(eSeq(eByte('"'), eStar(jsonChar()), eByte('"')))
		if err != nil {
			return nil, err
		}
		sc.strDFA = d
	}
	return sc.strDFA, nil
}

// disjoint reports whether no JSON value can be valid against both schemas; false when
// it cannot tell.
func (sc *schemaCompiler) disjoint(a, b any, depth int) bool {
	if depth > 8 {
		return false
	}
	a, err1 := sc.deref(a, "")
	b, err2 := sc.deref(b, "")
	if err1 != nil || err2 != nil {
		return false
	}
	if a == false || b == false {
		return true
	}
	ao, ok1 := a.(*object)
	bo, ok2 := b.(*object)
	if !ok1 || !ok2 {
		return false
	}
	for _, kw := range []string{"anyOf", "oneOf", "allOf", "not", "if"} {
		if _, ok := ao.get(kw); ok {
			return false
		}
		if _, ok := bo.get(kw); ok {
			return false
		}
	}
	at, err1 := schemaTypes(ao, "")
	bt, err2 := schemaTypes(bo, "")
	if err1 != nil || err2 != nil {
		return false
	}
	common := false
	for _, t := range at {
		for _, u := range bt {
			if t == u || (t == "integer" && u == "number") || (t == "number" && u == "integer") {
				common = true
			}
		}
	}
	if !common {
		return true
	}
	// A finite side none of whose values the other side accepts (checked by the
	// validator) is disjoint from it.
	for _, pair := range [][2]*object{{ao, bo}, {bo, ao}} {
		if vals, ok := finiteValues(pair[0]); ok {
			if kept, ok := sc.validatedLiterals(pair[1], vals); ok && len(kept) == 0 {
				return true
			}
		}
	}
	if av, ok := finiteValues(ao); ok {
		if bv, ok := finiteValues(bo); ok {
			seen := map[string]bool{}
			for _, v := range av {
				seen[canonicalJSON(v)] = true
			}
			for _, v := range bv {
				if seen[canonicalJSON(v)] {
					return false
				}
			}
			return true
		}
	}
	// Objects only: a property both require, with disjoint schemas (a discriminator).
	if len(at) == 1 && at[0] == "object" || len(bt) == 1 && bt[0] == "object" {
		ap, _ := ao.get("properties")
		bp, _ := bo.get("properties")
		apo, _ := ap.(*object)
		bpo, _ := bp.(*object)
		if apo != nil && bpo != nil {
			for _, name := range requiredNames(ao) {
				if !contains(requiredNames(bo), name) {
					continue
				}
				x, ok1 := apo.get(name)
				y, ok2 := bpo.get(name)
				if ok1 && ok2 && sc.disjoint(x, y, depth+1) {
					return true
				}
			}
		}
		// One forbids extra properties and the other requires one it does not name.
		for _, pair := range [][2]*object{{ao, bo}, {bo, ao}} {
			x, y := pair[0], pair[1]
			if ap, ok := x.get("additionalProperties"); !ok || ap != false {
				continue
			}
			if _, ok := x.get("patternProperties"); ok {
				continue
			}
			xp, _ := x.get("properties")
			xpo, _ := xp.(*object)
			for _, name := range requiredNames(y) {
				if xpo == nil {
					return true
				}
				if _, ok := xpo.get(name); !ok {
					return true
				}
			}
		}
	}
	return false
}

func finiteValues(o *object) ([]any, bool) {
	if c, ok := o.get("const"); ok {
		return []any{c}, true
	}
	if e, ok := o.get("enum"); ok {
		list, ok := e.([]any)
		return list, ok
	}
	return nil, false
}

func requiredNames(o *object) []string {
	r, _ := o.get("required")
	list, _ := r.([]any)
	var out []string
	for _, x := range list {
		if s, ok := x.(string); ok {
			out = append(out, s)
		}
	}
	return out
}

// requiredOnly returns the property sets of oneOf alternatives that only list required
// properties ({"required": [...]}), and whether all of them are such.
func requiredOnly(subs []any) ([][]string, bool) {
	var sets [][]string
	for _, sub := range subs {
		o, ok := sub.(*object)
		if !ok {
			return nil, false
		}
		for _, k := range o.keys {
			if k != "required" && !annotationKeywords[k] {
				return nil, false
			}
		}
		names := requiredNames(o)
		if len(names) == 0 {
			return nil, false
		}
		sets = append(sets, names)
	}
	return sets, true
}

// exclusiveRequired rewrites oneOf [{required: S1}, {required: S2}, ...] (exactly one
// set fully present) as disjoint alternatives: Si present and, for each other Sj, one of
// its properties absent (a "false" property schema), over every such choice.
func exclusiveRequired(sets [][]string) ([]any, error) {
	var out []any
	for i, si := range sets {
		in := map[string]bool{}
		for _, p := range si {
			in[p] = true
		}
		// Choices of an absent property per other set (none possible: Sj ⊆ Si).
		var choose func(j int, absent []string) error
		choose = func(j int, absent []string) error {
			if j == len(sets) {
				if len(out) >= 64 {
					return fmt.Errorf("more than 64 combinations of required properties")
				}
				alt := newObject()
				req := make([]any, len(si))
				for k, p := range si {
					req[k] = p
				}
				alt.set("required", req)
				if len(absent) > 0 {
					props := newObject()
					for _, p := range absent {
						props.set(p, false)
					}
					alt.set("properties", props)
				}
				out = append(out, alt)
				return nil
			}
			if j == i {
				return choose(j+1, absent)
			}
			for _, p := range sets[j] {
				if in[p] {
					continue
				}
				if err := choose(j+1, append(absent[:len(absent):len(absent)], p)); err != nil {
					return err
				}
			}
			return nil
		}
		if err := choose(0, nil); err != nil {
			return nil, err
		}
	}
	if len(out) == 0 {
		return []any{false}, nil
	}
	return out, nil
}

// refOnly reports whether the document declares a draft (4, 6 or 7) in which a schema
// with $ref is that reference alone: its other keywords are ignored. Later drafts (and
// documents that name none) apply them too.
func (sc *schemaCompiler) refOnly() bool {
	root, ok := sc.doc.(*object)
	if !ok {
		return false
	}
	v, _ := root.get("$schema")
	str, _ := v.(string)
	for _, d := range []string{"draft-03", "draft-04", "draft-06", "draft-07"} {
		if strings.Contains(str, d) {
			return true
		}
	}
	return false
}

// splitDependencies rewrites dependencies / dependentRequired / dependentSchemas
// ({"a": ["b"]}: when a is present, b must be too) as disjoint cases: for each key,
// either the property is absent, or it is required along with its dependencies (or its
// dependent schema applies). ok is false when the schema has none of these keywords.
func (sc *schemaCompiler) splitDependencies(s *object, path string) ([]any, bool, error) {
	type dep struct {
		name   string
		needs  []any // required names
		schema any   // or a schema that applies when name is present
	}
	var deps []dep
	rest := s
	for _, kw := range []string{"dependencies", "dependentRequired", "dependentSchemas"} {
		v, ok := s.get(kw)
		if !ok {
			continue
		}
		rest = without(rest, kw)
		o, ok := v.(*object)
		if !ok {
			return nil, false, invalid(path, "%s must be an object", kw)
		}
		for _, name := range o.keys {
			switch d := o.vals[name].(type) {
			case []any:
				deps = append(deps, dep{name: name, needs: d})
			default:
				if kw == "dependentRequired" {
					return nil, false, invalid(path, "dependentRequired values must be arrays")
				}
				deps = append(deps, dep{name: name, schema: d})
			}
		}
	}
	if len(deps) == 0 {
		return nil, false, nil
	}
	if len(deps) > 6 {
		return nil, false, unsupported("dependencies", path, "more than 6 dependent properties")
	}
	cases := []any{rest}
	for _, d := range deps {
		absent := newObject()
		props := newObject()
		props.set(d.name, false)
		absent.set("properties", props)
		present := newObject()
		present.set("required", append([]any{d.name}, d.needs...))
		var next []any
		for _, c := range cases {
			a, err := sc.merge(c, absent, path, path)
			if err != nil {
				return nil, false, err
			}
			p, err := sc.merge(c, present, path, path)
			if err != nil {
				return nil, false, err
			}
			if d.schema != nil {
				if p, err = sc.merge(p, d.schema, path, path+"/dependencies/"+escapePointer(d.name)); err != nil {
					return nil, false, err
				}
			}
			next = append(next, a, p)
		}
		cases = next
	}
	return cases, true, nil
}
