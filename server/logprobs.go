package server

import (
	"math"
	"strconv"
	"unicode/utf8"

	"github.com/tpuserve/tpuserve/engine"
)

// minLogprob stands in for -Inf (and NaN), which JSON cannot carry; vLLM uses the same.
const minLogprob = -9999.0

func jsonLogprob(v float32) float64 {
	f := float64(v)
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return minLogprob
	}
	return f
}

// tokenText names a token in logprobs: the token decoded on its own (" Hello" for the piece
// "▁Hello", U+FFFD for a lone byte-fallback piece), as vLLM does, or "token_id:N" when the
// request asked return_tokens_as_token_ids.
func (s *Server) tokenText(id int32, asIDs bool) string {
	if !asIDs {
		if t, err := s.tok.Decode([]int32{id}, false); err == nil {
			return t
		}
	}
	return "token_id:" + strconv.Itoa(int(id))
}

// appendCompletionLogprobs adds positions to OpenAI's legacy completions logprobs object.
// offset is the character offset (in code points, as vLLM counts) of the first position
// within the choice's text; the new offset is returned. top_logprobs holds the top k
// alternatives plus the chosen token, as vLLM does.
func (s *Server) appendCompletionLogprobs(lp *completionLogprobs, pos []engine.PositionLogprobs, k int, asIDs bool, offset int) int {
	for _, p := range pos {
		tok := s.tokenText(p.Chosen.TokenID, asIDs)
		lp.Tokens = append(lp.Tokens, tok)
		v := jsonLogprob(p.Chosen.Logprob)
		lp.TokenLogprobs = append(lp.TokenLogprobs, &v)
		top := make(map[string]float64, min(k, len(p.Top))+1)
		for _, t := range p.Top[:min(k, len(p.Top))] {
			top[s.tokenText(t.TokenID, asIDs)] = jsonLogprob(t.Logprob)
		}
		if _, ok := top[tok]; !ok {
			top[tok] = jsonLogprob(p.Chosen.Logprob)
		}
		lp.TopLogprobs = append(lp.TopLogprobs, top)
		lp.TextOffset = append(lp.TextOffset, offset)
		offset += utf8.RuneCountInString(tok)
	}
	return offset
}

// tokenBytes are the UTF-8 bytes of a token's text as JSON numbers (a []byte would be
// base64).
func tokenBytes(t string) []int {
	b := make([]int, len(t))
	for i := 0; i < len(t); i++ {
		b[i] = int(t[i])
	}
	return b
}

// appendChatLogprobs adds positions to a chat logprobs object (content[].{token, logprob,
// bytes, top_logprobs}); top_logprobs holds the top k alternatives.
func (s *Server) appendChatLogprobs(lp *chatLogprobs, pos []engine.PositionLogprobs, k int, asIDs bool) {
	for _, p := range pos {
		tok := s.tokenText(p.Chosen.TokenID, asIDs)
		e := chatTokenLogprob{Token: tok, Logprob: jsonLogprob(p.Chosen.Logprob), Bytes: tokenBytes(tok),
			TopLogprobs: make([]chatTopLogprob, 0, min(k, len(p.Top)))}
		for _, t := range p.Top[:min(k, len(p.Top))] {
			ts := s.tokenText(t.TokenID, asIDs)
			e.TopLogprobs = append(e.TopLogprobs, chatTopLogprob{Token: ts, Logprob: jsonLogprob(t.Logprob), Bytes: tokenBytes(ts)})
		}
		lp.Content = append(lp.Content, e)
	}
}

// eventLogprobs returns the event's logprobs, trimmed to its tokens (defensive: the
// engine promises one per token).
func eventLogprobs(ev *engine.Event) []engine.PositionLogprobs {
	if len(ev.Logprobs) > len(ev.TokenIDs) && len(ev.TokenIDs) > 0 {
		return ev.Logprobs[:len(ev.TokenIDs)]
	}
	return ev.Logprobs
}

// appendEchoLogprobs adds the echoed prompt to a completions logprobs object, as vLLM's
// echo with logprobs does: the first prompt token with null logprobs, then each prompt
// position with its logprob and the top k. It returns the new text offset.
func (s *Server) appendEchoLogprobs(lp *completionLogprobs, promptIDs []int32, promptLP []engine.PositionLogprobs, k int, asIDs bool) int {
	if len(promptIDs) == 0 {
		return 0
	}
	first := s.tokenText(promptIDs[0], asIDs)
	lp.Tokens = append(lp.Tokens, first)
	lp.TokenLogprobs = append(lp.TokenLogprobs, nil)
	lp.TopLogprobs = append(lp.TopLogprobs, nil)
	lp.TextOffset = append(lp.TextOffset, 0)
	return s.appendCompletionLogprobs(lp, promptLP, k, asIDs, utf8.RuneCountInString(first))
}

// promptLogprobsJSON is vLLM's prompt_logprobs field: null for the first prompt token,
// then for each position the prompt token and its top k alternatives keyed by token id,
// with their rank (1 = most likely; the prompt token's rank is counted among the top k, or
// k+1 when it is not in them).
func (s *Server) promptLogprobsJSON(promptLP []engine.PositionLogprobs, k int) []map[string]promptLogprob {
	out := []map[string]promptLogprob{nil}
	for _, p := range promptLP {
		m := make(map[string]promptLogprob, k+1)
		rank := k + 1
		for r, t := range p.Top[:min(k, len(p.Top))] {
			m[strconv.Itoa(int(t.TokenID))] = promptLogprob{Logprob: jsonLogprob(t.Logprob), Rank: r + 1, DecodedToken: s.tokenText(t.TokenID, false)}
			if t.TokenID == p.Chosen.TokenID {
				rank = r + 1
			}
		}
		m[strconv.Itoa(int(p.Chosen.TokenID))] = promptLogprob{Logprob: jsonLogprob(p.Chosen.Logprob), Rank: rank, DecodedToken: s.tokenText(p.Chosen.TokenID, false)}
		out = append(out, m)
	}
	return out
}
