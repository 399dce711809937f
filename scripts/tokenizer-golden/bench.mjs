// Encode throughput of Hugging Face's Rust tokenizer (Node binding) against package
// tokenizer's BenchmarkEncode on the same 1.1 MB corpus, measured in one run, and load
// times. Single-threaded on both sides: one encode call at a time (HF parallelises only
// batches; RAYON_NUM_THREADS=1 anyway) and `go test -cpu 1`.
//
//   node scripts/tokenizer-golden/bench.mjs [rounds]
import { createRequire } from 'node:module'
import { execFileSync } from 'node:child_process'
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
let t0 = now()
const tok = Tokenizer.fromFile(path.join(tokDir, 'tokenizer.json'))
const hfLoad = now() - t0

const docs = corpusDocs(path.join(root, 'tokenizer/testdata/golden'))
const whole = docs.join('')
const bytes = Buffer.byteLength(whole, 'utf8')
const encode = (text) => tok.encode(text, null, { addSpecialTokens: false })

// Best of `rounds`, as Go's benchmark reports a mean over its iterations after warm-up.
async function best(fn) {
  await fn() // warm-up (HF fills its word cache here too)
  let b = Infinity
  for (let i = 0; i < rounds; i++) {
    const s = now()
    await fn()
    b = Math.min(b, now() - s)
  }
  return b
}
const hfDocs = await best(async () => {
  for (const d of docs) await encode(d)
})
const hfWhole = await best(() => encode(whole))

const out = execFileSync(
  'go',
  ['test', './tokenizer/', '-run', '^$', '-bench', '^Benchmark(Encode|Load)$', '-benchtime', `${rounds}x`, '-cpu', '1', '-count', '1'],
  { cwd: root, encoding: 'utf8', env: { ...process.env, TPUSERVE_TOKENIZER_DIR: tokDir } },
)
const goNs = (name) => {
  const m = out.match(new RegExp(`^${name}\\s+\\d+\\s+(\\d+) ns/op`, 'm'))
  if (!m) throw new Error(`no ${name} in go test output:\n${out}`)
  return Number(m[1]) / 1e9
}
const goDocs = goNs('BenchmarkEncode/docs')
const goWhole = goNs('BenchmarkEncode/whole')
const goLoad = goNs('BenchmarkLoad')
const mbs = (s) => (bytes / s / 1e6).toFixed(2)

console.log(`machine: ${os.cpus().length} x ${os.cpus()[0].model}, load average ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}`)
console.log(`corpus: ${docs.length} documents, ${bytes} bytes`)
console.log(`encode, documents one by one: HF ${mbs(hfDocs)} MB/s, Go ${mbs(goDocs)} MB/s, Go/HF ${(hfDocs / goDocs).toFixed(2)}x`)
console.log(`encode, whole corpus at once: HF ${mbs(hfWhole)} MB/s, Go ${mbs(goWhole)} MB/s, Go/HF ${(hfWhole / goWhole).toFixed(2)}x`)
console.log(`load tokenizer.json: HF ${hfLoad.toFixed(3)} s, Go ${goLoad.toFixed(3)} s`)
