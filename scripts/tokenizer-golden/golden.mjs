// Golden data for package tokenizer from the reference implementations: Hugging Face's
// tokenizers Node binding (the Rust library) and @huggingface/jinja (the chat template).
//
//   node scripts/tokenizer-golden/golden.mjs           regenerate tokenizer/testdata/golden/*
//   node scripts/tokenizer-golden/golden.mjs --check   regenerate into a temp dir, compare
//
// Needs `bash scripts/tokenizer-golden/setup.sh` (installs the references into
// .cache/tokenizer-golden) and the tokenizer in $TPUSERVE_TOKENIZER_DIR (default
// .cache/tokenizer; `bash scripts/fetch-tokenizer.sh`).
import { createRequire } from 'node:module'
import crypto from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import zlib from 'node:zlib'
import { fileURLToPath } from 'node:url'
import { corpusDocs, SEED, TARGET_BYTES } from './corpus.mjs'

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..')
const goldenDir = path.join(root, 'tokenizer/testdata/golden')
const modules = process.env.TOKENIZER_GOLDEN_MODULES || path.join(root, '.cache/tokenizer-golden/node_modules')
const tokDir = process.env.TPUSERVE_TOKENIZER_DIR || path.join(root, '.cache/tokenizer')

const require = createRequire(path.join(modules, 'x.js'))
const { Tokenizer } = require('tokenizers')
const version = (pkg) => JSON.parse(fs.readFileSync(path.join(modules, pkg, 'package.json'), 'utf8')).version
const tokenizersVersion = version('tokenizers')
const jinjaVersion = version('@huggingface/jinja')
const { Template } = await import(path.join(modules, '@huggingface/jinja/dist/index.js'))

const check = process.argv.includes('--check')
const outDir = check ? fs.mkdtempSync(path.join(os.tmpdir(), 'tokenizer-golden-')) : goldenDir

const tokJSON = fs.readFileSync(path.join(tokDir, 'tokenizer.json'), 'utf8')
const config = JSON.parse(fs.readFileSync(path.join(tokDir, 'tokenizer_config.json'), 'utf8'))
const tok = Tokenizer.fromString(tokJSON)
// HF's encode_special_tokens (Python's split_special_tokens=True) is not exposed by the
// Node binding. Its effect is that a special token's match is skipped and its text goes
// through the model as plain text, which is what a tokenizer without the special added
// tokens does (no merge produces them, and no other added token lies inside them).
const literalSpec = JSON.parse(tokJSON)
literalSpec.added_tokens = literalSpec.added_tokens.filter((t) => !t.special)
const literalTok = Tokenizer.fromString(JSON.stringify(literalSpec))

const encode = async (t, text, special) => (await t.encode(text, null, { addSpecialTokens: special })).getIds()
const decode = (ids, skip) => tok.decode(ids, skip)
// One record a line: readable diffs without one line per id.
const json = (v) => (Array.isArray(v) ? '[\n' + v.map((r) => JSON.stringify(r)).join(',\n') + '\n]\n' : JSON.stringify(v, null, 1) + '\n')
const sha256 = (buf) => crypto.createHash('sha256').update(buf).digest('hex')
const idsBytes = (ids) => Buffer.from(Uint32Array.from(ids).buffer)
const written = []
const write = (name, data) => {
  fs.writeFileSync(path.join(outDir, name), data)
  written.push(name)
}
// Decoding turns every '▁' (U+2581, the SentencePiece space) into ' ', so text holding
// that character does not come back unchanged, in HF as in Go.
const roundTrip = (text) => text.replaceAll('\u2581', ' ')
const fail = (msg) => {
  console.error('golden: ' + msg)
  process.exitCode = 1
}

// Edge cases: encode three ways, decode two ways.
const cases = JSON.parse(fs.readFileSync(path.join(goldenDir, 'cases.json'), 'utf8'))
const caseOut = []
for (const c of cases) {
  // Invalid UTF-8 reaches HF through a UTF-8 decoder, which replaces it (WHATWG rules).
  const text = c.b64 !== undefined ? Buffer.from(c.b64, 'base64').toString('utf8') : c.text
  const ids = await encode(tok, text, false)
  const decoded = await decode(ids, false)
  if (c.b64 === undefined && decoded !== roundTrip(text)) fail(`case ${c.name}: HF decode(encode(x)) != x`)
  caseOut.push({
    name: c.name,
    ids,
    ids_bos: await encode(tok, text, true),
    ids_literal: await encode(literalTok, text, false),
    decoded,
    decoded_skip: await decode(ids, true),
  })
}
write('cases_golden.json', json(caseOut))

