package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
)

func completionParams(prompt string, maxTokens int64, seed int64) openai.CompletionNewParams {
	return openai.CompletionNewParams{
		Model:     testModel,
		Prompt:    openai.CompletionNewParamsPromptUnion{OfString: openai.String(prompt)},
		MaxTokens: openai.Int(maxTokens),
		Seed:      openai.Int(seed),
	}
}

func TestCompletionNonStreaming(t *testing.T) {
	ts := startTestServer(t, &fakeEngine{}, nil)
	client := ts.openai()
	ctx := context.Background()
	resp, err := client.Completions.New(ctx, completionParams("Hello", 12, 7), option.WithJSONSet("ignore_eos", true))
	if err != nil {
		t.Fatal(err)
	}
	if resp.Object != "text_completion" || !strings.HasPrefix(resp.ID, "cmpl-") || resp.Model != testModel || resp.Created == 0 {
		t.Errorf("bad envelope: %+v", resp)
	}
	if len(resp.Choices) != 1 {
		t.Fatalf("%d choices, want 1", len(resp.Choices))
	}
	ch := resp.Choices[0]
	if ch.FinishReason != "length" || len(ch.Text) != 12 || ch.Index != 0 {
		t.Errorf("choice = %+v, want 12 characters ending on length", ch)
	}
	if resp.Usage.PromptTokens != 6 || resp.Usage.CompletionTokens != 12 || resp.Usage.TotalTokens != 18 {
		t.Errorf("usage = %+v, want 6 (BOS + Hello) + 12", resp.Usage)
	}
	// The engine got the prompt with BOS, the params and the request's seed.
	reqs := ts.eng.requests()
	if len(reqs) != 1 {
		t.Fatalf("%d engine requests", len(reqs))
	}
	r := reqs[0]
	if r.PromptIDs[0] != fakeBOS || len(r.PromptIDs) != 6 || r.Params.MaxTokens != 12 || *r.Params.Seed != 7 || !r.Params.IgnoreEOS {
		t.Errorf("engine request = %+v", r)
	}
	// Same seed, same text.
	again, err := client.Completions.New(ctx, completionParams("Hello", 12, 7), option.WithJSONSet("ignore_eos", true))
	if err != nil {
		t.Fatal(err)
	}
	if again.Choices[0].Text != ch.Text {
		t.Errorf("same seed gave %q then %q", ch.Text, again.Choices[0].Text)
	}
}

func TestCompletionPromptForms(t *testing.T) {
	ts := startTestServer(t, &fakeEngine{}, nil)
	client := ts.openai()
	hi := []int64{fakeBOS, fakeByteBase + 'h', fakeByteBase + 'i'}
	tests := []struct {
		name        string
		prompt      openai.CompletionNewParamsPromptUnion
		n           int64
		wantChoices int
		wantPrompt  int64
		wantEcho    []string
	}{
		{"string", openai.CompletionNewParamsPromptUnion{OfString: openai.String("hi")}, 1, 1, 3, []string{"hi"}},
		{"strings", openai.CompletionNewParamsPromptUnion{OfArrayOfStrings: []string{"hi", "abc"}}, 1, 2, 7, []string{"hi", "abc"}},
		{"tokens", openai.CompletionNewParamsPromptUnion{OfArrayOfTokens: hi}, 1, 1, 3, []string{"<bos>hi"}},
		{"token arrays", openai.CompletionNewParamsPromptUnion{OfArrayOfTokenArrays: [][]int64{hi, hi[1:]}}, 1, 2, 5, []string{"<bos>hi", "hi"}},
		{"strings n=2", openai.CompletionNewParamsPromptUnion{OfArrayOfStrings: []string{"hi", "abc"}}, 2, 4, 7, []string{"hi", "hi", "abc", "abc"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := client.Completions.New(context.Background(), openai.CompletionNewParams{
				Model: testModel, Prompt: tc.prompt, MaxTokens: openai.Int(4), N: openai.Int(tc.n), Echo: openai.Bool(true),
				Seed: openai.Int(1),
			}, option.WithJSONSet("ignore_eos", true))
			if err != nil {
				t.Fatal(err)
			}
			if len(resp.Choices) != tc.wantChoices {
				t.Fatalf("%d choices, want %d", len(resp.Choices), tc.wantChoices)
			}
			for i, ch := range resp.Choices {
				if ch.Index != int64(i) {
					t.Errorf("choice %d has index %d", i, ch.Index)
				}
				if !strings.HasPrefix(ch.Text, tc.wantEcho[i]) || len(ch.Text) != len(tc.wantEcho[i])+4 {
					t.Errorf("choice %d text %q, want echo %q + 4 characters", i, ch.Text, tc.wantEcho[i])
				}
			}
			if resp.Usage.PromptTokens != tc.wantPrompt || resp.Usage.CompletionTokens != 4*int64(tc.wantChoices) {
				t.Errorf("usage %+v, want prompt %d", resp.Usage, tc.wantPrompt)
			}
		})
	}
}

