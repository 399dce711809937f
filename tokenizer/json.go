package tokenizer

import (
	"fmt"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"
)

// jsonReader is a small strict JSON scanner over a byte slice. It exists because
// encoding/json needs about 0.7 s for the 33 MB Gemma 3 tokenizer.json (a 262k-entry vocab
// map and 515k merges); walking the document once and decoding the two big sections by
// hand takes a fraction of that. Small sections are cut out with skipValue and handed to
// encoding/json.
type jsonReader struct {
	data    []byte
	pos     int
	scratch []byte // reused by readString for strings with escapes
}

// syntaxError is what the reader reports; the loader wraps it with the section path.
type syntaxError struct {
	offset int
	msg    string
}

func (e *syntaxError) Error() string {
	return fmt.Sprintf("offset %d: %s", e.offset, e.msg)
}

func (r *jsonReader) fail(format string, args ...any) error {
	if r.pos >= len(r.data) {
		return &syntaxError{offset: len(r.data), msg: "unexpected end of input (truncated file?)"}
	}
	return &syntaxError{offset: r.pos, msg: fmt.Sprintf(format, args...)}
}

func (r *jsonReader) ws() {
	for r.pos < len(r.data) {
		switch r.data[r.pos] {
		case ' ', '\t', '\n', '\r':
			r.pos++
		default:
			return
		}
	}
}

// peek returns the next non-space byte, or 0 at the end of input.
func (r *jsonReader) peek() byte {
	r.ws()
	if r.pos >= len(r.data) {
		return 0
	}
	return r.data[r.pos]
}

func (r *jsonReader) expect(c byte) error {
	if r.peek() != c {
		return r.fail("expected %q, found %s", c, r.found())
	}
	r.pos++
	return nil
}

func (r *jsonReader) found() string {
	if r.pos >= len(r.data) {
		return "end of input"
	}
	return strconv.QuoteRune(rune(r.data[r.pos]))
}

// readStringBytes reads a JSON string and returns its decoded bytes. The result aliases
// either the input (no escapes, valid UTF-8) or r.scratch, so it is only valid until the
// next call. Invalid UTF-8 and lone surrogates become U+FFFD, as encoding/json does.
func (r *jsonReader) readStringBytes() ([]byte, error) {
	if err := r.expect('"'); err != nil {
		return nil, err
	}
	start := r.pos
	ascii := true
	for i := start; i < len(r.data); i++ {
		c := r.data[i]
		switch {
		case c == '"':
			r.pos = i + 1
			s := r.data[start:i]
			if ascii || utf8.Valid(s) {
				return s, nil
			}
			return r.slowString(start)
		case c == '\\':
			return r.slowString(start)
		case c < 0x20:
			r.pos = i
			return nil, r.fail("control character %#x in string", c)
		case c >= 0x80:
			ascii = false
		}
	}
	r.pos = len(r.data)
	return nil, r.fail("")
}

// slowString decodes a string with escapes or invalid UTF-8 starting at start (just after
// the opening quote) into r.scratch.
func (r *jsonReader) slowString(start int) ([]byte, error) {
	buf := r.scratch[:0]
	i := start
	for i < len(r.data) {
		c := r.data[i]
		switch {
		case c == '"':
			r.pos = i + 1
			r.scratch = buf
			return buf, nil
		case c < 0x20:
			r.pos = i
			return nil, r.fail("control character %#x in string", c)
		case c == '\\':
			if i+1 >= len(r.data) {
				r.pos = len(r.data)
				return nil, r.fail("")
			}
			e := r.data[i+1]
			i += 2
			switch e {
			case '"', '\\', '/':
				buf = append(buf, e)
			case 'b':
				buf = append(buf, '\b')
			case 'f':
				buf = append(buf, '\f')
			case 'n':
				buf = append(buf, '\n')
			case 'r':
				buf = append(buf, '\r')
			case 't':
				buf = append(buf, '\t')
			case 'u':
				r1, ok := hex4(r.data, i)
				if !ok {
					r.pos = i
					return nil, r.fail("bad \\u escape")
				}
				i += 4
				if utf16.IsSurrogate(r1) {
					if r2, ok := hex4(r.data, i+2); ok && i+1 < len(r.data) && r.data[i] == '\\' && r.data[i+1] == 'u' {
						if dec := utf16.DecodeRune(r1, r2); dec != utf8.RuneError {
							i += 6
							buf = utf8.AppendRune(buf, dec)
							continue
						}
					}
					r1 = utf8.RuneError
				}
				buf = utf8.AppendRune(buf, r1)
			default:
				r.pos = i - 1
				return nil, r.fail("bad escape \\%c", e)
			}
		case c < utf8.RuneSelf:
			buf = append(buf, c)
			i++
		default:
			rr, size := utf8.DecodeRune(r.data[i:])
			if rr == utf8.RuneError && size == 1 {
				buf = append(buf, "\uFFFD"...)
			} else {
				buf = append(buf, r.data[i:i+size]...)
			}
			i += size
		}
	}
	r.pos = len(r.data)
	return nil, r.fail("")
}

