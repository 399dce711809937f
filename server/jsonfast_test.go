package server

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/tpuserve/tpuserve/engine"
)

func stdJSON(t testing.TB, v any) []byte {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		t.Fatal(err)
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
}

func FuzzAppendJSONString(f *testing.F) {
	for _, s := range []string{"", "plain", "q\"b\\s", "\n\r\t\b\f\x00\x1f\x7f", "<bos>&", "é😀", "\xff\xfe", "a\u2028b\u2029", "\xe2\x80"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if got, want := appendJSONString(nil, s), stdJSON(t, s); !bytes.Equal(got, want) {
			t.Fatalf("appendJSONString(%q) = %s, encoding/json %s", s, got, want)
		}
	})
}

func TestFastChunksMatchEncodingJSON(t *testing.T) {
	plan := &genPlan{id: "cmpl-\"x\"", created: 1700000000, model: "m<1>"}
	cases := []struct {
		text     string
		finished bool
		reason   engine.FinishReason
		stop     stopReason
	}{
		{"hello", false, "", stopReason{}},
		{"", true, engine.FinishLength, stopReason{}},
		{"a\"b\n", true, engine.FinishStop, stopReasonOf("STOP")},
		{"x", true, engine.FinishStop, stopReasonOf(int32(1))},
	}
	for _, c := range cases {
		var fr *string
		if c.finished {
			fr = finishPtr(c.reason)
		}
		got := appendCompletionChunk(nil, chunkPrefix(plan, "text_completion", ""), 3, c.text, c.finished, c.reason, c.stop)
		want := stdJSON(t, completionResponse{ID: plan.id, Object: "text_completion", Created: plan.created, Model: plan.model,
			Choices: []completionChoice{{Index: 3, Text: c.text, FinishReason: fr, StopReason: c.stop}}})
		if !bytes.Equal(got, want) {
			t.Errorf("completion chunk\n%s\nwant\n%s", got, want)
		}
		delta := &chatDelta{}
		if c.text != "" {
			delta.Content = &c.text
		}
		got = appendChatChunk(nil, chunkPrefix(plan, "chat.completion.chunk", "fp_\"x"), 3, c.text, c.finished, c.reason, c.stop)
		want = stdJSON(t, chatResponse{ID: plan.id, Object: "chat.completion.chunk", Created: plan.created, Model: plan.model,
			SystemFingerprint: "fp_\"x", Choices: []chatChoice{{Index: 3, Delta: delta, FinishReason: fr, StopReason: c.stop}}})
		if !bytes.Equal(got, want) {
			t.Errorf("chat chunk\n%s\nwant\n%s", got, want)
		}
	}
}
