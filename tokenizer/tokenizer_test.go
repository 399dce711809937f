package tokenizer

import (
	"errors"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestEncodeTiny(t *testing.T) {
	tok := newTinyFile().tokenizer(t)
	tests := []struct {
		name    string
		text    string
		special bool
		literal bool
		want    []string
	}{
		{"merges", "hello world", false, false, []string{"hello", "▁world"}},
		{"leading space", " hello", false, false, []string{"▁hello"}},
		{"bos added", "hello", true, false, []string{"<bos>", "hello"}},
		{"empty", "", false, false, []string{}},
		{"empty with bos", "", true, false, []string{"<bos>"}},
		{"equal ranks leftmost first", "aaa", false, false, []string{"aa", "a"}},
		{"lowest rank first", "abc", false, false, []string{"abc"}},
		{"one-char piece", "é", false, false, []string{"é"}},
		{"byte fallback", "ü", false, false, []string{"<0xC3>", "<0xBC>"}},
		{"spaces", "a  b", false, false, []string{"a", "▁▁", "b"}},
		{"merge across a space after >", "a> <b", false, false, []string{"a", ">▁<", "b"}},
		{"cut before a space elsewhere", "ab world", false, false, []string{"ab", "▁world"}},
		{"special token in text", "x<eos>x", false, false, []string{"x", "<eos>", "x"}},
		{"special token literal", "x<eos>x", false, true, []string{"x", "<", "e", "o", "<0x73>", ">", "x"}},
		{"non-special added token stays in literal mode", "a\n\nb<mask>", false, true, []string{"a", "\n\n", "b", "<mask>"}},
		{"longest added token first", "\n\n\n", false, false, []string{"\n\n", "\n"}},
		{"added token beyond the model vocab", "a<extra>", false, false, []string{"a", tinyExtra}},
		{"added tokens are not normalized", "<start_of_turn> hello", false, false, []string{"<start_of_turn>", "▁hello"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []int32
			if tt.literal {
				got = tok.EncodeLiteral(tt.text, tt.special)
			} else {
				got = tok.Encode(tt.text, tt.special)
			}
			if want := tinyIDs(t, tok, tt.want...); !slices.Equal(got, want) {
				t.Fatalf("Encode(%q) = %v, want %v %q", tt.text, got, want, tt.want)
			}
		})
	}
}

func TestEncodeInvalidUTF8(t *testing.T) {
	tok := newTinyFile().tokenizer(t)
	got := tok.Encode("a\xe4\xb8b\xff", false)
	want := tok.Encode("a\uFFFDb\uFFFD", false)
	if !slices.Equal(got, want) {
		t.Fatalf("invalid UTF-8: %v, want %v (as after replacement)", got, want)
	}
}

func TestToValidUTF8(t *testing.T) {
	tests := []struct{ in, want string }{
		{"abc", "abc"},
		{"\xff", "\uFFFD"},
		{"a\xc3(b", "a\uFFFD(b"},
		{"\xe4\xb8", "\uFFFD"},                           // one maximal subpart
		{"\xed\xa0\x80", "\uFFFD\uFFFD\uFFFD"},           // surrogate: ED alone is the subpart
		{"\xf0\x9f\x98", "\uFFFD"},                       // truncated 4-byte
		{"\xf0\x9f\x98\x80", "😀"},                        // valid
		{"\xc0\xaf", "\uFFFD\uFFFD"},                     // overlong lead is never valid
		{"\xf4\x90\x80\x80", "\uFFFD\uFFFD\uFFFD\uFFFD"}, // beyond U+10FFFF
		{"\xe0\x80\x80", "\uFFFD\uFFFD\uFFFD"},           // E0 needs A0..BF next
		{"\xe4\xb8\xe4\xb8\x80", "\uFFFD一"},
	}
	for _, tt := range tests {
		if got := ToValidUTF8(tt.in); got != tt.want {
			t.Errorf("ToValidUTF8(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestDecodeTiny(t *testing.T) {
	tok := newTinyFile().tokenizer(t)
	tests := []struct {
		name   string
		pieces []string
		skip   bool
		want   string
	}{
		{"pieces", []string{"hello", "▁world"}, false, "hello world"},
		{"leading space kept", []string{"▁hello"}, false, " hello"},
		{"special kept", []string{"<bos>", "hello", "<eos>"}, false, "<bos>hello<eos>"},
		{"special skipped", []string{"<bos>", "hello", "<eos>"}, true, "hello"},
		{"non-special added token kept", []string{"<mask>", "\n\n"}, true, "<mask>\n\n"},
		{"byte run", []string{"<0xC3>", "<0xBC>", "x"}, false, "üx"},
		{"invalid byte run: one U+FFFD per byte", []string{"<0xC3>", "<0x41>", "x"}, false, "\uFFFD\uFFFDx"},
		{"truncated run at the end", []string{"x", "<0xE4>", "<0xB8>"}, false, "x\uFFFD\uFFFD"},
		{"run joined across a skipped token", []string{"<0xC3>", "<bos>", "<0xBC>"}, true, "ü"},
		{"run split by a kept token", []string{"<0xC3>", "<bos>", "<0xBC>"}, false, "\uFFFD<bos>\uFFFD"},
		{"bytes of ▁ stay ▁", []string{"<0xE2>", "<0x96>", "<0x81>"}, false, "▁"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ids := tinyIDs(t, tok, tt.pieces...)
			got, err := tok.Decode(ids, tt.skip)
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Fatalf("Decode = %q, want %q", got, tt.want)
			}
			if s := streamDecode(t, tok, ids, tt.skip); s != tt.want {
				t.Fatalf("stream = %q, want %q", s, tt.want)
			}
		})
	}
}

func TestDecodeInvalidID(t *testing.T) {
	tok := newTinyFile().tokenizer(t)
	for _, id := range []int32{-1, int32(tok.VocabSize()), 1 << 30} {
		if _, err := tok.Decode([]int32{2, id}, false); !errors.Is(err, ErrInvalidID) {
			t.Errorf("Decode(%d): err %v, want ErrInvalidID", id, err)
		}
		d := tok.NewStreamDecoder(false)
		if _, err := d.Add(id); !errors.Is(err, ErrInvalidID) {
			t.Errorf("StreamDecoder.Add(%d): err %v, want ErrInvalidID", id, err)
		}
		if _, ok := tok.TokenString(id); ok {
			t.Errorf("TokenString(%d) ok", id)
		}
		if tok.IsSpecial(id) {
			t.Errorf("IsSpecial(%d)", id)
		}
	}
}

func TestStreamDecoderHoldsByteRuns(t *testing.T) {
	tok := newTinyFile().tokenizer(t)
	d := tok.NewStreamDecoder(false)
	steps := []struct{ piece, want string }{
		{"hello", "hello"},
		{"<0xC3>", ""}, // held: the run is not over
		{"<0xBC>", ""}, // still held: a later byte could make the run invalid
		{"▁world", "ü world"},
		{"<0xE4>", ""},
	}
	for _, s := range steps {
		got, err := d.Add(tinyIDs(t, tok, s.piece)[0])
		if err != nil {
			t.Fatal(err)
		}
		if got != s.want {
			t.Fatalf("Add(%q) = %q, want %q", s.piece, got, s.want)
		}
	}
	if got := d.Flush(); got != "\uFFFD" {
		t.Fatalf("Flush = %q, want U+FFFD", got)
	}
	if got := d.Flush(); got != "" {
		t.Fatalf("second Flush = %q, want empty", got)
	}
}

func TestAccessorsTiny(t *testing.T) {
	tok := newTinyFile().tokenizer(t)
	f := newTinyFile()
	if got, want := tok.VocabSize(), len(f.Model.Vocab)+1; got != want {
		t.Errorf("VocabSize = %d, want %d (model vocab + <extra>)", got, want)
	}
	if tok.BOS() != 2 || tok.EOS() != 1 {
		t.Errorf("BOS, EOS = %d, %d; want 2, 1", tok.BOS(), tok.EOS())
	}
	if got := tok.StopIDs(); !slices.Equal(got, []int32{1}) {
		t.Errorf("StopIDs = %v, want [1]", got)
	}
	if s, ok := tok.TokenString(int32(len(f.Model.Vocab))); !ok || s != tinyExtra {
		t.Errorf("TokenString(extra) = %q, %v", s, ok)
	}
	for piece, want := range map[string]bool{"<bos>": true, "<start_of_turn>": true, tinyExtra: true, "<mask>": false, "\n": false, "a": false} {
		if got := tok.IsSpecial(tinyIDs(t, tok, piece)[0]); got != want {
			t.Errorf("IsSpecial(%q) = %v, want %v", piece, got, want)
		}
	}
}

func TestUnknownCharacters(t *testing.T) {
	tests := []struct {
		name    string
		fuseUnk bool
		text    string
		want    []string
	}{
		{"fused", true, "aüüa", []string{"a", "<unk>", "a"}},
		{"not fused", false, "aüüa", []string{"a", "<unk>", "<unk>", "a"}},
		{"unk at the end", true, "aü", []string{"a", "<unk>"}},
		{"unk runs around a space are one word", true, "ü ü", []string{"<unk>", "▁", "<unk>"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newTinyFile()
			f.Model.ByteFallback = false
			f.Model.FuseUnk = tt.fuseUnk
			tok := f.tokenizer(t)
			if tok.bpe.splitSpace {
				t.Fatal("sub-word cuts must be off without byte fallback")
			}
			if got, want := tok.Encode(tt.text, false), tinyIDs(t, tok, tt.want...); !slices.Equal(got, want) {
				t.Fatalf("Encode(%q) = %v, want %v", tt.text, got, want)
			}
		})
	}
}

func TestMergesAsStrings(t *testing.T) {
	// Older files write merges as "left right" strings.
	f := newTinyFile()
	var legacy []string
	for _, m := range tinyMerges {
		legacy = append(legacy, m[0]+" "+m[1])
	}
	f.Model.Merges = legacy
	a, b := newTinyFile().tokenizer(t), f.tokenizer(t)
	for _, s := range []string{"hello world", "abc aaa", "a> <b"} {
		if x, y := a.Encode(s, false), b.Encode(s, false); !slices.Equal(x, y) {
			t.Errorf("%q: pairs give %v, strings give %v", s, x, y)
		}
	}
}

func TestMergesBeforeVocab(t *testing.T) {
	// Key order is free in JSON: merges may come before the vocab they refer to.
	f := newTinyFile()
	var generic map[string]any
	if err := jsonRoundTrip(f.bytes(t), &generic); err != nil {
		t.Fatal(err)
	}
	data, err := marshalSorted(generic) // "merges" sorts before "vocab"
	if err != nil {
		t.Fatal(err)
	}
	tok, err := Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := tok.Encode("hello world", false), newTinyFile().tokenizer(t).Encode("hello world", false); !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}

func TestNormalizerPrependAndSplit(t *testing.T) {
	f := newTinyFile()
	f.Normalizer = map[string]any{"type": "Sequence", "normalizers": []any{
		map[string]any{"type": "Prepend", "prepend": "▁"},
		map[string]any{"type": "Replace", "pattern": map[string]any{"String": " "}, "content": "▁"},
	}}
	f.PreTokenizer = map[string]any{"type": "Split", "pattern": map[string]any{"String": "o"}, "behavior": "MergedWithPrevious", "invert": false}
	tok := f.tokenizer(t)
	// "hello" → "▁hello" → words "▁hello" (the 'o' delimiter joins the text before it).
	if got, want := tok.Encode("hello", false), tinyIDs(t, tok, "▁hello"); !slices.Equal(got, want) {
		t.Fatalf("Encode(hello) = %v, want %v", got, want)
	}
	// "oo" → "▁oo" → "▁o" + "o": the second delimiter stands alone.
	if got, want := tok.Encode("oo", false), tinyIDs(t, tok, "▁", "o", "o"); !slices.Equal(got, want) {
		t.Fatalf("Encode(oo) = %v, want %v", got, want)
	}
	// Prepend applies to each segment between added tokens, and not to an empty one.
	if got, want := tok.Encode("<bos>a", false), tinyIDs(t, tok, "<bos>", "▁", "a"); !slices.Equal(got, want) {
		t.Fatalf("Encode(<bos>a) = %v, want %v", got, want)
	}
}

func TestSplitWords(t *testing.T) {
	p := &splitPre{pattern: "▁"}
	tests := []struct {
		in   string
		want []string
	}{
		{"a▁b", []string{"a▁", "b"}},
		{"▁a", []string{"▁", "a"}},
		{"a▁▁b▁", []string{"a▁", "▁", "b▁"}},
		{"ab", []string{"ab"}},
	}
	for _, tt := range tests {
		var got []string
		p.words([]byte(tt.in), func(w []byte) { got = append(got, string(w)) })
		if !slices.Equal(got, tt.want) {
			t.Errorf("words(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// TestMergeStrategiesAgree checks that the quadratic loop, the priority queue and the
// sub-word cuts give the same ids as the plain HF algorithm on random text.
func TestMergeStrategiesAgree(t *testing.T) {
	check := func(t *testing.T, tok *Tokenizer, texts []string) {
		t.Helper()
		defer func(old int) { smallWord = old }(smallWord)
		split := tok.bpe.splitSpace
		defer func() { tok.bpe.splitSpace = split }()
		for _, text := range texts {
			smallWord, tok.bpe.splitSpace = 1<<30, false // quadratic, whole words: HF's order
			want := tok.Encode(text, false)
			for _, v := range []struct {
				small int
				split bool
			}{{0, false}, {0, split}, {1 << 30, split}, {48, split}} {
				smallWord, tok.bpe.splitSpace = v.small, v.split
				if got := tok.Encode(text, false); !slices.Equal(got, want) {
					t.Fatalf("smallWord=%d split=%v: %q gives %v, want %v", v.small, v.split, text, got, want)
				}
			}
		}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	randomText := func(alphabet []string, n int) string {
		var b strings.Builder
		for range n {
			b.WriteString(alphabet[rng.IntN(len(alphabet))])
		}
		return b.String()
	}
	t.Run("tiny", func(t *testing.T) {
		alphabet := []string{"a", "b", "c", "h", "e", "l", "o", " ", "w", "r", "d", ">", "<", "ü", "\n"}
		var texts []string
		for i := range 300 {
			texts = append(texts, randomText(alphabet, 1+i%120))
		}
		check(t, newTinyFile().tokenizer(t), texts)
	})
	t.Run("gemma3", func(t *testing.T) {
		tok := realTokenizer(t)
		alphabet := []string{"a", "e", "t", "th", "in", "er", " ", "  ", ">", "<", "/", "▁", "的", "こ", "😀", ".", "0", "1", "ü", "\t", "ab", "ing"}
		texts := checkedCorpus(t)[:200]
		for i := range 300 {
			texts = append(texts, randomText(alphabet, 1+i))
		}
		check(t, tok, texts)
	})
}

func TestRandomRoundTrip(t *testing.T) {
	// decode(encode(x)) == x for arbitrary valid UTF-8 (without '▁') on the tiny vocab,
	// which byte-falls back for almost everything.
	tok := newTinyFile().tokenizer(t)
	rng := rand.New(rand.NewPCG(3, 4))
	for range 500 {
		var b strings.Builder
		for range rng.IntN(40) {
			r := rune(rng.IntN(0x30000))
			if !utf8.ValidRune(r) || r == '▁' {
				r = 'x'
			}
			b.WriteRune(r)
		}
		text := b.String()
		got, err := tok.Decode(tok.Encode(text, true), true)
		if err != nil || got != text {
			t.Fatalf("round trip of %q gave %q (%v)", text, got, err)
		}
	}
}

// TestConcurrentUse encodes and decodes from many goroutines at once (run with -race).
func TestConcurrentUse(t *testing.T) {
	tok := newTinyFile().tokenizer(t)
	texts := []string{"hello world", "abc aaa  <eos>", "a> <b ü\n\nx", strings.Repeat("hello ", 50)}
	want := make([][]int32, len(texts))
	for i, s := range texts {
		want[i] = tok.Encode(s, true)
	}
	done := make(chan error)
	for g := range 8 {
		go func() {
			for i := range 200 {
				k := (g + i) % len(texts)
				if got := tok.Encode(texts[k], true); !slices.Equal(got, want[k]) {
					done <- errors.New("concurrent encode differs for " + texts[k])
					return
				}
				if _, err := tok.Decode(want[k], true); err != nil {
					done <- err
					return
				}
			}
			done <- nil
		}()
	}
	for range 8 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
}
