package grammar

import (
	"encoding/json"
	"math/rand"
	"strings"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

// TestRandomWalksValidate samples random token paths under the mask and checks every
// completed output with an independent JSON Schema validator: whatever the mask lets a
// model write must validate.
func TestRandomWalksValidate(t *testing.T) {
	v := synthVocab(t)
	schemas := []string{
		`{"type":"object","properties":{"name":{"type":"string","minLength":1,"maxLength":3},"age":{"type":"integer","minimum":0,"maximum":99},"tags":{"type":"array","items":{"enum":["a","b"]},"maxItems":2}},"required":["name"],"additionalProperties":false}`,
		`{"anyOf":[{"type":"number","exclusiveMinimum":1,"maximum":3},{"type":"boolean"},{"type":"null"}]}`,
		`{"type":"array","prefixItems":[{"type":"string","pattern":"^[a-c]{2}$"},{"type":"string","format":"date"}],"items":false,"minItems":1}`,
		`{"$defs":{"t":{"type":"object","properties":{"v":{"type":"integer"},"kids":{"type":"array","items":{"$ref":"#/$defs/t"},"maxItems":2}},"required":["v"],"additionalProperties":false}},"$ref":"#/$defs/t"}`,
		`{"type":"object","properties":{"a":{"type":"string"}},"additionalProperties":{"type":"integer"},"maxProperties":3}`,
		`{"type":"object","patternProperties":{"^x":{"type":"boolean"}},"additionalProperties":{"type":"null"}}`,
		`{"oneOf":[{"type":"object","properties":{"k":{"const":1}},"required":["k"]},{"type":"string","maxLength":2}]}`,
		`{"allOf":[{"type":"integer","minimum":-20},{"type":"number","maximum":20}]}`,
		`{"$schema":"http://json-schema.org/draft-07/schema#","type":"object","properties":{"a":{"type":"null"},"b":{"type":"null"},"c":{"type":"null"}},"dependencies":{"a":["c"],"b":{"required":["a"]}}}`,
		`{"type":"object","properties":{"r":{"type":"integer"},"l":{"type":"null"},"w":{"type":"null"}},"oneOf":[{"required":["r"]},{"required":["l","w"]}]}`,
		`{"type":"array","items":{"type":"number","minimum":-2.5,"exclusiveMaximum":3.75},"minItems":1}`,
		`{"type":"array","items":{"anyOf":[{"type":"integer","multipleOf":7},{"type":"number","multipleOf":0.2,"maximum":1}]}}`,
	}
	rng := rand.New(rand.NewSource(5))
	for si, src := range schemas {
		c := jsonschema.NewCompiler()
		doc, err := jsonschema.UnmarshalJSON(strings.NewReader(src))
		if err != nil {
			t.Fatal(err)
		}
		if err := c.AddResource("mem://s.json", doc); err != nil {
			t.Fatal(err)
		}
		c.AssertFormat()
		validator, err := c.Compile("mem://s.json")
		if err != nil {
			t.Fatal(err)
		}
		for _, opts := range [][]Option{{compact}, nil} {
			g, err := CompileJSONSchema(v, []byte(src), opts...)
			if err != nil {
				if si == 4 {
					continue // maxProperties with additional properties: unsupported, as documented
				}
				t.Fatalf("schema %d: %v", si, err)
			}
			done := 0
			for i := 0; i < 60; i++ {
				out, complete := randomWalk(t, g, rng, 120, false)
				if !complete {
					continue
				}
				done++
				inst, err := jsonschema.UnmarshalJSON(strings.NewReader(out))
				if err != nil {
					t.Fatalf("schema %d: output %q is not JSON: %v", si, out, err)
				}
				if err := validator.Validate(inst); err != nil {
					t.Fatalf("schema %d: output %q does not validate: %v", si, out, err)
				}
				if len(opts) > 0 && !json.Valid([]byte(out)) {
					t.Fatalf("schema %d: %q", si, out)
				}
			}
			if done < 10 {
				t.Errorf("schema %d: only %d of 60 walks completed", si, done)
			}
		}
	}
}
