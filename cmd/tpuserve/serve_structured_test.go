package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/shared"
	"github.com/santhosh-tekuri/jsonschema/v6"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	"github.com/tpuserve/tpuserve/server/proto/enginepb"
)

// structuredSchemas cover the JSON Schema keywords the grammar engine enforces: types,
// bounds, enum / const, anyOf / oneOf / allOf, $ref recursion, formats, patterns,
// prefixItems, additionalProperties schemas and multipleOf.
var structuredSchemas = []string{
	`{"type":"object","properties":{"ok":{"type":"boolean"}},"required":["ok"],"additionalProperties":false}`,
	`{"type":"object","properties":{"n":{"type":"integer","minimum":0,"maximum":9}},"required":["n"],"additionalProperties":false}`,
	`{"type":"array","items":{"enum":["a","b"]},"minItems":1,"maxItems":3}`,
	`{"enum":["red","green","blue"]}`,
	`{"type":"object","properties":{"s":{"type":"string","maxLength":3}},"required":["s"],"additionalProperties":false}`,
	`{"type":"integer","exclusiveMinimum":0,"exclusiveMaximum":100}`,
	`{"type":"number","minimum":-1.5,"maximum":2.5}`,
	`{"const":{"a":[1,2]}}`,
	`{"anyOf":[{"type":"integer","minimum":0,"maximum":9},{"type":"boolean"}]}`,
	`{"oneOf":[{"type":"string","maxLength":2},{"type":"null"}]}`,
	`{"type":"string","format":"date"}`,
	`{"type":"string","format":"uuid"}`,
	`{"type":"string","format":"ipv4"}`,
	`{"type":"string","pattern":"^[a-c]{2,4}$"}`,
	`{"type":"array","prefixItems":[{"type":"integer","minimum":0,"maximum":3},{"enum":["x","y"]}],"items":false,"minItems":2}`,
	`{"$defs":{"node":{"type":"object","properties":{"v":{"type":"integer","minimum":0,"maximum":9},"next":{"anyOf":[{"$ref":"#/$defs/node"},{"type":"null"}]}},"required":["v","next"],"additionalProperties":false}},"$ref":"#/$defs/node"}`,
	`{"allOf":[{"type":"integer","minimum":0},{"maximum":20},{"multipleOf":2}]}`,
	`{"type":["string","null"],"maxLength":3}`,
	`{"type":"object","properties":{"when":{"type":"string","format":"time"}},"required":["when"],"additionalProperties":false}`,
	`{"type":"integer","multipleOf":5,"minimum":0,"maximum":50}`,
}

func compileValidator(t *testing.T, name, schema string) *jsonschema.Schema {
	t.Helper()
	compiler := jsonschema.NewCompiler()
	doc, err := jsonschema.UnmarshalJSON(strings.NewReader(schema))
	if err != nil {
		t.Fatal(err)
	}
	if err := compiler.AddResource(name, doc); err != nil {
		t.Fatal(err)
	}
	sch, err := compiler.Compile(name)
	if err != nil {
		t.Fatal(err)
	}
	return sch
}

func validateText(sch *jsonschema.Schema, text string) error {
	v, err := jsonschema.UnmarshalJSON(strings.NewReader(text))
	if err != nil {
		return fmt.Errorf("not JSON: %w", err)
	}
	return sch.Validate(v)
}

