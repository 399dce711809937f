// Package grammar is tpuserve's constrained-decoding (structured output) engine: it turns
// a JSON Schema, a regular expression, a GBNF grammar or a list of choices into, for each
// decoding step, the set of tokens of the whole vocabulary that may come next, as a
// bitmask the sampler applies on the device.
//
// What it owns:
//   - Front ends that compile to one IR (expr.go): CompileJSONSchema (and CompileAnyJSON
//     for OpenAI's json_object), CompileRegex, CompileGBNF, CompileChoice (vLLM's
//     guided_choice). Each rule of the IR becomes a byte automaton (a DFA whose edges may
//     also call other rules: a recursive transition network), so lexing and parsing are one
//     pushdown walk over bytes.
//   - Grammar: the compiled, immutable automata plus static analyses (nullable rules, first
//     and follow byte sets) and a per-state token-mask cache.
//   - Matcher: one request's state, a set of parse stacks (persistent, in an arena).
//   - Vocabulary: every token's bytes ('▁' already a space, <0xNN> pieces their byte) in a
//     byte trie, and the end-of-sequence ids.
//   - Cache: compiled grammars keyed by source text, kind and options, LRU-bounded.
//   - Package maskbench runs MaskBench's protocol (tpuserve maskbench).
//
// How a mask is computed. As in XGrammar's adaptive token-mask cache, each automaton
// state has an entry, computed once by walking the whole token trie from a stack whose
// bottom is unknown and pruning a subtree as soon as no parse survives: the tokens
// accepted without returning from the state's rule (context-independent), and the
// "uncertain" tokens that return from it on a byte the rule's follow set allows. A mask
// is then the union of the entries of the stacks' top states plus the uncertain tokens
// that the real stacks accept (checked in byte order, sharing prefixes; usually a few
// hundred). Entries of rules without calls (strings, numbers) depend only on the rule's
// automaton and follow set and are shared by every grammar on the vocabulary; length-
// bounded strings read their entries off one vocabulary-wide classification of tokens
// by character count (counted.go) instead of one trie walk per count.
//
// Lifecycle. Build one Vocabulary per tokenizer (VocabularyFromTokenizer, ~0.5 s for
// Gemma 3's 262k tokens) and keep it; call its Warm once at start-up so that the first
// requests do not pay for the shared string and number tables (0.1–0.8 s). Compile (or
// Cache.*) once per distinct schema; the Grammar is bound to that vocabulary. Per
// request: g.NewMatcher(); then per step
// m.FillMask(mask) (len(mask) >= v.MaskWords(), bit i of mask[i/32] = token i; longer
// masks, e.g. for a model's padded vocabulary rows, get their tail cleared), sample,
// m.Advance(token). CanEnd reports whether the output is complete; end-of-sequence ids
// are in the mask exactly then, and Advance(eos) terminates the matcher (IsTerminated,
// after which the mask is empty). Reset restarts it; Clone copies it (speculation, beams).
// AdvanceBytes forces raw text.
//
// Errors. Every error wraps a sentinel: ErrInvalidSchema (not JSON, or not a schema),
// ErrUnsupported (an *UnsupportedError naming the keyword and the JSON pointer of the
// schema using it: the engine never silently drops a constraint it cannot enforce),
// ErrInvalidRegex, ErrInvalidGrammar (GBNF syntax, undefined or left-recursive rules),
// ErrTooLarge (automata beyond the size limits: 60k states per rule, length or count
// bounds above 5000) and ErrRejected (Advance of a token that is not allowed; the matcher
// is then unchanged).
//
// Concurrency. Vocabulary, Grammar and Cache are safe for concurrent use; the mask cache
// fills lazily and atomically (two goroutines may compute the same entry; one wins). A
// Matcher belongs to one goroutine at a time.
//
// # JSON Schema coverage
//
// Enforced exactly: type (a string or an array of types; absent means any type, each
// type's keywords applying to it), enum and const, properties, required,
// additionalProperties (a boolean or a schema; absent means any value, as the
// specification says), patternProperties (patterns that match no named property and do
// not overlap each other), items (a schema, or draft 4–2019's array form with
// additionalItems), prefixItems, minItems and maxItems, anyOf, allOf (merged into one
// schema; combinations that cannot be merged exactly are UnsupportedErrors), $ref
// (within the document: "#" and JSON pointers, recursion included; $defs and definitions),
// minLength and maxLength (in characters: a JSON escape counts as one; a surrogate pair
// written as two \u escapes counts as two), pattern (RE2 syntax; matches anywhere in the
// string unless anchored with ^ and $, as JSON Schema says), format (date-time, date,
// time, duration, email, hostname, ipv4, ipv6, uri, uri-reference, uuid; a format name
// the specification does not define is ignored, as validators ignore it), minimum,
// maximum, exclusiveMinimum and exclusiveMaximum (draft 4's boolean form too; decimal
// bounds, magnitudes up to 1e15), multipleOf (integer or decimal divisors p·10^-d with
// p·(d+3) ≤ 20000, d ≤ 6: a remainder automaton intersected with the range),
// minProperties up to the number of required properties or 1, maxProperties when no
// more properties than it are possible, dependencies / dependentRequired /
// dependentSchemas on up to 6 properties (split into disjoint cases: the property absent,
// or present with what it needs), and not when it only excludes types
// ({"not": {"type": ...}}).
//
// oneOf is enforced as anyOf, which is exact only when no value can match two
// alternatives: the compiler proves the alternatives disjoint (different types, a finite
// alternative none of whose values the other accepts, a required property with disjoint
// schemas, or one alternative forbidding a property another requires) and otherwise
// returns an UnsupportedError for oneOf. A oneOf whose alternatives only list required
// properties is rewritten exactly (one set present, each other set incomplete).
//
// A schema with enum or const (or one in a member of its allOf) has finitely many values:
// each is kept exactly when a full validator (santhosh-tekuri/jsonschema) accepts it
// against the whole schema, so every keyword there is enforced, not, if/then/else,
// uniqueItems and the rest included.
//
// Deliberate restrictions, which reject some valid JSON but never accept invalid JSON:
// object properties come in the schema's order (any optional one may be left out), then
// the additional properties (whose keys differ from every named property); numbers with
// bounds (other than a lone minimum of 0) or multipleOf have no exponent; enum values are written as the schema writes them (key order, number
// spelling); date-time and time have no leap second; strings are written as Python's
// json.dumps writes them (escapes for '"', '\', control characters; \uXXXX for any
// character is also allowed where no pattern applies).
//
// Unsupported, as UnsupportedErrors naming the keyword: not (other than types), if/then/
// else, dependencies on more than 6 properties, propertyNames, contains,
// minContains, maxContains, uniqueItems true, unevaluatedProperties, unevaluatedItems,
// $dynamicRef, $recursiveRef, multipleOf beyond the limits above, minProperties above
// both the required count and 1, maxProperties below the possible count, remote and
// anchor $refs, and spec formats without a pattern here (idn-email,
// idn-hostname, iri, iri-reference, uri-template, json-pointer, relative-json-pointer,
// regex). Annotations (title, description, examples, default, $schema, $id, $comment,
// deprecated, readOnly, writeOnly, content*) and keywords JSON Schema does not define are
// ignored, as validators ignore them.
//
// Whitespace is flexible by default (any JSON whitespace between tokens, unbounded unless
// WithMaxWhitespace). WithSeparators(item, key) allows exactly those separators and no
// other whitespace: WithSeparators(", ", ": ") is Python's json.dumps default and
// MaskBench's setting, WithSeparators(",", ":") the most compact form.
//
// # Regular expressions
//
// CompileRegex takes RE2 syntax (Go's regexp/syntax with Perl flags: \d, \w, \s, (?i),
// classes, repetition counts) and requires a full match of the whole output. ^ and $ are
// allowed only at the ends (of the pattern or of its top-level alternatives); \b and \B
// are errors.
//
// # GBNF
//
// CompileGBNF takes llama.cpp's GBNF: rules `name ::= alternatives`, the start rule
// named root; names of letters, digits, '-' and '_'; sequences of "literal strings",
// [character classes] (ranges, [^negation]), . (any character), rule names and
// ( groups ), separated by |, each optionally followed by *, +, ? or {m}, {m,}, {m,n};
// escapes \n \t \r \\ \" \[ \] \- \^ \xHH \uHHHH \UHHHHHHHH; # comments to the end of the
// line. A rule ends at a newline unless inside parentheses or after |. Rules must not be
// left-recursive.
package grammar