func TestStreamingMatchesNonStreaming(t *testing.T) {
	ts := startTestServer(t, &fakeEngine{}, nil)
	client := ts.openai()
	ctx := context.Background()
	for _, n := range []int64{1, 3} {
		t.Run(fmt.Sprintf("completions n=%d", n), func(t *testing.T) {
			p := completionParams("Once upon", 20, 42)
			p.N = openai.Int(n)
			p.StreamOptions = openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}
			full, err := client.Completions.New(ctx, completionParams("Once upon", 20, 42), option.WithJSONSet("n", n))
			if err != nil {
				t.Fatal(err)
			}
			stream := client.Completions.NewStreaming(ctx, p)
			texts := make([]string, n)
			finish := make([]string, n)
			var usage openai.CompletionUsage
			for stream.Next() {
				chunk := stream.Current()
				if chunk.Object != "text_completion" || chunk.ID == "" {
					t.Errorf("bad chunk envelope %+v", chunk)
				}
				for _, ch := range chunk.Choices {
					texts[ch.Index] += ch.Text
					if ch.FinishReason != "" {
						finish[ch.Index] = string(ch.FinishReason)
					}
				}
				if chunk.Usage.TotalTokens > 0 {
					if len(chunk.Choices) != 0 {
						t.Errorf("usage chunk has choices")
					}
					usage = chunk.Usage
				}
			}
			if err := stream.Err(); err != nil {
				t.Fatal(err)
			}
			for i := range n {
				if texts[i] != full.Choices[i].Text || finish[i] != string(full.Choices[i].FinishReason) {
					t.Errorf("choice %d: stream %q/%s, non-stream %q/%s", i, texts[i], finish[i], full.Choices[i].Text, full.Choices[i].FinishReason)
				}
			}
			if usage.CompletionTokens != full.Usage.CompletionTokens || usage.PromptTokens != full.Usage.PromptTokens {
				t.Errorf("stream usage %+v, non-stream %+v", usage, full.Usage)
			}
		})
		t.Run(fmt.Sprintf("chat n=%d", n), func(t *testing.T) {
			p := openai.ChatCompletionNewParams{
				Model:     testModel,
				Messages:  []openai.ChatCompletionMessageParamUnion{openai.SystemMessage("Be brief."), openai.UserMessage("Hi there")},
				MaxTokens: openai.Int(20), Seed: openai.Int(9), N: openai.Int(n),
			}
			full, err := client.Chat.Completions.New(ctx, p)
			if err != nil {
				t.Fatal(err)
			}
			if full.Object != "chat.completion" || !strings.HasPrefix(full.ID, "chatcmpl-") {
				t.Errorf("bad envelope %+v", full)
			}
			p.StreamOptions = openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}
			stream := client.Chat.Completions.NewStreaming(ctx, p)
			texts := make([]string, n)
			roles := make([]string, n)
			finish := make([]string, n)
			var usage openai.CompletionUsage
			for stream.Next() {
				chunk := stream.Current()
				if chunk.Object != "chat.completion.chunk" {
					t.Errorf("chunk object %q", chunk.Object)
				}
				for _, ch := range chunk.Choices {
					texts[ch.Index] += ch.Delta.Content
					if ch.Delta.Role != "" {
						roles[ch.Index] = ch.Delta.Role
					}
					if ch.FinishReason != "" {
						finish[ch.Index] = ch.FinishReason
					}
				}
				if chunk.Usage.TotalTokens > 0 {
					usage = chunk.Usage
				}
			}
			if err := stream.Err(); err != nil {
				t.Fatal(err)
			}
			for i := range n {
				c := full.Choices[i]
				if c.Message.Role != "assistant" || roles[i] != "assistant" {
					t.Errorf("choice %d roles %q / %q", i, c.Message.Role, roles[i])
				}
				if texts[i] != c.Message.Content || finish[i] != c.FinishReason {
					t.Errorf("choice %d: stream %q/%s, non-stream %q/%s", i, texts[i], finish[i], c.Message.Content, c.FinishReason)
				}
			}
			if usage.CompletionTokens != full.Usage.CompletionTokens || usage.PromptTokens != full.Usage.PromptTokens || usage.PromptTokens == 0 {
				t.Errorf("stream usage %+v, non-stream %+v", usage, full.Usage)
			}
		})
	}
}

