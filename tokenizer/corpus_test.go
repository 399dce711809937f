package tokenizer

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

// The mixed corpus of the golden tests, generated exactly as
// scripts/tokenizer-golden/corpus.mjs does (same PRNG, same steps, same order of calls);
// testdata/golden/corpus.json records its sha256, so a divergence fails the test.

const (
	corpusSeed        = 20261127
	corpusTargetBytes = 1100000
)

var corpusRanges = [][2]uint32{
	{0x20, 0x7e}, {0xa0, 0x24f}, {0x370, 0x3ff}, {0x400, 0x4ff}, {0x590, 0x6ff}, {0x900, 0x97f},
	{0xe00, 0xe7f}, {0x1100, 0x11ff}, {0x2000, 0x206f}, {0x2190, 0x23ff}, {0x3040, 0x30ff},
	{0x4e00, 0x9fff}, {0xac00, 0xd7a3}, {0xe000, 0xf8ff}, {0xfe00, 0xfe0f}, {0xff00, 0xffef},
	{0x1f300, 0x1faff}, {0x10000, 0x1ffff}, {0x20000, 0x2a6df}, {0xf0000, 0xffffd}, {0x0, 0x1f},
}

const corpusAlphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"

var (
	corpusWhitespace = []string{" ", "  ", "\n", "\n\n", "\t", "\r\n", "   \n", "\t\t", " \n "}
	corpusSeparators = []string{" ", " ", " ", "\n", "", "\t", "  ", "\n\n", ". ", ", "}
)

// mulberry32 is the PRNG of corpus.mjs.
type mulberry32 struct{ a uint32 }

func (m *mulberry32) next() uint32 {
	m.a += 0x6d2b79f5
	a := m.a
	t := (a ^ a>>15) * (1 | a)
	t = (t + (t^t>>7)*(61|t)) ^ t
	return t ^ t>>14
}

func (m *mulberry32) intn(n int) int { return int(m.next() % uint32(n)) }

type goldenCase struct {
	Name string  `json:"name"`
	Text *string `json:"text"`
	B64  *string `json:"b64"`
}

func readJSON(t testing.TB, name string, v any) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", "golden", name))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, v); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
}

func corpusFragments(t testing.TB) []string {
	var frags []string
	readJSON(t, "corpus_fragments.json", &frags)
	var cases []goldenCase
	readJSON(t, "cases.json", &cases)
	for _, c := range cases {
		if c.Text != nil && *c.Text != "" {
			frags = append(frags, *c.Text)
		}
	}
	return frags
}

// corpusDocs returns the corpus documents (about 1.1 MB of UTF-8 in all).
func corpusDocs(t testing.TB) []string {
	frags := corpusFragments(t)
	rng := &mulberry32{a: corpusSeed}
	var docs []string
	total := 0
	for total < corpusTargetBytes {
		k := 1 + rng.intn(12)
		doc := []byte{}
		for j := 0; j < k; j++ {
			if j > 0 {
				doc = append(doc, corpusSeparators[rng.intn(len(corpusSeparators))]...)
			}
			switch op := rng.intn(10); {
			case op < 6:
				doc = append(doc, frags[rng.intn(len(frags))]...)
			case op == 6:
				n := 1 + rng.intn(20)
				for range n {
					r := corpusRanges[rng.intn(len(corpusRanges))]
					doc = append(doc, string(rune(r[0]+uint32(rng.intn(int(r[1]-r[0]+1)))))...)
				}
			case op == 7:
				n := 1 + rng.intn(30)
				for range n {
					doc = append(doc, corpusAlphabet[rng.intn(len(corpusAlphabet))])
				}
			case op == 8:
				doc = strconv.AppendUint(doc, uint64(rng.next()), 10)
			default:
				doc = append(doc, corpusWhitespace[rng.intn(len(corpusWhitespace))]...)
			}
		}
		docs = append(docs, string(doc))
		total += len(doc)
	}
	return docs
}
