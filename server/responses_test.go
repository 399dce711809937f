package server

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/responses"
)

func TestResponsesAPI(t *testing.T) {
	ts := startTestServer(t, &fakeEngine{}, nil)
	client := ts.openai()
	ctx := context.Background()
	params := responses.ResponseNewParams{
		Model:           testModel,
		Instructions:    openai.String("Be brief."),
		Input:           responses.ResponseNewParamsInputUnion{OfString: openai.String("Hello there")},
		MaxOutputTokens: openai.Int(12),
		Temperature:     openai.Float(0),
	}
	resp, err := client.Responses.New(ctx, params, option.WithJSONSet("ignore_eos", true))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(resp.ID, "resp_") || resp.Object != "response" || resp.Model != testModel || len(resp.Output) != 1 {
		t.Fatalf("response %+v", resp)
	}
	if store := resp.JSON.ExtraFields["store"].Raw(); store != "false" {
		t.Errorf("store %s, want false: nothing is stored", store)
	}
	// Temperature 0: the chat completion of the same messages has the same text.
	chat, err := client.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: testModel,
		Messages:  []openai.ChatCompletionMessageParamUnion{openai.SystemMessage("Be brief."), openai.UserMessage("Hello there")},
		MaxTokens: openai.Int(12), Temperature: openai.Float(0)})
	if err != nil {
		t.Fatal(err)
	}
	if resp.OutputText() == "" || resp.OutputText() != chat.Choices[0].Message.Content {
		t.Errorf("responses text %q, chat %q", resp.OutputText(), chat.Choices[0].Message.Content)
	}
	if resp.Usage.InputTokens != chat.Usage.PromptTokens || resp.Usage.OutputTokens != chat.Usage.CompletionTokens ||
		resp.Usage.TotalTokens != resp.Usage.InputTokens+resp.Usage.OutputTokens {
		t.Errorf("usage %+v, chat %+v", resp.Usage, chat.Usage)
	}

	t.Run("streaming", func(t *testing.T) {
		stream := client.Responses.NewStreaming(ctx, params)
		var types []string
		text, doneText := "", ""
		var completed responses.Response
		for i := 0; stream.Next(); i++ {
			ev := stream.Current()
			if ev.SequenceNumber != int64(i) {
				t.Errorf("event %d has sequence_number %d", i, ev.SequenceNumber)
			}
			if len(types) == 0 || types[len(types)-1] != ev.Type {
				types = append(types, ev.Type)
			}
			switch ev.Type {
			case "response.output_text.delta":
				text += ev.Delta
			case "response.output_text.done":
				doneText = ev.Text
			case "response.completed", "response.incomplete":
				completed = ev.Response
			}
		}
		if err := stream.Err(); err != nil {
			t.Fatal(err)
		}
		end := "response.completed"
		if completed.Status == "incomplete" {
			end = "response.incomplete"
		}
		want := []string{"response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
			"response.output_text.delta", "response.output_text.done", "response.content_part.done", "response.output_item.done", end}
		if strings.Join(types, " ") != strings.Join(want, " ") {
			t.Errorf("events\n%v\nwant\n%v", types, want)
		}
		if text != resp.OutputText() || doneText != text || completed.OutputText() != text || completed.Usage.OutputTokens != resp.Usage.OutputTokens {
			t.Errorf("streamed %q, done %q, completed %q; non-streamed %q", text, doneText, completed.OutputText(), resp.OutputText())
		}
	})

	t.Run("length is incomplete", func(t *testing.T) {
		p := params
		p.MaxOutputTokens = openai.Int(3)
		r, err := client.Responses.New(ctx, p, option.WithJSONSet("ignore_eos", true))
		if err != nil {
			t.Fatal(err)
		}
		if r.Status != "incomplete" || r.IncompleteDetails.Reason != "max_output_tokens" || r.Usage.OutputTokens != 3 {
			t.Errorf("status %q details %+v usage %+v", r.Status, r.IncompleteDetails, r.Usage)
		}
	})

	t.Run("message items", func(t *testing.T) {
		body := `{"input":[{"role":"developer","content":"Be brief."},{"type":"message","role":"user","content":[{"type":"input_text","text":"Hello "},{"type":"input_text","text":"there"}]}],"max_output_tokens":12,"temperature":0,"store":true}`
		status, _, out := ts.post(t, "/v1/responses", body)
		if status != 200 {
			t.Fatalf("%d %s", status, out)
		}
		var r responseObject
		if err := json.Unmarshal(out, &r); err != nil {
			t.Fatal(err)
		}
		if r.Store || len(r.Output) != 1 || len(r.Output[0].Content) != 1 {
			t.Errorf("%s", out)
		}
	})

	t.Run("refused", func(t *testing.T) {
		for _, tc := range []struct{ body, param string }{
			{`{"input":"a","previous_response_id":"resp_123"}`, "previous_response_id"},
			{`{"input":"a","background":true}`, "background"},
			{`{"input":"a","tools":[{"type":"function","name":"f"}]}`, "tools"},
			{`{"input":"a","tool_choice":"required"}`, "tool_choice"},
			{`{"input":[{"type":"function_call_output","call_id":"c","output":"x"}]}`, "input[0].type"},
			{`{"input":[{"role":"user","content":[{"type":"input_image","image_url":"x"}]}]}`, "input[0].content[0].type"},
			{`{"input":"a","text":{"format":{"type":"json_schema"}}}`, "text.format"},
			{`{"input":"a","max_output_tokens":0}`, "max_output_tokens"},
			{`{}`, "input"},
			{`{"input":"a","temperature":3}`, "temperature"},
		} {
			status, _, out := ts.post(t, "/v1/responses", tc.body)
			if e := decodeError(t, out); status != 400 || e.Param == nil || *e.Param != tc.param {
				t.Errorf("%s: %d %s", tc.body, status, out)
			}
		}
		_, err := client.Responses.Get(ctx, "resp_123", responses.ResponseGetParams{})
		var apiErr *openai.Error
		if !errors.As(err, &apiErr) || apiErr.StatusCode != 400 {
			t.Errorf("GET a stored response: %v", err)
		}
	})

	t.Run("logprobs", func(t *testing.T) {
		status, _, out := ts.post(t, "/v1/responses", `{"input":"a","max_output_tokens":3,"include":["message.output_text.logprobs"],"top_logprobs":2}`)
		if status != 200 {
			t.Fatalf("%d %s", status, out)
		}
		var r responseObject
		if err := json.Unmarshal(out, &r); err != nil {
			t.Fatal(err)
		}
		if lp := r.Output[0].Content[0].Logprobs; len(lp) == 0 || len(lp[0].TopLogprobs) != 2 {
			t.Errorf("logprobs: %s", out)
		}
	})
}