// Decode cases: id sequences given by their pieces.
const decodeCases = [
  ['byte run valid', ['<0xE4>', '<0xB8>', '<0x80>']],
  ['byte run truncated', ['<0xE4>', '<0xB8>']],
  ['byte run then text', ['<0xE4>', '<0xB8>', '<0x80>', '▁ok']],
  ['invalid run then text', ['<0xE4>', '<0x41>', '▁ok']],
  ['ascii bytes', ['<0x41>', '<0x42>']],
  ['lone continuation byte', ['<0x80>']],
  ['run split by bos', ['<0xE4>', '<bos>', '<0xB8>', '<0x80>']],
  ['run split by end_of_turn', ['<0xF0>', '<0x9F>', '<end_of_turn>', '<0x98>', '<0x80>']],
  ['bytes of the space mark', ['<0xE2>', '<0x96>', '<0x81>', '▁x']],
  ['special tokens', ['<bos>', '▁Hello', '<end_of_turn>', '\n', '<eos>']],
  ['image tokens', ['<start_of_image>', '<image_soft_token>', '<end_of_image>']],
  ['space pieces', ['▁▁', '▁', 'a', '▁▁▁', '\t']],
  ['non-special added tokens', ['<unused0>', '<mask>', '[multimodal]', '<table>']],
  ['pad and unk', ['<pad>', '<unk>', 'x']],
]
const decodeOut = []
for (const [name, pieces] of decodeCases) {
  const ids = pieces.map((p) => {
    const id = tok.tokenToId(p)
    if (id === null || id === undefined) throw new Error(`no id for ${p}`)
    return id
  })
  decodeOut.push({ name, ids, text: await decode(ids, false), text_skip: await decode(ids, true) })
}
write('decode_golden.json', json(decodeOut))

// Chat template: rendered by HF's Jinja engine, then encoded without special tokens.
const template = new Template(config.chat_template)
const chats = JSON.parse(fs.readFileSync(path.join(goldenDir, 'chats.json'), 'utf8'))
const chatOut = []
for (const c of chats) {
  const r = { name: c.name }
  try {
    r.text = template.render({ messages: c.messages, bos_token: config.bos_token, add_generation_prompt: c.add_generation_prompt })
    r.ids = await encode(tok, r.text, false)
  } catch (e) {
    r.error = e.message
  }
  chatOut.push(r)
}
write('chats_golden.json', json(chatOut))

// The mixed corpus: every document alone ("chunk by chunk") and all of it at once.
const docs = corpusDocs(goldenDir)
const whole = docs.join('')
const parts = []
let docTokens = 0
for (const d of docs) {
  const ids = await encode(tok, d, false)
  if ((await decode(ids, false)) !== roundTrip(d)) fail('corpus: HF decode(encode(doc)) != doc')
  parts.push(idsBytes([ids.length]), idsBytes(ids))
  docTokens += ids.length
}
const wholeIds = await encode(tok, whole, false)
if ((await decode(wholeIds, false)) !== roundTrip(whole)) fail('corpus: HF decode(encode(corpus)) != corpus')
parts.push(idsBytes([wholeIds.length]), idsBytes(wholeIds))
const idsFile = Buffer.concat(parts)
write('corpus_ids.bin.gz', zlib.gzipSync(idsFile, { level: 9 }))
write(
  'corpus.json',
  json({
    note: 'corpus_ids.bin.gz: little-endian uint32s; per document its id count then its ids, then the same for the whole corpus',
    seed: SEED,
    target_bytes: TARGET_BYTES,
    docs: docs.length,
    bytes: Buffer.byteLength(whole, 'utf8'),
    sha256: sha256(Buffer.from(whole, 'utf8')),
    doc_tokens: docTokens,
    whole_tokens: wholeIds.length,
    ids_sha256: sha256(idsFile),
    tokenizer_json_sha256: sha256(Buffer.from(tokJSON, 'utf8')),
    reference: `tokenizers@${tokenizersVersion} (Node binding), @huggingface/jinja@${jinjaVersion}`,
  }),
)

if (check) {
  for (const name of written) {
    let a = fs.readFileSync(path.join(outDir, name))
    let b = fs.existsSync(path.join(goldenDir, name)) ? fs.readFileSync(path.join(goldenDir, name)) : Buffer.alloc(0)
    if (name.endsWith('.gz')) {
      a = zlib.gunzipSync(a)
      b = b.length ? zlib.gunzipSync(b) : b
    }
    if (!a.equals(b)) fail(`${name} differs from the reference's output (regenerate: node scripts/tokenizer-golden/golden.mjs)`)
  }
  fs.rmSync(outDir, { recursive: true })
  if (!process.exitCode) console.log(`golden: ${written.length} files match the reference (${tokenizersVersion}, jinja ${jinjaVersion})`)
} else {
  console.log(`golden: wrote ${written.join(', ')} to ${outDir}`)

}
