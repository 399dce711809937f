package engine

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tpuserve/tpuserve/engine/grammar"
	"github.com/tpuserve/tpuserve/tokenizer"
)

// gemmaVocab loads the Gemma 3 tokenizer and its grammar vocabulary once; benchmarks
// without it are skipped.
var gemmaVocab = sync.OnceValues(func() (*tokenizer.Tokenizer, *grammar.Vocabulary) {
	dir := os.Getenv("TPUSERVE_TOKENIZER_DIR")
	if dir == "" {
		dir = filepath.Join("..", ".cache", "tokenizer")
	}
	tok, err := tokenizer.LoadDir(dir)
	if err != nil {
		return nil, nil
	}
	v, err := grammar.VocabularyFromTokenizer(tok)
	if err != nil {
		return nil, nil
	}
	return tok, v
})

func needGemmaVocab(b *testing.B) (*tokenizer.Tokenizer, *grammar.Vocabulary) {
	tok, v := gemmaVocab()
	if v == nil {
		b.Skip("the Gemma 3 tokenizer is not available (set TPUSERVE_TOKENIZER_DIR)")
	}
	return tok, v
}

const maskBenchSchema = `{"type":"object","properties":{"name":{"type":"string"},"age":{"type":"integer","minimum":0},
"email":{"type":"string","format":"email"},"tags":{"type":"array","items":{"type":"string"},"maxItems":5},
"address":{"type":"object","properties":{"street":{"type":"string"},"zip":{"type":"string","pattern":"^[0-9]{5}$"}},"required":["street"]}},
"required":["name","age"],"additionalProperties":false}`

const maskBenchText = `{"name": "Ada Lovelace", "age": 36, "email": "ada@example.org", "tags": ["math", "poetry"], "address": {"street": "12 St James's Square", "zip": "10001"}}`

// BenchmarkGrammarMasks: the host's mask time per decoding step for a batch of 1, 32
// and 128 constrained rows over Gemma 3's 262k vocabulary — every row a JSON Schema
// matcher at its own point of a typical document, the grammar's mask cache warm — one
// row after another (sequential) and spread over GOMAXPROCS goroutines (parallel, what
// the engine does). µs/step is the whole batch's masks; µs/mask is one row's.
func BenchmarkGrammarMasks(b *testing.B) {
	tok, v := needGemmaVocab(b)
	g, err := grammar.CompileJSONSchema(v, []byte(maskBenchSchema), grammar.WithSeparators(", ", ": "))
	if err != nil {
		b.Fatal(err)
	}
	ids := tok.EncodeLiteral(maskBenchText, false)
	for _, batch := range []int{1, 32, 128} {
		for _, workers := range []int{1, runtime.GOMAXPROCS(0)} {
			name := fmt.Sprintf("batch=%d/sequential", batch)
			if workers > 1 {
				name = fmt.Sprintf("batch=%d/parallel-%d", batch, workers)
			}
			b.Run(name, func(b *testing.B) {
				rows := make([]*reqState, batch)
				pos := make([]int, batch)
				for i := range rows {
					rows[i] = &reqState{matcher: g.NewMatcher(), mask: make([]uint32, v.MaskWords())}
				}
				// Row i starts i tokens in, so the batch spans the document's states.
				advance := func() {
					for i, r := range rows {
						if pos[i] == len(ids) {
							r.matcher.Reset()
							pos[i] = 0
						}
						if err := r.matcher.Advance(ids[pos[i]]); err != nil {
							b.Fatal(err)
						}
						pos[i]++
					}
				}
				for i, r := range rows {
					for range i % len(ids) {
						if err := r.matcher.Advance(ids[pos[i]]); err != nil {
							b.Fatal(err)
						}
						pos[i]++
					}
				}
				for range len(ids) { // warm the mask cache over the whole document
					fillMasks(rows, workers)
					advance()
				}
				var masked time.Duration
				b.ResetTimer()
				for range b.N {
					t0 := time.Now()
					fillMasks(rows, workers)
					masked += time.Since(t0)
					advance()
				}
				b.ReportMetric(float64(masked.Nanoseconds())/float64(b.N)/1000, "µs/step")
				b.ReportMetric(float64(masked.Nanoseconds())/float64(b.N*batch)/1000, "µs/mask")
			})
		}
	}
}

