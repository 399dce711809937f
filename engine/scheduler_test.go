package engine

import (
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"slices"
	"strings"
	"testing"

	"github.com/tpuserve/tpuserve/kvcache"
)

// newTestScheduler builds a scheduler and, at the end of the test, finishes every request
// still live and fails the test unless all blocks are then back in the pools: a block that
// no live request holds is a leak.
func newTestScheduler(t testing.TB, cfg SchedulerConfig, kvCfg kvcache.Config) *Scheduler {
	t.Helper()
	kv, err := kvcache.NewManager(kvCfg)
	if err != nil {
		t.Fatalf("kvcache.NewManager: %v", err)
	}
	s, err := NewScheduler(cfg, kv)
	if err != nil {
		t.Fatalf("NewScheduler: %v", err)
	}
	t.Cleanup(func() { checkAllFree(t, s) })
	return s
}

// checkAllFree finishes every live request and checks that every block is back.
func checkAllFree(t testing.TB, s *Scheduler) {
	t.Helper()
	for id := range s.reqs {
		if err := s.Finish(id); err != nil {
			t.Errorf("Finish(%q): %v", id, err)
		}
	}
	if s.NumRunning() != 0 || s.NumWaiting() != 0 {
		t.Errorf("after finishing all: %d running, %d waiting", s.NumRunning(), s.NumWaiting())
	}
	if err := s.KV().CheckAllFree(); err != nil {
		t.Errorf("after the test: %v", err)
	}
}

func req(id string, prompt []int32, maxTokens int) *Request {
	p := DefaultSamplingParams()
	p.MaxTokens = maxTokens
	return &Request{ID: id, PromptIDs: prompt, Params: p}
}

func prompt(salt, n int) []int32 {
	out := make([]int32, n)
	for i := range out {
		out[i] = int32((salt*7919+i*31)%50000 + 10)
	}
	return out
}

// fakeModel plays the device: it writes each scheduled token into fake page pools through
// the plan's block tables and, when asked to sample, reads back every position the layers
// would attend to and derives the next token from what it read. A wrong block table, a
// block shared while written, a bad prefix hit or a sliding block freed too early changes
// the tokens (and fails the direct check against the true tokens).
type fakeModel struct {
	t                testing.TB
	page, window     int
	global, sliding  map[int32][]int32 // block -> slot -> token+1
	truth            map[string][]int32
	steps, partial   int
	maxSlidingPerSeq int // largest len(SlidingBlocks) seen
}

func newFakeModel(t testing.TB, s *Scheduler) *fakeModel {
	cfg := s.KV().Config()
	return &fakeModel{t: t, page: cfg.PageSize, window: cfg.SlidingWindow,
		global: map[int32][]int32{}, sliding: map[int32][]int32{}, truth: map[string][]int32{}}
}

func (f *fakeModel) slot(mem map[int32][]int32, id int32) []int32 {
	if id == kvcache.NullBlock {
		f.t.Fatalf("access to the null block")
	}
	b := mem[id]
	if b == nil {
		b = make([]int32, f.page)
		mem[id] = b
	}
	return b
}

// step runs a plan and returns the sampled tokens.
func (f *fakeModel) step(plan *StepPlan, reqs map[string]*Request) []int32 {
	f.steps++
	sampled := make([]int32, len(plan.Seqs))
	for i := range plan.Seqs {
		ps := &plan.Seqs[i]
		truth := f.truth[ps.RequestID]
		if truth == nil {
			truth = append([]int32(nil), reqs[ps.RequestID].PromptIDs...)
		}
		if ps.NumPromptTokens != len(reqs[ps.RequestID].PromptIDs) || ps.NumPromptTokens+ps.NumOutputTokens != len(truth) {
			f.t.Fatalf("%s: %d prompt + %d output tokens, truth has %d", ps.RequestID, ps.NumPromptTokens, ps.NumOutputTokens, len(truth))
		}
		if ps.Sample != (ps.End() == len(truth)) {
			f.t.Fatalf("%s: Sample %v at end %d of %d tokens", ps.RequestID, ps.Sample, ps.End(), len(truth))
		}
		if !ps.Sample {
			f.partial++
		}
		for j, tok := range ps.TokenIDs {
			p := ps.StartPos + j
			if tok != truth[p] {
				f.t.Fatalf("%s: token %d at position %d, want %d", ps.RequestID, tok, p, truth[p])
			}
			if len(ps.GlobalBlocks) > 0 {
				f.slot(f.global, ps.GlobalBlocks[p/f.page])[p%f.page] = tok + 1
			}
			if f.window > 0 {
				f.slot(f.sliding, ps.SlidingBlocks[p/f.page-ps.SlidingFirstBlock])[p%f.page] = tok + 1
			}
		}
		f.maxSlidingPerSeq = max(f.maxSlidingPerSeq, len(ps.SlidingBlocks))
		// Every query of the step reads its keys (checked against the truth); the sample
		// hashes what the last query sees: all global keys and the sliding window.
		h := fnv.New32a()
		for p := range ps.End() {
			if len(ps.GlobalBlocks) > 0 {
				got := f.slot(f.global, ps.GlobalBlocks[p/f.page])[p%f.page] - 1
				if got != truth[p] {
					f.t.Fatalf("%s: global read at %d = %d, want %d", ps.RequestID, p, got, truth[p])
				}
				fmt.Fprint(h, got, ",")
			}
			if f.window > 0 && p > ps.StartPos-f.window {
				got := f.slot(f.sliding, ps.SlidingBlocks[p/f.page-ps.SlidingFirstBlock])[p%f.page] - 1
				if got != truth[p] {
					f.t.Fatalf("%s: sliding read at %d = %d, want %d", ps.RequestID, p, got, truth[p])
				}
				if p >= ps.End()-f.window { // the last query's window
					fmt.Fprint(h, got, ";")
				}
			}
		}
		sampled[i] = int32(h.Sum32()%40000) + 10
		if ps.Sample {
			f.truth[ps.RequestID] = append(truth, sampled[i])
		} else {
			f.truth[ps.RequestID] = truth
		}
	}
	return sampled
}

