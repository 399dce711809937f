package grammar

import (
	"bytes"
	"fmt"
	"sort"

	"github.com/tpuserve/tpuserve/tokenizer"
)

// Vocabulary is the token side of constrained decoding: every token's bytes, which
// tokens are end-of-sequence tokens, and a byte trie over the tokens that masks are
// computed by walking. Build one per tokenizer and share it: it is immutable.
type Vocabulary struct {
	size     int      // mask covers ids [0, size)
	tokens   [][]byte // nil for special and empty tokens: never allowed as text
	eos      []int32  // allowed exactly when the grammar can end
	words    int      // len of a mask: ceil(size/32)
	textMask []uint32 // bits of every token with text

	// Trie in preorder. Node 0 is the root (depth 0, no byte).
	nodeByte  []byte
	nodeDepth []uint8
	nodeEnd   []int32 // one past the last node of the subtree
	nodeTok   []int32 // tokOff index: tokens ending at node i are toks[nodeTok[i]:nodeTok[i+1]]
	toks      []int32
	maxDepth  int

	sharedEntries
	strWalk stringWalkOnce // see counted.go
}

// maxTokenBytes bounds the trie depth; longer tokens are never allowed (none exist in
// Gemma 3's vocabulary, whose longest piece is 31 bytes... and 255 leaves ample room).
const maxTokenBytes = 255

// NewVocabulary builds a vocabulary from each token's bytes (nil or empty: the token is
// never allowed as text, e.g. control tokens) and the end-of-sequence ids.
func NewVocabulary(tokens [][]byte, eos []int32) (*Vocabulary, error) {
	v := &Vocabulary{size: len(tokens), tokens: make([][]byte, len(tokens))}
	v.words = (v.size + 31) / 32
	v.textMask = make([]uint32, v.words)
	for _, id := range eos {
		if id < 0 || int(id) >= len(tokens) {
			return nil, fmt.Errorf("grammar: end-of-sequence id %d outside the vocabulary (size %d)", id, len(tokens))
		}
		v.eos = append(v.eos, id)
	}
	isEOS := map[int32]bool{}
	for _, id := range v.eos {
		isEOS[id] = true
	}
	var ids []int32
	for i, t := range tokens {
		if len(t) == 0 || len(t) > maxTokenBytes || isEOS[int32(i)] {
			continue
		}
		v.tokens[i] = t
		v.textMask[i>>5] |= 1 << (i & 31)
		ids = append(ids, int32(i))
	}
	sort.Slice(ids, func(a, b int) bool {
		c := bytes.Compare(tokens[ids[a]], tokens[ids[b]])
		if c != 0 {
			return c < 0
		}
		return ids[a] < ids[b]
	})
	v.buildTrie(ids)
	return v, nil
}

// VocabularyFromTokenizer takes every non-special token's decoded bytes (TokenBytes) and
// the tokenizer's stop ids as end-of-sequence tokens.
func VocabularyFromTokenizer(tok *tokenizer.Tokenizer) (*Vocabulary, error) {
	n := tok.VocabSize()
	tokens := make([][]byte, n)
	for i := 0; i < n; i++ {
		if tok.IsSpecial(int32(i)) {
			continue
		}
		tokens[i] = tok.TokenBytes(int32(i))
	}
	return NewVocabulary(tokens, tok.StopIDs())
}

func (v *Vocabulary) buildTrie(sorted []int32) {
	v.nodeByte = append(v.nodeByte, 0)
	v.nodeDepth = append(v.nodeDepth, 0)
	v.nodeEnd = append(v.nodeEnd, 0)
	v.nodeTok = append(v.nodeTok, 0)
	path := []int32{0} // path[d] = node at depth d on the current branch
	var prev []byte
	closeTo := func(depth int) {
		for len(path)-1 > depth {
			n := path[len(path)-1]
			v.nodeEnd[n] = int32(len(v.nodeByte))
			path = path[:len(path)-1]
		}
	}
	nodeToks := [][]int32{nil}
	for _, id := range sorted {
		t := v.tokens[id]
		lcp := 0
		for lcp < len(t) && lcp < len(prev) && t[lcp] == prev[lcp] {
			lcp++
		}
		closeTo(lcp)
		for d := lcp; d < len(t); d++ {
			v.nodeByte = append(v.nodeByte, t[d])
			v.nodeDepth = append(v.nodeDepth, uint8(d+1))
			v.nodeEnd = append(v.nodeEnd, 0)
			nodeToks = append(nodeToks, nil)
			path = append(path, int32(len(v.nodeByte)-1))
		}
		last := path[len(path)-1]
		nodeToks[last] = append(nodeToks[last], id)
		if len(t) > v.maxDepth {
			v.maxDepth = len(t)
		}
		prev = t
	}
	closeTo(0)
	v.nodeEnd[0] = int32(len(v.nodeByte))
	v.nodeTok = make([]int32, len(v.nodeByte)+1)
	for i, ts := range nodeToks {
		v.nodeTok[i] = int32(len(v.toks))
		v.toks = append(v.toks, ts...)
	}
	v.nodeTok[len(v.nodeByte)] = int32(len(v.toks))
}

// Size is the number of token ids a mask covers.
func (v *Vocabulary) Size() int { return v.size }

// MaskWords is the length of a mask: one bit per token id, 32 per word.
func (v *Vocabulary) MaskWords() int { return v.words }

// EOS returns the end-of-sequence ids (do not modify).
func (v *Vocabulary) EOS() []int32 { return v.eos }

// TokenBytes returns the bytes of id (nil for tokens never allowed as text).
func (v *Vocabulary) TokenBytes(id int32) []byte {
	if id < 0 || int(id) >= v.size {
		return nil
	}
	return v.tokens[id]
}

func (v *Vocabulary) isEOS(id int32) bool {
	for _, e := range v.eos {
		if e == id {
			return true
		}
	}
	return false
}

// Warm precomputes the vocabulary-wide tables that the first grammars would otherwise
// pay for in their first masks: the classification of tokens against JSON strings and
// the shared mask entries of plain strings and numbers (tens of milliseconds in all).
// Call it once at start-up; it is safe to skip.
func (v *Vocabulary) Warm() error {
	v.stringWalk()
	for _, sep := range []string{",", ", ", ""} {
		opts := []Option{WithSeparators(sep, ":")}
		if sep == "" { // flexible whitespace
			opts, sep = nil, ","
		}
		g, err := CompileJSONSchema(v, []byte(`{"type":"array","items":{"anyOf":[{"type":"string"},{"type":"number"},{"type":"integer"}]}}`), opts...)
		if err != nil {
			return err
		}
		m := g.NewMatcher()
		mask := make([]uint32, v.words)
		for _, text := range []string{`["`, `a`, `"` + sep + `1`, `2`, `3`, `.5`, `e-1` + sep + `-`, `3`, `4`} {
			if err := m.FillMask(mask); err != nil {
				return err
			}
			if err := m.AdvanceBytes([]byte(text)); err != nil {
				return fmt.Errorf("grammar: warming up: %w", err)
			}
		}
		if err := m.FillMask(mask); err != nil {
			return err
		}
	}
	return nil
}