func hex4(b []byte, i int) (rune, bool) {
	if i+4 > len(b) {
		return 0, false
	}
	var v rune
	for _, c := range b[i : i+4] {
		switch {
		case '0' <= c && c <= '9':
			v = v<<4 | rune(c-'0')
		case 'a' <= c && c <= 'f':
			v = v<<4 | rune(c-'a'+10)
		case 'A' <= c && c <= 'F':
			v = v<<4 | rune(c-'A'+10)
		default:
			return 0, false
		}
	}
	return v, true
}

func (r *jsonReader) readString() (string, error) {
	b, err := r.readStringBytes()
	return string(b), err
}

// readInt reads a non-negative JSON integer that fits in an int32.
func (r *jsonReader) readInt() (int32, error) {
	r.ws()
	start := r.pos
	var v int64
	for r.pos < len(r.data) && '0' <= r.data[r.pos] && r.data[r.pos] <= '9' {
		v = v*10 + int64(r.data[r.pos]-'0')
		if v > 1<<31-1 {
			return 0, r.fail("integer too large")
		}
		r.pos++
	}
	if r.pos == start {
		return 0, r.fail("expected a non-negative integer, found %s", r.found())
	}
	if r.pos < len(r.data) {
		switch r.data[r.pos] {
		case '.', 'e', 'E':
			return 0, r.fail("expected an integer, found a fraction or exponent")
		}
	}
	return int32(v), nil
}

// object calls fn for each key of an object; fn must consume the value.
func (r *jsonReader) object(fn func(key string) error) error {
	if err := r.expect('{'); err != nil {
		return err
	}
	if r.peek() == '}' {
		r.pos++
		return nil
	}
	for {
		key, err := r.readString()
		if err != nil {
			return err
		}
		if err := r.expect(':'); err != nil {
			return err
		}
		if err := fn(key); err != nil {
			return err
		}
		switch r.peek() {
		case ',':
			r.pos++
		case '}':
			r.pos++
			return nil
		default:
			return r.fail("expected ',' or '}' in object, found %s", r.found())
		}
	}
}

// array calls fn for each element of an array; fn must consume the element.
func (r *jsonReader) array(fn func(i int) error) error {
	if err := r.expect('['); err != nil {
		return err
	}
	if r.peek() == ']' {
		r.pos++
		return nil
	}
	for i := 0; ; i++ {
		if err := fn(i); err != nil {
			return err
		}
		switch r.peek() {
		case ',':
			r.pos++
		case ']':
			r.pos++
			return nil
		default:
			return r.fail("expected ',' or ']' in array, found %s", r.found())
		}
	}
}

// skipValue consumes one value, checking its syntax, and returns its raw bytes.
func (r *jsonReader) skipValue() ([]byte, error) {
	start := r.pos
	if err := r.skip(0); err != nil {
		return nil, err
	}
	return r.data[start:r.pos], nil
}

const maxJSONDepth = 200

func (r *jsonReader) skip(depth int) error {
	if depth > maxJSONDepth {
		return r.fail("nesting too deep")
	}
	switch c := r.peek(); c {
	case '{':
		return r.object(func(string) error { return r.skip(depth + 1) })
	case '[':
		return r.array(func(int) error { return r.skip(depth + 1) })
	case '"':
		_, err := r.readStringBytes()
		return err
	case 't':
		return r.literal("true")
	case 'f':
		return r.literal("false")
	case 'n':
		return r.literal("null")
	default:
		if c == '-' || ('0' <= c && c <= '9') {
			return r.number()
		}
		return r.fail("unexpected %s", r.found())
	}
}

func (r *jsonReader) literal(word string) error {
	if len(r.data)-r.pos < len(word) || string(r.data[r.pos:r.pos+len(word)]) != word {
		return r.fail("invalid literal, expected %s", word)
	}
	r.pos += len(word)
	return nil
}

func (r *jsonReader) number() error {
	digits := func() int {
		n := 0
		for r.pos < len(r.data) && '0' <= r.data[r.pos] && r.data[r.pos] <= '9' {
			r.pos++
			n++
		}
		return n
	}
	if r.data[r.pos] == '-' {
		r.pos++
	}
	if r.pos < len(r.data) && r.data[r.pos] == '0' {
		r.pos++ // JSON allows no leading zeros
	} else if digits() == 0 {
		return r.fail("invalid number")
	}
	if r.pos < len(r.data) && r.data[r.pos] == '.' {
		r.pos++
		if digits() == 0 {
			return r.fail("invalid number")
		}
	}
	if r.pos < len(r.data) && (r.data[r.pos] == 'e' || r.data[r.pos] == 'E') {
		r.pos++
		if r.pos < len(r.data) && (r.data[r.pos] == '+' || r.data[r.pos] == '-') {
			r.pos++
		}
		if digits() == 0 {
			return r.fail("invalid number")
		}
	}
	return nil
}

// end checks that only white space follows the top-level value.
func (r *jsonReader) end() error {
	if r.peek() != 0 {
		return r.fail("unexpected data after the top-level value")
	}
	return nil
}
