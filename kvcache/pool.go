package kvcache

import "fmt"

// NullBlock is block id 0 of every group: never allocated, the target of padding writes
// and the placeholder for sliding-window blocks that have been freed.
const NullBlock int32 = 0

// nilLink ends the free list.
const nilLink int32 = -1

type block struct {
	ref        int32
	prev, next int32 // free-list links, valid while free is true
	free       bool
	hashed     bool // hash is registered in the pool's cache map
	hash       BlockHash
}

// blockPool is one group's blocks: reference counts, an LRU free list (head = evicted
// first) and the prefix-cache map from block hash to block id.
type blockPool struct {
	blocks     []block
	head, tail int32
	numFree    int
	cache      map[BlockHash]int32
	evictions  int64
}

func newBlockPool(numBlocks int, caching bool) *blockPool {
	p := &blockPool{blocks: make([]block, numBlocks), head: nilLink, tail: nilLink}
	if caching {
		p.cache = make(map[BlockHash]int32)
	}
	// Block 0 is the null block: it never enters the free list.
	for id := 1; id < numBlocks; id++ {
		p.pushTail(int32(id))
	}
	return p
}

// usable is the number of blocks that can ever be handed out (all but the null block).
func (p *blockPool) usable() int { return len(p.blocks) - 1 }

func (p *blockPool) pushTail(id int32) {
	b := &p.blocks[id]
	b.free, b.prev, b.next = true, p.tail, nilLink
	if p.tail == nilLink {
		p.head = id
	} else {
		p.blocks[p.tail].next = id
	}
	p.tail = id
	p.numFree++
}

func (p *blockPool) unlink(id int32) {
	b := &p.blocks[id]
	if b.prev == nilLink {
		p.head = b.next
	} else {
		p.blocks[b.prev].next = b.next
	}
	if b.next == nilLink {
		p.tail = b.prev
	} else {
		p.blocks[b.next].prev = b.prev
	}
	b.free, b.prev, b.next = false, nilLink, nilLink
	p.numFree--
}

// allocate appends n fresh blocks (ref 1, no hash) to dst, taking the least recently freed
// first and evicting their cached hashes. The caller has checked n <= numFree.
func (p *blockPool) allocate(dst []int32, n int) []int32 {
	for range n {
		id := p.head
		p.unlink(id)
		b := &p.blocks[id]
		if b.hashed {
			delete(p.cache, b.hash)
			b.hashed = false
			p.evictions++
		}
		b.ref = 1
		dst = append(dst, id)
	}
	return dst
}

// touch takes one more reference to a cached block found by a prefix lookup, taking it
// out of the free list if nobody held it.
func (p *blockPool) touch(id int32) {
	b := &p.blocks[id]
	if b.free {
		p.unlink(id)
	}
	b.ref++
}

// release drops one reference; a block nobody holds goes to the free list's tail, keeping
// its hash so that a later lookup can still find it.
func (p *blockPool) release(id int32) {
	if id == NullBlock {
		return
	}
	b := &p.blocks[id]
	b.ref--
	if b.ref == 0 {
		p.pushTail(id)
	}
}

// lookup returns the block cached under h.
func (p *blockPool) lookup(h BlockHash) (int32, bool) {
	id, ok := p.cache[h]
	return id, ok
}

// register caches block id under h unless another block already holds that content (two
// sequences computed the same block at once); the duplicate is then simply not cached.
func (p *blockPool) register(id int32, h BlockHash) {
	if id == NullBlock || p.cache == nil {
		return
	}
	b := &p.blocks[id]
	if b.hashed {
		return
	}
	if _, dup := p.cache[h]; dup {
		return
	}
	b.hashed, b.hash = true, h
	p.cache[h] = id
}

// countFree returns how many of ids are in the free list (taking them back costs free
// blocks just like allocating).
func (p *blockPool) countFree(ids []int32) int {
	n := 0
	for _, id := range ids {
		if id != NullBlock && p.blocks[id].free {
			n++
		}
	}
	return n
}

// check verifies the pool's invariants: the free list is well linked and holds exactly the
// unreferenced blocks, the null block is never free, and the cache map agrees with the
// blocks' hashes.
func (p *blockPool) check() error {
	if p.blocks[NullBlock].free {
		return fmt.Errorf("null block is in the free list")
	}
	seen, prev := 0, nilLink
	for id := p.head; id != nilLink; id = p.blocks[id].next {
		b := &p.blocks[id]
		if !b.free || b.ref != 0 || b.prev != prev {
			return fmt.Errorf("free list corrupt at block %d (free=%v ref=%d)", id, b.free, b.ref)
		}
		prev = id
		if seen++; seen > len(p.blocks) {
			return fmt.Errorf("free list has a cycle")
		}
	}
	if prev != p.tail || seen != p.numFree {
		return fmt.Errorf("free list length %d, tail %d; want %d, %d", seen, prev, p.numFree, p.tail)
	}
	for id := 1; id < len(p.blocks); id++ {
		b := &p.blocks[id]
		if b.ref < 0 || (b.ref == 0) != b.free {
			return fmt.Errorf("block %d: ref %d, free %v", id, b.ref, b.free)
		}
		if b.hashed && p.cache[b.hash] != int32(id) {
			return fmt.Errorf("block %d: hash not in the cache map", id)
		}
	}
	for h, id := range p.cache {
		if b := &p.blocks[id]; !b.hashed || b.hash != h {
			return fmt.Errorf("cache map entry for block %d does not match the block", id)
		}
	}
	return nil
}

// resetCache forgets every cached hash (the blocks' contents are gone). It refuses while
// any block is in use: a running sequence's registered blocks would lose their hashes.
func (p *blockPool) resetCache() error {
	if p.numFree != p.usable() {
		return fmt.Errorf("%w: %d blocks still in use", ErrInvalid, p.usable()-p.numFree)
	}
	for id := range p.blocks {
		p.blocks[id].hashed = false
		p.blocks[id].hash = BlockHash{}
	}
	if p.cache != nil {
		clear(p.cache)
	}
	return nil
}