type runStats struct {
	steps, preemptions, partialChunks int
	prefixHits                        int64
	admissionOrder                    []string
}

// run drives the scheduler like the engine: requests are added at the given steps, each
// step runs the fake model, and a request finishes after its MaxTokens outputs. It checks
// the per-step limits and returns every request's output tokens.
func run(t testing.TB, s *Scheduler, reqs []*Request, addAt []int) (map[string][]int32, runStats) {
	t.Helper()
	f := newFakeModel(t, s)
	byID := map[string]*Request{}
	out := map[string][]int32{}
	var st runStats
	cfg := s.Config()
	next := 0
	for step := 0; ; step++ {
		for next < len(reqs) && (addAt == nil || addAt[next] <= step) {
			if err := s.Add(reqs[next]); err != nil {
				t.Fatalf("Add(%s): %v", reqs[next].ID, err)
			}
			byID[reqs[next].ID] = reqs[next]
			next++
		}
		if next == len(reqs) && !s.HasUnfinished() {
			break
		}
		if step > 100000 {
			t.Fatalf("no progress: %d running, %d waiting", s.NumRunning(), s.NumWaiting())
		}
		plan, err := s.Schedule()
		if err != nil {
			t.Fatal(err)
		}
		st.preemptions += len(plan.Preempted)
		if len(plan.Seqs) == 0 {
			continue
		}
		if plan.NumBatchedTokens > cfg.MaxNumBatchedTokens || len(plan.Seqs) > cfg.MaxNumSeqs || s.NumRunning() > cfg.MaxNumSeqs {
			t.Fatalf("step %d: %d tokens, %d seqs, %d running over the limits", step, plan.NumBatchedTokens, len(plan.Seqs), s.NumRunning())
		}
		total := 0
		for _, ps := range plan.Seqs {
			total += len(ps.TokenIDs)
			if ps.Admitted {
				st.admissionOrder = append(st.admissionOrder, ps.RequestID)
			}
		}
		if total != plan.NumBatchedTokens {
			t.Fatalf("NumBatchedTokens %d, tokens %d", plan.NumBatchedTokens, total)
		}
		sampled := f.step(plan, byID)
		capped, err := s.UpdateFromOutput(plan, sampled)
		if err != nil {
			t.Fatal(err)
		}
		for _, id := range capped {
			out[id] = f.truth[id][len(byID[id].PromptIDs):]
		}
		for i, ps := range plan.Seqs {
			_ = sampled[i]
			id := ps.RequestID
			if done := len(f.truth[id]) - len(byID[id].PromptIDs); ps.Sample && done >= byID[id].Params.MaxTokens {
				if _, ok := out[id]; ok {
					continue // length-capped above
				}
				out[id] = f.truth[id][len(byID[id].PromptIDs):]
				if err := s.Finish(id); err != nil {
					t.Fatal(err)
				}
			}
		}
		// Between steps a sequence holds at most ceil(window/page)+1 sliding blocks.
		if kv := s.KV(); kv.HasSliding() {
			w, p := kv.Config().SlidingWindow, kv.PageSize()
			ks := kv.Stats().Sliding
			if used := ks.NumBlocks - ks.NumFree; used > s.NumRunning()*(divCeil(w, p)+1) {
				t.Fatalf("step %d: %d sliding blocks in use by %d running sequences", step, used, s.NumRunning())
			}
		}
		if err := s.KV().CheckInvariants(); err != nil {
			t.Fatal(err)
		}
	}
	st.steps, st.partialChunks = f.steps, f.partial
	st.prefixHits = s.Stats().PrefixCacheHits
	return out, st
}

// mixedRequests returns n requests of mixed prompt and output lengths; some share a long
// system prompt so the prefix cache has something to find.
func mixedRequests(n int) []*Request {
	system := prompt(999, 40)
	var out []*Request
	for i := range n {
		p := prompt(i, 12+(i*37)%70)
		if i%3 == 0 {
			p = append(append([]int32(nil), system...), p[:5+i%7]...)
		}
		out = append(out, req(fmt.Sprintf("r%02d", i), p, 1+(i*13)%30))
	}
	return out
}

