package grammar

import (
	"errors"
	"math/rand"
	"testing"
)

func compileSchemaT(t *testing.T, v *Vocabulary, schema string, opts ...Option) *Grammar {
	t.Helper()
	g, err := CompileJSONSchema(v, []byte(schema), opts...)
	if err != nil {
		t.Fatalf("%s: %v", schema, err)
	}
	return g
}

var compact = WithSeparators(", ", ": ")

func TestSchemaAcceptReject(t *testing.T) {
	v := synthVocab(t)
	tests := []struct {
		name   string
		schema string
		accept []string
		reject []string
	}{
		{"string", `{"type":"string"}`, []string{`"abc"`, `""`, `"a\"b"`, `"\u00e9"`, `"日本"`}, []string{`abc`, `"a`, `"\x"`, "\"a\nb\""}},
		{"integer", `{"type":"integer"}`, []string{`0`, `-12`, `123`}, []string{`01`, `1.5`, `-`, `+1`}},
		{"number", `{"type":"number"}`, []string{`0`, `-1.5`, `1e+10`, `2.5E-3`}, []string{`.5`, `1.`, `01`}},
		{"boolean", `{"type":"boolean"}`, []string{`true`, `false`}, []string{`null`, `tru`}},
		{"null", `{"type":"null"}`, []string{`null`}, []string{`0`}},
		{"type array", `{"type":["string","null"]}`, []string{`null`, `"x"`}, []string{`1`}},
		{"int range", `{"type":"integer","minimum":-5,"maximum":120}`, []string{`-5`, `0`, `7`, `99`, `120`}, []string{`-6`, `121`, `1000`}},
		{"int exclusive", `{"type":"integer","exclusiveMinimum":0,"exclusiveMaximum":10}`, []string{`1`, `9`}, []string{`0`, `10`}},
		{"draft4 exclusive", `{"type":"integer","minimum":0,"exclusiveMinimum":true}`, []string{`1`, `50`}, []string{`0`, `-1`}},
		{"number range", `{"type":"number","minimum":0,"maximum":1}`, []string{`0`, `0.5`, `1`, `1.0`}, []string{`1.5`, `-0.5`, `2`}},
		{"number exclusive", `{"type":"number","exclusiveMinimum":0,"exclusiveMaximum":2}`, []string{`0.1`, `1.99`, `1`}, []string{`0`, `0.0`, `2`, `2.0`}},
		{"multipleOf integer", `{"type":"integer","multipleOf":3,"minimum":-10}`, []string{`0`, `-9`, `12`, `300`}, []string{`1`, `-12`, `13`}},
		{"multipleOf decimal", `{"type":"number","multipleOf":0.25}`, []string{`0`, `0.25`, `-1.5`, `2.750`, `3`}, []string{`0.1`, `0.3`, `1.05`}},
		{"decimal bounds", `{"type":"number","minimum":0.5,"exclusiveMaximum":2.25}`, []string{`0.5`, `0.51`, `1`, `2.2`, `2.249`}, []string{`0.49`, `0`, `2.25`, `2.3`, `3`}},
		{"decimal same integer part", `{"type":"number","exclusiveMinimum":-1.5,"maximum":-1.25}`, []string{`-1.4`, `-1.25`, `-1.3`}, []string{`-1.5`, `-1.2`, `-1`, `-2`}},
		{"negative range", `{"type":"number","minimum":-10,"maximum":-2}`, []string{`-10`, `-2`, `-5.5`}, []string{`-1`, `-10.5`, `0`}},
		{"minLength", `{"type":"string","minLength":2,"maxLength":3}`, []string{`"ab"`, `"abc"`, `"é日"`}, []string{`"a"`, `"abcd"`}},
		{"pattern", `{"type":"string","pattern":"^[a-c]+$"}`, []string{`"abc"`}, []string{`"abd"`, `""`}},
		{"pattern search", `{"type":"string","pattern":"b"}`, []string{`"abc"`, `"b"`}, []string{`"ac"`}},
		{"pattern and length", `{"type":"string","pattern":"^a","maxLength":2}`, []string{`"a"`, `"ab"`}, []string{`"abc"`, `"b"`}},
		{"date", `{"type":"string","format":"date"}`, []string{`"2024-02-29"`, `"2000-02-29"`, `"2023-12-31"`}, []string{`"2024-13-01"`, `"24-01-01"`, `"2023-02-29"`, `"1900-02-29"`, `"2020-02-31"`, `"2020-04-31"`}},
		{"date-time", `{"type":"string","format":"date-time"}`, []string{`"2024-02-29T12:00:00Z"`, `"2024-02-29T12:00:00.5+01:00"`}, []string{`"2024-02-29"`}},
		{"uuid", `{"type":"string","format":"uuid"}`, []string{`"123e4567-e89b-12d3-a456-426614174000"`}, []string{`"123"`}},
		{"email", `{"type":"string","format":"email"}`, []string{`"a.b@c.com"`}, []string{`"a@"`, `"ab"`}},
		{"ipv4", `{"type":"string","format":"ipv4"}`, []string{`"192.168.0.1"`}, []string{`"256.1.1.1"`}},
		{"ipv6", `{"type":"string","format":"ipv6"}`, []string{`"::1"`, `"fe80::1:2"`}, []string{`"1:2"`}},
		{"not type", `{"not":{"type":["string","object"]}}`, []string{`1`, `null`, `[]`}, []string{`"a"`, `{}`}},
		{"hostname", `{"type":"string","format":"hostname"}`, []string{`"a.example.com"`}, []string{`"-a.com"`, `"a..b"`}},
		{"unknown format is an annotation", `{"type":"string","format":"int32"}`, []string{`"x"`}, []string{`1`}},
		{"enum filtered by a validator", `{"allOf":[{"enum":["a","bb",3]},{"not":{"maxLength":1}}]}`, []string{`"bb"`}, []string{`"a"`, `3`}},
		{"enum", `{"enum":["a",1,null,{"k":[true]}]}`, []string{`"a"`, `1`, `null`, `{"k": [true]}`}, []string{`"b"`, `2`, `{"k": [false]}`}},
		{"const", `{"const":"x"}`, []string{`"x"`}, []string{`"y"`}},
		{"enum with type", `{"type":"string","enum":["a",1]}`, []string{`"a"`}, []string{`1`}},
		{"object", `{"type":"object","properties":{"a":{"type":"integer"},"b":{"type":"string"}},"required":["a"],"additionalProperties":false}`,
			[]string{`{"a": 1}`, `{"a": 1, "b": "x"}`}, []string{`{}`, `{"b": "x"}`, `{"a": 1, "c": 2}`, `{"a": "1"}`, `{"b": "x", "a": 1}`}},
		{"optional order", `{"type":"object","properties":{"a":{"type":"integer"},"b":{"type":"integer"},"c":{"type":"integer"}},"additionalProperties":false}`,
			[]string{`{}`, `{"a": 1}`, `{"b": 1}`, `{"a": 1, "c": 3}`, `{"a": 1, "b": 2, "c": 3}`}, []string{`{"c": 1, "a": 2}`, `{, "a": 1}`}},
		{"additionalProperties schema", `{"type":"object","properties":{"a":{"type":"integer"}},"additionalProperties":{"type":"string"}}`,
			[]string{`{"a": 1, "x": "y"}`, `{"x": "y", "z": "w"}`}, []string{`{"x": 1}`, `{"a": "s"}`}},
		{"additionalProperties default", `{"type":"object","properties":{"a":{"type":"integer"}}}`,
			[]string{`{"a": 1, "x": [1, {"y": null}]}`}, []string{`{"a": 1, "a": "dup"}`}},
		{"patternProperties", `{"type":"object","patternProperties":{"^x-":{"type":"integer"}},"additionalProperties":false}`,
			[]string{`{"x-a": 1}`, `{}`}, []string{`{"y": 1}`, `{"x-a": "s"}`}},
		{"required not in properties", `{"type":"object","required":["k"],"additionalProperties":{"type":"null"}}`,
			[]string{`{"k": null}`}, []string{`{}`, `{"k": 1}`}},
		{"minProperties 1", `{"type":"object","properties":{"a":{"type":"integer"}},"minProperties":1}`,
			[]string{`{"a": 1}`, `{"b": null}`}, []string{`{}`}},
		{"minProperties 1 closed", `{"type":"object","properties":{"a":{"type":"integer"},"b":{"type":"null"}},"minProperties":1,"additionalProperties":false}`,
			[]string{`{"a": 1}`, `{"b": null}`, `{"a": 1, "b": null}`}, []string{`{}`}},
		{"array", `{"type":"array","items":{"type":"integer"},"minItems":1,"maxItems":3}`,
			[]string{`[1]`, `[1, 2, 3]`}, []string{`[]`, `[1, 2, 3, 4]`, `["a"]`}},
		{"prefixItems", `{"type":"array","prefixItems":[{"type":"string"},{"type":"integer"}],"items":false}`,
			[]string{`[]`, `["a"]`, `["a", 1]`}, []string{`[1]`, `["a", 1, 2]`}},
		{"tuple draft4", `{"type":"array","items":[{"type":"string"}],"additionalItems":{"type":"null"}}`,
			[]string{`["a", null, null]`}, []string{`["a", 1]`}},
		{"anyOf", `{"anyOf":[{"type":"string"},{"type":"integer","minimum":5}]}`, []string{`"a"`, `7`}, []string{`3`, `null`}},
		{"oneOf as anyOf", `{"oneOf":[{"type":"string"},{"type":"null"}]}`, []string{`"a"`, `null`}, []string{`1`}},
		{"oneOf of required sets", `{"type":"object","properties":{"r":{"type":"number"},"l":{"type":"number"},"w":{"type":"number"}},"oneOf":[{"required":["r"]},{"required":["l","w"]}],"additionalProperties":false}`,
			[]string{`{"r": 1}`, `{"l": 1, "w": 2}`, `{"r": 1, "l": 2}`}, []string{`{}`, `{"r": 1, "l": 1, "w": 2}`, `{"l": 1}`}},
		{"dependencies", `{"type":"object","properties":{"card":{"type":"integer"},"name":{"type":"string"},"addr":{"type":"string"}},"dependencies":{"card":["addr"]},"additionalProperties":false}`,
			[]string{`{}`, `{"name": "x"}`, `{"card": 1, "addr": "y"}`, `{"addr": "y"}`}, []string{`{"card": 1}`, `{"card": 1, "name": "x"}`}},
		{"dependentSchemas", `{"type":"object","properties":{"a":{"type":"integer"},"b":{}},"dependentSchemas":{"a":{"properties":{"b":{"type":"string"}},"required":["b"]}}}`,
			[]string{`{"b": 1}`, `{"a": 1, "b": "s"}`}, []string{`{"a": 1}`, `{"a": 1, "b": 2}`}},
		{"oneOf null or enum", `{"oneOf":[{"type":"null"},{"enum":["GET","POST"]}]}`, []string{`null`, `"GET"`}, []string{`"PUT"`, `1`}},
		{"oneOf discriminated", `{"oneOf":[{"type":"object","properties":{"k":{"const":"a"},"x":{"type":"integer"}},"required":["k"]},{"type":"object","properties":{"k":{"const":"b"}},"required":["k"]}]}`,
			[]string{`{"k": "a", "x": 1}`, `{"k": "b"}`}, []string{`{"k": "c"}`, `{"k": "a", "x": "s"}`}},
		{"allOf", `{"allOf":[{"type":"object","properties":{"a":{"type":"integer"}},"required":["a"]},{"required":["b"],"properties":{"b":{"type":"string"}}}]}`,
			[]string{`{"a": 1, "b": "x"}`}, []string{`{"a": 1}`, `{"b": "x"}`}},
		{"allOf bounds", `{"allOf":[{"type":"integer","minimum":2},{"maximum":4}]}`, []string{`2`, `4`}, []string{`1`, `5`}},
		{"ref", `{"$defs":{"pos":{"type":"integer","minimum":1}},"type":"object","properties":{"n":{"$ref":"#/$defs/pos"}},"required":["n"],"additionalProperties":false}`,
			[]string{`{"n": 3}`}, []string{`{"n": 0}`}},
		{"draft-07 ignores $ref siblings", `{"$schema":"http://json-schema.org/draft-07/schema#","definitions":{"o":{"type":"object"}},"properties":{"a":{"type":"string","$ref":"#/definitions/o"}},"type":"object","additionalProperties":false}`,
			[]string{`{"a": {}}`}, []string{`{"a": "s"}`}},
		{"2020-12 applies $ref siblings", `{"$defs":{"n":{"type":"number"}},"$ref":"#/$defs/n","minimum":5}`, []string{`5`, `7.5`}, []string{`4`}},
		{"recursive ref", `{"definitions":{"node":{"type":"object","properties":{"v":{"type":"integer"},"next":{"$ref":"#/definitions/node"}},"required":["v"],"additionalProperties":false}},"$ref":"#/definitions/node"}`,
			[]string{`{"v": 1}`, `{"v": 1, "next": {"v": 2, "next": {"v": 3}}}`}, []string{`{"v": 1, "next": {}}`}},
		{"true schema", `true`, []string{`1`, `{"a": [null]}`, `"s"`}, []string{`{a}`}},
		{"empty schema", `{}`, []string{`[]`, `{}`, `[1, "a", {"b": false}]`}, []string{`[1,]`}},
		{"unsatisfiable required", `{"type":"object","required":["a"],"additionalProperties":false}`, nil, []string{`{}`, `{"a": 1}`}},
		{"empty enum", `{"type":"array","items":{"enum":[]}}`, []string{`[]`}, []string{`[1]`}},
		{"false property", `{"type":"object","properties":{"a":false}}`, []string{`{}`}, []string{`{"a": 1}`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g := compileSchemaT(t, v, tc.schema, compact)
			for _, s := range tc.accept {
				if !matchText(g, s) {
					t.Errorf("should accept %s", s)
				}
			}
			for _, s := range tc.reject {
				if matchText(g, s) {
					t.Errorf("should reject %s", s)
				}
			}
		})
	}
}

