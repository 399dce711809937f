package bench

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"testing"
	"time"
)

// streamOf is a vLLM-shaped completions stream of n token events plus usage and [DONE].
func streamOf(n int) []byte {
	var b bytes.Buffer
	for i := 0; i < n; i++ {
		fmt.Fprintf(&b, "data: {\"id\":\"cmpl-0123456789abcdef\",\"object\":\"text_completion\",\"created\":1764201600,\"model\":\"google/gemma-3-27b-it\",\"choices\":[{\"index\":0,\"text\":\" word%d\",\"logprobs\":null,\"finish_reason\":null,\"stop_reason\":null}],\"usage\":null}\n\n", i)
	}
	fmt.Fprintf(&b, "data: {\"id\":\"cmpl-0123456789abcdef\",\"object\":\"text_completion\",\"created\":1764201600,\"model\":\"google/gemma-3-27b-it\",\"choices\":[],\"usage\":{\"prompt_tokens\":1024,\"total_tokens\":%d,\"completion_tokens\":%d}}\n\ndata: [DONE]\n\n", 1024+n, n)
	return b.Bytes()
}

// BenchmarkStreamEvent measures the client's work per token event: SSE framing, JSON
// decoding of the chunk and the timestamp (what sits between a chunk's arrival and its
// ITL sample).
func BenchmarkStreamEvent(b *testing.B) {
	const n = 256
	stream := streamOf(n)
	b.SetBytes(int64(len(stream)))
	b.ResetTimer()
	for b.Loop() {
		var last time.Time
		err := readSSE(bytes.NewReader(stream), func(data []byte) (bool, error) {
			if string(data) == "[DONE]" {
				return true, nil
			}
			var ch streamChunk
			if err := json.Unmarshal(data, &ch); err != nil {
				return false, err
			}
			last = time.Now()
			return false, nil
		})
		if err != nil || last.IsZero() {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/event")
}

// BenchmarkStreamEventBaseline is the floor: splitting the same stream into lines, no
// parsing at all.
func BenchmarkStreamEventBaseline(b *testing.B) {
	const n = 256
	stream := streamOf(n)
	b.SetBytes(int64(len(stream)))
	b.ResetTimer()
	for b.Loop() {
		sc := bufio.NewScanner(bytes.NewReader(stream))
		lines := 0
		for sc.Scan() {
			lines++
		}
		if lines < 2*n {
			b.Fatal(lines)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/event")
}

// BenchmarkComputeMetrics aggregates 1000 requests of 256 output tokens each.
func BenchmarkComputeMetrics(b *testing.B) {
	outs := make([]RequestOutput, 1000)
	t0 := time.Now()
	for i := range outs {
		itl := make([]time.Duration, 255)
		for k := range itl {
			itl[k] = time.Duration(20+k%7) * time.Millisecond
		}
		outs[i] = RequestOutput{Success: true, PromptLen: 1024, OutputTokens: 256, UsageReported: true,
			Start: t0.Add(time.Duration(i) * 10 * time.Millisecond), TTFT: 150 * time.Millisecond, ITL: itl,
			Latency: 150*time.Millisecond + 255*23*time.Millisecond}
	}
	for b.Loop() {
		ComputeMetrics(outs, 60*time.Second, []float64{50, 90, 99}, map[string]float64{"ttft": 500, "tpot": 50})
	}
}
