package tokenizer

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
)

// LoadDir loads dir/tokenizer.json and, when present, dir/tokenizer_config.json (chat
// template, bos/eos token names). A missing tokenizer_config.json is not an error: the
// tokenizer then has no chat template, as with LoadFile.
func LoadDir(dir string) (*Tokenizer, error) {
	t, err := LoadFile(filepath.Join(dir, "tokenizer.json"))
	if err != nil {
		return nil, err
	}
	cfgPath := filepath.Join(dir, "tokenizer_config.json")
	data, err := os.ReadFile(cfgPath)
	if errors.Is(err, os.ErrNotExist) {
		slog.Warn("tokenizer: no tokenizer_config.json, chat template unavailable", "dir", dir)
		return t, nil
	}
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	if err := t.applyConfig(data); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrInvalidTokenizer, cfgPath, err)
	}
	return t, nil
}

// LoadFile loads a tokenizer.json file. The result has no chat template.
func LoadFile(tokenizerJSON string) (*Tokenizer, error) {
	data, err := os.ReadFile(tokenizerJSON)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	t, err := parseTokenizerJSON(data)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrInvalidTokenizer, tokenizerJSON, err)
	}
	return t, nil
}

// Parse builds a tokenizer from the bytes of a tokenizer.json file.
func Parse(tokenizerJSON []byte) (*Tokenizer, error) {
	t, err := parseTokenizerJSON(tokenizerJSON)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidTokenizer, err)
	}
	return t, nil
}

// sectionError names the part of the file that is wrong.
func sectionError(section string, err error) error {
	return fmt.Errorf("%s: %w", section, err)
}

type addedTokenJSON struct {
	ID         *int32  `json:"id"`
	Content    *string `json:"content"`
	SingleWord bool    `json:"single_word"`
	LStrip     bool    `json:"lstrip"`
	RStrip     bool    `json:"rstrip"`
	Normalized bool    `json:"normalized"`
	Special    bool    `json:"special"`
}

// rawModel holds the BPE model section while it is parsed.
type rawModel struct {
	typ           *string
	dropout       *float64
	unkToken      *string
	subwordPrefix *string
	wordSuffix    *string
	fuseUnk       bool
	byteFallback  bool
	ignoreMerges  bool
	vocabSeen     bool
	mergesRaw     []byte // merges seen before vocab, parsed afterwards
	mergesSeen    bool
	pieces        []string
	vocab         map[string]int32
	merges        mergeTable
}

func parseTokenizerJSON(data []byte) (*Tokenizer, error) {
	r := &jsonReader{data: data}
	var (
		added                             []addedTokenJSON
		normRaw, preRaw, postRaw, decRaw  []byte
		truncRaw, padRaw                  []byte
		haveModel, haveAdded, haveDecoder bool
		m                                 rawModel
		inValue                           bool // the error came from a section, which named itself
	)
	raw := func(dst *[]byte) error {
		v, err := r.skipValue()
		*dst = v
		return err
	}
	err := r.object(func(key string) error {
		inValue = true
		var err error
		switch key {
		case "added_tokens":
			haveAdded = true
			var v []byte
			if err = raw(&v); err == nil {
				err = json.Unmarshal(v, &added)
			}
		case "normalizer":
			err = raw(&normRaw)
		case "pre_tokenizer":
			err = raw(&preRaw)
		case "post_processor":
			err = raw(&postRaw)
		case "decoder":
			haveDecoder = true
			err = raw(&decRaw)
		case "truncation":
			err = raw(&truncRaw)
		case "padding":
			err = raw(&padRaw)
		case "model":
			haveModel = true
			return m.parse(r) // names its own parts
		default:
			_, err = r.skipValue()
		}
		if err != nil {
			return sectionError(key, err)
		}
		inValue = false
		return nil
	})
	if err != nil {
		if inValue {
			return nil, err
		}
		return nil, sectionError("top level", err)
	}
	if err := r.end(); err != nil {
		return nil, sectionError("top level", err)
	}
	if !haveModel {
		return nil, errors.New("no \"model\" section")
	}
	if !haveAdded {
		return nil, errors.New("no \"added_tokens\" section")
	}
	if !haveDecoder {
		return nil, errors.New("no \"decoder\" section")
	}
	if !isNull(truncRaw) {
		return nil, errors.New("truncation: only null is supported")
	}
	if !isNull(padRaw) {
		return nil, errors.New("padding: only null is supported")
	}
	bpe, pieces, err := m.finish()
	if err != nil {
		return nil, err
	}
	t := &Tokenizer{bpe: bpe, bos: -1, eos: -1}
	if t.norm, err = parseNormalizer(normRaw); err != nil {
		return nil, sectionError("normalizer", err)
	}
	if t.pre, err = parsePreTokenizer(preRaw); err != nil {
		return nil, sectionError("pre_tokenizer", err)
	}
	if t.dec, err = parseDecoder(decRaw); err != nil {
		return nil, sectionError("decoder", err)
	}
	if err := t.setAddedTokens(added, pieces); err != nil {
		return nil, sectionError("added_tokens", err)
	}
	if err := t.parsePostProcessor(postRaw); err != nil {
		return nil, sectionError("post_processor", err)
	}
	t.initSpecialIDs()
	return t, nil
}