func TestChatPromptRendering(t *testing.T) {
	ts := startTestServer(t, &fakeEngine{}, nil)
	client := ts.openai()
	_, err := client.Chat.Completions.New(context.Background(), openai.ChatCompletionNewParams{
		Model: testModel,
		Messages: []openai.ChatCompletionMessageParamUnion{
			openai.SystemMessage("Sys"),
			openai.UserMessage([]openai.ChatCompletionContentPartUnionParam{openai.TextContentPart("a "), openai.TextContentPart("b")}),
			openai.AssistantMessage("ok"),
			openai.UserMessage("c"),
		},
		MaxCompletionTokens: openai.Int(3),
	})
	if err != nil {
		t.Fatal(err)
	}
	r := ts.eng.requests()[0]
	got, _ := fakeTokenizer{}.Decode(r.PromptIDs, false)
	want := "<bos><start_of_turn>user\nSys\n\na b<end_of_turn>\n<start_of_turn>model\nok<end_of_turn>\n<start_of_turn>user\nc<end_of_turn>\n<start_of_turn>model\n"
	if got != want {
		t.Errorf("prompt\n%q\nwant\n%q", got, want)
	}
	if r.PromptIDs[1] == fakeBOS {
		t.Errorf("BOS added twice")
	}
	if r.Params.MaxTokens != 3 {
		t.Errorf("max_completion_tokens not applied: %d", r.Params.MaxTokens)
	}
	// Without max_tokens, chat gets all the room left.
	if _, err := client.Chat.Completions.New(context.Background(), openai.ChatCompletionNewParams{
		Model: testModel, Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("c")},
	}); err != nil {
		t.Fatal(err)
	}
	r = ts.eng.requests()[1]
	if r.Params.MaxTokens != 256-len(r.PromptIDs) {
		t.Errorf("default chat max_tokens %d, want %d", r.Params.MaxTokens, 256-len(r.PromptIDs))
	}
}

func TestSeedsAndN(t *testing.T) {
	ts := startTestServer(t, &fakeEngine{}, nil)
	client := ts.openai()
	ctx := context.Background()
	gen := func(n int64, seed int64) []string {
		p := completionParams("x", 16, seed)
		p.N = openai.Int(n)
		resp, err := client.Completions.New(ctx, p, option.WithJSONSet("ignore_eos", true))
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, c := range resp.Choices {
			out = append(out, c.Text)
		}
		return out
	}
	three := gen(3, 5)
	if three[0] == three[1] || three[1] == three[2] || three[0] == three[2] {
		t.Errorf("n=3 choices are not distinct: %q", three)
	}
	if again := gen(3, 5); strings.Join(again, "|") != strings.Join(three, "|") {
		t.Errorf("same seed, different choices: %q vs %q", three, again)
	}
	if one := gen(1, 5); one[0] != three[0] {
		t.Errorf("n=1 %q differs from choice 0 of n=3 %q", one[0], three[0])
	}
	if other := gen(1, 6); other[0] == three[0] {
		t.Errorf("seeds 5 and 6 gave the same text %q", other[0])
	}
	seeds := map[int64]bool{}
	for _, r := range ts.eng.requests()[:3] {
		seeds[*r.Params.Seed] = true
	}
	if len(seeds) != 3 {
		t.Errorf("derived seeds not distinct: %v", seeds)
	}
}

func TestStops(t *testing.T) {
	ts := startTestServer(t, &fakeEngine{}, nil)
	client := ts.openai()
	ctx := context.Background()
	base, err := client.Completions.New(ctx, completionParams("s", 30, 3), option.WithJSONSet("ignore_eos", true))
	if err != nil {
		t.Fatal(err)
	}
	text := base.Choices[0].Text
	stop := text[10:13]
	at := strings.Index(text, stop)
	for _, stream := range []bool{false, true} {
		for _, include := range []bool{false, true} {
			t.Run(fmt.Sprintf("stream=%v include=%v", stream, include), func(t *testing.T) {
				p := completionParams("s", 30, 3)
				p.Stop = openai.CompletionNewParamsStopUnion{OfStringArray: []string{"NEVER", stop}}
				opts := []option.RequestOption{option.WithJSONSet("ignore_eos", true), option.WithJSONSet("include_stop_str_in_output", include)}
				want := text[:at]
				if include {
					want += stop
				}
				var got, finish string
				var stopReason any
				if stream {
					s := client.Completions.NewStreaming(ctx, p, opts...)
					for s.Next() {
						for _, c := range s.Current().Choices {
							got += c.Text
							if c.FinishReason != "" {
								finish = string(c.FinishReason)
								_ = json.Unmarshal([]byte(c.JSON.ExtraFields["stop_reason"].Raw()), &stopReason)
							}
						}
					}
					if err := s.Err(); err != nil {
						t.Fatal(err)
					}
				} else {
					resp, err := client.Completions.New(ctx, p, opts...)
					if err != nil {
						t.Fatal(err)
					}
					got, finish = resp.Choices[0].Text, string(resp.Choices[0].FinishReason)
					_ = json.Unmarshal([]byte(resp.Choices[0].JSON.ExtraFields["stop_reason"].Raw()), &stopReason)
				}
				if got != want || finish != "stop" || stopReason != stop {
					t.Errorf("got %q finish %q stop_reason %v; want %q stop %q", got, finish, stopReason, want, stop)
				}
			})
		}
	}
	t.Run("stop token id", func(t *testing.T) {
		id := fakeByteBase + int(text[5])
		resp, err := client.Completions.New(ctx, completionParams("s", 30, 3), option.WithJSONSet("ignore_eos", true),
			option.WithJSONSet("stop_token_ids", []int{id}))
		if err != nil {
			t.Fatal(err)
		}
		c := resp.Choices[0]
		if c.Text != text[:strings.IndexByte(text, text[5])] || c.FinishReason != "stop" || c.JSON.ExtraFields["stop_reason"].Raw() != fmt.Sprint(id) {
			t.Errorf("got %q %s stop_reason %s", c.Text, c.FinishReason, c.JSON.ExtraFields["stop_reason"].Raw())
		}
	})
}

