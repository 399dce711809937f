package server

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/tpuserve/tpuserve/engine"
	"github.com/tpuserve/tpuserve/engine/grammar"
)

// fakeTokenizer is a byte-level tokenizer with Gemma's special tokens: ids 0..5 are
// specials, id 6+b is byte b. Its chat template follows Gemma 3's layout.
type fakeTokenizer struct{}

var fakeSpecials = []string{"<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>", "<unk>"}

const (
	fakeEOS       = 1
	fakeBOS       = 2
	fakeByteBase  = 6
	fakeVocabSize = fakeByteBase + 256
)

func (fakeTokenizer) VocabSize() int { return fakeVocabSize }

func (fakeTokenizer) Encode(text string, addSpecial bool) []int32 {
	var ids []int32
	if addSpecial {
		ids = append(ids, fakeBOS)
	}
	for i := 0; i < len(text); {
		matched := false
		if text[i] == '<' {
			for id, sp := range fakeSpecials {
				if strings.HasPrefix(text[i:], sp) {
					ids = append(ids, int32(id))
					i += len(sp)
					matched = true
					break
				}
			}
		}
		if !matched {
			ids = append(ids, int32(fakeByteBase+int(text[i])))
			i++
		}
	}
	return ids
}

func (fakeTokenizer) Decode(ids []int32, skipSpecial bool) (string, error) {
	var b strings.Builder
	for _, id := range ids {
		switch {
		case id >= 0 && id < fakeByteBase:
			if !skipSpecial {
				b.WriteString(fakeSpecials[id])
			}
		case id >= fakeByteBase && id < fakeVocabSize:
			b.WriteByte(byte(id - fakeByteBase))
		default:
			return "", fmt.Errorf("token id %d out of range", id)
		}
	}
	return b.String(), nil
}

// TokenString returns raw pieces: SentencePiece's "▁" for a space, so tests can tell it
// from the decoded text.
func (fakeTokenizer) TokenString(id int32) (string, bool) {
	switch {
	case id >= 0 && id < fakeByteBase:
		return fakeSpecials[id], true
	case id == fakeByteBase+' ':
		return "▁", true
	case id >= fakeByteBase && id < fakeVocabSize:
		return string([]byte{byte(id - fakeByteBase)}), true
	}
	return "", false
}

func (fakeTokenizer) ApplyChatTemplate(msgs []ChatMessage, addGen bool) (string, error) {
	var b strings.Builder
	b.WriteString("<bos>")
	system := ""
	turn := 0
	for i, m := range msgs {
		text := messageText(m)
		if m.Role == "system" {
			if i != 0 {
				return "", errors.New("a system message must come first")
			}
			system = text + "\n\n"
			continue
		}
		want := "user"
		if turn%2 == 1 {
			want = "assistant"
		}
		if m.Role != want {
			return "", errors.New("conversation roles must alternate user/assistant/user/assistant")
		}
		role := "user"
		if m.Role == "assistant" {
			role = "model"
		}
		b.WriteString("<start_of_turn>" + role + "\n")
		if turn == 0 {
			b.WriteString(system)
		}
		b.WriteString(strings.TrimSpace(text) + "<end_of_turn>\n")
		turn++
	}
	if addGen {
		b.WriteString("<start_of_turn>model\n")
	}
	return b.String(), nil
}

// fakeEngine generates deterministic text: with a seed, from a PCG stream of that seed;
// with temperature 0, from a hash of the prompt; otherwise at random. It handles stop
// strings (holding back possible prefixes), stop token ids, EOS, min_tokens, logprobs and
// aborts the way the real engine promises to.
type fakeEngine struct {
	tok fakeTokenizer
	// interval between tokens (0 = as fast as the consumer reads).
	interval time.Duration
	// maxLive > 0 makes Submit fail with ErrQueueFull beyond that many live requests.
	maxLive int
	// kvTokens > 0 makes Submit fail with ErrRequestTooLarge when prompt+max_tokens exceeds it.
	kvTokens int
	// submitErr, when set, is returned by Submit (wrapped).
	submitErr error
	// failAfter > 0 ends each request with an internal error after that many tokens.
	failAfter int
	// hold, when set, keeps requests waiting (NumWaiting) until it is closed.
	hold chan struct{}
	// panicOn makes Submit panic on prompts containing it.
	panicOn string
	// stamp makes each token's text the emission time in ns, for the latency benchmark.
	stamp bool
	// script, when set, is what every request generates (byte by byte, then EOS) unless
	// its grammar decides.
	script string

	mu        sync.Mutex
	running   int
	waiting   int
	submitted []engine.Request
	finished  map[engine.FinishReason]int
}

func (f *fakeEngine) Stats() engine.Stats {
	f.mu.Lock()
	defer f.mu.Unlock()
	return engine.Stats{NumRunning: f.running, NumWaiting: f.waiting, KVCacheUsage: min(1, float64(f.running)/10)}
}

func (f *fakeEngine) finishedCount(r engine.FinishReason) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.finished[r]
}

func (f *fakeEngine) requests() []engine.Request {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.submitted)
}

