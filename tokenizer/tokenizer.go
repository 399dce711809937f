package tokenizer

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"unicode/utf8"
)

var (
	// ErrInvalidTokenizer is wrapped by every load error: a malformed, truncated or
	// unsupported tokenizer.json or tokenizer_config.json. The message names the section.
	ErrInvalidTokenizer = errors.New("tokenizer: invalid tokenizer file")
	// ErrInvalidID is wrapped by Decode and StreamDecoder.Add for an id outside the
	// vocabulary.
	ErrInvalidID = errors.New("tokenizer: token id out of range")
	// ErrChatTemplate is wrapped by ApplyChatTemplate's errors: no template, an
	// unsupported template, or the template's own errors (with Hugging Face's message).
	ErrChatTemplate = errors.New("tokenizer: chat template")
)

// Tokenizer encodes text to ids and back as Hugging Face's tokenizers library does with
// the same tokenizer.json. It is immutable after loading and safe for concurrent use.
type Tokenizer struct {
	bpe   *bpeModel
	norm  normalizer
	pre   *splitPre
	dec   decoder
	added *addedMatcher

	pieces  []string // id → raw piece (the added token's content for added ids)
	special []bool   // id → special (skipped by Decode with skipSpecialTokens)
	byteVal []int16  // id → byte of a "<0xNN>" piece, or -1

	prefix, suffix []int32 // added around the text when addSpecialTokens is set

	bos, eos     int32
	bosText      string // bos_token from tokenizer_config.json, for the chat template
	configEOS    int32
	hasConfigEOS bool
	chat         *chatTemplate
}

// workspace holds the scratch buffers of one Encode call.
type workspace struct {
	norm                            []byte
	syms, ranks, newIDs, prev, next []int32
	alive                           []bool
	heap                            []queued
}

var workspaces = sync.Pool{New: func() any { return new(workspace) }}

// Encode returns the ids of text as HF's encode does: added tokens written in the text
// (<start_of_turn>, <bos>, "\n\n", ...) become their ids, and addSpecialTokens adds what
// the post-processor adds (BOS for Gemma). Invalid UTF-8 is first replaced with U+FFFD as
// a UTF-8 decoder following the WHATWG/Unicode practice does (Node's Buffer.toString,
// Python's errors="replace"), which is how such bytes reach HF.
func (t *Tokenizer) Encode(text string, addSpecialTokens bool) []int32 {
	return t.encode(text, addSpecialTokens, false)
}

// EncodeLiteral is Encode for untrusted text: special tokens written in the text (such
// as "<start_of_turn>" or "<bos>") are encoded as plain text, as HF does with
// encode_special_tokens / split_special_tokens set. Non-special added tokens (newline
// runs, tabs, <unusedN>, HTML tags) are still matched, as in HF.
func (t *Tokenizer) EncodeLiteral(text string, addSpecialTokens bool) []int32 {
	return t.encode(text, addSpecialTokens, true)
}

func (t *Tokenizer) encode(text string, addSpecialTokens, literal bool) []int32 {
	text = ToValidUTF8(text)
	ws := workspaces.Get().(*workspace)
	defer workspaces.Put(ws)
	out := make([]int32, 0, len(text)/3+len(t.prefix)+len(t.suffix)+1)
	if addSpecialTokens {
		out = append(out, t.prefix...)
	}
	segStart := 0
	for pos := 0; pos < len(text); {
		s, e, tok := t.added.find(text, pos)
		if tok < 0 {
			break
		}
		pos = e
		at := t.added.tokens[tok]
		if literal && at.special {
			continue // left in the text, like HF's encode_special_tokens
		}
		out = t.appendSegment(out, text[segStart:s], ws)
		out = append(out, at.id)
		segStart = e
	}
	out = t.appendSegment(out, text[segStart:], ws)
	if addSpecialTokens {
		out = append(out, t.suffix...)
	}
	return out
}