func TestCompletionLogprobs(t *testing.T) {
	ts := startTestServer(t, &fakeEngine{}, nil)
	client := ts.openai()
	ctx := context.Background()
	p := completionParams("lp", 6, 11)
	p.Logprobs = openai.Int(3)
	resp, err := client.Completions.New(ctx, p, option.WithJSONSet("ignore_eos", true))
	if err != nil {
		t.Fatal(err)
	}
	c := resp.Choices[0]
	lp := c.Logprobs
	if len(lp.Tokens) != 6 || len(lp.TokenLogprobs) != 6 || len(lp.TopLogprobs) != 6 || len(lp.TextOffset) != 6 {
		t.Fatalf("logprobs lengths %d/%d/%d/%d, want 6", len(lp.Tokens), len(lp.TokenLogprobs), len(lp.TopLogprobs), len(lp.TextOffset))
	}
	if strings.Join(lp.Tokens, "") != c.Text {
		t.Errorf("tokens %q do not spell %q", lp.Tokens, c.Text)
	}
	for i := range lp.Tokens {
		if lp.TextOffset[i] != int64(i) {
			t.Errorf("text_offset[%d] = %d", i, lp.TextOffset[i])
		}
		if lp.TokenLogprobs[i] >= 0 {
			t.Errorf("token_logprobs[%d] = %g", i, lp.TokenLogprobs[i])
		}
		if n := len(lp.TopLogprobs[i]); n < 3 || n > 4 {
			t.Errorf("top_logprobs[%d] has %d entries, want 3 (+ chosen)", i, n)
		}
		if v, ok := lp.TopLogprobs[i][lp.Tokens[i]]; !ok || v != lp.TokenLogprobs[i] {
			t.Errorf("top_logprobs[%d] lacks the chosen token", i)
		}
	}
	// Streaming gives the same logprobs in pieces, and token ids on request.
	p.StreamOptions = openai.ChatCompletionStreamOptionsParam{}
	s := client.Completions.NewStreaming(ctx, p, option.WithJSONSet("ignore_eos", true), option.WithJSONSet("return_tokens_as_token_ids", true))
	var tokens []string
	var offsets []int64
	for s.Next() {
		for _, ch := range s.Current().Choices {
			tokens = append(tokens, ch.Logprobs.Tokens...)
			offsets = append(offsets, ch.Logprobs.TextOffset...)
		}
	}
	if err := s.Err(); err != nil {
		t.Fatal(err)
	}
	if len(tokens) != 6 {
		t.Fatalf("streamed %d tokens", len(tokens))
	}
	for i, tok := range tokens {
		want := fmt.Sprintf("token_id:%d", fakeByteBase+int(c.Text[i]))
		if tok != want {
			t.Errorf("token %d = %q, want %q", i, tok, want)
		}
		if i > 0 && offsets[i] <= offsets[i-1] {
			t.Errorf("text_offset not increasing: %v", offsets)
		}
	}
}

func TestChatLogprobs(t *testing.T) {
	ts := startTestServer(t, &fakeEngine{}, nil)
	client := ts.openai()
	resp, err := client.Chat.Completions.New(context.Background(), openai.ChatCompletionNewParams{
		Model: testModel, Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hey")},
		MaxTokens: openai.Int(5), Seed: openai.Int(2), Logprobs: openai.Bool(true), TopLogprobs: openai.Int(2),
	}, option.WithJSONSet("ignore_eos", true))
	if err != nil {
		t.Fatal(err)
	}
	c := resp.Choices[0]
	if len(c.Logprobs.Content) != 5 {
		t.Fatalf("%d logprob entries", len(c.Logprobs.Content))
	}
	var spelled []byte
	for i, e := range c.Logprobs.Content {
		if len(e.TopLogprobs) != 2 || !utf8.ValidString(e.Token) || len(e.Bytes) != len(e.Token) {
			t.Errorf("entry %d = %+v", i, e)
		}
		for _, b := range e.Bytes {
			spelled = append(spelled, byte(b))
		}
		if e.TopLogprobs[0].Logprob < e.TopLogprobs[1].Logprob {
			t.Errorf("top_logprobs not sorted: %+v", e.TopLogprobs)
		}
	}
	if string(spelled) != c.Message.Content {
		t.Errorf("bytes spell %q, content %q", spelled, c.Message.Content)
	}
	// Without logprobs, the field is null.
	resp, err = client.Chat.Completions.New(context.Background(), openai.ChatCompletionNewParams{
		Model: testModel, Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hey")}, MaxTokens: openai.Int(2),
	})
	if err != nil {
		t.Fatal(err)
	}
	if raw := resp.Choices[0].JSON.Logprobs.Raw(); raw != "null" {
		t.Errorf("logprobs = %s, want null", raw)
	}
}