func (f *fakeEngine) Submit(ctx context.Context, req engine.Request) (<-chan engine.Event, error) {
	if f.panicOn != "" {
		if text, _ := f.tok.Decode(req.PromptIDs, true); strings.Contains(text, f.panicOn) {
			panic("kaboom")
		}
	}
	if f.submitErr != nil {
		return nil, fmt.Errorf("fake engine: %w", f.submitErr)
	}
	if req.Params.MaxTokens <= 0 {
		return nil, fmt.Errorf("%w: max tokens %d", ErrInvalidRequest, req.Params.MaxTokens)
	}
	if f.kvTokens > 0 && len(req.PromptIDs)+req.Params.MaxTokens > f.kvTokens {
		return nil, fmt.Errorf("%w: %d tokens needed, the cache holds %d", ErrRequestTooLarge, len(req.PromptIDs)+req.Params.MaxTokens, f.kvTokens)
	}
	f.mu.Lock()
	if f.maxLive > 0 && f.running+f.waiting >= f.maxLive {
		f.mu.Unlock()
		return nil, fmt.Errorf("fake engine: %w (%d live)", ErrQueueFull, f.maxLive)
	}
	f.submitted = append(f.submitted, req)
	if f.hold != nil {
		f.waiting++
	} else {
		f.running++
	}
	f.mu.Unlock()
	ch := make(chan engine.Event, 8)
	go f.generate(ctx, req, ch)
	return ch, nil
}

func (f *fakeEngine) end(reason engine.FinishReason) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.running--
	if f.finished == nil {
		f.finished = map[engine.FinishReason]int{}
	}
	f.finished[reason]++
}

// fakeRNG picks the token stream of a request.
func fakeRNG(req engine.Request) *rand.Rand {
	p := req.Params
	switch {
	case p.Seed != nil:
		return rand.New(rand.NewPCG(uint64(*p.Seed), 1))
	case p.Temperature == 0:
		h := fnv.New64a()
		for _, id := range req.PromptIDs {
			fmt.Fprint(h, id, ",")
		}
		return rand.New(rand.NewPCG(h.Sum64(), 2))
	default:
		return rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
	}
}

const fakeAlphabet = "abcdefghijklmnopqrstuvwxyz "

func (f *fakeEngine) generate(ctx context.Context, req engine.Request, ch chan<- engine.Event) {
	defer close(ch)
	p := req.Params
	m := engine.RequestMetrics{ArrivalTime: req.ArrivalTime}
	if f.hold != nil {
		select {
		case <-f.hold:
		case <-ctx.Done():
		}
		f.mu.Lock()
		f.waiting--
		f.running++
		f.mu.Unlock()
	}
	m.FirstScheduledTime = time.Now()
	rng := fakeRNG(req)
	var matcher *grammar.Matcher
	if p.Grammar != nil {
		matcher = p.Grammar.NewMatcher()
	}
	var out []int32 // generated ids, EOS and stop tokens included
	var textIDs []int32
	sent := 0 // bytes of text already emitted
	final := func(ev engine.Event, reason engine.FinishReason) {
		ev.Finished, ev.FinishReason = true, reason
		ev.NumPromptTokens, ev.NumOutputTokens = len(req.PromptIDs), len(out)
		m.FinishedTime = time.Now()
		ev.Metrics = m
		f.end(reason)
		ch <- ev
	}
	var timer *time.Timer
	if f.interval > 0 {
		timer = time.NewTimer(f.interval)
		defer timer.Stop()
	}
	for {
		if timer != nil {
			select {
			case <-timer.C:
				timer.Reset(f.interval)
			case <-ctx.Done():
			}
		}
		if ctx.Err() != nil {
			final(engine.Event{}, engine.FinishAbort)
			return
		}
		if f.failAfter > 0 && len(out) >= f.failAfter {
			f.end(engine.FinishNone)
			ch <- engine.Event{Err: errors.New("fake engine: device lost (secret internal detail)")}
			return
		}
		var tok int32
		switch r := rng.IntN(64); {
		case matcher != nil:
			// Structured outputs: a token the grammar allows, as the real engine's mask.
			tok = fakeGrammarToken(rng, matcher)
			if err := matcher.Advance(tok); err != nil {
				panic(err)
			}
		case f.script != "" && len(out) < len(f.script):
			tok = int32(fakeByteBase + int(f.script[len(out)]))
		case f.script != "":
			tok = fakeEOS
		case r == 0 && !p.IgnoreEOS && len(out) >= p.MinTokens:
			tok = fakeEOS
		default:
			tok = int32(fakeByteBase + int(fakeAlphabet[rng.IntN(len(fakeAlphabet))]))
		}
		if f.stamp {
			tok = int32(fakeByteBase + '0' + len(out)%10)
		}
		out = append(out, tok)
		if len(out) == 1 {
			m.FirstTokenTime = time.Now()
		}
		ev := engine.Event{TokenIDs: []int32{tok}}
		if p.Logprobs != nil {
			lp := -float32(tok%7+1) / 4
			pos := engine.PositionLogprobs{Chosen: engine.TokenLogprob{TokenID: tok, Logprob: lp}}
			// Alternatives: other letters, less likely than the chosen token.
			for j, alt := 0, int32(fakeByteBase+'a'); j < *p.Logprobs; alt++ {
				if alt != tok {
					pos.Top = append(pos.Top, engine.TokenLogprob{TokenID: alt, Logprob: lp - float32(j+1)/2})
					j++
				}
			}
			ev.Logprobs = []engine.PositionLogprobs{pos}
		}
		if f.stamp {
			ev.Text = fmt.Sprintf("%d;", time.Now().UnixNano())
			if len(out) >= p.MaxTokens {
				final(ev, engine.FinishLength)
				return
			}
			ch <- ev
			continue
		}
		minDone := len(out) > p.MinTokens || (len(out) == p.MinTokens)
		if tok == fakeEOS && !p.IgnoreEOS {
			rest, _ := f.tok.Decode(textIDs, p.SkipSpecialTokens)
			ev.Text = rest[sent:]
			final(ev, engine.FinishStop)
			return
		}
		if slices.Contains(p.StopTokenIDs, tok) && minDone {
			rest, _ := f.tok.Decode(textIDs, p.SkipSpecialTokens)
			ev.Text = rest[sent:]
			ev.StopReason = tok
			final(ev, engine.FinishStop)
			return
		}
		textIDs = append(textIDs, tok)
		text, _ := f.tok.Decode(textIDs, p.SkipSpecialTokens)
		if minDone {
			for _, st := range p.Stop {
				if at := strings.Index(text, st); at >= 0 {
					end := at
					if p.IncludeStopStrInOutput {
						end = at + len(st)
					}
					ev.Text = text[sent:max(end, sent)]
					ev.StopReason = st
					final(ev, engine.FinishStop)
					return
				}
			}
		}
		if len(out) >= p.MaxTokens {
			ev.Text = text[sent:]
			final(ev, engine.FinishLength)
			return
		}
		safe := len(text) - holdBack(text, p.Stop)
		if safe > sent {
			ev.Text = text[sent:safe]
			sent = safe
		}
		ch <- ev
	}
}

