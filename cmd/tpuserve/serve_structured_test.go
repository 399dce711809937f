package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

// TestServeStructuredOutputs: against the real tiny engine, response_format json_schema,
// structured_outputs and the guided_* fields constrain the output on the device — at
// temperature 1 with seeds, constrained and unconstrained requests side by side — and
// every output that finishes with "stop" validates against its schema with a real
// validator; bad schemas, unsupported keywords and bad regexes are 400s naming the field.
func TestServeStructuredOutputs(t *testing.T) {
	ls := startServe(t, func(o *serveOptions) { o.precompile = "all"; o.maxNumSeqs = 8; o.maxBatched = 64; o.maxModelLen = 256 })
	schemas := []string{
		`{"type":"object","properties":{"ok":{"type":"boolean"}},"required":["ok"],"additionalProperties":false}`,
		`{"type":"object","properties":{"n":{"type":"integer","minimum":0,"maximum":9}},"required":["n"],"additionalProperties":false}`,
		`{"type":"array","items":{"enum":["a","b"]},"minItems":1,"maxItems":3}`,
		`{"enum":["red","green","blue"]}`,
		`{"type":"object","properties":{"s":{"type":"string","maxLength":3}},"required":["s"],"additionalProperties":false}`,
	}
	stopped := 0
	for i, schema := range schemas {
		compiler := jsonschema.NewCompiler()
		doc, err := jsonschema.UnmarshalJSON(strings.NewReader(schema))
		if err != nil {
			t.Fatal(err)
		}
		if err := compiler.AddResource(fmt.Sprintf("s%d.json", i), doc); err != nil {
			t.Fatal(err)
		}
		sch, err := compiler.Compile(fmt.Sprintf("s%d.json", i))
		if err != nil {
			t.Fatal(err)
		}
		for seed := 0; seed < 4; seed++ {
			body := fmt.Sprintf(`{"model":"tiny","messages":[{"role":"user","content":"JSON please"}],"max_tokens":40,"temperature":1,"seed":%d,
				"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":%s}}}`, seed, schema)
			if seed%2 == 1 {
				body = fmt.Sprintf(`{"model":"tiny","prompt":"JSON please","max_tokens":40,"temperature":1,"seed":%d,"structured_outputs":{"json":%s}}`, seed, schema)
			}
			path := "/v1/chat/completions"
			if seed%2 == 1 {
				path = "/v1/completions"
			}
			status, out := postJSON(t, ls.url+path, body)
			if status != 200 {
				t.Fatalf("schema %d: %d %v", i, status, out)
			}
			ch := out["choices"].([]any)[0].(map[string]any)
			text, _ := ch["text"].(string)
			if msg, ok := ch["message"].(map[string]any); ok {
				text, _ = msg["content"].(string)
			}
			if ch["finish_reason"] != "stop" {
				continue // cut by max_tokens: a prefix of a valid document
			}
			stopped++
			var v any
			if err := json.Unmarshal([]byte(text), &v); err != nil {
				t.Errorf("schema %d seed %d: %q is not JSON: %v", i, seed, text, err)
				continue
			}
			if err := sch.Validate(v); err != nil {
				t.Errorf("schema %d seed %d: %q does not validate: %v", i, seed, text, err)
			}
		}
	}
	if stopped == 0 {
		t.Errorf("no constrained output finished with stop")
	}
	// guided_choice and guided_regex.
	status, out := postJSON(t, ls.url+"/v1/completions", `{"model":"tiny","prompt":"pick","max_tokens":10,"temperature":1,"seed":3,"guided_choice":["yes","no"]}`)
	if text := out["choices"].([]any)[0].(map[string]any)["text"]; status != 200 || (text != "yes" && text != "no") {
		t.Errorf("guided_choice: %d %v", status, text)
	}
	for _, tc := range []struct{ body, param string }{
		{`"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":{"type":"nope"}}}`, "response_format.json_schema.schema"},
		{`"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":{"not":{"const":1}}}}`, "response_format.json_schema.schema"},
		{`"guided_regex":"(unclosed"`, "guided_regex"},
		{`"guided_choice":["a"],"guided_regex":"a"`, "guided_choice"},
	} {
		status, out := postJSON(t, ls.url+"/v1/chat/completions", `{"model":"tiny","messages":[{"role":"user","content":"x"}],"max_tokens":4,`+tc.body+`}`)
		if status != 400 || out["error"].(map[string]any)["param"] != tc.param {
			t.Errorf("%s: %d %v", tc.body, status, out)
		}
	}
	if got := metric(t, ls.url, "tpuserve:serving_compilations_total"); got != "0" {
		t.Errorf("tpuserve:serving_compilations_total = %q", got)
	}
}
