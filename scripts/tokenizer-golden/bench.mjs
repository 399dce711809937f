// Encode throughput of Hugging Face's Rust tokenizer (Node binding) against package
// tokenizer's BenchmarkEncode on the same 1.1 MB corpus, measured in one run, and load
// times. Encoding is single-threaded on both sides: one encode call at a time (HF
// parallelises only batches; RAYON_NUM_THREADS=1 anyway) and GOMAXPROCS 1 (-test.cpu 1).
// Loading uses what each has (Go resolves merges on all cores).
//
//   node scripts/tokenizer-golden/bench.mjs [rounds]
import { createRequire } from 'node:module'
import { execFileSync } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { corpusDocs } from './corpus.mjs'

process.env.RAYON_NUM_THREADS = '1'
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..')
const modules = process.env.TOKENIZER_GOLDEN_MODULES || path.join(root, '.cache/tokenizer-golden/node_modules')
const tokDir = process.env.TPUSERVE_TOKENIZER_DIR || path.join(root, '.cache/tokenizer')
const require = createRequire(path.join(modules, 'x.js'))
const { Tokenizer } = require('tokenizers')
const rounds = Number(process.argv[2] || 5)

const now = () => Number(process.hrtime.bigint()) / 1e9
const docs = corpusDocs(path.join(root, 'tokenizer/testdata/golden'))
const whole = docs.join('')
const bytes = Buffer.byteLength(whole, 'utf8')

// The Go side is the compiled test binary of package tokenizer, run between the HF
// measurements so that both see the same machine load; each side keeps its best round.
const bin = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'tokenizer-bench-')), 'tokenizer.test')
execFileSync('go', ['test', '-c', '-o', bin, './tokenizer/'], { cwd: root, stdio: 'inherit' })
function goBench(pattern, times, cpu) {
  const out = execFileSync(bin, ['-test.run', '^$', '-test.bench', pattern, '-test.benchtime', `${times}x`, '-test.cpu', String(cpu)], {
    cwd: path.join(root, 'tokenizer'),
    encoding: 'utf8',
    env: { ...process.env, TPUSERVE_TOKENIZER_DIR: tokDir },
  })
  const res = {}
  for (const m of out.matchAll(/^(Benchmark\S+?)(-\d+)?\s+\d+\s+(\d+) ns\/op/gm)) res[m[1]] = Number(m[3]) / 1e9
  return res
}

let hfLoad = Infinity
let tok
for (let i = 0; i < 2; i++) {
  const t0 = now()
  tok = Tokenizer.fromFile(path.join(tokDir, 'tokenizer.json'))
  hfLoad = Math.min(hfLoad, now() - t0)
}
const encode = (text) => tok.encode(text, null, { addSpecialTokens: false })
for (const d of docs) await encode(d) // warm-up (HF fills its word cache here too)

const best = { hfDocs: Infinity, hfWhole: Infinity, goDocs: Infinity, goWhole: Infinity, goLoad: Infinity }
for (let r = 0; r < rounds; r++) {
  let s = now()
  for (const d of docs) await encode(d)
  best.hfDocs = Math.min(best.hfDocs, now() - s)
  s = now()
  await encode(whole)
  best.hfWhole = Math.min(best.hfWhole, now() - s)
  const g = goBench('^BenchmarkEncode$', 2, 1)
  best.goDocs = Math.min(best.goDocs, g['BenchmarkEncode/docs'])
  best.goWhole = Math.min(best.goWhole, g['BenchmarkEncode/whole'])
  if (r < 2) best.goLoad = Math.min(best.goLoad, goBench('^BenchmarkLoad$', 1, os.cpus().length).BenchmarkLoad)
}
fs.rmSync(path.dirname(bin), { recursive: true })
const mbs = (s) => (bytes / s / 1e6).toFixed(2)

console.log(`machine: ${os.cpus().length} x ${os.cpus()[0].model}, load average ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}`)
console.log(`corpus: ${docs.length} documents, ${bytes} bytes; best of ${rounds} interleaved rounds`)
console.log(`encode, documents one by one: HF ${mbs(best.hfDocs)} MB/s, Go ${mbs(best.goDocs)} MB/s, Go/HF ${(best.hfDocs / best.goDocs).toFixed(2)}x`)
console.log(`encode, whole corpus at once: HF ${mbs(best.hfWhole)} MB/s, Go ${mbs(best.goWhole)} MB/s, Go/HF ${(best.hfWhole / best.goWhole).toFixed(2)}x`)
console.log(`load tokenizer.json: HF ${hfLoad.toFixed(3)} s (best of 2), Go ${best.goLoad.toFixed(3)} s (best of 2, GOMAXPROCS ${os.cpus().length})`)
