package grammar

import (
	"encoding/json"
	"strings"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

// Enumerated schemas. When a schema (or a member of its allOf) lists its values with
// enum or const, the language is finite: each candidate value is kept exactly when a
// full JSON Schema validator accepts it against the whole schema. This enforces every
// keyword there, including ones the grammar cannot express (not, if/then/else,
// uniqueItems, multipleOf...).

// enumCandidates returns the values an enum/const of s (or of one of its allOf members)
// limits the schema to.
func (sc *schemaCompiler) enumCandidates(s *object, path string) ([]any, bool) {
	if c, ok := s.get("const"); ok {
		return []any{c}, true
	}
	if e, ok := s.get("enum"); ok {
		if list, ok := e.([]any); ok {
			return list, true
		}
		return nil, false
	}
	all, ok := s.get("allOf")
	if !ok {
		return nil, false
	}
	subs, _ := all.([]any)
	for _, sub := range subs {
		m, err := sc.deref(sub, path)
		if err != nil {
			return nil, false
		}
		if mo, ok := m.(*object); ok {
			if vals, ok := sc.enumCandidates(mo, path); ok {
				return vals, true
			}
		}
	}
	return nil, false
}

// validatedLiterals keeps the candidates that a JSON Schema validator accepts against
// schema (which may be a merged schema that is not in the document: it is validated as
// an extra member of the document's root, so its "#/..." references still resolve). ok
// is false when the validator cannot compile it (a remote $ref, say): the caller then
// compiles the schema itself.
func (sc *schemaCompiler) validatedLiterals(schema any, cands []any) (vals []any, ok bool) {
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2019)
	root, isObj := sc.doc.(*object)
	if isObj {
		if s, has := root.get("$schema"); has {
			str, _ := s.(string)
			switch {
			case strings.Contains(str, "draft-04"):
				c.DefaultDraft(jsonschema.Draft4)
			case strings.Contains(str, "draft-06"):
				c.DefaultDraft(jsonschema.Draft6)
			case strings.Contains(str, "draft-07"):
				c.DefaultDraft(jsonschema.Draft7)
			case strings.Contains(str, "2020-12"):
				c.DefaultDraft(jsonschema.Draft2020)
			}
		}
	}
	c.AssertFormat()
	const url = "mem://grammar/schema.json"
	const member = "__grammar_validated_schema__"
	var doc any
	loc := url
	if isObj {
		m := plainJSON(root).(map[string]any)
		m[member] = plainJSON(schema)
		doc, loc = m, url+"#/"+member
	} else {
		doc = plainJSON(schema)
	}
	if err := c.AddResource(url, doc); err != nil {
		return nil, false
	}
	sch, err := c.Compile(loc)
	if err != nil {
		return nil, false
	}
	for _, v := range cands {
		if sch.Validate(plainJSON(v)) == nil {
			vals = append(vals, v)
		}
	}
	return vals, true
}

// plainJSON converts ordered objects into maps (the validator's representation).
func plainJSON(v any) any {
	switch t := v.(type) {
	case *object:
		m := make(map[string]any, len(t.keys))
		for _, k := range t.keys {
			m[k] = plainJSON(t.vals[k])
		}
		return m
	case []any:
		out := make([]any, len(t))
		for i, x := range t {
			out[i] = plainJSON(x)
		}
		return out
	case json.Number, string, bool, nil:
		return t
	}
	return v
}