func isNull(raw []byte) bool {
	return raw == nil || strings.TrimSpace(string(raw)) == "null"
}

func (m *rawModel) parse(r *jsonReader) error {
	if r.peek() == 'n' {
		return errors.New("model: is null")
	}
	inValue := false
	err := r.object(func(key string) error {
		inValue = true
		var err error
		switch key {
		case "vocab":
			err = m.parseVocab(r)
		case "merges":
			if !m.vocabSeen {
				m.mergesRaw, err = r.skipValue()
			} else {
				err = m.parseMerges(r)
			}
			m.mergesSeen = true
		case "type":
			err = decodeSmall(r, &m.typ)
		case "dropout":
			err = decodeSmall(r, &m.dropout)
		case "unk_token":
			err = decodeSmall(r, &m.unkToken)
		case "continuing_subword_prefix":
			err = decodeSmall(r, &m.subwordPrefix)
		case "end_of_word_suffix":
			err = decodeSmall(r, &m.wordSuffix)
		case "fuse_unk":
			err = decodeSmall(r, &m.fuseUnk)
		case "byte_fallback":
			err = decodeSmall(r, &m.byteFallback)
		case "ignore_merges":
			err = decodeSmall(r, &m.ignoreMerges)
		default:
			_, err = r.skipValue()
		}
		if err != nil {
			return sectionError("model."+key, err)
		}
		inValue = false
		return nil
	})
	if err != nil {
		if inValue {
			return err
		}
		return sectionError("model", err)
	}
	if m.mergesRaw != nil && m.vocabSeen {
		if err := m.parseMerges(&jsonReader{data: m.mergesRaw}); err != nil {
			return sectionError("model.merges", err)
		}
	}
	return nil
}

// decodeSmall decodes one small value with encoding/json.
func decodeSmall(r *jsonReader, dst any) error {
	raw, err := r.skipValue()
	if err != nil {
		return err
	}
	return json.Unmarshal(raw, dst)
}

// maxVocabID bounds ids so that a corrupt file cannot make the loader allocate gigabytes.
const maxVocabID = 1 << 24

