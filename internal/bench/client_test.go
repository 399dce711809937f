package bench

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestReadSSE(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want []string
	}{
		{"plain", "data: a\n\ndata: b\n\n", []string{"a", "b"}},
		{"crlf and comments", ": keep-alive\r\n\r\ndata: a\r\n\r\n", []string{"a"}},
		{"multi-line data", "data: a\ndata: b\n\n", []string{"a\nb"}},
		{"other fields", "event: x\nid: 1\ndata: a\n\n", []string{"a"}},
		{"no final blank line", "data: a\n\ndata: b", []string{"a", "b"}},
		{"no space after colon", "data:a\n\n", []string{"a"}},
		{"stops at DONE", "data: a\n\ndata: [DONE]\n\ndata: never\n\n", []string{"a", "[DONE]"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			err := readSSE(strings.NewReader(tc.in), func(d []byte) (bool, error) {
				got = append(got, string(d))
				return string(d) == "[DONE]", nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("events %q, want %q", got, tc.want)
			}
		})
	}
}

func TestClientRecordsFailures(t *testing.T) {
	tests := []struct {
		name    string
		status  int
		body    string
		wantErr string
		ok      bool
		wantOut int
		wantIn  int
	}{
		{"http error", 500, `{"error":"engine dead"}`, "HTTP 500: {\"error\":\"engine dead\"}", false, 0, 0},
		{"error event", 200, sseBody(`{"error":{"message":"KV cache full"}}`), "KV cache full", false, 0, 0},
		{"no choice", 200, sseBody(`{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":0}}`, "[DONE]"), "never received", false, 0, 0},
		{"bad json", 200, "data: {oops\n\n", "bad stream event", false, 0, 0},
		{"usage and text", 200, sseBody(`{"choices":[{"text":"a"}],"usage":null}`, `{"choices":[{"text":"b"}]}`, `{"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":7}}`, "[DONE]"), "", true, 7, 9},
		{"chat-style delta", 200, sseBody(`{"choices":[{"delta":{"content":"x"}}]}`, "[DONE]"), "", true, 0, 4},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Header.Get("Authorization") != "Bearer k" {
					w.WriteHeader(401)
					return
				}
				w.WriteHeader(tc.status)
				fmt.Fprint(w, tc.body)
			}))
			defer srv.Close()
			c := &client{http: srv.Client(), url: srv.URL + "/v1/completions", model: "m", apiKey: "k"}
			o := c.do(context.Background(), SampleRequest{Prompt: []int{1, 2, 3, 4}, PromptLen: 4, ExpectedOutputLen: 8})
			if o.Success != tc.ok || !strings.Contains(o.Error, tc.wantErr) {
				t.Fatalf("success %v error %q, want %v %q", o.Success, o.Error, tc.ok, tc.wantErr)
			}
			if tc.ok {
				if o.OutputTokens != tc.wantOut || o.PromptLen != tc.wantIn {
					t.Errorf("tokens out %d in %d, want %d %d", o.OutputTokens, o.PromptLen, tc.wantOut, tc.wantIn)
				}
				if o.Latency < o.TTFT {
					t.Errorf("latency %v before TTFT %v", o.Latency, o.TTFT)
				}
			}
		})
	}
}