// TestBatchInvariance is the scheduler's share of the acceptance test: with the fake model,
// every request's tokens are the same alone and among many others, with chunked prefill,
// with preemption forced by a tiny cache, with prefix-cache hits, and under priorities.
func TestBatchInvariance(t *testing.T) {
	const page, window = 4, 12
	reqs := mixedRequests(48)
	maxLen := 0
	for _, r := range reqs {
		maxLen = max(maxLen, len(r.PromptIDs)+r.Params.MaxTokens)
	}
	kvBig := kvcache.Config{PageSize: page, NumGlobalBlocks: 2000, NumSlidingBlocks: 2000, SlidingWindow: window}

	// Reference: each request alone, for each kind of model (global and sliding layers,
	// global only, sliding only).
	refs := map[string]map[string][]int32{}
	kinds := map[string]kvcache.Config{
		"both":    kvBig,
		"global":  {PageSize: page, NumGlobalBlocks: 2000},
		"sliding": {PageSize: page, NumSlidingBlocks: 2000, SlidingWindow: window},
	}
	for kind, kvCfg := range kinds {
		refs[kind] = map[string][]int32{}
		for _, r := range reqs {
			s := newTestScheduler(t, SchedulerConfig{MaxNumSeqs: 1, MaxNumBatchedTokens: 256, MaxModelLen: 256}, kvCfg)
			out, _ := run(t, s, []*Request{r}, nil)
			refs[kind][r.ID] = out[r.ID]
			if len(out[r.ID]) != r.Params.MaxTokens {
				t.Fatalf("%s alone: %d tokens, want %d", r.ID, len(out[r.ID]), r.Params.MaxTokens)
			}
		}
	}
	withPriority := make([]*Request, len(reqs))
	for i, r := range reqs {
		c := *r
		c.Priority = (i * 7) % 5
		withPriority[i] = &c
	}
	addAt := make([]int, len(reqs))
	for i := range addAt {
		addAt[i] = i / 4 // requests keep arriving while others run
	}
	tests := []struct {
		name   string
		cfg    SchedulerConfig
		kv     kvcache.Config
		reqs   []*Request
		addAt  []int
		expect func(runStats) string
	}{
		{"all at once, big cache", SchedulerConfig{MaxNumSeqs: 64, MaxNumBatchedTokens: 4096, MaxModelLen: 256}, kvBig, reqs, nil, nil},
		{"chunked prefill", SchedulerConfig{MaxNumSeqs: 64, MaxNumBatchedTokens: 64, MaxModelLen: 256}, kvBig, reqs, addAt,
			func(s runStats) string {
				if s.partialChunks == 0 {
					return "no partial prefill chunk"
				}
				return ""
			}},
		{"tiny cache forces preemption", SchedulerConfig{MaxNumSeqs: 16, MaxNumBatchedTokens: 48, MaxModelLen: 256},
			kvcache.Config{PageSize: page, NumGlobalBlocks: divCeil(maxLen, page) + 2, NumSlidingBlocks: 30, SlidingWindow: window}, reqs, addAt,
			func(s runStats) string {
				if s.preemptions == 0 {
					return "no preemption"
				}
				return ""
			}},
		{"prefix cache hits", SchedulerConfig{MaxNumSeqs: 8, MaxNumBatchedTokens: 128, MaxModelLen: 256},
			withCaching(kvBig), reqs, addAt,
			func(s runStats) string {
				if s.prefixHits == 0 {
					return "no prefix hit"
				}
				return ""
			}},
		{"prefix cache with preemption and chunks", SchedulerConfig{MaxNumSeqs: 16, MaxNumBatchedTokens: 24, MaxModelLen: 256},
			withCaching(kvcache.Config{PageSize: page, NumGlobalBlocks: divCeil(maxLen, page) + 12, NumSlidingBlocks: 40, SlidingWindow: window}), reqs, addAt,
			func(s runStats) string {
				if s.preemptions == 0 || s.prefixHits == 0 || s.partialChunks == 0 {
					return fmt.Sprintf("preemptions %d, prefix hits %d, partial chunks %d", s.preemptions, s.prefixHits, s.partialChunks)
				}
				return ""
			}},
		{"priority with preemption", SchedulerConfig{MaxNumSeqs: 16, MaxNumBatchedTokens: 48, MaxModelLen: 256, Policy: PolicyPriority},
			kvcache.Config{PageSize: page, NumGlobalBlocks: divCeil(maxLen, page) + 6, NumSlidingBlocks: 30, SlidingWindow: window}, withPriority, addAt,
			func(s runStats) string {
				if s.preemptions == 0 {
					return "no preemption"
				}
				return ""
			}},
		{"chunked prefill disabled", SchedulerConfig{MaxNumSeqs: 8, MaxNumBatchedTokens: 256, MaxModelLen: 256, DisableChunkedPrefill: true},
			withCaching(kvBig), reqs, addAt, nil},
		{"global layers only", SchedulerConfig{MaxNumSeqs: 12, MaxNumBatchedTokens: 32, MaxModelLen: 256},
			kvcache.Config{PageSize: page, NumGlobalBlocks: divCeil(maxLen, page) + 4, EnablePrefixCaching: true}, reqs, addAt,
			func(s runStats) string {
				if s.preemptions == 0 || s.prefixHits == 0 {
					return "no preemption or no prefix hit"
				}
				return ""
			}},
		{"tiny sliding pool caps chunks", SchedulerConfig{MaxNumSeqs: 16, MaxNumBatchedTokens: 4096, MaxModelLen: 256},
			kvcache.Config{PageSize: page, NumGlobalBlocks: 2000, NumSlidingBlocks: 9, SlidingWindow: window, EnablePrefixCaching: true}, reqs, addAt,
			func(s runStats) string {
				if s.partialChunks == 0 || s.preemptions == 0 {
					return "no partial chunk or no preemption"
				}
				return ""
			}},
		{"sliding layers only", SchedulerConfig{MaxNumSeqs: 12, MaxNumBatchedTokens: 32, MaxModelLen: 256},
			kvcache.Config{PageSize: page, NumSlidingBlocks: 40, SlidingWindow: window, EnablePrefixCaching: true}, reqs, addAt,
			func(s runStats) string {
				if s.preemptions == 0 || s.prefixHits == 0 {
					return "no preemption or no prefix hit"
				}
				return ""
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newTestScheduler(t, tc.cfg, tc.kv)
			got, st := run(t, s, tc.reqs, tc.addAt)
			if tc.expect != nil {
				if msg := tc.expect(st); msg != "" {
					t.Fatalf("scenario not exercised: %s (%+v)", msg, st)
				}
			}
			want := refs["both"]
			switch {
			case tc.kv.NumSlidingBlocks == 0:
				want = refs["global"]
			case tc.kv.NumGlobalBlocks == 0:
				want = refs["sliding"]
			}
			for _, r := range reqs {
				if !slices.Equal(got[r.ID], want[r.ID]) {
					t.Fatalf("%s: batched %v, alone %v", r.ID, got[r.ID], want[r.ID])
				}
			}
			t.Logf("%d steps, %d preemptions, %d partial chunks, %d prefix-hit tokens", st.steps, st.preemptions, st.partialChunks, st.prefixHits)
		})
	}
}

