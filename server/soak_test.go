package server

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/tpuserve/tpuserve/engine"
	"github.com/tpuserve/tpuserve/internal/backendtest"
	"github.com/tpuserve/tpuserve/model"
)

// byteDecoder detokenizes the fake tokenizer's ids for the real engine.
type byteDecoder struct{ skip bool }

func (d byteDecoder) Add(id int32) (string, error) {
	return fakeTokenizer{}.Decode([]int32{id}, d.skip)
}
func (byteDecoder) Flush() string { return "" }

// TestSoakRealEngine sends 1,000 requests — completions and chat, streaming and not, n 1–3,
// seeds, stops, logprobs — to the server over the real engine (the HF golden tiny model,
// sampling restricted to the fake tokenizer's byte vocabulary), cancelling a random third
// mid-stream or mid-wait. Every request ends with its answer or its cancellation and none
// fails otherwise; afterwards no KV block is held, running and waiting are 0 and the
// goroutines are back to the baseline. Bounded in count (1,000) and time (the deadline).
func TestSoakRealEngine(t *testing.T) {
	if testing.Short() {
		t.Skip("soak test")
	}
	dir := filepath.Join("..", "model", "testdata", "gemma3-tiny")
	m, err := model.Load(backendtest.Backend(t), model.LoadOptions{Model: dir, DType: dtypes.Float32, Progress: func(model.LoadProgress) {}})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	m.Config.TextVocabSize = fakeVocabSize // sample only ids the fake tokenizer decodes
	eng, err := engine.New(engine.Config{
		Model: m, NewDecoder: func(skip bool) engine.StreamDecoder { return byteDecoder{skip} },
		Scheduler: engine.SchedulerConfig{MaxNumSeqs: 32, MaxNumBatchedTokens: 256, MaxModelLen: 256},
		PageSize:  16, KVCacheBytes: 8 << 20, Precompile: engine.PrecompileAll, Logger: testLogger(),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	baseline := runtime.NumGoroutine()
	ts := startTestServerWith(t, eng, nil, func(c *Config) { c.MaxModelLen = 256 })

	const total = 1000
	deadline := time.Now().Add(8 * time.Minute)
	rng := rand.New(rand.NewPCG(11, 12))
	type job struct {
		body   string
		path   string
		stream bool
		cancel bool
		after  time.Duration
	}
	jobs := make(chan job)
	go func() {
		defer close(jobs)
		for i := 0; i < total; i++ {
			stream := rng.IntN(2) == 0
			n := 1 + rng.IntN(3)
			prompt := strings.Repeat(string(rune('a'+rng.IntN(26))), 3+rng.IntN(40))
			extra := fmt.Sprintf(`"max_tokens":%d,"n":%d,"stream":%v,"seed":%d`, 1+rng.IntN(10), n, stream, rng.IntN(1000))
			if rng.IntN(3) == 0 {
				extra += `,"stop":["ab","\n"]`
			}
			if rng.IntN(4) == 0 {
				extra += `,"temperature":0`
			}
			j := job{stream: stream, cancel: rng.IntN(3) == 0, after: time.Duration(rng.IntN(30)) * time.Millisecond}
			if rng.IntN(2) == 0 {
				j.path = "/v1/completions"
				if rng.IntN(3) == 0 {
					extra += `,"logprobs":2`
				}
				j.body = fmt.Sprintf(`{"model":%q,"prompt":%q,%s}`, testModel, prompt, extra)
			} else {
				j.path = "/v1/chat/completions"
				if rng.IntN(3) == 0 {
					extra += `,"logprobs":true,"top_logprobs":2`
				}
				j.body = fmt.Sprintf(`{"model":%q,"messages":[{"role":"user","content":%q}],%s}`, testModel, prompt, extra)
			}
			jobs <- j
		}
	}()
	var done, cancelled, failures atomic.Int64
	var mu sync.Mutex
	var firstFailure string
	fail := func(format string, args ...any) {
		failures.Add(1)
		mu.Lock()
		if firstFailure == "" {
			firstFailure = fmt.Sprintf(format, args...)
		}
		mu.Unlock()
	}
	var wg sync.WaitGroup
	for w := 0; w < 48; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				if time.Now().After(deadline) {
					continue
				}
				ctx, cancel := context.WithCancel(context.Background())
				req, _ := http.NewRequestWithContext(ctx, http.MethodPost, ts.url+j.path, strings.NewReader(j.body))
				req.Header.Set("Content-Type", "application/json")
				if j.cancel && !j.stream {
					time.AfterFunc(j.after, cancel)
				}
				resp, err := ts.client.Do(req)
				if err != nil {
					cancel()
					if j.cancel && ctx.Err() != nil {
						cancelled.Add(1)
						continue
					}
					fail("%s: %v", j.path, err)
					continue
				}
				if resp.StatusCode != http.StatusOK {
					fail("%s %s: status %d", j.path, j.body, resp.StatusCode)
				}
				finished := false
				sc := bufio.NewScanner(resp.Body)
				sc.Buffer(make([]byte, 1<<20), 1<<20)
				lines := 0
				for sc.Scan() {
					line := sc.Text()
					lines++
					if j.cancel && j.stream && lines == 1 {
						cancel() // mid-stream: after the first chunk
					}
					if strings.Contains(line, `"error"`) {
						fail("%s: error in the answer: %s", j.path, line)
					}
					if (!j.stream && strings.Contains(line, `"finish_reason"`)) || line == "data: [DONE]" {
						finished = true
					}
				}
				resp.Body.Close()
				switch {
				case finished:
					done.Add(1)
				case j.cancel && ctx.Err() != nil:
					cancelled.Add(1)
				default:
					fail("%s %s: no final answer (%v)", j.path, j.body, sc.Err())
				}
				cancel()
			}
		}()
	}
	wg.Wait()
	if failures.Load() > 0 {
		t.Errorf("%d requests failed; first: %s", failures.Load(), firstFailure)
	}
	if got := done.Load() + cancelled.Load(); got != total {
		t.Errorf("%d of %d requests ended (the deadline cut the rest)", got, total)
	}
	if cancelled.Load() < total/5 {
		t.Errorf("only %d requests were cancelled: the soak did not exercise aborts", cancelled.Load())
	}
	waitFor(t, "the engine to drain", func() bool {
		st := eng.Stats()
		return st.NumRunning == 0 && st.NumWaiting == 0 && eng.CheckAllFree() == nil
	})
	_, _, body := ts.get(t, "/metrics")
	for _, name := range []string{"vllm:num_requests_running", "vllm:num_requests_waiting"} {
		if v, ok := metricValue(t, string(body), name); !ok || v != 0 {
			t.Errorf("%s = %v after the soak", name, v)
		}
	}
	ts.client.CloseIdleConnections()
	waitFor(t, "goroutines back to the baseline", func() bool { return runtime.NumGoroutine() <= baseline+5 })
	t.Logf("%d answered, %d cancelled", done.Load(), cancelled.Load())
}