func TestChatEcho(t *testing.T) {
	ts := startTestServer(t, &fakeEngine{}, nil)
	status, _, body := ts.post(t, "/v1/chat/completions", `{"model":"alias","max_tokens":3,"echo":true,"add_generation_prompt":false,
		"messages":[{"role":"user","content":"q"},{"role":"assistant","content":"The answer is"}]}`)
	if status != http.StatusOK {
		t.Fatalf("status %d: %s", status, body)
	}
	var resp chatResponse
	if err := json.Unmarshal(body, &resp); err != nil {
		t.Fatal(err)
	}
	if resp.Model != "alias" || !strings.HasPrefix(resp.Choices[0].Message.Content, "The answer is") {
		t.Errorf("response %s", body)
	}
}

// TestErrors checks every error the API documents: status, OpenAI's shape, the parameter
// named, and that the server keeps serving afterwards.
func TestErrors(t *testing.T) {
	eng := &fakeEngine{kvTokens: 200}
	ts := startTestServer(t, eng, func(c *Config) { c.MaxRequestBodyBytes = 4096 })
	tests := []struct {
		name, path, body string
		status           int
		param, code      string
		msg              string // substring of the message
	}{
		{"malformed", "/v1/completions", `{"prompt": "x",`, 400, "", codeInvalidJSON, "malformed JSON"},
		{"not an object", "/v1/completions", `[1,2]`, 400, "", codeInvalidJSON, "JSON object"},
		{"empty body", "/v1/completions", ``, 400, "", codeInvalidJSON, "empty"},
		{"trailing data", "/v1/completions", `{"prompt":"x"} {}`, 400, "", codeInvalidJSON, "after"},
		{"wrong type", "/v1/completions", `{"prompt":"x","max_tokens":"ten"}`, 400, "max_tokens", codeInvalidType, "integer"},
		{"float for int", "/v1/completions", `{"prompt":"x","n":1.5}`, 400, "n", codeInvalidType, "integer"},
		{"missing prompt", "/v1/completions", `{"max_tokens":1}`, 400, "prompt", codeMissing, "required"},
		{"prompt object", "/v1/completions", `{"prompt":{"a":1}}`, 400, "prompt", codeInvalidType, "string"},
		{"empty prompt list", "/v1/completions", `{"prompt":[]}`, 400, "prompt", codeInvalidValue, "empty"},
		{"empty token prompt", "/v1/completions", `{"prompt":[[]]}`, 400, "prompt[0]", codeInvalidValue, "empty"},
		{"mixed prompt", "/v1/completions", `{"prompt":["a",1]}`, 400, "prompt[1]", codeInvalidType, "string"},
		{"token beyond vocab", "/v1/completions", `{"prompt":[5,262]}`, 400, "prompt[1]", codeInvalidValue, "vocabulary"},
		{"negative token", "/v1/completions", `{"prompt":[[7],[-1]]}`, 400, "prompt[1][0]", codeInvalidValue, "vocabulary"},
		{"non-integer token", "/v1/completions", `{"prompt":[7,1.5]}`, 400, "prompt[1]", codeInvalidType, "integer"},
		{"temperature", "/v1/completions", `{"prompt":"x","temperature":2.5}`, 400, "temperature", codeInvalidValue, "[0, 2]"},
		{"negative temperature", "/v1/completions", `{"prompt":"x","temperature":-0.1}`, 400, "temperature", codeInvalidValue, "temperature"},
		{"top_p zero", "/v1/completions", `{"prompt":"x","top_p":0}`, 400, "top_p", codeInvalidValue, "(0, 1]"},
		{"top_p big", "/v1/completions", `{"prompt":"x","top_p":1.01}`, 400, "top_p", codeInvalidValue, "top_p"},
		{"top_k", "/v1/completions", `{"prompt":"x","top_k":-2}`, 400, "top_k", codeInvalidValue, "top_k"},
		{"top_k beyond vocab", "/v1/completions", `{"prompt":"x","top_k":100000}`, 400, "top_k", codeInvalidValue, "262"},
		{"min_p", "/v1/completions", `{"prompt":"x","min_p":1.5}`, 400, "min_p", codeInvalidValue, "min_p"},
		{"presence_penalty", "/v1/completions", `{"prompt":"x","presence_penalty":2.1}`, 400, "presence_penalty", codeInvalidValue, "[-2, 2]"},
		{"frequency_penalty", "/v1/chat/completions", `{"messages":[{"role":"user","content":"x"}],"frequency_penalty":-3}`, 400, "frequency_penalty", codeInvalidValue, "[-2, 2]"},
		{"repetition_penalty", "/v1/completions", `{"prompt":"x","repetition_penalty":0}`, 400, "repetition_penalty", codeInvalidValue, "repetition_penalty"},
		{"n zero", "/v1/completions", `{"prompt":"x","n":0}`, 400, "n", codeInvalidValue, "[1, 128]"},
		{"n big", "/v1/chat/completions", `{"messages":[{"role":"user","content":"x"}],"n":129}`, 400, "n", codeInvalidValue, "[1, 128]"},
		{"prompts times n", "/v1/completions", `{"prompt":[` + strings.Repeat(`"a",`, 20) + `"a"],"n":100}`, 400, "n", codeInvalidValue, "1024"},
		{"best_of", "/v1/completions", `{"prompt":"x","best_of":3}`, 400, "best_of", codeUnsupported, "best_of"},
		{"max_tokens zero", "/v1/completions", `{"prompt":"x","max_tokens":0}`, 400, "max_tokens", codeInvalidValue, "only allowed with echo"},
		{"max_tokens zero chat", "/v1/chat/completions", `{"messages":[{"role":"user","content":"x"}],"max_tokens":0}`, 400, "max_tokens", codeInvalidValue, "at least 1"},
		{"max_completion_tokens", "/v1/chat/completions", `{"messages":[{"role":"user","content":"x"}],"max_completion_tokens":-1}`, 400, "max_completion_tokens", codeInvalidValue, "at least 1"},
		{"min_tokens", "/v1/completions", `{"prompt":"x","min_tokens":-1}`, 400, "min_tokens", codeInvalidValue, "min_tokens"},
		{"min_tokens over max", "/v1/completions", `{"prompt":"x","min_tokens":5,"max_tokens":4}`, 400, "min_tokens", codeInvalidValue, "exceed"},
		{"logprobs", "/v1/completions", `{"prompt":"x","logprobs":21}`, 400, "logprobs", codeInvalidValue, "[0, 20]"},
		{"top_logprobs", "/v1/chat/completions", `{"messages":[{"role":"user","content":"x"}],"logprobs":true,"top_logprobs":21}`, 400, "top_logprobs", codeInvalidValue, "[0, 20]"},
		{"top_logprobs without logprobs", "/v1/chat/completions", `{"messages":[{"role":"user","content":"x"}],"top_logprobs":2}`, 400, "top_logprobs", codeInvalidValue, "logprobs"},
		{"echo with logprobs, streaming", "/v1/completions", `{"prompt":"x","logprobs":1,"echo":true,"stream":true}`, 400, "echo", codeUnsupported, "streaming"},
		{"empty stop", "/v1/completions", `{"prompt":"x","stop":""}`, 400, "stop", codeInvalidValue, "empty"},
		{"empty stop in list", "/v1/completions", `{"prompt":"x","stop":["a",""]}`, 400, "stop[1]", codeInvalidValue, "empty"},
		{"stop type", "/v1/completions", `{"prompt":"x","stop":5}`, 400, "stop", codeInvalidType, "string"},
		{"stop_token_ids", "/v1/completions", `{"prompt":"x","stop_token_ids":[1,999]}`, 400, "stop_token_ids[1]", codeInvalidValue, "vocabulary"},
		{"logit_bias id", "/v1/completions", `{"prompt":"x","logit_bias":{"x5":1}}`, 400, "logit_bias", codeInvalidValue, "not a token id"},
		{"logit_bias value", "/v1/completions", `{"prompt":"x","logit_bias":{"5":-101}}`, 400, "logit_bias", codeInvalidValue, "[-100, 100]"},
		{"suffix", "/v1/completions", `{"prompt":"x","suffix":"y"}`, 400, "suffix", codeUnsupported, "suffix"},
		{"prompt_logprobs", "/v1/completions", `{"prompt":"x","prompt_logprobs":21}`, 400, "prompt_logprobs", codeInvalidValue, "prompt_logprobs"},
		{"response_format", "/v1/chat/completions", `{"messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_object"}}`, 400, "response_format", codeUnsupported, "not available"},
		{"response_format type", "/v1/chat/completions", `{"messages":[{"role":"user","content":"x"}],"response_format":{"type":"yaml"}}`, 400, "response_format", codeInvalidValue, "not one of"},
		{"stream_options without stream", "/v1/completions", `{"prompt":"x","stream_options":{"include_usage":true}}`, 400, "stream_options", codeInvalidValue, "stream"},
		{"truncate_prompt_tokens", "/v1/completions", `{"prompt":"x","truncate_prompt_tokens":0}`, 400, "truncate_prompt_tokens", codeInvalidValue, "truncate"},
		{"empty messages", "/v1/chat/completions", `{"messages":[]}`, 400, "messages", codeMissing, "non-empty"},
		{"no messages", "/v1/chat/completions", `{"model":"alias"}`, 400, "messages", codeMissing, "non-empty"},
		{"bad role", "/v1/chat/completions", `{"messages":[{"role":"robot","content":"x"}]}`, 400, "messages[0].role", codeInvalidValue, "robot"},
		{"function role", "/v1/chat/completions", `{"messages":[{"role":"function","content":"x"}]}`, 400, "messages[0].role", codeUnsupported, "function"},
		{"missing content", "/v1/chat/completions", `{"messages":[{"role":"user"}]}`, 400, "messages[0].content", codeMissing, "required"},
		{"image part, text-only model", "/v1/chat/completions", `{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}]}`, 400, "messages[0].content[0]", codeInvalidValue, "takes no images"},
		{"image part without url", "/v1/chat/completions", `{"messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"image_url","image_url":{}}]}]}`, 400, "messages[0].content[1].image_url.url", codeMissing, "is required"},
		{"image part, bad detail", "/v1/chat/completions", `{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x","detail":"ultra"}}]}]}`, 400, "messages[0].content[0].image_url.detail", codeInvalidValue, "auto, low or high"},
		{"audio part", "/v1/chat/completions", `{"messages":[{"role":"user","content":[{"type":"input_audio"}]}]}`, 400, "messages[0].content[0].type", codeUnsupported, "image_url"},
		{"content number", "/v1/chat/completions", `{"messages":[{"role":"user","content":5}]}`, 400, "messages[0].content", codeInvalidType, "string"},
		{"template error", "/v1/chat/completions", `{"messages":[{"role":"assistant","content":"x"}]}`, 400, "messages", codeInvalidValue, "alternate"},
		{"tool parameters", "/v1/chat/completions", `{"messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{"name":"f","parameters":5}}]}`, 400, "tools[0].function.parameters", codeInvalidValue, "JSON Schema"},
		{"chat_template", "/v1/chat/completions", `{"messages":[{"role":"user","content":"x"}],"chat_template":"{{x}}"}`, 400, "chat_template", codeUnsupported, "chat_template"},
		{"prompt too long", "/v1/completions", `{"prompt":"` + strings.Repeat("a", 300) + `"}`, 400, "prompt", codeContextLength, "maximum context length is 256 tokens. However, your request has 301 input tokens"},
		{"messages too long", "/v1/chat/completions", `{"messages":[{"role":"user","content":"` + strings.Repeat("a", 300) + `"}]}`, 400, "messages", codeContextLength, "maximum context length is 256 tokens"},
		{"max_tokens too large", "/v1/completions", `{"prompt":"abc","max_tokens":253}`, 400, "max_tokens", codeContextLength, "you requested 257 tokens (4 in the input, 253 in the completion)"},
		{"kv cache too small", "/v1/completions", `{"prompt":"abc","max_tokens":250}`, 400, "", codeInvalidValue, "cache holds 200"},
		{"unknown model", "/v1/completions", `{"model":"gpt-4","prompt":"x"}`, 404, "model", codeModelNotFound, "`gpt-4` does not exist"},
		{"unknown model chat", "/v1/chat/completions", `{"model":"gpt-4","messages":[{"role":"user","content":"x"}]}`, 404, "model", codeModelNotFound, "gpt-4"},
		{"body too large", "/v1/completions", `{"prompt":"` + strings.Repeat("a", 5000) + `"}`, 413, "", codeTooLarge, "4096 bytes"},
		{"unknown route", "/v1/nonexistent", `{}`, 404, "", codeNotFound, "no route"},
		{"tokenize unknown model", "/tokenize", `{"model":"nope","prompt":"x"}`, 404, "model", codeModelNotFound, "nope"},
		{"tokenize nothing", "/tokenize", `{}`, 400, "prompt", codeMissing, "required"},
		{"detokenize beyond vocab", "/detokenize", `{"tokens":[1,300]}`, 400, "tokens[1]", codeInvalidValue, "vocabulary"},
		{"detokenize missing", "/detokenize", `{}`, 400, "tokens", codeMissing, "required"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, hdr, body := ts.post(t, tc.path, tc.body)
			if status != tc.status {
				t.Fatalf("status %d, want %d: %s", status, tc.status, body)
			}
			if ct := hdr.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
				t.Errorf("Content-Type %q", ct)
			}
			e := decodeError(t, body)
			param := ""
			if e.Param != nil {
				param = *e.Param
			}
			if param != tc.param || e.Code != tc.code || !strings.Contains(e.Message, tc.msg) || e.Type == "" {
				t.Errorf("error = {message %q, type %q, param %q, code %q}; want param %q, code %q, message containing %q",
					e.Message, e.Type, param, e.Code, tc.param, tc.code, tc.msg)
			}
		})
	}
	// The server still serves.
	if status, _, body := ts.post(t, "/v1/completions", `{"prompt":"ok","max_tokens":2}`); status != 200 {
		t.Fatalf("after the errors: %d %s", status, body)
	}
	if got := len(eng.requests()); got != 1 {
		t.Errorf("%d requests reached the engine, want only the last one", got)
	}
}