func TestSchemaWhitespace(t *testing.T) {
	v := synthVocab(t)
	schema := `{"type":"object","properties":{"a":{"type":"array","items":{"type":"integer"}}}}`
	flex := compileSchemaT(t, v, schema)
	tight := compileSchemaT(t, v, schema, WithSeparators(",", ":"))
	py := compileSchemaT(t, v, schema, compact)
	bounded := compileSchemaT(t, v, schema, WithMaxWhitespace(1))
	if !matchText(bounded, `{ "a": [1] }`) || matchText(bounded, `{  "a": [1]}`) {
		t.Error("WithMaxWhitespace(1): one whitespace character per gap")
	}
	for _, tc := range []struct {
		text            string
		flex, tight, py bool
	}{
		{`{"a":[1,2]}`, true, true, false},
		{`{"a": [1, 2]}`, true, false, true},
		{"{ \"a\" :\n[ 1 ,2 ] }", true, false, false},
		{`{"a": [1 , 2]}`, true, false, false},
	} {
		if got := matchText(flex, tc.text); got != tc.flex {
			t.Errorf("flexible %q: %v", tc.text, got)
		}
		if got := matchText(tight, tc.text); got != tc.tight {
			t.Errorf(`(",", ":") %q: %v`, tc.text, got)
		}
		if got := matchText(py, tc.text); got != tc.py {
			t.Errorf(`(", ", ": ") %q: %v`, tc.text, got)
		}
	}
}