// appendSegment encodes text between added tokens: normalize, pre-tokenize, BPE.
func (t *Tokenizer) appendSegment(out []int32, seg string, ws *workspace) []int32 {
	if seg == "" {
		return out
	}
	ws.norm = t.norm.apply(ws.norm, seg)
	t.pre.words(ws.norm, func(word []byte) {
		out = t.bpe.appendWord(out, word, ws)
	})
	return out
}

// Decode returns the text of ids as HF's decode does; skipSpecialTokens drops special
// tokens (<bos>, <eos>, <start_of_turn>, ...). An id outside the vocabulary is an error
// wrapping ErrInvalidID (HF drops it silently).
func (t *Tokenizer) Decode(ids []int32, skipSpecialTokens bool) (string, error) {
	buf := make([]byte, 0, 4*len(ids))
	var run []byte
	for i, id := range ids {
		if err := t.checkID(id); err != nil {
			return "", fmt.Errorf("%w (position %d)", err, i)
		}
		if skipSpecialTokens && t.special[id] {
			continue
		}
		if t.dec.byteFallback {
			if b := t.byteVal[id]; b >= 0 {
				run = append(run, byte(b))
				continue
			}
			if len(run) > 0 {
				buf = appendByteRun(buf, run)
				run = run[:0]
			}
		}
		buf = t.dec.appendPiece(buf, t.pieces[id])
	}
	buf = appendByteRun(buf, run)
	return string(buf), nil
}

func (t *Tokenizer) checkID(id int32) error {
	if id < 0 || int(id) >= len(t.pieces) || t.pieces[id] == "" {
		return fmt.Errorf("%w: id %d (vocabulary size %d)", ErrInvalidID, id, len(t.pieces))
	}
	return nil
}

// VocabSize is one more than the largest id: 262145 for Gemma 3 (the model vocab plus
// <image_soft_token>). Ids at or beyond it are invalid.
func (t *Tokenizer) VocabSize() int { return len(t.pieces) }

// TokenString returns the raw vocabulary piece of id ("▁Hello", "<0x0A>", "<bos>").
func (t *Tokenizer) TokenString(id int32) (string, bool) {
	if t.checkID(id) != nil {
		return "", false
	}
	return t.pieces[id], true
}

// TokenID returns the id of a raw piece (model vocabulary or added token).
func (t *Tokenizer) TokenID(piece string) (int32, bool) { return t.lookupPiece(piece) }

// IsSpecial reports whether id is a special token (dropped by skipSpecialTokens).
func (t *Tokenizer) IsSpecial(id int32) bool {
	return t.checkID(id) == nil && t.special[id]
}

// BOS is the beginning-of-sequence id (2 for Gemma): tokenizer_config.json's bos_token,
// else the post-processor's first token, else "<bos>"; -1 if none.
func (t *Tokenizer) BOS() int32 { return t.bos }

// EOS is the id of "<eos>" (1 for Gemma), the end of a sequence; -1 if none. Instruction
// tuned Gemma also ends a reply with <end_of_turn>: see StopIDs.
func (t *Tokenizer) EOS() int32 { return t.eos }

// StopIDs returns the ids that end generation by default: EOS and, when
// tokenizer_config.json names another eos_token (Gemma 3: <end_of_turn>), that one too.
func (t *Tokenizer) StopIDs() []int32 {
	var ids []int32
	if t.eos >= 0 {
		ids = append(ids, t.eos)
	}
	if t.hasConfigEOS && t.configEOS != t.eos {
		ids = append(ids, t.configEOS)
	}
	return ids
}

// StreamDecoder turns ids into text one id at a time for streaming. The pieces it returns
// concatenate to exactly Decode of all the ids added so far plus Flush. It never splits a
// UTF-8 character: a run of byte-fallback ids is held until a non-byte id (or Flush) ends
// it, because HF decodes a run that is not valid UTF-8 as one U+FFFD per byte, so text
// from the start of a run is not final until the run ends. A StreamDecoder is not safe
// for concurrent use; the Tokenizer it comes from is.
type StreamDecoder struct {
	t    *Tokenizer
	skip bool
	run  []byte
	buf  []byte
}