func TestErrorsThroughOpenAIClient(t *testing.T) {
	ts := startTestServer(t, &fakeEngine{}, func(c *Config) { c.APIKey = "sekrit" })
	ctx := context.Background()
	// 401 with a wrong key.
	bad := ts.openai(option.WithAPIKey("wrong"))
	_, err := bad.Completions.New(ctx, completionParams("x", 1, 1))
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 401 || apiErr.Code != codeInvalidAPIKey || apiErr.Type != typeAuthentication {
		t.Fatalf("wrong key: %v", err)
	}
	good := ts.openai(option.WithAPIKey("sekrit"))
	if _, err := good.Completions.New(ctx, completionParams("x", 1, 1)); err != nil {
		t.Fatalf("right key: %v", err)
	}
	// Health, metrics and tokenize stay open, as vLLM's.
	if status, _, _ := ts.get(t, "/health"); status != 200 {
		t.Errorf("/health with an API key set: %d", status)
	}
	if status, _, _ := ts.get(t, "/v1/models"); status != 401 {
		t.Errorf("/v1/models without the key: %d", status)
	}
	// 400 with the parameter named.
	p := completionParams("x", 1, 1)
	p.Temperature = openai.Float(3)
	_, err = good.Completions.New(ctx, p)
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 400 || apiErr.Param != "temperature" || apiErr.Type != typeInvalidRequest {
		t.Fatalf("temperature 3: %v", err)
	}
	// 404 unknown model.
	p = completionParams("x", 1, 1)
	p.Model = "davinci"
	_, err = good.Completions.New(ctx, p)
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 404 || apiErr.Code != codeModelNotFound {
		t.Fatalf("unknown model: %v", err)
	}
}

