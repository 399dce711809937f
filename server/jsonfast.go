package server

import (
	"strconv"
	"unicode/utf8"

	"github.com/tpuserve/tpuserve/engine"
)

// The streaming hot path: most chunks carry only a text delta, so they are appended by hand
// after a per-request prefix instead of going through encoding/json's reflection. Chunks with
// logprobs or usage take the encoding/json path. fastjson_test.go checks both agree.

const hexDigits = "0123456789abcdef"

// appendJSONString appends s as a JSON string the way encoding/json does without HTML
// escaping: invalid UTF-8 becomes U+FFFD, U+2028 and U+2029 are escaped.
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// chunkPrefix is `{"id":…,"object":…,"created":…,"model":…,"choices":[` for one request,
// with "system_fingerprint" before "choices" when fingerprint is set (chat chunks).
func chunkPrefix(plan *genPlan, object, fingerprint string) []byte {
	b := append([]byte(`{"id":`), appendJSONString(nil, plan.id)...)
	b = append(b, `,"object":"`...)
	b = append(b, object...)
	b = append(b, `","created":`...)
	b = strconv.AppendInt(b, plan.created, 10)
	b = append(b, `,"model":`...)
	b = appendJSONString(b, plan.model)
	if fingerprint != "" {
		b = append(b, `,"system_fingerprint":`...)
		b = appendJSONString(b, fingerprint)
	}
	return append(b, `,"choices":[`...)
}

// appendChoiceTail appends `"logprobs":null,"finish_reason":…,"stop_reason":…}]}`.
func appendChoiceTail(b []byte, finished bool, reason engine.FinishReason, stop stopReason) []byte {
	b = append(b, `"logprobs":null,"finish_reason":`...)
	if finished {
		b = appendJSONString(b, string(reason))
	} else {
		b = append(b, "null"...)
	}
	b = append(b, `,"stop_reason":`...)
	b = stop.appendJSON(b)
	return append(b, "}]}"...)
}

// appendCompletionChunk appends a text-only completions chunk.
func appendCompletionChunk(b, prefix []byte, index int, text string, finished bool, reason engine.FinishReason, stop stopReason) []byte {
	b = append(b, prefix...)
	b = append(b, `{"index":`...)
	b = strconv.AppendInt(b, int64(index), 10)
	b = append(b, `,"text":`...)
	b = appendJSONString(b, text)
	b = append(b, ',')
	return appendChoiceTail(b, finished, reason, stop)
}

// appendChatChunk appends a content-only chat chunk (delta {} when text is empty).
func appendChatChunk(b, prefix []byte, index int, text string, finished bool, reason engine.FinishReason, stop stopReason) []byte {
	b = append(b, prefix...)
	b = append(b, `{"index":`...)
	b = strconv.AppendInt(b, int64(index), 10)
	b = append(b, `,"delta":{`...)
	if text != "" {
		b = append(b, `"content":`...)
		b = appendJSONString(b, text)
	}
	b = append(b, "},"...)
	return appendChoiceTail(b, finished, reason, stop)
}
