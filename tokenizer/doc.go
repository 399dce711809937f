// Package tokenizer turns text into Gemma 3 token ids and back exactly as Hugging Face's
// tokenizers library does with the same tokenizer.json, streams the decoding for
// generated tokens, and renders Gemma 3's chat template exactly as Hugging Face's Jinja
// engine does.
//
// What it owns:
//   - Loading tokenizer.json (LoadFile, Parse) and tokenizer_config.json (LoadDir) in pure
//     Go: a BPE model with byte fallback and ranked merges, the added tokens (special and
//     not), a Replace/Prepend normalizer, a Split pre-tokenizer, a TemplateProcessing
//     post-processor and a Replace/ByteFallback/Fuse decoder, which is what Gemma's files
//     use. Any other component is a load error naming it, not a silent difference.
//   - Encode (added tokens in the text are recognised, as HF does) and EncodeLiteral (special
//     tokens in untrusted text stay text, as HF's encode_special_tokens); Decode.
//   - StreamDecoder: incremental decoding whose pieces concatenate to Decode's result and
//     never split a UTF-8 character.
//   - ApplyChatTemplate: Gemma 3's template rendered natively (recognised by the sha256 of
//     the template text; another template is an error, not a guess).
//   - ApplyToolChatTemplate: the same layout extended for tool calling as vLLM's Gemma 3
//     tool template extends it (tools in the first user turn, assistant calls as a JSON
//     list, tool results in <tool_response>); without tools it is ApplyChatTemplate's text.
//
// Fidelity. Ids match HF's Rust tokenizer on the golden data in testdata/golden (edge
// cases, a 1.1 MB mixed corpus chunk by chunk and whole, chat renderings), made by
// scripts/tokenizer-golden/golden.mjs with HF's own Node binding and Jinja engine. Invalid
// UTF-8 input is replaced as a standard UTF-8 decoder does before it reaches HF (see
// ToValidUTF8). Decode(Encode(x)) == x for valid UTF-8 x, except that '▁' (U+2581) comes
// back as ' ', as in HF.
//
// Speed. BPE runs per sub-word (cut before '▁' where no merge can cross, see initSplit)
// with an open-addressing merge table; tokenizer.json is read by a hand-written JSON
// scanner. Figures are in docs/perf-tokenizer.md.
//
// Errors. Load errors wrap ErrInvalidTokenizer and name the section and, for syntax
// errors, the byte offset (a truncated file says so). Decode and StreamDecoder.Add return
// an error wrapping ErrInvalidID for ids outside the vocabulary, never panic.
// ApplyChatTemplate's errors wrap ErrChatTemplate and carry HF's message ("Conversation
// roles must alternate user/assistant/user/assistant/...").
//
// Concurrency. A Tokenizer is immutable after loading and safe for concurrent use by any
// number of goroutines. A StreamDecoder belongs to one stream (one goroutine at a time).
package tokenizer