// NewStreamDecoder starts an incremental decode; skipSpecialTokens as in Decode.
func (t *Tokenizer) NewStreamDecoder(skipSpecialTokens bool) *StreamDecoder {
	return &StreamDecoder{t: t, skip: skipSpecialTokens}
}

// Add appends one id and returns the text that became final (often "", never part of a
// character). An invalid id is an error wrapping ErrInvalidID and changes nothing.
func (d *StreamDecoder) Add(id int32) (string, error) {
	t := d.t
	if err := t.checkID(id); err != nil {
		return "", err
	}
	if d.skip && t.special[id] {
		return "", nil
	}
	if t.dec.byteFallback && t.byteVal[id] >= 0 {
		d.run = append(d.run, byte(t.byteVal[id]))
		return "", nil
	}
	d.buf = appendByteRun(d.buf[:0], d.run)
	d.run = d.run[:0]
	d.buf = t.dec.appendPiece(d.buf, t.pieces[id])
	return string(d.buf), nil
}

// Flush returns what is pending at the end: a held byte run, decoded as Decode would
// (invalid bytes become U+FFFD, one per byte). The decoder can be used again afterwards.
func (d *StreamDecoder) Flush() string {
	s := string(appendByteRun(nil, d.run))
	d.run = d.run[:0]
	return s
}

// ToValidUTF8 replaces each maximal ill-formed subsequence of s with one U+FFFD, the
// Unicode and WHATWG practice that Node's and Python's UTF-8 decoders follow (Go's
// strings.ToValidUTF8 instead replaces whole runs, and range loops each byte).
func ToValidUTF8(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 8)
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			b.WriteByte(c)
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r != utf8.RuneError || size > 1 {
			b.WriteString(s[i : i+size])
			i += size
			continue
		}
		b.WriteRune(utf8.RuneError)
		i += maximalSubpart(s[i:])
	}
	return b.String()
}

// maximalSubpart returns the length of the ill-formed sequence at the start of s: the
// lead byte plus the continuation bytes that are valid for it (Unicode table 3-7).
func maximalSubpart(s string) int {
	c := s[0]
	lo, hi := byte(0x80), byte(0xBF)
	need := 0
	switch {
	case c >= 0xC2 && c <= 0xDF:
		need = 1
	case c == 0xE0:
		need, lo = 2, 0xA0
	case c >= 0xE1 && c <= 0xEC, c == 0xEE, c == 0xEF:
		need = 2
	case c == 0xED:
		need, hi = 2, 0x9F
	case c == 0xF0:
		need, lo = 3, 0x90
	case c >= 0xF1 && c <= 0xF3:
		need = 3
	case c == 0xF4:
		need, hi = 3, 0x8F
	default:
		return 1
	}
	n := 1
	for ; n <= need && n < len(s); n++ {
		if s[n] < lo || s[n] > hi {
			break
		}
		lo, hi = 0x80, 0xBF
	}
	return n
}

// TokenBytes returns the bytes id contributes to decoded text: a byte-fallback piece
// ("<0x0A>") is its one byte, any other piece has the decoder's replacements applied ('▁'
// becomes ' '). Constrained decoding matches these bytes against a grammar. Special tokens
// return their piece as is (callers decide whether to treat them as text); an invalid id
// returns nil.
func (t *Tokenizer) TokenBytes(id int32) []byte {
	if t.checkID(id) != nil {
		return nil
	}
	if t.dec.byteFallback {
		if b := t.byteVal[id]; b >= 0 {
			return []byte{byte(b)}
		}
	}
	return t.dec.appendPiece(nil, t.pieces[id])
}
