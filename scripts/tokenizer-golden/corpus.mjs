// The mixed test corpus: documents made from tokenizer/testdata/golden's fragments and
// case texts, random code points from many scripts, random words and numbers, joined by
// random separators. tokenizer/corpus_test.go generates the same documents (same PRNG,
// same steps); golden.mjs records the corpus sha256 so a divergence is caught.
import fs from 'node:fs'
import path from 'node:path'

export const SEED = 20261127
export const TARGET_BYTES = 1100000

// Code point ranges (no surrogates) for the random-characters step.
const RANGES = [
  [0x20, 0x7e], [0xa0, 0x24f], [0x370, 0x3ff], [0x400, 0x4ff], [0x590, 0x6ff], [0x900, 0x97f],
  [0xe00, 0xe7f], [0x1100, 0x11ff], [0x2000, 0x206f], [0x2190, 0x23ff], [0x3040, 0x30ff],
  [0x4e00, 0x9fff], [0xac00, 0xd7a3], [0xe000, 0xf8ff], [0xfe00, 0xfe0f], [0xff00, 0xffef],
  [0x1f300, 0x1faff], [0x10000, 0x1ffff], [0x20000, 0x2a6df], [0xf0000, 0xffffd], [0x0, 0x1f],
]
const ALPHABET = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789'
const WHITESPACE = [' ', '  ', '\n', '\n\n', '\t', '\r\n', '   \n', '\t\t', ' \n ']
const SEPARATORS = [' ', ' ', ' ', '\n', '', '\t', '  ', '\n\n', '. ', ', ']

// mulberry32: a tiny 32-bit PRNG that is easy to write identically in Go.
function mulberry32(seed) {
  let a = seed | 0
  return () => {
    a = (a + 0x6d2b79f5) | 0
    let t = Math.imul(a ^ (a >>> 15), 1 | a)
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
    return (t ^ (t >>> 14)) >>> 0
  }
}

export function fragments(goldenDir) {
  const frags = JSON.parse(fs.readFileSync(path.join(goldenDir, 'corpus_fragments.json'), 'utf8'))
  const cases = JSON.parse(fs.readFileSync(path.join(goldenDir, 'cases.json'), 'utf8'))
  for (const c of cases) if (typeof c.text === 'string' && c.text !== '') frags.push(c.text)
  return frags
}

export function corpusDocs(goldenDir) {
  const frags = fragments(goldenDir)
  const rng = mulberry32(SEED)
  const rnd = (n) => rng() % n
  const docs = []
  let total = 0
  while (total < TARGET_BYTES) {
    const k = 1 + rnd(12)
    let doc = ''
    for (let j = 0; j < k; j++) {
      if (j > 0) doc += SEPARATORS[rnd(SEPARATORS.length)]
      const op = rnd(10)
      if (op < 6) {
        doc += frags[rnd(frags.length)]
      } else if (op === 6) {
        const n = 1 + rnd(20)
        for (let i = 0; i < n; i++) {
          const [lo, hi] = RANGES[rnd(RANGES.length)]
          doc += String.fromCodePoint(lo + rnd(hi - lo + 1))
        }
      } else if (op === 7) {
        const n = 1 + rnd(30)
        for (let i = 0; i < n; i++) doc += ALPHABET[rnd(ALPHABET.length)]
      } else if (op === 8) {
        doc += String(rng())
      } else {
        doc += WHITESPACE[rnd(WHITESPACE.length)]
      }
    }
    docs.push(doc)
    total += Buffer.byteLength(doc, 'utf8')
  }
  return docs
}