func withCaching(c kvcache.Config) kvcache.Config {
	c.EnablePrefixCaching = true
	return c
}

// step schedules, checks the plan's shape against want (request -> tokens computed, in
// plan order) and reports sampled tokens 100, 101, ….
func step(t *testing.T, s *Scheduler, want []string) *StepPlan {
	t.Helper()
	plan, err := s.Schedule()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, ps := range plan.Seqs {
		got = append(got, fmt.Sprintf("%s:%d", ps.RequestID, len(ps.TokenIDs)))
	}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("plan %v, want %v", got, want)
	}
	sampled := make([]int32, len(plan.Seqs))
	for i := range sampled {
		sampled[i] = int32(100 + i)
	}
	if len(plan.Seqs) > 0 {
		if _, err := s.UpdateFromOutput(plan, sampled); err != nil {
			t.Fatal(err)
		}
	}
	return plan
}

func bigKV() kvcache.Config {
	return kvcache.Config{PageSize: 4, NumGlobalBlocks: 200, NumSlidingBlocks: 200, SlidingWindow: 8}
}

func TestTokenBudgetAndChunking(t *testing.T) {
	s := newTestScheduler(t, SchedulerConfig{MaxNumSeqs: 8, MaxNumBatchedTokens: 10, MaxModelLen: 100}, bigKV())
	for _, r := range []*Request{req("a", prompt(1, 3), 50), req("b", prompt(2, 3), 50), req("c", prompt(3, 25), 50), req("d", prompt(4, 2), 50)} {
		if err := s.Add(r); err != nil {
			t.Fatal(err)
		}
	}
	steps := [][]string{
		{"a:3", "b:3", "c:4"},        // c's prompt chunked by the budget
		{"a:1", "b:1", "c:8"},        // running first: decodes, then c's next chunk
		{"a:1", "b:1", "c:8"},        // c still prefilling; d waits behind the budget
		{"a:1", "b:1", "c:5", "d:2"}, // c's last chunk, then d is admitted
		{"a:1", "b:1", "c:1", "d:1"}, // all decoding
	}
	for i, want := range steps {
		plan := step(t, s, want)
		for _, ps := range plan.Seqs {
			if ps.RequestID == "c" && ps.Sample != (i == 3 || i == 4) {
				t.Fatalf("step %d: c Sample %v", i, ps.Sample)
			}
			if ps.StartPos+len(ps.TokenIDs) > 25 && ps.RequestID == "c" && i < 3 {
				t.Fatalf("step %d: c beyond its prompt", i)
			}
		}
		if plan.NumBatchedTokens > 10 {
			t.Fatalf("step %d: %d tokens", i, plan.NumBatchedTokens)
		}
	}
}

