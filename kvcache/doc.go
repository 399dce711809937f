// Package kvcache keeps the host-side bookkeeping of the paged KV cache: which device pages
// ("blocks") each sequence owns, which free blocks still hold a reusable prefix, and how
// many blocks a memory budget buys. It never touches tensors; the engine turns the block
// tables it hands out into page-table inputs of the forward program.
//
// # Groups
//
// Gemma 3 mixes two attention types, and each type has its own group of device page pools
// indexed by its own block ids:
//
//   - the global group (full-attention layers) keeps every token of a sequence: logical
//     block j holds positions [j*PageSize, (j+1)*PageSize);
//   - the sliding group (sliding-window layers) keeps only the blocks that the window of the
//     sequence's next query can reach. A block whose positions all lie before
//     nextPos-window+1 is freed and its table entry replaced by NullBlock, so between steps
//     a long sequence holds at most ceil(window/PageSize)+1 sliding blocks.
//
// Block id 0 of each group is the null block: never handed out, never freed; padding
// writes and freed table entries point at it. A group with no layers is simply absent.
//
// # Block pool and prefix cache
//
// Each group has a pool with a reference count per block and a doubly linked free list in
// LRU order (O(1) allocate, free and take-back). Full blocks of computed tokens get a
// chained hash, sha256(parent hash, token ids) truncated to 128 bits, and are registered in
// the group's prefix cache; a freed block keeps its hash and stays findable until the pool
// hands it out again (evicting it, least recently freed first). A sequence's blocks are
// freed last block first, so a prefix's tail is evicted before its head.
//
// A prefix hit covers whole blocks only and never the last token of the lookup (that token
// must be recomputed to get logits). A hit is valid for the global group when every block
// up to the hit point is cached, and for the sliding group when the blocks covering the
// window-1 tokens before the hit point are cached (or every block from the start, for a
// hit shorter than the window); the hit is the longest length valid for both.
//
// # Protocol
//
// The scheduler owns one Seq per request and drives it through the Manager:
//
//	hit := m.Lookup(&seq, tokens)                         // admission only (empty Seq)
//	err := m.Allocate(&seq, &hit, computed, numNew)       // before each step; ErrNoFreeBlocks = preempt or wait
//	... device step writes KV for tokens[computed:computed+numNew] ...
//	m.Commit(&seq, tokens, computed+numNew)               // after the step: cache full blocks, free sliding blocks
//	m.Free(&seq)                                          // finish, abort or preemption
//
// # Errors
//
// ErrKVCacheFull (from CheckFits) means a sequence can never fit, whatever else is running;
// a scheduler checks each request once, with its longest possible length and its largest
// chunk (MaxChunkTokens caps chunks so that a tiny sliding pool still fits one sequence).
// ErrNoFreeBlocks (from Allocate) means not now: free blocks by preempting or wait.
// Misuse (a table/hit mismatch, negative counts) returns an error wrapping ErrInvalid.
// Configuration errors name the field.
//
// # Concurrency
//
// A Manager and its Seqs are not safe for concurrent use: one goroutine (the engine's step
// loop) owns them. Stats returns a copy that may be handed to other goroutines.
package kvcache