func (m *rawModel) parseVocab(r *jsonReader) error {
	if m.vocabSeen {
		return errors.New("duplicate key")
	}
	m.vocabSeen = true
	// The vocab is an object, read by hand: the pieces go into one arena (one string in
	// the end) instead of one allocation each.
	arenaBytes := make([]byte, 0, len(r.data)/8)
	var ends, ids []int32
	if r.peek() != '{' {
		return r.fail("expected an object mapping pieces to ids, found %s", r.found())
	}
	r.pos++
	err := func() error {
		if r.peek() == '}' {
			r.pos++
			return nil
		}
		for {
			piece, err := r.readStringBytes()
			if err != nil {
				return err
			}
			arenaBytes = append(arenaBytes, piece...)
			ends = append(ends, int32(len(arenaBytes)))
			if err := r.expect(':'); err != nil {
				return err
			}
			id, err := r.readInt()
			if err != nil {
				return err
			}
			if id >= maxVocabID {
				return r.fail("id %d is larger than the supported maximum %d", id, maxVocabID-1)
			}
			ids = append(ids, id)
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
	}()
	if err != nil {
		return err
	}
	if len(ids) == 0 {
		return errors.New("empty vocabulary")
	}
	arena := string(arenaBytes)
	maxID := int32(0)
	for _, id := range ids {
		maxID = max(maxID, id)
	}
	m.pieces = make([]string, maxID+1)
	have := make([]bool, maxID+1)
	m.vocab = make(map[string]int32, len(ids))
	start := int32(0)
	for i, id := range ids {
		piece := arena[start:ends[i]]
		start = ends[i]
		if piece == "" {
			return fmt.Errorf("id %d has an empty piece", id)
		}
		if have[id] {
			return fmt.Errorf("id %d is given to both %q and %q", id, m.pieces[id], piece)
		}
		if other, dup := m.vocab[piece]; dup {
			return fmt.Errorf("piece %q has two ids, %d and %d", piece, other, id)
		}
		have[id] = true
		m.pieces[id] = piece
		m.vocab[piece] = id
	}
	return nil
}

// parseMerges reads merges in either form HF writes: ["a", "b"] pairs or "a b" strings.
// A merge's rank is its index; its parts and their concatenation must be in the vocab,
// as the HF loader requires.
//
// The three vocab lookups per merge (1.5M for Gemma 3, each a cache miss) are most of the
// load time, so they run in parallel: the merges are first read into one arena (a then b,
// so a+b needs no copy), then resolved in chunks by several goroutines, then inserted.
func (m *rawModel) parseMerges(r *jsonReader) error {
	var arena []byte
	var ends []int32 // per merge: end of a, end of b in arena
	err := r.array(func(i int) error {
		switch r.peek() {
		case '[':
			r.pos++
			a, err := r.readStringBytes()
			if err != nil {
				return err
			}
			arena = append(arena, a...) // now: b may reuse the scratch buffer
			ends = append(ends, int32(len(arena)))
			if err := r.expect(','); err != nil {
				return err
			}
			b, err := r.readStringBytes()
			if err != nil {
				return err
			}
			arena = append(arena, b...)
			ends = append(ends, int32(len(arena)))
			if err := r.expect(']'); err != nil {
				return fmt.Errorf("merge %d: a merge pair has exactly two strings: %w", i, err)
			}
		case '"':
			s, err := r.readStringBytes()
			if err != nil {
				return err
			}
			sp := indexByte(s, ' ')
			if sp < 0 {
				return fmt.Errorf("merge %d: %q is not \"left right\"", i, s)
			}
			arena = append(arena, s[:sp]...)
			ends = append(ends, int32(len(arena)))
			arena = append(arena, s[sp+1:]...)
			ends = append(ends, int32(len(arena)))
		default:
			return r.fail("merge %d: expected a pair or a string, found %s", i, r.found())
		}
		if len(arena) > math.MaxInt32/2 {
			return r.fail("merges too large")
		}
		return nil
	})
	if err != nil {
		return err
	}
	n := len(ends) / 2
	ids := make([]int32, 3*n) // per merge: a, b, a+b
	workers := min(runtime.GOMAXPROCS(0), 4, 1+n/50000)
	errs := make([]error, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w * n / workers; i < (w+1)*n/workers; i++ {
				start := int32(0)
				if i > 0 {
					start = ends[2*i-1]
				}
				mid, end := ends[2*i], ends[2*i+1]
				a, b, ab := arena[start:mid], arena[mid:end], arena[start:end]
				var ok bool
				if ids[3*i], ok = m.vocab[string(a)]; !ok {
					errs[w] = fmt.Errorf("merge %d: %q is not in the vocab", i, a)
					return
				}
				if ids[3*i+1], ok = m.vocab[string(b)]; !ok {
					errs[w] = fmt.Errorf("merge %d: %q is not in the vocab", i, b)
					return
				}
				if ids[3*i+2], ok = m.vocab[string(ab)]; !ok {
					errs[w] = fmt.Errorf("merge %d: the merged piece %q is not in the vocab", i, ab)
					return
				}
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err // the first worker's error is the first bad merge
		}
	}
	m.merges = newMergeTable(n)
	for i := range n {
		// As in HF (a map filled in order), a repeated pair keeps its last rank.
		m.merges.put(ids[3*i], ids[3*i+1], int32(i), ids[3*i+2])
	}
	return nil
}

func indexByte(s []byte, c byte) int {
	for i, x := range s {
		if x == c {
			return i
		}
	}
	return -1
}

// finish validates the model options and builds the BPE model.
func (m *rawModel) finish() (*bpeModel, []string, error) {
	switch {
	case m.typ == nil:
		return nil, nil, errors.New("model.type: missing")
	case *m.typ != "BPE":
		return nil, nil, fmt.Errorf("model.type: %q is not supported (only BPE)", *m.typ)
	case !m.vocabSeen:
		return nil, nil, errors.New("model.vocab: missing")
	case !m.mergesSeen:
		return nil, nil, errors.New("model.merges: missing")
	case m.dropout != nil && *m.dropout != 0:
		return nil, nil, fmt.Errorf("model.dropout: %v is not supported (only null)", *m.dropout)
	case m.subwordPrefix != nil && *m.subwordPrefix != "":
		return nil, nil, errors.New("model.continuing_subword_prefix: not supported")
	case m.wordSuffix != nil && *m.wordSuffix != "":
		return nil, nil, errors.New("model.end_of_word_suffix: not supported")
	}
	b := &bpeModel{
		vocab:        m.vocab,
		merges:       m.merges,
		unk:          -1,
		fuseUnk:      m.fuseUnk,
		ignoreMerges: m.ignoreMerges,
	}
	if m.unkToken != nil {
		id, ok := m.vocab[*m.unkToken]
		if !ok {
			return nil, nil, fmt.Errorf("model.unk_token: %q is not in the vocab", *m.unkToken)
		}
		b.unk = id
	}
	b.initChars(m.pieces)
	if m.byteFallback {
		b.byteFallback = true
		for i := range b.byteIDs {
			b.byteIDs[i] = -1
			if id, ok := m.vocab[fmt.Sprintf("<0x%02X>", i)]; ok {
				b.byteIDs[i] = id
			}
		}
	}
	b.initSplit(m.pieces)
	return b, m.pieces, nil
}

// setAddedTokens records the added tokens: their ids (which may extend the vocab), which
// are special, and the matcher that finds them in text.
func (t *Tokenizer) setAddedTokens(added []addedTokenJSON, modelPieces []string) error {
	n := len(modelPieces)
	for i, a := range added {
		if a.ID == nil || a.Content == nil {
			return fmt.Errorf("entry %d: needs \"id\" and \"content\"", i)
		}
		if *a.ID < 0 || *a.ID >= maxVocabID {
			return fmt.Errorf("entry %d: id %d out of range", i, *a.ID)
		}
		if *a.Content == "" {
			return fmt.Errorf("entry %d (id %d): empty content", i, *a.ID)
		}
		if a.Normalized || a.LStrip || a.RStrip || a.SingleWord {
			return fmt.Errorf("entry %d (%q): normalized, lstrip, rstrip and single_word are not supported", i, *a.Content)
		}
		n = max(n, int(*a.ID)+1)
	}
	// A copy: added tokens may rename ids, and the model's own pieces must stay as they are.
	t.pieces = make([]string, n)
	copy(t.pieces, modelPieces)
	t.special = make([]bool, n)
	t.byteVal = make([]int16, n)
	t.added = newAddedMatcher()
	specialContent := map[string]bool{}
	for _, a := range added {
		// HF's id_to_token looks in the added vocabulary first.
		t.pieces[*a.ID] = *a.Content
		t.added.add(*a.Content, *a.ID, a.Special)
		if a.Special {
			specialContent[*a.Content] = true
		}
	}
	for id, p := range t.pieces {
		// HF decides "special" by the token's text, so a vocab id with a special token's
		// text counts too.
		t.special[id] = specialContent[p]
		t.byteVal[id] = byteTokenValue(p)
	}
	return nil
}

// byteTokenValue returns the byte of a "<0xNN>" piece as HF's ByteFallback decoder reads
// it (six bytes, hex parsed with Rust's u8::from_str_radix, which also takes a '+'), or -1.
func byteTokenValue(p string) int16 {
	if len(p) != 6 || !strings.HasPrefix(p, "<0x") || p[5] != '>' {
		return -1
	}
	h := p[3:5]
	if h[0] == '+' {
		h = h[1:]
	}
	v := 0
	for i := 0; i < len(h); i++ {
		c := h[i]
		switch {
		case '0' <= c && c <= '9':
			v = v*16 + int(c-'0')
		case 'a' <= c && c <= 'f':
			v = v*16 + int(c-'a'+10)
		case 'A' <= c && c <= 'F':
			v = v*16 + int(c-'A'+10)
		default:
			return -1
		}
	}
	return int16(v)
}

type templatePiece struct {
	SpecialToken *struct {
		ID string `json:"id"`
	} `json:"SpecialToken"`
	Sequence *struct {
		ID string `json:"id"`
	} `json:"Sequence"`
}

// parsePostProcessor reads a TemplateProcessing post-processor's "single" template: the
// special tokens around sequence A that Encode adds when asked to.
func (t *Tokenizer) parsePostProcessor(raw []byte) error {
	if isNull(raw) {
		return nil
	}
	var pp struct {
		Type          string          `json:"type"`
		Single        []templatePiece `json:"single"`
		SpecialTokens map[string]struct {
			IDs []int32 `json:"ids"`
		} `json:"special_tokens"`
	}
	if err := json.Unmarshal(raw, &pp); err != nil {
		return err
	}
	if pp.Type != "TemplateProcessing" {
		return fmt.Errorf("type %q is not supported (only TemplateProcessing or null)", pp.Type)
	}
	seenA := false
	for i, p := range pp.Single {
		switch {
		case p.Sequence != nil:
			if p.Sequence.ID != "A" || seenA {
				return fmt.Errorf("single[%d]: only one sequence A is supported", i)
			}
			seenA = true
		case p.SpecialToken != nil:
			st, ok := pp.SpecialTokens[p.SpecialToken.ID]
			if !ok {
				return fmt.Errorf("single[%d]: special token %q is not in special_tokens", i, p.SpecialToken.ID)
			}
			for _, id := range st.IDs {
				if id < 0 || int(id) >= len(t.pieces) {
					return fmt.Errorf("special_tokens[%q]: id %d out of range", p.SpecialToken.ID, id)
				}
			}
			if seenA {
				t.suffix = append(t.suffix, st.IDs...)
			} else {
				t.prefix = append(t.prefix, st.IDs...)
			}
		default:
			return fmt.Errorf("single[%d]: neither SpecialToken nor Sequence", i)
		}
	}
	if !seenA {
		return errors.New("single: no sequence A")
	}
	return nil
}

// initSpecialIDs finds BOS and EOS by their usual names; tokenizer_config.json may change
// them (applyConfig).
func (t *Tokenizer) initSpecialIDs() {
	if len(t.prefix) > 0 {
		t.bos = t.prefix[0]
	}
	if id, ok := t.lookupPiece("<bos>"); ok && t.bos < 0 {
		t.bos = id
	}
	if id, ok := t.lookupPiece("<eos>"); ok {
		t.eos = id
	}
}

func (t *Tokenizer) lookupPiece(p string) (int32, bool) {
	if id, ok := t.added.lookup(p); ok {
		return id, true
	}
	id, ok := t.bpe.vocab[p]
	return id, ok
}

// tokenConfig is the part of tokenizer_config.json the tokenizer uses.
type tokenConfig struct {
	ChatTemplate json.RawMessage `json:"chat_template"`
	BOSToken     json.RawMessage `json:"bos_token"`
	EOSToken     json.RawMessage `json:"eos_token"`
}

// tokenName reads a token given as a string or as {"content": "..."} (older files).
func tokenName(raw json.RawMessage) (string, error) {
	if isNull(raw) {
		return "", nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		return s, nil
	}
	var obj struct {
		Content string `json:"content"`
	}
	if err := json.Unmarshal(raw, &obj); err != nil || obj.Content == "" {
		return "", fmt.Errorf("want a string or {\"content\": ...}, got %.40s", raw)
	}
	return obj.Content, nil
}

func (t *Tokenizer) applyConfig(data []byte) error {
	var cfg tokenConfig
	if err := json.Unmarshal(data, &cfg); err != nil {
		return err
	}
	bos, err := tokenName(cfg.BOSToken)
	if err != nil {
		return fmt.Errorf("bos_token: %w", err)
	}
	eos, err := tokenName(cfg.EOSToken)
	if err != nil {
		return fmt.Errorf("eos_token: %w", err)
	}
	if bos != "" {
		id, ok := t.lookupPiece(bos)
		if !ok {
			return fmt.Errorf("bos_token: %q is not in the vocabulary", bos)
		}
		t.bos = id
		t.bosText = bos
	}
	if eos != "" {
		id, ok := t.lookupPiece(eos)
		if !ok {
			return fmt.Errorf("eos_token: %q is not in the vocabulary", eos)
		}
		t.configEOS = id
		t.hasConfigEOS = true
	}
	tmpl, err := chatTemplateSource(cfg.ChatTemplate)
	if err != nil {
		return fmt.Errorf("chat_template: %w", err)
	}
	if tmpl != "" {
		t.chat = newChatTemplate(tmpl)
		if t.chat.render == nil {
			slog.Warn("tokenizer: chat_template is not Gemma 3's; ApplyChatTemplate will return an error",
				"sha256", t.chat.sha256)
		}
	}
	return nil
}

// chatTemplateSource reads chat_template given as a string or as a list of
// {"name", "template"} (then the one named "default").
func chatTemplateSource(raw json.RawMessage) (string, error) {
	if isNull(raw) {
		return "", nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		return s, nil
	}
	var list []struct {
		Name     string `json:"name"`
		Template string `json:"template"`
	}
	if err := json.Unmarshal(raw, &list); err != nil {
		return "", errors.New("want a string or a list of {name, template}")
	}
	for _, e := range list {
		if e.Name == "default" {
			return e.Template, nil
		}
	}
	return "", errors.New("no template named \"default\"")
}
