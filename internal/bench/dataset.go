package bench

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"unicode/utf8"
)

// ErrConfig is wrapped by every error about a bad benchmark setting or input file.
var ErrConfig = errors.New("bench: invalid configuration")

// SampleRequest is one prompt to send.
type SampleRequest struct {
	// Prompt is the completions API's prompt: a string, or token ids ([]int).
	Prompt any
	// PromptLen is the prompt's length in tokens as the dataset knows it; the server's
	// usage.prompt_tokens replaces it when reported (as in vLLM).
	PromptLen int
	// ExpectedOutputLen is sent as max_tokens.
	ExpectedOutputLen int
}

// RandomOptions configure vLLM's random dataset.
type RandomOptions struct {
	NumPrompts int
	// InputLen and OutputLen are the mean lengths; RangeRatio r in [0, 1) draws each length
	// uniformly from [floor(L·(1−r)), ceil(L·(1+r))] (output at least 1).
	InputLen, OutputLen int
	RangeRatio          float64
	// PrefixLen random tokens, the same for every prompt, come first.
	PrefixLen int
	// TokenLo and TokenHi bound the token ids used, [TokenLo, TokenHi): keep them inside the
	// model's vocabulary and away from control tokens.
	TokenLo, TokenHi int
}

// Default token-id range of the random dataset for Gemma 3: above the control and unused
// tokens, below <start_of_image> (255999) and the image tokens.
const (
	DefaultTokenLo = 256
	DefaultTokenHi = 255999
)

// RandomDataset builds vLLM's random dataset as token-id prompts: lengths drawn as above,
// then, for request i with a random offset, the ids allowed[(offset + i + k) mod |allowed|]
// for k < input length, after the shared prefix. Token-id prompts need no tokenizer and
// have exactly the drawn length.
func RandomDataset(o RandomOptions, rng *rand.Rand) ([]SampleRequest, error) {
	if o.NumPrompts <= 0 {
		return nil, fmt.Errorf("%w: num-prompts: %d must be positive", ErrConfig, o.NumPrompts)
	}
	if !(o.RangeRatio >= 0 && o.RangeRatio < 1) {
		return nil, fmt.Errorf("%w: random-range-ratio: %v must be in [0, 1)", ErrConfig, o.RangeRatio)
	}
	if o.InputLen < 0 || o.OutputLen <= 0 || o.PrefixLen < 0 {
		return nil, fmt.Errorf("%w: random-input-len %d, random-output-len %d, random-prefix-len %d: lengths must not be negative and the output must be positive",
			ErrConfig, o.InputLen, o.OutputLen, o.PrefixLen)
	}
	if o.TokenLo < 0 || o.TokenHi <= o.TokenLo {
		return nil, fmt.Errorf("%w: random-token-range: [%d, %d) is empty", ErrConfig, o.TokenLo, o.TokenHi)
	}
	inLo := int(math.Floor(float64(o.InputLen) * (1 - o.RangeRatio)))
	inHi := int(math.Ceil(float64(o.InputLen) * (1 + o.RangeRatio)))
	outLo := max(int(math.Floor(float64(o.OutputLen)*(1-o.RangeRatio))), 1)
	outHi := max(int(math.Ceil(float64(o.OutputLen)*(1+o.RangeRatio))), 1)
	if o.PrefixLen+inLo < 1 {
		return nil, fmt.Errorf("%w: random-input-len: %d with range ratio %v can give an empty prompt", ErrConfig, o.InputLen, o.RangeRatio)
	}
	vocab := o.TokenHi - o.TokenLo
	prefix := make([]int, o.PrefixLen)
	for i := range prefix {
		prefix[i] = o.TokenLo + rng.IntN(vocab)
	}
	reqs := make([]SampleRequest, o.NumPrompts)
	inLens := make([]int, o.NumPrompts)
	outLens := make([]int, o.NumPrompts)
	offsets := make([]int, o.NumPrompts)
	// Same draw order as vLLM: all input lengths, all output lengths, then offsets.
	for i := range inLens {
		inLens[i] = inLo + rng.IntN(inHi-inLo+1)
	}
	for i := range outLens {
		outLens[i] = outLo + rng.IntN(outHi-outLo+1)
	}
	for i := range offsets {
		offsets[i] = rng.IntN(vocab)
	}
	for i := range reqs {
		ids := make([]int, 0, o.PrefixLen+inLens[i])
		ids = append(ids, prefix...)
		for k := 0; k < inLens[i]; k++ {
			ids = append(ids, o.TokenLo+(offsets[i]+i+k)%vocab)
		}
		reqs[i] = SampleRequest{Prompt: ids, PromptLen: len(ids), ExpectedOutputLen: outLens[i]}
	}
	return reqs, nil
}

