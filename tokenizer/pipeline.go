package tokenizer

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// This file holds the parts of tokenizer.json around the model: the normalizer, the
// pre-tokenizer, the decoder and the matcher for added tokens. Only what HF's tokenizers
// does for the components that Gemma's files use is implemented; any other component is
// a load error naming it.

type stringPattern struct {
	String *string `json:"String"`
	Regex  *string `json:"Regex"`
}

func (p stringPattern) literal() (string, error) {
	switch {
	case p.Regex != nil:
		return "", fmt.Errorf("regex pattern %q is not supported (only String patterns)", *p.Regex)
	case p.String == nil:
		return "", errors.New("pattern: missing String")
	case *p.String == "":
		return "", errors.New("pattern: empty String")
	}
	return *p.String, nil
}

type componentJSON struct {
	Type        string            `json:"type"`
	Pattern     stringPattern     `json:"pattern"`
	Content     *string           `json:"content"`
	Prepend     *string           `json:"prepend"`
	Behavior    string            `json:"behavior"`
	Invert      bool              `json:"invert"`
	Normalizers []json.RawMessage `json:"normalizers"`
	Decoders    []json.RawMessage `json:"decoders"`
}

// normStep is one normalizer: Replace (pattern → content) or Prepend (prefix).
type normStep struct {
	replace bool
	pattern string
	content string
}

type normalizer []normStep

func parseNormalizer(raw []byte) (normalizer, error) {
	if isNull(raw) {
		return nil, nil
	}
	var c componentJSON
	if err := json.Unmarshal(raw, &c); err != nil {
		return nil, err
	}
	switch c.Type {
	case "Sequence":
		var out normalizer
		for i, sub := range c.Normalizers {
			n, err := parseNormalizer(sub)
			if err != nil {
				return nil, fmt.Errorf("normalizers[%d]: %w", i, err)
			}
			out = append(out, n...)
		}
		return out, nil
	case "Replace":
		pat, err := c.Pattern.literal()
		if err != nil {
			return nil, fmt.Errorf("Replace: %w", err)
		}
		if c.Content == nil {
			return nil, errors.New("Replace: missing content")
		}
		return normalizer{{replace: true, pattern: pat, content: *c.Content}}, nil
	case "Prepend":
		if c.Prepend == nil {
			return nil, errors.New("Prepend: missing prepend")
		}
		return normalizer{{pattern: *c.Prepend}}, nil
	default:
		return nil, fmt.Errorf("type %q is not supported (only Replace, Prepend, Sequence)", c.Type)
	}
}

// apply normalizes s into dst[:0].
func (n normalizer) apply(dst []byte, s string) []byte {
	dst = append(dst[:0], s...)
	if len(n) == 0 {
		return dst
	}
	var tmp []byte
	for _, st := range n {
		if !st.replace {
			// HF prepends only to a non-empty string.
			if len(dst) > 0 {
				tmp = append(append(tmp[:0], st.pattern...), dst...)
				dst, tmp = tmp, dst
			}
			continue
		}
		if len(st.pattern) == 1 {
			c := st.pattern[0]
			i := bytes.IndexByte(dst, c)
			if i < 0 {
				continue
			}
			tmp = append(tmp[:0], dst[:i]...)
			for _, b := range dst[i:] {
				if b == c {
					tmp = append(tmp, st.content...)
				} else {
					tmp = append(tmp, b)
				}
			}
		} else {
			if !bytes.Contains(dst, []byte(st.pattern)) {
				continue
			}
			tmp = append(tmp[:0], bytes.ReplaceAll(dst, []byte(st.pattern), []byte(st.content))...)
		}
		dst, tmp = tmp, dst
	}
	return dst
}

// splitPre is the Split pre-tokenizer with a String pattern and the MergedWithPrevious
// behavior; nil means no pre-tokenizer (the whole segment is one word).
type splitPre struct {
	pattern string
}

func parsePreTokenizer(raw []byte) (*splitPre, error) {
	if isNull(raw) {
		return nil, nil
	}
	var c componentJSON
	if err := json.Unmarshal(raw, &c); err != nil {
		return nil, err
	}
	if c.Type != "Split" {
		return nil, fmt.Errorf("type %q is not supported (only Split or null)", c.Type)
	}
	pat, err := c.Pattern.literal()
	if err != nil {
		return nil, fmt.Errorf("Split: %w", err)
	}
	if c.Behavior != "MergedWithPrevious" || c.Invert {
		return nil, fmt.Errorf("Split: behavior %q (invert %v) is not supported (only MergedWithPrevious)", c.Behavior, c.Invert)
	}
	return &splitPre{pattern: pat}, nil
}

// words calls fn for each word of s, as HF's Split with MergedWithPrevious cuts it: a
// delimiter joins the text before it, or stands alone when there is none.
func (p *splitPre) words(s []byte, fn func(word []byte)) {
	if p == nil {
		fn(s)
		return
	}
	pat := []byte(p.pattern)
	start := 0
	for {
		j := bytes.Index(s[start:], pat)
		if j < 0 {
			break
		}
		end := start + j + len(pat)
		fn(s[start:end]) // text before the delimiter, if any, plus the delimiter
		start = end
	}
	if start < len(s) {
		fn(s[start:])
	}
}

// decoder is HF's decoder chain Sequence[Replace..., ByteFallback, Fuse]: pieces have the
// replacements applied, runs of "<0xNN>" pieces become their bytes (U+FFFD for each byte
// if the run is not valid UTF-8), and everything is concatenated.
type decoder struct {
	replaces     []normStep
	byteFallback bool
}