func TestMaxNumSeqs(t *testing.T) {
	s := newTestScheduler(t, SchedulerConfig{MaxNumSeqs: 2, MaxNumBatchedTokens: 100, MaxModelLen: 100}, bigKV())
	for i := range 4 {
		if err := s.Add(req(fmt.Sprint(i), prompt(i, 5), 10)); err != nil {
			t.Fatal(err)
		}
	}
	step(t, s, []string{"0:5", "1:5"})
	step(t, s, []string{"0:1", "1:1"})
	if s.NumRunning() != 2 || s.NumWaiting() != 2 {
		t.Fatalf("%d running %d waiting", s.NumRunning(), s.NumWaiting())
	}
	if err := s.Finish("0"); err != nil {
		t.Fatal(err)
	}
	step(t, s, []string{"1:1", "2:5"})
}

func TestAdmissionOrder(t *testing.T) {
	type in struct {
		id       string
		priority int
	}
	reqs := []in{{"a", 5}, {"b", 1}, {"c", 5}, {"d", 0}, {"e", 1}}
	tests := []struct {
		policy SchedulingPolicy
		want   []string
	}{
		{PolicyFCFS, []string{"a:4", "b:4", "c:4", "d:4", "e:4"}},
		{PolicyPriority, []string{"d:4", "b:4", "e:4", "a:4", "c:4"}},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprint(tc.policy), func(t *testing.T) {
			// MaxNumSeqs 1 admits one request at a time.
			s := newTestScheduler(t, SchedulerConfig{MaxNumSeqs: 1, MaxNumBatchedTokens: 16, MaxModelLen: 100, Policy: tc.policy}, bigKV())
			for _, r := range reqs {
				q := req(r.id, prompt(len(r.id), 4), 1)
				q.Priority = r.priority
				if err := s.Add(q); err != nil {
					t.Fatal(err)
				}
			}
			for _, want := range tc.want {
				plan := step(t, s, []string{want})
				if err := s.Finish(plan.Seqs[0].RequestID); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

func TestPreemptionByRecompute(t *testing.T) {
	// 4 usable global blocks of 4 tokens: a and b (6-token prompts) take 2 each; when a
	// needs its third block, b (last admitted) is preempted.
	for _, policy := range []SchedulingPolicy{PolicyFCFS, PolicyPriority} {
		t.Run(fmt.Sprint(policy), func(t *testing.T) {
			s := newTestScheduler(t, SchedulerConfig{MaxNumSeqs: 4, MaxNumBatchedTokens: 32, MaxModelLen: 16, Policy: policy},
				kvcache.Config{PageSize: 4, NumGlobalBlocks: 5, NumSlidingBlocks: 9, SlidingWindow: 4})
			a, b := req("a", prompt(1, 6), 10), req("b", prompt(2, 6), 10)
			if policy == PolicyPriority {
				a.Priority, b.Priority = 1, 0 // now a is the victim: b has the better priority
			}
			for _, r := range []*Request{a, b} {
				if err := s.Add(r); err != nil {
					t.Fatal(err)
				}
			}
			victim, survivor := "b", "a"
			if policy == PolicyPriority {
				victim, survivor = "a", "b"
			}
			both := func(n int) []string {
				return []string{fmt.Sprintf("%s:%d", survivor, n), fmt.Sprintf("%s:%d", victim, n)}
			}
			step(t, s, both(6)) // 7 tokens each after sampling
			step(t, s, both(1)) // position 6
			step(t, s, both(1)) // position 7: both blocks full, 9 tokens each
			plan := step(t, s, []string{survivor + ":1"})
			if len(plan.Preempted) != 1 || plan.Preempted[0] != victim {
				t.Fatalf("preempted %v, want [%s]", plan.Preempted, victim)
			}
			if st := s.Stats(); st.NumPreemptions != 1 || st.NumWaiting != 1 || st.NumRunning != 1 {
				t.Fatalf("stats %+v", st)
			}
			// The victim waits until the survivor finishes, then recomputes prompt + 3 outputs.
			step(t, s, []string{survivor + ":1"})
			if err := s.Finish(survivor); err != nil {
				t.Fatal(err)
			}
			plan = step(t, s, []string{victim + ":9"})
			if ps := plan.Seqs[0]; !ps.Admitted || !ps.Sample || ps.StartPos != 0 || ps.NumOutputTokens != 3 || ps.NumPromptTokens != 6 {
				t.Fatalf("resumed seq %+v", ps)
			}
		})
	}
}

func TestFinishFreesBlocks(t *testing.T) {
	tests := []struct {
		name  string
		when  string // "waiting", "running", "in flight" (between Schedule and UpdateFromOutput)
		cache bool
	}{
		{"waiting", "waiting", false},
		{"running", "running", false},
		{"in flight", "in flight", false},
		{"in flight with prefix cache", "in flight", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			kv := bigKV()
			kv.EnablePrefixCaching = tc.cache
			s := newTestScheduler(t, SchedulerConfig{MaxNumSeqs: 1, MaxNumBatchedTokens: 64, MaxModelLen: 100}, kv)
			for _, id := range []string{"x", "y"} {
				if err := s.Add(req(id, prompt(7, 9), 5)); err != nil {
					t.Fatal(err)
				}
			}
			plan, err := s.Schedule()
			if err != nil {
				t.Fatal(err)
			}
			switch tc.when {
			case "waiting":
				if err := s.Finish("y"); err != nil {
					t.Fatal(err)
				}
				if _, err := s.UpdateFromOutput(plan, []int32{1}); err != nil {
					t.Fatal(err)
				}
			case "running":
				if _, err := s.UpdateFromOutput(plan, []int32{1}); err != nil {
					t.Fatal(err)
				}
				if err := s.Finish("x"); err != nil {
					t.Fatal(err)
				}
			case "in flight":
				if err := s.Finish("x"); err != nil {
					t.Fatal(err)
				}
				if _, err := s.UpdateFromOutput(plan, []int32{1}); err != nil {
					t.Fatal(err)
				}
			}
			if err := s.Finish("x"); tc.when != "waiting" && !errors.Is(err, ErrUnknownRequest) {
				t.Fatalf("second Finish: %v", err)
			}
			// Only the other request may hold blocks now.
			live := 0
			if s.NumRunning() > 0 {
				live = 3 // 9 tokens in 4-token blocks
			}
			if st := s.KV().Stats(); st.Global.NumBlocks-st.Global.NumFree != live {
				t.Fatalf("%d global blocks in use, want %d", st.Global.NumBlocks-st.Global.NumFree, live)
			}
		})
	}
}

func TestMaxModelLenCaps(t *testing.T) {
	tests := []struct {
		prompt, maxLen int
		wantSteps      int // steps until capped
	}{
		{5, 8, 3}, // samples tokens 6, 7, 8
		{7, 8, 1}, // one token
		{8, 8, 1}, // a prompt of exactly MaxModelLen still yields one token
		{1, 2, 1}, // smallest
		{5, 64, 59},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%d_of_%d", tc.prompt, tc.maxLen), func(t *testing.T) {
			s := newTestScheduler(t, SchedulerConfig{MaxNumSeqs: 1, MaxNumBatchedTokens: 64, MaxModelLen: tc.maxLen}, bigKV())
			if err := s.Add(req("r", prompt(1, tc.prompt), 0)); err != nil { // 0 = up to MaxModelLen
				t.Fatal(err)
			}
			for i := 1; ; i++ {
				plan, err := s.Schedule()
				if err != nil || len(plan.Seqs) != 1 {
					t.Fatalf("step %d: %v, %d seqs", i, err, len(plan.Seqs))
				}
				if end := plan.Seqs[0].End(); end > max(tc.prompt, tc.maxLen-1) {
					t.Fatalf("step %d computes up to %d", i, end)
				}
				capped, err := s.UpdateFromOutput(plan, []int32{1})
				if err != nil {
					t.Fatal(err)
				}
				if len(capped) > 0 {
					if i != tc.wantSteps || capped[0] != "r" || s.HasUnfinished() {
						t.Fatalf("capped %v at step %d, want step %d", capped, i, tc.wantSteps)
					}
					return
				}
			}
		})
	}
}

func TestPrefixCacheAdmission(t *testing.T) {
	kv := bigKV()
	kv.EnablePrefixCaching = true
	s := newTestScheduler(t, SchedulerConfig{MaxNumSeqs: 4, MaxNumBatchedTokens: 64, MaxModelLen: 100}, kv)
	p := prompt(3, 18) // 4 full blocks + 2 tokens
	if err := s.Add(req("first", p, 3)); err != nil {
		t.Fatal(err)
	}
	step(t, s, []string{"first:18"})
	if err := s.Finish("first"); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		id     string
		prompt []int32
		cached int
	}{
		{"same", p, 16},
		{"one block", append(append([]int32(nil), p[:4]...), prompt(9, 10)...), 4},
		{"exact blocks", p[:16], 12}, // the last token is always recomputed
	}
	for _, tc := range tests {
		if err := s.Add(req(tc.id, tc.prompt, 3)); err != nil {
			t.Fatal(err)
		}
		plan := step(t, s, []string{fmt.Sprintf("%s:%d", tc.id, len(tc.prompt)-tc.cached)})
		if ps := plan.Seqs[0]; ps.NumCachedTokens != tc.cached || ps.StartPos != tc.cached {
			t.Fatalf("%s: cached %d start %d, want %d", tc.id, ps.NumCachedTokens, ps.StartPos, tc.cached)
		}
		if err := s.Finish(tc.id); err != nil {
			t.Fatal(err)
		}
	}
	if st := s.Stats(); st.PrefixCacheHits != 32 || st.PrefixCacheQueries != 18+18+14+16 {
		t.Fatalf("stats %+v", st)
	}
}

