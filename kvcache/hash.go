package kvcache

import (
	"crypto/sha256"
	"encoding/binary"
)

// BlockHash identifies the content of a full block together with everything before it:
// the first 128 bits of sha256(parent hash ‖ token ids, little-endian int32).
type BlockHash [16]byte

// rootHash is the parent of a sequence's first block. Changing the hash scheme must change
// this string so that no stale hash can match.
var rootHash = func() BlockHash {
	sum := sha256.Sum256([]byte("tpuserve/kvcache block hash v1"))
	var h BlockHash
	copy(h[:], sum[:])
	return h
}()

// ContentKey is content a run of positions depends on beyond their token ids: an image
// whose soft tokens are all one placeholder id (vLLM's multimodal hash). Every block that
// holds a position in [Start, End) hashes Hash too, so the same placeholders with other
// pixels never share blocks.
type ContentKey struct {
	Start, End int
	Hash       [16]byte
}

// hasher computes chained block hashes with a reusable scratch buffer (no allocation).
type hasher struct {
	buf []byte
}

// next returns the hash of a block holding tokens at positions [start, start+len) whose
// predecessor hashed to parent, with the content keys that overlap it.
func (h *hasher) next(parent BlockHash, tokens []int32, start int, keys []ContentKey) BlockHash {
	n := len(parent) + 4*len(tokens)
	if cap(h.buf) < n {
		h.buf = make([]byte, n)
	}
	b := h.buf[:n]
	copy(b, parent[:])
	for i, t := range tokens {
		binary.LittleEndian.PutUint32(b[len(parent)+4*i:], uint32(t))
	}
	for _, k := range keys {
		if k.Start < start+len(tokens) && k.End > start {
			b = append(b, k.Hash[:]...)
		}
	}
	h.buf = b[:0]
	sum := sha256.Sum256(b)
	var out BlockHash
	copy(out[:], sum[:])
	return out
}

// extend appends to hashes the chained hashes of tokens' full blocks until it holds
// numBlocks entries (or tokens runs out of full blocks). Hashes already present are kept:
// tokens only ever grow at the end, so they stay valid.
func (h *hasher) extend(hashes []BlockHash, tokens []int32, keys []ContentKey, pageSize, numBlocks int) []BlockHash {
	if limit := len(tokens) / pageSize; numBlocks > limit {
		numBlocks = limit
	}
	for i := len(hashes); i < numBlocks; i++ {
		parent := rootHash
		if i > 0 {
			parent = hashes[i-1]
		}
		hashes = append(hashes, h.next(parent, tokens[i*pageSize:(i+1)*pageSize], i*pageSize, keys))
	}
	return hashes
}