// BenchmarkGrammarMixedBatch: 16 requests decoding 24 tokens together on the tiny model
// (the real 262k vocabulary), none, 4 or all 16 of them constrained by a grammar over the
// Gemma 3 vocabulary, against the unconstrained baseline of the same run: the overhead of
// constrained rows (host masks, their transfer, the device's bitwise expansion, and the
// scored sampler program a constrained row runs). "warm" is [a-z ]* (one automaton state,
// its mask cached after the first step; min_tokens keeps EOS out until the end), "cold"
// is [a-z ]{400} (a new state, so a new cache entry, nearly every step: the worst case of
// the mask cache). The same 4 rows asking for logprobs instead (and min_tokens) run the
// scored program without a grammar, which separates the sampler program from the masks.
// ms/step is wall time; cpu-ms/step is the process's CPU time (user+sys) per step, the
// steadier figure on a shared machine.
func BenchmarkGrammarMixedBatch(b *testing.B) {
	_, v := needGemmaVocab(b)
	warm, err := grammar.CompileRegex(v, `[a-z ]*`)
	if err != nil {
		b.Fatal(err)
	}
	cold, err := grammar.CompileRegex(v, `[a-z ]{400}`)
	if err != nil {
		b.Fatal(err)
	}
	cfg, m := tinyPreset(b)
	defer m.Close()
	e, err := New(Config{Model: m, NewDecoder: func(skip bool) StreamDecoder { return &textDecoder{skip: skip, vocab: int32(cfg.VocabSize)} },
		Scheduler:  SchedulerConfig{MaxNumSeqs: 16, MaxNumBatchedTokens: 256, MaxModelLen: 128},
		Precompile: PrecompileAll, KVCacheBytes: 32 << 20, Logger: discardLogger()})
	if err != nil {
		b.Fatal(err)
	}
	defer e.Close()
	const batch, tokens = 16, 24
	for _, tc := range []struct {
		name string
		rows int
		g    *grammar.Grammar // nil: the rows ask for logprobs
	}{{"baseline", 0, nil}, {"warm=4", 4, warm}, {"warm=16", 16, warm}, {"cold=4", 4, cold}, {"logprobs=4", 4, nil}} {
		b.Run(tc.name, func(b *testing.B) {
			var total, cpu time.Duration
			for round := range b.N {
				var wg sync.WaitGroup
				t0, c0 := time.Now(), processCPU()
				for i := range batch {
					prompt := make([]int32, 8)
					for j := range prompt {
						prompt[j] = int32(2 + ((round+1)*977+i*131+j*7)%100000)
					}
					p := greedyParams(tokens)
					p.Logprobs = nil
					if i < tc.rows {
						p.MinTokens = tokens
						if tc.g != nil {
							p.Grammar = tc.g
						} else {
							lp := 0
							p.Logprobs = &lp
						}
					}
					ch, err := e.Submit(context.Background(), Request{ID: fmt.Sprint(tc.name, "-", round, "-", i), PromptIDs: prompt, Params: p})
					if err != nil {
						b.Fatal(err)
					}
					wg.Add(1)
					go func() {
						defer wg.Done()
						for ev := range ch {
							if ev.Finished && ev.FinishReason != FinishLength {
								b.Errorf("request %d finished with %s, want length (err %v)", i, ev.FinishReason, ev.Err)
							}
						}
					}()
				}
				wg.Wait()
				total += time.Since(t0)
				cpu += processCPU() - c0
			}
			b.ReportMetric(float64(total.Microseconds())/1000/float64(b.N*tokens), "ms/step")
			b.ReportMetric(float64(cpu.Microseconds())/1000/float64(b.N*tokens), "cpu-ms/step")
		})
	}
}

// processCPU is the process's user+sys CPU time so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