func TestAddValidation(t *testing.T) {
	kv := kvcache.Config{PageSize: 4, NumGlobalBlocks: 9, NumSlidingBlocks: 20, SlidingWindow: 8} // 32 tokens of global KV
	tests := []struct {
		name string
		req  *Request
		err  error
		text string
	}{
		{"ok", req("ok", prompt(1, 10), 5), nil, ""},
		{"empty id", req("", prompt(1, 10), 5), ErrInvalidRequest, "ID"},
		{"duplicate", req("dup", prompt(1, 10), 5), ErrInvalidRequest, "already"},
		{"empty prompt", req("e", nil, 5), ErrInvalidRequest, "PromptIDs"},
		{"prompt too long", req("l", prompt(1, 41), 5), ErrPromptTooLong, "41"},
		{"negative max tokens", req("n", prompt(1, 4), -1), ErrInvalidRequest, "MaxTokens"},
		{"never fits", req("f", prompt(1, 30), 10), kvcache.ErrKVCacheFull, "global"},
		{"fits exactly", req("x", prompt(1, 30), 3), nil, ""},                           // 32 tokens of KV
		{"unbounded max tokens", req("u", prompt(1, 5), 0), kvcache.ErrKVCacheFull, ""}, // up to MaxModelLen 40
	}
	s := newTestScheduler(t, SchedulerConfig{MaxNumSeqs: 4, MaxNumBatchedTokens: 16, MaxModelLen: 40}, kv)
	if err := s.Add(req("dup", prompt(2, 3), 1)); err != nil {
		t.Fatal(err)
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := s.Add(tc.req)
			if tc.err == nil {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, tc.err) || !strings.Contains(err.Error(), tc.text) {
				t.Fatalf("err %v, want %v mentioning %q", err, tc.err, tc.text)
			}
		})
	}
}

