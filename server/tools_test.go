package server

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"testing"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/shared"
	"github.com/santhosh-tekuri/jsonschema/v6"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/tpuserve/tpuserve/server/proto/enginepb"
)

var (
	weatherParams = map[string]any{"type": "object", "properties": map[string]any{
		"city": map[string]any{"type": "string", "maxLength": 12},
		"unit": map[string]any{"enum": []any{"c", "f"}},
		"days": map[string]any{"type": "integer", "minimum": 1, "maximum": 7},
	}, "required": []any{"city", "unit"}, "additionalProperties": false}
	timeParams = map[string]any{"type": "object", "properties": map[string]any{
		"tz": map[string]any{"type": "string", "pattern": "^[A-Z][a-z]+$"},
	}, "required": []any{"tz"}, "additionalProperties": false}
)

func testTools() []openai.ChatCompletionToolUnionParam {
	return []openai.ChatCompletionToolUnionParam{
		openai.ChatCompletionFunctionTool(shared.FunctionDefinitionParam{Name: "get_weather", Description: openai.String("Weather in a city"), Parameters: weatherParams}),
		openai.ChatCompletionFunctionTool(shared.FunctionDefinitionParam{Name: "get_time", Parameters: timeParams}),
	}
}

// argsValidator checks call arguments against their tool's parameters with a real JSON
// Schema validator.
func argsValidator(t *testing.T) func(name, args string) error {
	t.Helper()
	schemas := map[string]*jsonschema.Schema{}
	for name, p := range map[string]any{"get_weather": weatherParams, "get_time": timeParams} {
		c := jsonschema.NewCompiler()
		if err := c.AddResource(name+".json", p); err != nil {
			t.Fatal(err)
		}
		sch, err := c.Compile(name + ".json")
		if err != nil {
			t.Fatal(err)
		}
		schemas[name] = sch
	}
	return func(name, args string) error {
		sch, ok := schemas[name]
		if !ok {
			return fmt.Errorf("unknown tool %q", name)
		}
		v, err := jsonschema.UnmarshalJSON(strings.NewReader(args))
		if err != nil {
			return fmt.Errorf("arguments %q are not JSON: %w", args, err)
		}
		return sch.Validate(v)
	}
}

type callNA struct{ name, args string }

