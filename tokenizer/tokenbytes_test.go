package tokenizer

import (
	"bytes"
	"testing"
)

// TestTokenBytes: a token's bytes are what Decode makes of it alone ('▁' as a space, a
// byte-fallback piece as its byte), and concatenate to Decode for valid UTF-8 text.
func TestTokenBytes(t *testing.T) {
	tok := realTokenizer(t)
	for _, tc := range []struct {
		piece string
		want  string
	}{
		{"▁Hello", " Hello"},
		{"<0x0A>", "\n"},
		{"<0xE6>", "\xe6"},
		{"{\"", "{\""},
	} {
		id, ok := tok.TokenID(tc.piece)
		if !ok {
			t.Fatalf("no piece %q", tc.piece)
		}
		if got := tok.TokenBytes(id); string(got) != tc.want {
			t.Errorf("TokenBytes(%q) = %q, want %q", tc.piece, got, tc.want)
		}
	}
	if got := tok.TokenBytes(-1); got != nil {
		t.Errorf("invalid id: %q, want nil", got)
	}
	text := "Grüße, 世界! {\"a\": [1, 2]}\n\ttabs"
	var all []byte
	for _, id := range tok.EncodeLiteral(text, false) {
		all = append(all, tok.TokenBytes(id)...)
	}
	if !bytes.Equal(all, []byte(text)) {
		t.Errorf("concatenated TokenBytes %q, want %q", all, text)
	}
}