// ShareGPTOptions configure the ShareGPT dataset.
type ShareGPTOptions struct {
	Path       string
	NumPrompts int
	// OutputLen, when > 0, fixes max_tokens (vLLM's --sharegpt-output-len); otherwise each
	// request asks for about as many tokens as the recorded answer has.
	OutputLen int
}

type shareGPTEntry struct {
	Conversations []struct {
		From  string `json:"from"`
		Value string `json:"value"`
	} `json:"conversations"`
}

// EstimateTokens approximates a text's token count without a tokenizer: one token per four
// characters, rounded up. It only decides which ShareGPT conversations qualify and their
// max_tokens; reported input lengths come from the server's usage.
func EstimateTokens(s string) int {
	return (utf8.RuneCountInString(s) + 3) / 4
}

// LoadShareGPT reads a ShareGPT JSON file (a list of {"conversations": [{"from", "value"},
// ...]}), shuffles the conversations with rng and keeps the first turn of each as the
// prompt, as vLLM does: conversations with fewer than two turns are skipped, and so are
// those vLLM's is_valid_sequence rejects (prompt or answer under 4 tokens, prompt over 1024,
// both over 2048). If fewer than NumPrompts qualify, random ones are repeated.
func LoadShareGPT(o ShareGPTOptions, rng *rand.Rand) ([]SampleRequest, error) {
	if o.NumPrompts <= 0 {
		return nil, fmt.Errorf("%w: num-prompts: %d must be positive", ErrConfig, o.NumPrompts)
	}
	if o.OutputLen < 0 {
		return nil, fmt.Errorf("%w: sharegpt-output-len: %d must not be negative", ErrConfig, o.OutputLen)
	}
	b, err := os.ReadFile(o.Path)
	if err != nil {
		return nil, fmt.Errorf("%w: dataset-path: %w", ErrConfig, err)
	}
	var entries []shareGPTEntry
	if err := json.Unmarshal(b, &entries); err != nil {
		return nil, fmt.Errorf("%w: dataset-path %s: not a ShareGPT JSON list: %w", ErrConfig, o.Path, err)
	}
	kept := entries[:0]
	for _, e := range entries {
		if len(e.Conversations) >= 2 {
			kept = append(kept, e)
		}
	}
	rng.Shuffle(len(kept), func(i, j int) { kept[i], kept[j] = kept[j], kept[i] })
	var reqs []SampleRequest
	for _, e := range kept {
		if len(reqs) >= o.NumPrompts {
			break
		}
		prompt := e.Conversations[0].Value
		promptLen := EstimateTokens(prompt)
		outLen := o.OutputLen
		if outLen == 0 {
			outLen = EstimateTokens(e.Conversations[1].Value)
		}
		if !validSequence(promptLen, outLen, o.OutputLen > 0) {
			continue
		}
		reqs = append(reqs, SampleRequest{Prompt: prompt, PromptLen: promptLen, ExpectedOutputLen: outLen})
	}
	if len(reqs) == 0 {
		return nil, fmt.Errorf("%w: dataset-path %s: no conversation qualifies (need two turns, prompt 4..1024 tokens)", ErrConfig, o.Path)
	}
	for n := len(reqs); len(reqs) < o.NumPrompts; {
		reqs = append(reqs, reqs[rng.IntN(n)])
	}
	return reqs, nil
}

// validSequence is vLLM's is_valid_sequence with its defaults.
func validSequence(promptLen, outputLen int, skipMinOutput bool) bool {
	const minLen, maxPrompt, maxTotal = 4, 1024, 2048
	if promptLen < minLen || (!skipMinOutput && outputLen < minLen) {
		return false
	}
	return promptLen <= maxPrompt && promptLen+outputLen <= maxTotal
}