func TestQueueFull(t *testing.T) {
	hold := make(chan struct{})
	eng := &fakeEngine{maxLive: 1, hold: hold}
	ts := startTestServer(t, eng, func(c *Config) { c.RetryAfter = 3_500_000_000 })
	done := make(chan int)
	go func() {
		status, _, _ := ts.post(t, "/v1/completions", `{"prompt":"a","max_tokens":2}`)
		done <- status
	}()
	waitFor(t, "the first request to wait", func() bool { return eng.Stats().NumWaiting == 1 })
	status, hdr, body := ts.post(t, "/v1/completions", `{"prompt":"b","max_tokens":2}`)
	if status != http.StatusTooManyRequests || hdr.Get("Retry-After") != "4" {
		t.Errorf("status %d Retry-After %q: %s", status, hdr.Get("Retry-After"), body)
	}
	if e := decodeError(t, body); e.Code != codeRateLimit {
		t.Errorf("code %q", e.Code)
	}
	// n=3 against a queue of 1: the first choice is admitted, then aborted and drained.
	status, _, _ = ts.post(t, "/v1/completions", `{"prompt":"c","max_tokens":2,"n":3}`)
	if status != http.StatusTooManyRequests {
		t.Errorf("n=3: status %d", status)
	}
	close(hold)
	if s := <-done; s != 200 {
		t.Errorf("held request: %d", s)
	}
}