// streamedCalls runs a streamed chat request and reassembles its tool-call deltas and
// content by hand, checking each call opens with its id, type and name.
func streamedCalls(t *testing.T, client openai.Client, p openai.ChatCompletionNewParams) (calls []callNA, content, finish string) {
	t.Helper()
	stream := client.Chat.Completions.NewStreaming(context.Background(), p)
	defer stream.Close()
	for stream.Next() {
		ch := stream.Current()
		if len(ch.Choices) == 0 {
			continue
		}
		c := ch.Choices[0]
		content += c.Delta.Content
		for _, d := range c.Delta.ToolCalls {
			switch {
			case int(d.Index) == len(calls):
				if d.ID == "" || d.Type != "function" || d.Function.Name == "" {
					t.Errorf("call %d opens without id/type/name: %+v", d.Index, d)
				}
				calls = append(calls, callNA{name: d.Function.Name, args: d.Function.Arguments})
			case int(d.Index) == len(calls)-1:
				if d.ID != "" || d.Function.Name != "" {
					t.Errorf("call %d: id or name sent twice: %+v", d.Index, d)
				}
				calls[d.Index].args += d.Function.Arguments
			default:
				t.Fatalf("tool-call delta for index %d after %d calls", d.Index, len(calls))
			}
		}
		if c.FinishReason != "" {
			finish = c.FinishReason
		}
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	return calls, content, finish
}

func messageCalls(m openai.ChatCompletionMessage) []callNA {
	var out []callNA
	for _, c := range m.ToolCalls {
		out = append(out, callNA{name: c.Function.Name, args: c.Function.Arguments})
	}
	return out
}

// TestToolCallsRequiredThroughOpenAI: tools → tool_calls under tool_choice "required"
// (the call grammar on the engine's sampling) → the tool's result sent back → an answer;
// the streamed deltas of the same seeded request reassemble into the same calls.
func TestToolCallsRequiredThroughOpenAI(t *testing.T) {
	fake := &fakeEngine{}
	ts := startTestServer(t, fake, func(c *Config) { c.Grammars, c.MaxModelLen = fakeGrammars(), 2048 })
	client := ts.openai()
	validate := argsValidator(t)
	ctx := context.Background()
	multi := 0
	for seed := int64(0); seed < 6; seed++ {
		p := openai.ChatCompletionNewParams{
			Model:      testModel,
			Messages:   []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Weather in Paris?")},
			Tools:      testTools(),
			ToolChoice: openai.ChatCompletionToolChoiceOptionUnionParam{OfAuto: openai.String("required")},
			MaxTokens:  openai.Int(200), Temperature: openai.Float(1), Seed: openai.Int(seed),
		}
		resp, err := client.Chat.Completions.New(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		c := resp.Choices[0]
		if c.FinishReason != "tool_calls" || len(c.Message.ToolCalls) == 0 || c.Message.Content != "" {
			t.Fatalf("seed %d: finish %q, %d calls, content %q", seed, c.FinishReason, len(c.Message.ToolCalls), c.Message.Content)
		}
		if !strings.Contains(string(c.Message.RawJSON()), `"content":null`) {
			t.Errorf("seed %d: content is not null: %s", seed, c.Message.RawJSON())
		}
		for _, tc := range c.Message.ToolCalls {
			if !strings.HasPrefix(tc.ID, "chatcmpl-tool-") || tc.Type != "function" {
				t.Errorf("seed %d: call id %q type %q", seed, tc.ID, tc.Type)
			}
			if err := validate(tc.Function.Name, tc.Function.Arguments); err != nil {
				t.Errorf("seed %d: %s(%s): %v", seed, tc.Function.Name, tc.Function.Arguments, err)
			}
		}
		if len(c.Message.ToolCalls) > 1 {
			multi++
		}
		streamed, content, finish := streamedCalls(t, client, p)
		if want := messageCalls(c.Message); finish != "tool_calls" || content != "" || fmt.Sprint(streamed) != fmt.Sprint(want) {
			t.Errorf("seed %d: streamed %v (finish %q, content %q); non-streamed %v", seed, streamed, finish, content, want)
		}
		if seed > 0 {
			continue
		}
		// The result goes back; the answer is text (the fake engine's letters).
		follow := p
		follow.ToolChoice = openai.ChatCompletionToolChoiceOptionUnionParam{OfAuto: openai.String("auto")}
		follow.Messages = append(follow.Messages, c.Message.ToParam(), openai.ToolMessage("21 C and sunny", c.Message.ToolCalls[0].ID))
		answer, err := client.Chat.Completions.New(ctx, follow)
		if err != nil {
			t.Fatal(err)
		}
		if a := answer.Choices[0]; a.FinishReason == "tool_calls" || len(a.Message.ToolCalls) > 0 || a.Message.Content == "" {
			t.Errorf("answer after the tool result: finish %q, calls %v, content %q", a.FinishReason, a.Message.ToolCalls, a.Message.Content)
		}
		reqs := fake.requests()
		prompt, _ := fakeTokenizer{}.Decode(reqs[len(reqs)-1].PromptIDs, false)
		first := c.Message.ToolCalls[0]
		for _, want := range []string{`TOOL {"function":{"name":"get_weather","description":"Weather in a city"`, "CALL " + first.Function.Name + " " + first.Function.Arguments,
			"<start_of_turn>tool\n21 C and sunny<end_of_turn>"} {
			if !strings.Contains(prompt, want) {
				t.Errorf("the follow-up prompt lacks %q:\n%s", want, prompt)
			}
		}
		if reqs[len(reqs)-1].Params.Grammar != nil {
			t.Error("tool_choice auto constrained the answer")
		}
	}
	if multi == 0 {
		t.Log("no seed made parallel calls")
	}
	// A named tool, and parallel_tool_calls false: exactly one call of that tool.
	for seed := int64(0); seed < 4; seed++ {
		p := openai.ChatCompletionNewParams{
			Model:      testModel,
			Messages:   []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Time?")},
			Tools:      testTools(),
			ToolChoice: openai.ToolChoiceOptionFunctionToolChoice(openai.ChatCompletionNamedToolChoiceFunctionParam{Name: "get_time"}),
			MaxTokens:  openai.Int(200), Temperature: openai.Float(1), Seed: openai.Int(seed),
		}
		if seed%2 == 1 {
			p.ToolChoice = openai.ChatCompletionToolChoiceOptionUnionParam{OfAuto: openai.String("required")}
			p.ParallelToolCalls = openai.Bool(false)
		}
		resp, err := client.Chat.Completions.New(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		calls := resp.Choices[0].Message.ToolCalls
		if len(calls) != 1 || (seed%2 == 0 && calls[0].Function.Name != "get_time") {
			t.Fatalf("seed %d: calls %v", seed, calls)
		}
		if err := validate(calls[0].Function.Name, calls[0].Function.Arguments); err != nil {
			t.Errorf("seed %d: %v", seed, err)
		}
	}
}

// TestToolCallsAuto: without a constraint the answer is parsed: a call list (fenced or
// not) becomes tool_calls, streamed as deltas; anything else stays content.
func TestToolCallsAuto(t *testing.T) {
	tests := []struct {
		name, script string
		want         []callNA
	}{
		{"list", `[{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}, {"name": "get_time", "arguments": {"tz": "Paris"}}]`,
			[]callNA{{"get_weather", `{"city":"Paris","unit":"c"}`}, {"get_time", `{"tz":"Paris"}`}}},
		{"fenced object", "```json\n{\"name\": \"get_time\", \"parameters\": {\"tz\": \"Oslo\"}}\n```", []callNA{{"get_time", `{"tz":"Oslo"}`}}},
		{"text", "  It is sunny.", nil},
		{"a JSON list that is not calls", `[1, 2]`, nil},
		{"an unknown tool", `[{"name": "rm", "arguments": {}}]`, nil},
		{"arguments not an object", `[{"name": "get_time", "arguments": "Oslo"}]`, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ts := startTestServer(t, &fakeEngine{script: tc.script}, func(c *Config) { c.Grammars, c.MaxModelLen = fakeGrammars(), 2048 })
			client := ts.openai()
			p := openai.ChatCompletionNewParams{Model: testModel, Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")},
				Tools: testTools(), MaxTokens: openai.Int(200)}
			resp, err := client.Chat.Completions.New(context.Background(), p)
			if err != nil {
				t.Fatal(err)
			}
			c := resp.Choices[0]
			got := messageCalls(c.Message)
			streamed, content, finish := streamedCalls(t, client, p)
			if tc.want == nil {
				if len(got) > 0 || c.FinishReason != "stop" || c.Message.Content != tc.script {
					t.Errorf("calls %v finish %q content %q; want the text as content", got, c.FinishReason, c.Message.Content)
				}
				if len(streamed) > 0 || finish != "stop" || content != tc.script {
					t.Errorf("streamed calls %v finish %q content %q; want the text as content", streamed, finish, content)
				}
				return
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) || c.FinishReason != "tool_calls" {
				t.Errorf("calls %v finish %q; want %v", got, c.FinishReason, tc.want)
			}
			if fmt.Sprint(streamed) != fmt.Sprint(tc.want) || finish != "tool_calls" || content != "" {
				t.Errorf("streamed %v finish %q content %q; want %v", streamed, finish, content, tc.want)
			}
		})
	}
}

// TestToolStreamDeltasAddUp: fed a call list byte by byte, the constrained stream sends
// each call's header once and arguments that add up to the parsed ones.
func TestToolStreamDeltasAddUp(t *testing.T) {
	ts := &toolSet{mode: toolRequired, parallel: true, names: map[string]bool{"f": true, "g": true}}
	text := `[{"name": "f", "arguments": {"a": "x, \"y\": }", "b": [1, {"c": null}]}}, {"name": "g", "arguments": {}}]`
	st := newToolStream(ts)
	var got []callNA
	for i := range len(text) {
		content, deltas := st.feed(text[i:i+1], i == len(text)-1, true)
		if content != "" {
			t.Fatalf("content %q in a constrained stream", content)
		}
		for _, d := range deltas {
			if d.Function.Name != "" {
				got = append(got, callNA{name: d.Function.Name})
			}
			got[d.Index].args += d.Function.Arguments
		}
	}
	want, ok := ts.parseCalls(text)
	if !ok || fmt.Sprint(got) != fmt.Sprint([]callNA{{want[0].name, want[0].args}, {want[1].name, want[1].args}}) {
		t.Errorf("streamed %v, parsed %v (ok %v)", got, want, ok)
	}
}

// TestCallListSchemaRebasesRefs: a tool's own $defs and $ref still resolve once its
// parameters sit under the call schema's $defs, and key order is kept.
func TestCallListSchemaRebasesRefs(t *testing.T) {
	raws := []json.RawMessage{json.RawMessage(`{"type":"function","function":{"name":"f"}}`)}
	params := []json.RawMessage{json.RawMessage(`{"type":"object","properties":{"z":{"$ref":"#/$defs/p"},"a":{"type":"number","maximum":1.50}},"$defs":{"p":{"type":"string"}}}`)}
	got, err := callListSchema(raws, params, toolRequired, "", false)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"type":"array","minItems":1,"maxItems":1,"items":{"type":"object","properties":{"name":{"const":"f"},"arguments":{"$ref":"#/$defs/tool0"}},` +
		`"required":["name","arguments"],"additionalProperties":false},"$defs":{"tool0":{"type":"object","properties":{"z":{"$ref":"#/$defs/tool0/$defs/p"},"a":{"type":"number","maximum":1.50}},"$defs":{"p":{"type":"string"}}}}}`
	if string(got) != want {
		t.Errorf("call schema\n%s\nwant\n%s", got, want)
	}
	g, err := fakeGrammars().JSONSchema(got, toolCallSeparators)
	if err != nil {
		t.Fatal(err)
	}
	m := g.NewMatcher()
	if err := m.AdvanceBytes([]byte(`[{"name": "f", "arguments": {"z": "q", "a": 1.5}}]`)); err != nil || !m.CanEnd() {
		t.Errorf("a valid call is refused: %v (can end %v)", err, m.CanEnd())
	}
	if err := g.NewMatcher().AdvanceBytes([]byte(`[{"name": "f", "arguments": {"z": 3`)); err == nil {
		t.Error("the rebased $ref is not enforced: z accepted a number")
	}
}

func TestToolsBadInput(t *testing.T) {
	ts := startTestServer(t, &fakeEngine{}, func(c *Config) { c.Grammars, c.MaxModelLen = fakeGrammars(), 2048 })
	noGrammars := startTestServer(t, &fakeEngine{}, func(c *Config) { c.MaxModelLen = 2048 })
	const user = `"messages":[{"role":"user","content":"a"}],"max_tokens":4`
	const weather = `{"type":"function","function":{"name":"get_weather","parameters":{"type":"object","properties":{"city":{"type":"string"}}}}}`
	tests := []struct {
		name   string
		ts     *testServer
		body   string
		status int
		param  string
		msg    string
	}{
		{"parameters not a schema", ts, `"tools":[` + weather + `,{"type":"function","function":{"name":"f","parameters":{"type":"nope"}}}]`, 400, "tools[1].function.parameters", "not a valid JSON Schema"},
		{"parameters not an object", ts, `"tools":[{"type":"function","function":{"name":"f","parameters":5}}]`, 400, "tools[0].function.parameters", "JSON Schema object"},
		{"a named tool that does not exist", ts, `"tools":[` + weather + `],"tool_choice":{"type":"function","function":{"name":"get_time"}}`, 400, "tool_choice", `"get_time"`},
		{"an unknown tool_choice", ts, `"tools":[` + weather + `],"tool_choice":"always"`, 400, "tool_choice", "always"},
		{"tool_choice without tools", ts, `"tool_choice":"required"`, 400, "tool_choice", "needs tools"},
		{"a tool type", ts, `"tools":[{"type":"code","function":{"name":"f"}}]`, 400, "tools[0].type", "function"},
		{"a function name", ts, `"tools":[{"type":"function","function":{"name":"a b"}}]`, 400, "tools[0].function.name", "letters"},
		{"a name twice", ts, `"tools":[` + weather + `,` + weather + `]`, 400, "tools[1].function.name", "twice"},
		{"tools not an array", ts, `"tools":{"a":1}`, 400, "tools", "array"},
		{"an unenforceable keyword under required", ts, `"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object","properties":{"a":{"not":{"const":1}}}}}}],"tool_choice":"required"`, 400, "tools[0].function.parameters", `"not"`},
		{"an unenforceable keyword under auto", ts, `"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object","properties":{"a":{"not":{"const":1}}}}}}]`, 200, "", ""},
		{"required and a response_format", ts, `"tools":[` + weather + `],"tool_choice":"required","response_format":{"type":"json_object"}`, 400, "tool_choice", "structured-output"},
		{"tool_calls on a user message", ts, `"messages":[{"role":"user","content":"a","tool_calls":[{"id":"x","type":"function","function":{"name":"f","arguments":"{}"}}]}]`, 400, "messages[0].tool_calls", "assistant"},
		{"arguments that are not JSON", ts, `"messages":[{"role":"user","content":"a"},{"role":"assistant","tool_calls":[{"id":"x","type":"function","function":{"name":"f","arguments":"{city"}}]},{"role":"tool","tool_call_id":"x","content":"r"}]`, 400, "messages[1].tool_calls[0].function.arguments", "JSON object"},
		{"a tool message without content", ts, `"messages":[{"role":"user","content":"a"},{"role":"tool","tool_call_id":"x"}]`, 400, "messages[1].content", "required"},
		{"the legacy function role", ts, `"messages":[{"role":"function","content":"a"}]`, 400, "messages[0].role", "function"},
		{"the legacy functions", ts, `"functions":[{"name":"f"}]`, 400, "functions", "legacy"},
		{"required without structured outputs", noGrammars, `"tools":[` + weather + `],"tool_choice":"required"`, 400, "tool_choice", "not available"},
		{"auto without structured outputs", noGrammars, `"tools":[` + weather + `]`, 200, "", ""},
		{"tool_choice none ignores the tools", ts, `"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"nope"}}}],"tool_choice":"none"`, 200, "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			body := `{` + user + `,` + tc.body + `}`
			if strings.HasPrefix(tc.body, `"messages"`) {
				body = `{"max_tokens":4,` + tc.body + `}`
			}
			status, _, out := tc.ts.post(t, "/v1/chat/completions", body)
			if status != tc.status {
				t.Fatalf("status %d, want %d: %s", status, tc.status, out)
			}
			if tc.status == 200 {
				return
			}
			e := decodeError(t, out)
			if e.Param == nil || *e.Param != tc.param || !strings.Contains(e.Message, tc.msg) {
				t.Errorf("param %v message %q; want %q containing %q", e.Param, e.Message, tc.param, tc.msg)
			}
		})
	}
}