// TestServeStructuredOutputs: against the real tiny engine, 20 schemas through
// response_format json_schema (chat) and structured_outputs (completions), at
// temperature 1 with seeds, sent concurrently with unconstrained requests so that both
// share batches; every output that finishes with "stop" validates against its schema
// with a real validator. Then tool calling through openai-go, the same constraints over
// gRPC, and bad input as 400s naming the field; nothing compiles while serving.
func TestServeStructuredOutputs(t *testing.T) {
	ls := startServe(t, func(o *serveOptions) { o.precompile = "all"; o.maxNumSeqs = 8; o.maxBatched = 64; o.maxModelLen = 1024 })
	validators := make([]*jsonschema.Schema, len(structuredSchemas))
	for i, schema := range structuredSchemas {
		validators[i] = compileValidator(t, fmt.Sprintf("s%d.json", i), schema)
	}
	type result struct {
		schema, seed int // schema -1: unconstrained
		text, finish string
	}
	var (
		mu      sync.Mutex
		results []result
		wg      sync.WaitGroup
	)
	sem := make(chan struct{}, 12) // more in flight than max-num-seqs: full, mixed batches
	send := func(schema, seed int, path, body string) {
		defer wg.Done()
		sem <- struct{}{}
		defer func() { <-sem }()
		status, out := postJSON(t, ls.url+path, body)
		if status != 200 {
			t.Errorf("schema %d seed %d: %d %v", schema, seed, status, out)
			return
		}
		ch := out["choices"].([]any)[0].(map[string]any)
		text, _ := ch["text"].(string)
		if msg, ok := ch["message"].(map[string]any); ok {
			text, _ = msg["content"].(string)
		}
		finish, _ := ch["finish_reason"].(string)
		mu.Lock()
		results = append(results, result{schema, seed, text, finish})
		mu.Unlock()
	}
	for seed := range 2 {
		for i, schema := range structuredSchemas {
			wg.Add(1)
			if (i+seed)%2 == 0 {
				go send(i, seed, "/v1/chat/completions", fmt.Sprintf(`{"model":"tiny","messages":[{"role":"user","content":"JSON please"}],"max_tokens":40,"temperature":1,"seed":%d,
					"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":%s}}}`, seed, schema))
			} else {
				go send(i, seed, "/v1/completions", fmt.Sprintf(`{"model":"tiny","prompt":"JSON please","max_tokens":40,"temperature":1,"seed":%d,"structured_outputs":{"json":%s}}`, seed, schema))
			}
			if i%3 == 0 {
				wg.Add(1)
				go send(-1, seed*100+i, "/v1/completions", fmt.Sprintf(`{"model":"tiny","prompt":"JSON please","max_tokens":24,"temperature":1,"seed":%d}`, seed*100+i))
			}
		}
	}
	wg.Wait()
	stopped, schemasStopped := 0, map[int]bool{}
	unconstrainedValid, unconstrained := 0, 0
	for _, r := range results {
		if r.schema < 0 {
			unconstrained++
			if validateText(validators[0], r.text) == nil {
				unconstrainedValid++
			}
			continue
		}
		if r.finish != "stop" {
			continue // cut by max_tokens: a prefix of a valid document
		}
		stopped++
		schemasStopped[r.schema] = true
		if err := validateText(validators[r.schema], r.text); err != nil {
			t.Errorf("schema %d seed %d: %q does not validate: %v", r.schema, r.seed, r.text, err)
		}
	}
	t.Logf("%d of %d constrained outputs stopped (%d of %d schemas); %d unconstrained", stopped, 2*len(structuredSchemas), len(schemasStopped), len(structuredSchemas), unconstrained)
	if len(schemasStopped) < len(structuredSchemas)/2 {
		t.Errorf("only %d of %d schemas had an output that finished with stop", len(schemasStopped), len(structuredSchemas))
	}
	// Ablation: the same model unconstrained does not write the first schema's JSON.
	if unconstrained == 0 || unconstrainedValid == unconstrained {
		t.Errorf("%d of %d unconstrained outputs validate against schema 0: the check cannot tell", unconstrainedValid, unconstrained)
	}

	t.Run("guided", func(t *testing.T) {
		status, out := postJSON(t, ls.url+"/v1/completions", `{"model":"tiny","prompt":"pick","max_tokens":10,"temperature":1,"seed":3,"guided_choice":["yes","no"]}`)
		if text := out["choices"].([]any)[0].(map[string]any)["text"]; status != 200 || (text != "yes" && text != "no") {
			t.Errorf("guided_choice: %d %v", status, text)
		}
		status, out = postJSON(t, ls.url+"/v1/completions", `{"model":"tiny","prompt":"id","max_tokens":10,"temperature":1,"seed":3,"guided_regex":"[0-9]{3}"}`)
		if text, _ := out["choices"].([]any)[0].(map[string]any)["text"].(string); status != 200 || len(text) != 3 || strings.Trim(text, "0123456789") != "" {
			t.Errorf("guided_regex: %d %q", status, text)
		}
	})
	t.Run("tools", func(t *testing.T) { serveToolCalls(t, ls) })
	t.Run("grpc", func(t *testing.T) {
		conn, err := grpc.NewClient(ls.srv.GRPCAddr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		client := enginepb.NewTpuserveEngineClient(conn)
		for _, i := range []int{0, 3, 13} {
			p := &enginepb.SamplingParams{MaxTokens: proto.Uint32(48), Temperature: proto.Float32(1), Seed: proto.Int64(7),
				Constraint: &enginepb.SamplingParams_JsonSchema{JsonSchema: structuredSchemas[i]}}
			stream, err := client.Generate(context.Background(), &enginepb.GenerateRequest{Input: &enginepb.GenerateRequest_Text{Text: "JSON please"}, SamplingParams: p})
			if err != nil {
				t.Fatal(err)
			}
			for {
				m, err := stream.Recv()
				if err != nil {
					t.Fatalf("schema %d: %v", i, err)
				}
				if done := m.GetComplete(); done != nil {
					if done.FinishReason == "stop" {
						if err := validateText(validators[i], done.Text); err != nil {
							t.Errorf("gRPC schema %d: %q: %v", i, done.Text, err)
						}
					}
					break
				}
			}
		}
	})
	t.Run("bad input", func(t *testing.T) {
		for _, tc := range []struct{ body, param string }{
			{`"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":{"type":"nope"}}}`, "response_format.json_schema.schema"},
			{`"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":{"not":{"const":1}}}}`, "response_format.json_schema.schema"},
			{`"guided_regex":"(unclosed"`, "guided_regex"},
			{`"structured_outputs":{"regex":"a\\b"}`, "structured_outputs.regex"},
			{`"guided_choice":["a"],"guided_regex":"a"`, "guided_choice"},
			{`"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"nope"}}}]`, "tools[0].function.parameters"},
			{`"tools":[{"type":"function","function":{"name":"f"}}],"tool_choice":{"type":"function","function":{"name":"g"}}`, "tool_choice"},
		} {
			status, out := postJSON(t, ls.url+"/v1/chat/completions", `{"model":"tiny","messages":[{"role":"user","content":"x"}],"max_tokens":4,`+tc.body+`}`)
			if status != 400 || out["error"].(map[string]any)["param"] != tc.param {
				t.Errorf("%s: %d %v", tc.body, status, out)
			}
		}
	})
	if got := metric(t, ls.url, "tpuserve:serving_compilations_total"); got != "0" {
		t.Errorf("tpuserve:serving_compilations_total = %q", got)
	}
}

// serveToolCalls: tools → tool_calls (tool_choice "required", guaranteed by the call
// grammar even from the tiny model's random weights) → the tool's result → an answer,
// through openai-go; the streamed deltas of the same seeded request reassemble into the
// same calls.
func serveToolCalls(t *testing.T, ls *liveServer) {
	params := map[string]any{"type": "object", "properties": map[string]any{
		"city": map[string]any{"type": "string", "maxLength": 10},
		"unit": map[string]any{"enum": []any{"c", "f"}},
	}, "required": []any{"city", "unit"}, "additionalProperties": false}
	raw, _ := json.Marshal(params)
	validator := compileValidator(t, "weather.json", string(raw))
	client := ls.client()
	ctx := context.Background()
	p := openai.ChatCompletionNewParams{
		Model:    "tiny",
		Messages: []openai.ChatCompletionMessageParamUnion{openai.SystemMessage("You check the weather."), openai.UserMessage("Weather in Paris?")},
		Tools: []openai.ChatCompletionToolUnionParam{openai.ChatCompletionFunctionTool(shared.FunctionDefinitionParam{
			Name: "get_weather", Description: openai.String("Current weather"), Parameters: params})},
		ToolChoice:        openai.ChatCompletionToolChoiceOptionUnionParam{OfAuto: openai.String("required")},
		ParallelToolCalls: openai.Bool(false),
		MaxTokens:         openai.Int(60), Temperature: openai.Float(1), Seed: openai.Int(2),
	}
	resp, err := client.Chat.Completions.New(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	c := resp.Choices[0]
	if c.FinishReason != "tool_calls" || len(c.Message.ToolCalls) != 1 {
		t.Fatalf("finish %q, calls %v, content %q", c.FinishReason, c.Message.ToolCalls, c.Message.Content)
	}
	call := c.Message.ToolCalls[0]
	if call.Function.Name != "get_weather" {
		t.Errorf("called %q", call.Function.Name)
	}
	if err := validateText(validator, call.Function.Arguments); err != nil {
		t.Errorf("arguments %s: %v", call.Function.Arguments, err)
	}
	// Streamed: the deltas reassemble into the same call.
	stream := client.Chat.Completions.NewStreaming(ctx, p)
	var name, args, finish string
	for stream.Next() {
		ch := stream.Current()
		if len(ch.Choices) == 0 {
			continue
		}
		for _, d := range ch.Choices[0].Delta.ToolCalls {
			name += d.Function.Name
			args += d.Function.Arguments
		}
		if f := ch.Choices[0].FinishReason; f != "" {
			finish = f
		}
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	if name != call.Function.Name || args != call.Function.Arguments || finish != "tool_calls" {
		t.Errorf("streamed %s(%s) finish %q; non-streamed %s(%s)", name, args, finish, call.Function.Name, call.Function.Arguments)
	}
	// The result goes back and the model answers (auto: unconstrained).
	follow := p
	follow.ToolChoice = openai.ChatCompletionToolChoiceOptionUnionParam{OfAuto: openai.String("auto")}
	follow.MaxTokens = openai.Int(8)
	follow.Messages = append(follow.Messages, c.Message.ToParam(), openai.ToolMessage(`{"temperature": 21}`, call.ID))
	answer, err := client.Chat.Completions.New(ctx, follow)
	if err != nil {
		t.Fatal(err)
	}
	if a := answer.Choices[0]; a.FinishReason != "stop" && a.FinishReason != "length" {
		t.Errorf("answer: finish %q content %q", a.FinishReason, a.Message.Content)
	}
	// The tool history is in the prompt: more prompt tokens than the first turn.
	if answer.Usage.PromptTokens <= resp.Usage.PromptTokens {
		t.Errorf("follow-up prompt %d tokens, first %d: the call and result were not rendered", answer.Usage.PromptTokens, resp.Usage.PromptTokens)
	}
}