func TestInternalErrorsDoNotLeak(t *testing.T) {
	t.Run("submit", func(t *testing.T) {
		ts := startTestServer(t, &fakeEngine{submitErr: errors.New("CUDA OOM at 0xdeadbeef")}, nil)
		status, _, body := ts.post(t, "/v1/completions", `{"prompt":"a"}`)
		if status != 500 || strings.Contains(string(body), "deadbeef") || strings.Contains(string(body), "OOM") {
			t.Errorf("%d %s", status, body)
		}
		e := decodeError(t, body)
		if e.Type != typeServer || !strings.Contains(e.Message, "cmpl-") {
			t.Errorf("error %+v", e)
		}
	})
	t.Run("mid-generation", func(t *testing.T) {
		ts := startTestServer(t, &fakeEngine{failAfter: 2}, nil)
		status, _, body := ts.post(t, "/v1/completions", `{"prompt":"a","max_tokens":5,"ignore_eos":true}`)
		if status != 500 || strings.Contains(string(body), "secret") {
			t.Errorf("%d %s", status, body)
		}
		status, _, body = ts.post(t, "/v1/chat/completions", `{"messages":[{"role":"user","content":"a"}],"max_tokens":5,"ignore_eos":true,"stream":true}`)
		events := sseEvents(t, body)
		if status != 200 || strings.Contains(string(body), "secret") || events[len(events)-1] != "[DONE]" {
			t.Fatalf("%d %s", status, body)
		}
		if e := decodeError(t, []byte(events[len(events)-2])); e.Code != codeInternal {
			t.Errorf("stream error %+v", e)
		}
	})
	t.Run("panic", func(t *testing.T) {
		ts := startTestServer(t, &fakeEngine{panicOn: "PANIC"}, nil)
		status, _, body := ts.post(t, "/v1/completions", `{"prompt":"PANIC"}`)
		if status != 500 || strings.Contains(string(body), "kaboom") {
			t.Errorf("%d %s", status, body)
		}
		if status, _, _ := ts.post(t, "/v1/completions", `{"prompt":"a"}`); status != 200 {
			t.Errorf("after the panic: %d", status)
		}
	})
}
