package grammar

import (
	"fmt"
)

// Option configures compilation. The zero configuration: flexible JSON whitespace.
type Option func(*options)

type options struct {
	compact bool
	itemSep string
	keySep  string
	maxWS   int
}

func buildOptions(opts []Option) options {
	o := options{maxWS: -1}
	for _, f := range opts {
		f(&o)
	}
	return o
}

// key is the options' part of a cache key.
func (o options) key() string {
	if o.compact {
		return fmt.Sprintf("compact%q%q", o.itemSep, o.keySep)
	}
	return fmt.Sprintf("ws%d", o.maxWS)
}

// WithSeparators makes JSON output compact: exactly item between array items and object
// members, exactly key between a key and its value, and no other whitespace anywhere.
// WithSeparators(", ", ": ") is Python's json.dumps default (and MaskBench's setting);
// WithSeparators(",", ":") is the most compact form.
func WithSeparators(item, key string) Option {
	return func(o *options) {
		o.compact = true
		o.itemSep = item
		o.keySep = key
	}
}

// WithMaxWhitespace bounds each run of flexible whitespace to n characters (default
// unbounded), so a model cannot emit whitespace forever. Ignored with WithSeparators.
func WithMaxWhitespace(n int) Option {
	return func(o *options) { o.maxWS = n }
}

// CompileRegex compiles an RE2 regular expression; the whole output must match it.
func CompileRegex(v *Vocabulary, pattern string, opts ...Option) (*Grammar, error) {
	e, err := regexExpr(pattern, rawChars)
	if err != nil {
		return nil, err
	}
	rs := &ruleSet{}
	rs.root = rs.add("regex")
	rs.exprs[rs.root] = e
	return newGrammar(v, rs)
}

// CompileChoice compiles a choice between literal strings (vLLM's guided_choice): the
// output must be exactly one of them.
func CompileChoice(v *Vocabulary, choices []string, opts ...Option) (*Grammar, error) {
	if len(choices) == 0 {
		return nil, fmt.Errorf("%w: empty choice list", ErrInvalidGrammar)
	}
	alts := make([]*expr, len(choices))
	for i, c := range choices {
		alts[i] = eLit(c)
	}
	rs := &ruleSet{}
	rs.root = rs.add("choice")
	rs.exprs[rs.root] = eAlt(alts...)
	return newGrammar(v, rs)
}