func TestSchedulerConfigValidation(t *testing.T) {
	tests := []struct {
		cfg   SchedulerConfig
		field string
	}{
		{SchedulerConfig{MaxModelLen: 10}, ""},
		{SchedulerConfig{}, "MaxModelLen"},
		{SchedulerConfig{MaxModelLen: 10, MaxNumSeqs: -1}, "MaxNumSeqs"},
		{SchedulerConfig{MaxModelLen: 10, MaxNumSeqs: 8, MaxNumBatchedTokens: 4}, "MaxNumBatchedTokens"},
		{SchedulerConfig{MaxModelLen: 10, Policy: 7}, "Policy"},
		{SchedulerConfig{MaxModelLen: 10000, DisableChunkedPrefill: true}, "chunked"},
	}
	kv, err := kvcache.NewManager(bigKV())
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range tests {
		_, err := NewScheduler(tc.cfg, kv)
		if tc.field == "" {
			if err != nil {
				t.Errorf("%+v: %v", tc.cfg, err)
			}
			continue
		}
		if !errors.Is(err, ErrInvalidRequest) || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("%+v: err %v, want one naming %s", tc.cfg, err, tc.field)
		}
	}
	if _, err := NewScheduler(SchedulerConfig{MaxModelLen: 10}, nil); err == nil {
		t.Error("nil manager accepted")
	}
}