func TestSchemaErrors(t *testing.T) {
	v := synthVocab(t)
	tests := []struct {
		schema  string
		want    error
		keyword string
		path    string
	}{
		{`{"type":`, ErrInvalidSchema, "", ""},
		{`{"type":"strong"}`, ErrInvalidSchema, "", ""},
		{`{"type":"string","minLength":-1}`, ErrInvalidSchema, "", ""},
		{`{"not":{"required":["a"]}}`, ErrUnsupported, "not", ""},
		{`{"type":"object","properties":{"a":{"type":"array","uniqueItems":true}}}`, ErrUnsupported, "uniqueItems", "/properties/a"},
		{`{"type":"string","format":"iri"}`, ErrUnsupported, "format", ""},
		{`{"type":"number","multipleOf":1e-9}`, ErrUnsupported, "multipleOf", ""},
		{`{"type":"number","multipleOf":0}`, ErrInvalidSchema, "", ""},
		{`{"$ref":"http://example.com/s.json"}`, ErrUnsupported, "$ref", ""},
		{`{"$ref":"#/$defs/missing"}`, ErrInvalidSchema, "", ""},
		{`{"type":"string","pattern":"(a"}`, ErrInvalidRegex, "", ""},
		{`{"if":{"type":"string"},"then":{"minLength":1}}`, ErrUnsupported, "if", ""},
		{`{"dependencies":{"a":["b"],"c":["d"],"e":["f"],"g":["h"],"i":["j"],"k":["l"],"m":["n"]}}`, ErrUnsupported, "dependencies", ""},
		{`{"type":"object","oneOf":[{"required":["a"]},{"type":"object"}]}`, ErrUnsupported, "oneOf", ""},
		{`{"oneOf":[{"type":"number"},{"type":"integer"}]}`, ErrUnsupported, "oneOf", ""},
		{`{"oneOf":[{"type":"string"},{"enum":["a",1]}]}`, ErrUnsupported, "oneOf", ""},
	}
	for _, tc := range tests {
		_, err := CompileJSONSchema(v, []byte(tc.schema))
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: got %v, want %v", tc.schema, err, tc.want)
			continue
		}
		if tc.keyword != "" {
			var ue *UnsupportedError
			if !errors.As(err, &ue) || ue.Keyword != tc.keyword || ue.Path != tc.path {
				t.Errorf("%s: got %#v, want keyword %q at %q", tc.schema, err, tc.keyword, tc.path)
			}
		}
	}
}

// TestSchemaMaskEqualsBruteForce walks random token paths under the mask and checks at
// every step that the mask is exactly the set of tokens Advance accepts.
func TestSchemaMaskEqualsBruteForce(t *testing.T) {
	v := synthVocab(t)
	schemas := []string{
		`{"type":"object","properties":{"name":{"type":"string","maxLength":4},"age":{"type":"integer","minimum":1,"maximum":120}},"required":["name"],"additionalProperties":false}`,
		`{"type":"array","items":{"type":"string","minLength":2,"maxLength":3},"maxItems":3}`,
		`{"type":"string","minLength":3}`,
		`{"anyOf":[{"type":"null"},{"type":"number","minimum":0},{"enum":["a","b"]}]}`,
		`{"type":"object","properties":{"a":{"type":"boolean"}}}`,
		`{"type":"array","prefixItems":[{"type":"string","pattern":"^a+$"},{"type":"number"}],"items":false}`,
	}
	rng := rand.New(rand.NewSource(4))
	for _, opts := range [][]Option{{compact}, nil} {
		for _, s := range schemas {
			g := compileSchemaT(t, v, s, opts...)
			for i := 0; i < 8; i++ {
				randomWalk(t, g, rng, 40, true)
			}
		}
	}
}