func parseDecoder(raw []byte) (decoder, error) {
	var d decoder
	if isNull(raw) {
		return d, errors.New("null is not supported (HF would join pieces with spaces)")
	}
	var c componentJSON
	if err := json.Unmarshal(raw, &c); err != nil {
		return d, err
	}
	steps := []json.RawMessage{raw}
	if c.Type == "Sequence" {
		steps = c.Decoders
	}
	fused := false
	for i, st := range steps {
		var s componentJSON
		if err := json.Unmarshal(st, &s); err != nil {
			return d, fmt.Errorf("decoders[%d]: %w", i, err)
		}
		if fused {
			return d, fmt.Errorf("decoders[%d]: nothing may follow Fuse", i)
		}
		switch s.Type {
		case "Replace":
			if d.byteFallback {
				return d, fmt.Errorf("decoders[%d]: Replace after ByteFallback is not supported", i)
			}
			pat, err := s.Pattern.literal()
			if err != nil {
				return d, fmt.Errorf("decoders[%d]: Replace: %w", i, err)
			}
			if s.Content == nil {
				return d, fmt.Errorf("decoders[%d]: Replace: missing content", i)
			}
			d.replaces = append(d.replaces, normStep{replace: true, pattern: pat, content: *s.Content})
		case "ByteFallback":
			d.byteFallback = true
		case "Fuse":
			fused = true // HF joins the decoded pieces with "" anyway
		default:
			return d, fmt.Errorf("decoders[%d]: type %q is not supported (only Replace, ByteFallback, Fuse)", i, s.Type)
		}
	}
	return d, nil
}

// appendPiece appends a non-byte piece with the decoder's replacements applied.
func (d *decoder) appendPiece(dst []byte, piece string) []byte {
	if len(d.replaces) == 0 {
		return append(dst, piece...)
	}
	if len(d.replaces) == 1 {
		r := d.replaces[0]
		for {
			i := strings.Index(piece, r.pattern)
			if i < 0 {
				return append(dst, piece...)
			}
			dst = append(append(dst, piece[:i]...), r.content...)
			piece = piece[i+len(r.pattern):]
		}
	}
	b := []byte(piece)
	for _, r := range d.replaces {
		b = bytes.ReplaceAll(b, []byte(r.pattern), []byte(r.content))
	}
	return append(dst, b...)
}

// appendByteRun appends a finished run of byte-fallback bytes as HF's ByteFallback
// decoder does: the bytes if they are valid UTF-8, otherwise one U+FFFD per byte.
func appendByteRun(dst, run []byte) []byte {
	if utf8.Valid(run) {
		return append(dst, run...)
	}
	for range run {
		dst = append(dst, "\uFFFD"...)
	}
	return dst
}

// addedMatcher finds added tokens in raw text the way HF's AddedVocabulary does: an
// Aho-Corasick automaton with leftmost-longest matching, here a byte trie walked from each
// position whose byte can start a token.
type addedMatcher struct {
	first  [256]bool
	nodes  []trieNode // nodes[0] is the root
	tokens []addedToken
}

type addedToken struct {
	content string
	id      int32
	special bool
}

type trieNode struct {
	token int32 // index in tokens, or -1
	edges []trieEdge
}

type trieEdge struct {
	b    byte
	node int32
}

func newAddedMatcher() *addedMatcher {
	return &addedMatcher{nodes: []trieNode{{token: -1}}}
}

func (m *addedMatcher) add(content string, id int32, special bool) {
	n := int32(0)
	for i := 0; i < len(content); i++ {
		n = m.child(n, content[i])
	}
	if old := m.nodes[n].token; old >= 0 {
		// The same content twice: HF keeps the later id.
		m.tokens[old] = addedToken{content, id, special}
		return
	}
	m.nodes[n].token = int32(len(m.tokens))
	m.tokens = append(m.tokens, addedToken{content, id, special})
	m.first[content[0]] = true
}

func (m *addedMatcher) child(n int32, b byte) int32 {
	for _, e := range m.nodes[n].edges {
		if e.b == b {
			return e.node
		}
	}
	c := int32(len(m.nodes))
	m.nodes = append(m.nodes, trieNode{token: -1})
	m.nodes[n].edges = append(m.nodes[n].edges, trieEdge{b, c})
	return c
}

// longest returns the longest token starting at s[i:] as (end, token index), or -1.
func (m *addedMatcher) longest(s string, i int) (int, int32) {
	n, end, tok := int32(0), -1, int32(-1)
	for j := i; j < len(s); j++ {
		next := int32(-1)
		for _, e := range m.nodes[n].edges {
			if e.b == s[j] {
				next = e.node
				break
			}
		}
		if next < 0 {
			break
		}
		n = next
		if t := m.nodes[n].token; t >= 0 {
			end, tok = j+1, t
		}
	}
	return end, tok
}

// find returns the leftmost-longest token match at or after from: its start, end and
// token index, or tok == -1.
func (m *addedMatcher) find(s string, from int) (start, end int, tok int32) {
	for i := from; i < len(s); i++ {
		if !m.first[s[i]] {
			continue
		}
		if e, t := m.longest(s, i); t >= 0 {
			return i, e, t
		}
	}
	return -1, -1, -1
}

func (m *addedMatcher) lookup(content string) (int32, bool) {
	if content == "" {
		return -1, false
	}
	e, t := m.longest(content, 0)
	if t < 0 || e != len(content) {
		return -1, false
	}
	return m.tokens[t].id, true
}