func TestProtocolErrors(t *testing.T) {
	s := newTestScheduler(t, SchedulerConfig{MaxNumSeqs: 2, MaxNumBatchedTokens: 16, MaxModelLen: 40}, bigKV())
	if err := s.Add(req("a", prompt(1, 5), 3)); err != nil {
		t.Fatal(err)
	}
	plan, err := s.Schedule()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Schedule(); !errors.Is(err, ErrSchedulerState) {
		t.Fatalf("second Schedule: %v", err)
	}
	if _, err := s.UpdateFromOutput(plan, nil); !errors.Is(err, ErrInvalidRequest) {
		t.Fatalf("no samples: %v", err)
	}
	if _, err := s.UpdateFromOutput(&StepPlan{}, []int32{}); !errors.Is(err, ErrSchedulerState) {
		t.Fatalf("foreign plan: %v", err)
	}
	if _, err := s.UpdateFromOutput(plan, []int32{7}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.UpdateFromOutput(plan, []int32{7}); !errors.Is(err, ErrSchedulerState) {
		t.Fatalf("plan reported twice: %v", err)
	}
	if err := s.Finish("nope"); !errors.Is(err, ErrUnknownRequest) {
		t.Fatalf("Finish unknown: %v", err)
	}
}

// TestPriorityPreemptsScheduledVictim: under priority scheduling the victim can be a
// request already scheduled earlier in the same step; it must leave the plan and give its
// tokens back to the budget.
func TestPriorityPreemptsScheduledVictim(t *testing.T) {
	s := newTestScheduler(t, SchedulerConfig{MaxNumSeqs: 4, MaxNumBatchedTokens: 16, MaxModelLen: 32, Policy: PolicyPriority},
		kvcache.Config{PageSize: 4, NumGlobalBlocks: 5})
	low, high := req("low", prompt(1, 8), 5), req("high", prompt(2, 3), 5)
	low.Priority, high.Priority = 5, 0
	if err := s.Add(low); err != nil {
		t.Fatal(err)
	}
	step(t, s, []string{"low:8"})
	if err := s.Add(high); err != nil {
		t.Fatal(err)
	}
	step(t, s, []string{"low:1", "high:3"})
	step(t, s, []string{"low:1", "high:1"})
	plan := step(t, s, []string{"high:1"}) // low was scheduled first, then preempted for high
	if len(plan.Preempted) != 1 || plan.Preempted[0] != "low" || plan.NumBatchedTokens != 1 {
		t.Fatalf("preempted %v, %d tokens", plan.Preempted, plan.NumBatchedTokens)
	}
}

// benchScheduler builds a Gemma-3-like scheduler (page 16, window 1024, 8192-token budget)
// with n requests running: 1000-token prompts sharing a 256-token system prompt, outputs of
// 64..319 tokens, so that requests finish and new ones (with prefix hits and prefill
// chunks) keep arriving. It returns the step function to measure.
func benchScheduler(b *testing.B, n int, caching bool) func() {
	const page, window, maxModelLen = 16, 1024, 4096
	spec := kvcache.MemorySpec{PageSize: page, NumGlobalLayers: 1, NumSlidingLayers: 5, KVHeads: 1, HeadDim: 1, DTypeBytes: 1,
		SlidingWindow: window, MaxNumSeqs: 256, MaxNumBatchedTokens: 8192, MaxModelLen: maxModelLen, EnablePrefixCaching: caching}
	gB, sB := spec.BlockBytes()
	kvCfg, err := kvcache.ConfigForBudget(int64(256*maxModelLen/page+1)*gB+int64(spec.MaxSlidingBlocks()+1)*sB, spec)
	if err != nil {
		b.Fatal(err)
	}
	kv, err := kvcache.NewManager(kvCfg)
	if err != nil {
		b.Fatal(err)
	}
	s, err := NewScheduler(SchedulerConfig{MaxNumSeqs: 256, MaxNumBatchedTokens: 8192, MaxModelLen: maxModelLen,
		Logger: slogDiscard()}, kv)
	if err != nil {
		b.Fatal(err)
	}
	system := prompt(1, 256)
	next := 0
	maxTokens := map[string]int{}
	add := func() {
		p := append(append(make([]int32, 0, 1000), system...), prompt(next+2, 744)...)
		r := req(fmt.Sprintf("r%d", next), p, 64+(next*97)%256)
		maxTokens[r.ID] = r.Params.MaxTokens
		next++
		if err := s.Add(r); err != nil {
			b.Fatal(err)
		}
	}
	for range n {
		add()
	}
	var sampled []int32
	stepFn := func() {
		plan, err := s.Schedule()
		if err != nil {
			b.Fatal(err)
		}
		sampled = sampled[:0]
		for i := range plan.Seqs {
			sampled = append(sampled, int32(1000+i))
		}
		if _, err := s.UpdateFromOutput(plan, sampled); err != nil {
			b.Fatal(err)
		}
		for i := range plan.Seqs {
			ps := &plan.Seqs[i]
			if ps.Sample && ps.NumOutputTokens+1 >= maxTokens[ps.RequestID] {
				delete(maxTokens, ps.RequestID)
				if err := s.Finish(ps.RequestID); err != nil {
					b.Fatal(err)
				}
				add()
			}
		}
	}
	// Warm up past the first prefills so the measured steps are mostly decode.
	for range 2 + n*1000/8192 {
		stepFn()
	}
	return stepFn
}

// BenchmarkSchedulerStep measures one Schedule + UpdateFromOutput (+ the finishes and
// arrivals they cause) with n running sequences.
func BenchmarkSchedulerStep(b *testing.B) {
	for _, n := range []int{1, 64, 256} {
		for _, caching := range []bool{true, false} {
			b.Run(fmt.Sprintf("seqs=%d/prefix_cache=%v", n, caching), func(b *testing.B) {
				stepFn := benchScheduler(b, n, caching)
				b.ReportAllocs()
				for b.Loop() {
					stepFn()
				}
			})
		}
	}
}

// BenchmarkPlanCopyBaseline is the floor a plan cannot go below: copying n block tables of
// a 1300-token sequence (82 global + 65 sliding ids) into reused buffers, as the scheduler
// does, with nothing decided.
func BenchmarkPlanCopyBaseline(b *testing.B) {
	for _, n := range []int{1, 64, 256} {
		b.Run(fmt.Sprintf("seqs=%d", n), func(b *testing.B) {
			tables := make([][]int32, n)
			for i := range tables {
				tables[i] = make([]int32, 82+65)
			}
			ids := make([]int32, 0, n*(82+65))
			seqs := make([]ScheduledSeq, n)
			b.ReportAllocs()
			for b.Loop() {
				ids = ids[:0]
				for i, t := range tables {
					ids = append(ids, t...)
					seqs[i] = ScheduledSeq{GlobalBlocks: ids[len(ids)-len(t):]}
				}
			}
		})
	}
}

func slogDiscard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