// TestGRPCStructuredOutputs: SamplingParams' constraint oneof constrains the output as
// the HTTP fields do, and a bad constraint is INVALID_ARGUMENT naming the gRPC field.
func TestGRPCStructuredOutputs(t *testing.T) {
	ts := startTestServer(t, &fakeEngine{}, func(c *Config) { c.Grammars = fakeGrammars() })
	c, _ := dialGRPC(t, ts)
	ctx := context.Background()
	schema := `{"type":"object","properties":{"n":{"type":"integer","minimum":3,"maximum":5},"s":{"enum":["x","y"]}},"required":["n","s"],"additionalProperties":false}`
	c1 := jsonschema.NewCompiler()
	doc, _ := jsonschema.UnmarshalJSON(strings.NewReader(schema))
	if err := c1.AddResource("s.json", doc); err != nil {
		t.Fatal(err)
	}
	sch, err := c1.Compile("s.json")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		c     func(*enginepb.SamplingParams)
		check func(text string) error
	}{
		{"json_schema", func(p *enginepb.SamplingParams) {
			p.Constraint = &enginepb.SamplingParams_JsonSchema{JsonSchema: schema}
		}, func(text string) error {
			v, err := jsonschema.UnmarshalJSON(strings.NewReader(text))
			if err != nil {
				return err
			}
			return sch.Validate(v)
		}},
		{"json_object", func(p *enginepb.SamplingParams) { p.Constraint = &enginepb.SamplingParams_JsonObject{JsonObject: true} }, func(text string) error {
			if !json.Valid([]byte(text)) {
				return fmt.Errorf("%q is not JSON", text)
			}
			return nil
		}},
		{"regex", func(p *enginepb.SamplingParams) {
			p.Constraint = &enginepb.SamplingParams_Regex{Regex: `[0-9]{3}-[a-c]+`}
		}, func(text string) error {
			if !regexp.MustCompile(`^[0-9]{3}-[a-c]+$`).MatchString(text) {
				return fmt.Errorf("%q does not match", text)
			}
			return nil
		}},
		{"choice", func(p *enginepb.SamplingParams) {
			p.Constraint = &enginepb.SamplingParams_Choice{Choice: &enginepb.ChoiceConstraint{Choices: []string{"yes", "no"}}}
		}, func(text string) error {
			if text != "yes" && text != "no" {
				return fmt.Errorf("%q is not a choice", text)
			}
			return nil
		}},
		{"grammar", func(p *enginepb.SamplingParams) {
			p.Constraint = &enginepb.SamplingParams_Grammar{Grammar: `root ::= "a" [b-d]+ "]"`}
		}, func(text string) error {
			if !regexp.MustCompile(`^a[b-d]+\]$`).MatchString(text) {
				return fmt.Errorf("%q does not match", text)
			}
			return nil
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for seed := int64(0); seed < 3; seed++ {
				p := &enginepb.SamplingParams{MaxTokens: proto.Uint32(100), Seed: proto.Int64(seed), Temperature: proto.Float32(1)}
				tc.c(p)
				msgs, err := generateAll(ctx, c, &enginepb.GenerateRequest{Input: &enginepb.GenerateRequest_Text{Text: "x"}, SamplingParams: p})
				if err != nil {
					t.Fatal(err)
				}
				done := msgs[len(msgs)-1].GetComplete()
				if done == nil || done.FinishReason != "stop" {
					t.Fatalf("seed %d: %v", seed, msgs[len(msgs)-1])
				}
				if err := tc.check(done.Text); err != nil {
					t.Errorf("seed %d: %v", seed, err)
				}
			}
		})
	}
	for _, tc := range []struct {
		c    *enginepb.SamplingParams
		want string
	}{
		{&enginepb.SamplingParams{Constraint: &enginepb.SamplingParams_JsonSchema{JsonSchema: `{"type":"nope"}`}}, "sampling_params.json_schema"},
		{&enginepb.SamplingParams{Constraint: &enginepb.SamplingParams_JsonSchema{JsonSchema: `{"not":{"const":1}}`}}, `sampling_params.json_schema: the keyword "not"`},
		{&enginepb.SamplingParams{Constraint: &enginepb.SamplingParams_Regex{Regex: `(`}}, "sampling_params.regex"},
		{&enginepb.SamplingParams{Constraint: &enginepb.SamplingParams_Grammar{Grammar: `root ::= missing`}}, "sampling_params.grammar"},
		{&enginepb.SamplingParams{Constraint: &enginepb.SamplingParams_Choice{Choice: &enginepb.ChoiceConstraint{}}}, "sampling_params.choice"},
	} {
		_, err := generateAll(ctx, c, &enginepb.GenerateRequest{Input: &enginepb.GenerateRequest_Text{Text: "x"}, SamplingParams: tc.c})
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v; want INVALID_ARGUMENT naming %q", tc.c.Constraint, err, tc.want)
		}
	}
}
