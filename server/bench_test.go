package server

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tpuserve/tpuserve/engine"
)

// BenchmarkStreamChunkLatency measures the latency the server adds to each streamed chunk:
// the fake engine emits a token every 10 ms stamped with its emission time, and the client
// records when the chunk carrying it arrives. "baseline" is a bare net/http handler that
// forwards the same events as minimal SSE lines (no gin, no JSON); "server" is the full
// /v1/completions path. Figures: p50/p99 in µs per chunk; p99-steady leaves out the first
// chunks of each stream.
//
//	go test -run '^$' -bench StreamChunkLatency -benchtime 1x ./server/
func BenchmarkStreamChunkLatency(b *testing.B) {
	const tokens = 50
	for _, streams := range []int{1, 64, 512} {
		for _, kind := range []string{"baseline", "server"} {
			b.Run(fmt.Sprintf("streams=%d/%s", streams, kind), func(b *testing.B) {
				eng := &fakeEngine{interval: 10 * time.Millisecond, stamp: true}
				var url string
				var client *http.Client
				if kind == "server" {
					ts := startTestServer(b, eng, nil)
					url, client = ts.url+"/v1/completions", ts.client
				} else {
					url, client = startBaseline(b, eng)
				}
				body := fmt.Sprintf(`{"prompt":"x","max_tokens":%d,"stream":true}`, tokens)
				var all, steady []time.Duration
				b.ResetTimer()
				for range b.N {
					for _, lat := range runStreams(b, client, url, body, streams) {
						all = append(all, lat...)
						steady = append(steady, lat[min(warmup, len(lat)):]...)
					}
				}
				b.StopTimer()
				if len(all) != b.N*streams*tokens {
					b.Fatalf("%d chunks, want %d", len(all), b.N*streams*tokens)
				}
				slices.Sort(all)
				slices.Sort(steady)
				p := func(d []time.Duration, q float64) float64 { return float64(d[int(q*float64(len(d)-1))].Microseconds()) }
				b.ReportMetric(p(all, 0.50), "p50-µs")
				b.ReportMetric(p(all, 0.99), "p99-µs")
				b.ReportMetric(p(steady, 0.99), "p99-steady-µs")
			})
		}
	}
}

// warmup is how many first chunks of each stream p99-steady leaves out (they share the CPU
// with the connection set-up of the other streams).
const warmup = 5

// runStreams runs n concurrent streams and returns the latency of every chunk, per stream.
func runStreams(b *testing.B, client *http.Client, url, body string, n int) [][]time.Duration {
	var mu sync.Mutex
	var out [][]time.Duration
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			lat, err := readStream(client, url, body)
			if err != nil {
				b.Error(err)
			}
			mu.Lock()
			out = append(out, lat)
			mu.Unlock()
		}()
	}
	wg.Wait()
	return out
}

var textField = []byte(`"text":"`)

func readStream(client *http.Client, url, body string) ([]time.Duration, error) {
	resp, err := client.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return nil, fmt.Errorf("status %d", resp.StatusCode)
	}
	var lat []time.Duration
	br := bufio.NewReaderSize(resp.Body, 64<<10)
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return lat, nil
		}
		now := time.Now()
		data, ok := bytes.CutPrefix(line, []byte("data: "))
		if !ok {
			continue
		}
		// The stamp is the chunk's text: "<unix ns>;" (JSON for the server, raw for the baseline).
		if i := bytes.Index(data, textField); i >= 0 {
			data = data[i+len(textField):]
		}
		end := bytes.IndexByte(data, ';')
		if end < 0 {
			continue
		}
		ns, err := strconv.ParseInt(string(data[:end]), 10, 64)
		if err != nil {
			return lat, fmt.Errorf("stamp %q: %w", data[:end], err)
		}
		lat = append(lat, now.Sub(time.Unix(0, ns)))
	}
}

// startBaseline serves the fake engine's events as bare SSE lines with net/http.
func startBaseline(b *testing.B, eng *fakeEngine) (string, *http.Client) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p := engine.DefaultSamplingParams()
		p.MaxTokens = 50
		ch, err := eng.Submit(r.Context(), engine.Request{ID: "b", PromptIDs: []int32{2}, Params: p, ArrivalTime: time.Now()})
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		fl := w.(http.Flusher)
		for ev := range ch {
			fmt.Fprintf(w, "data: %s\n\n", ev.Text)
			fl.Flush()
		}
	})}
	go srv.Serve(ln)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1024}}
	b.Cleanup(func() {
		srv.Shutdown(context.Background())
		client.CloseIdleConnections()
	})
	return "http://" + ln.Addr().String(), client
}