// holdBack is the length of the longest suffix of text that is a proper prefix of a stop
// string: that much text may still become a stop and must not be sent yet.
func holdBack(text string, stops []string) int {
	best := 0
	for _, st := range stops {
		for k := min(len(st)-1, len(text)); k > best; k-- {
			if strings.HasSuffix(text, st[:k]) {
				best = k
				break
			}
		}
	}
	return best
}

// fakeGrammars compiles structured-output grammars over the fake tokenizer's vocabulary
// (one token per byte, EOS = fakeEOS).
var fakeGrammars = sync.OnceValue(func() *grammar.Cache {
	tokens := make([][]byte, fakeVocabSize)
	for b := 0; b < 256; b++ {
		tokens[fakeByteBase+b] = []byte{byte(b)}
	}
	v, err := grammar.NewVocabulary(tokens, []int32{fakeEOS})
	if err != nil {
		panic(err)
	}
	return grammar.NewCache(v, 64)
})

// fakeGrammarToken picks a token the matcher allows, preferring to finish: EOS when the
// output may end, else a closing byte half the time, else a letter or digit.
func fakeGrammarToken(rng *rand.Rand, m *grammar.Matcher) int32 {
	mask := make([]uint32, (fakeVocabSize+31)/32)
	if err := m.FillMask(mask); err != nil {
		panic(err)
	}
	allowed := func(id int32) bool { return mask[id/32]&(1<<(id%32)) != 0 }
	if allowed(fakeEOS) {
		return fakeEOS
	}
	var closing, nice, all []int32
	for id := int32(0); id < fakeVocabSize; id++ {
		if !allowed(id) {
			continue
		}
		all = append(all, id)
		if id < fakeByteBase {
			continue
		}
		switch c := byte(id - fakeByteBase); {
		case c == '"' || c == '}' || c == ']':
			closing = append(closing, id)
		case c >= 'a' && c <= 'z' || c >= '0' && c <= '9':
			nice = append(nice, id)
		}
	}
	switch {
	case len(closing) > 0 && rng.IntN(2) == 0:
		return closing[rng.IntN(len(closing))]
	case len(nice) > 0:
		return nice[rng.IntN(len(nice))]
	case len(all) > 0:
		return all[rng.IntN(len(all))]
	}
	panic("grammar allows no token")
}

// ApplyToolChatTemplate renders tools and tool messages in a simple layout the tests
// can read back from the prompt.
func (fakeTokenizer) ApplyToolChatTemplate(msgs []ChatMessage, tools [][]byte, addGen bool) (string, error) {
	var b strings.Builder
	b.WriteString("<bos>")
	for _, t := range tools {
		b.WriteString("TOOL " + string(t) + "\n")
	}
	for _, m := range msgs {
		b.WriteString("<start_of_turn>" + m.Role + "\n" + messageText(m))
		for _, c := range m.ToolCalls {
			b.WriteString("CALL " + c.Name + " " + c.Arguments)
		}
		b.WriteString("<end_of_turn>\n")
	}
	if addGen {
		b.WriteString("<start_of_turn>model\n")
	}
	return b.String(), nil
}
