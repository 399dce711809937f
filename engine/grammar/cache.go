package grammar

import (
	"container/list"
	"strings"
	"sync"
)

// Cache holds compiled grammars for one vocabulary, keyed by the source text, its kind
// and the options, and evicts the least recently used beyond maxEntries. Compile errors
// are cached too (they are deterministic). Concurrent requests for the same key compile
// once. Safe for concurrent use.
type Cache struct {
	vocab *Vocabulary
	max   int

	mu    sync.Mutex
	order *list.List // front: most recently used; values are *cacheEntry
	items map[string]*list.Element
}

type cacheEntry struct {
	key  string
	once sync.Once
	g    *Grammar
	err  error
}

// NewCache returns a cache of at most maxEntries grammars (at least 1).
func NewCache(v *Vocabulary, maxEntries int) *Cache {
	return &Cache{vocab: v, max: max(maxEntries, 1), order: list.New(), items: map[string]*list.Element{}}
}

// Len is the number of cached grammars.
func (c *Cache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.order.Len()
}

func (c *Cache) get(key string, compile func() (*Grammar, error)) (*Grammar, error) {
	c.mu.Lock()
	var e *cacheEntry
	if el, ok := c.items[key]; ok {
		c.order.MoveToFront(el)
		e = el.Value.(*cacheEntry)
	} else {
		e = &cacheEntry{key: key}
		c.items[key] = c.order.PushFront(e)
		for c.order.Len() > c.max {
			last := c.order.Back()
			c.order.Remove(last)
			delete(c.items, last.Value.(*cacheEntry).key)
		}
	}
	c.mu.Unlock()
	e.once.Do(func() { e.g, e.err = compile() })
	return e.g, e.err
}

// JSONSchema returns CompileJSONSchema(schema, opts...), compiled once per distinct
// schema text and options.
func (c *Cache) JSONSchema(schema []byte, opts ...Option) (*Grammar, error) {
	key := "json\x00" + buildOptions(opts).key() + "\x00" + string(schema)
	return c.get(key, func() (*Grammar, error) { return CompileJSONSchema(c.vocab, schema, opts...) })
}

// Regex returns CompileRegex(pattern, opts...), cached.
func (c *Cache) Regex(pattern string, opts ...Option) (*Grammar, error) {
	key := "regex\x00" + buildOptions(opts).key() + "\x00" + pattern
	return c.get(key, func() (*Grammar, error) { return CompileRegex(c.vocab, pattern, opts...) })
}

// Choice returns CompileChoice(choices, opts...), cached.
func (c *Cache) Choice(choices []string, opts ...Option) (*Grammar, error) {
	var b strings.Builder
	b.WriteString("choice\x00" + buildOptions(opts).key())
	for _, s := range choices {
		b.WriteString("\x00" + quoteJSON(s))
	}
	return c.get(b.String(), func() (*Grammar, error) { return CompileChoice(c.vocab, choices, opts...) })
}

// GBNF returns CompileGBNF(src, opts...), cached.
func (c *Cache) GBNF(src string, opts ...Option) (*Grammar, error) {
	key := "gbnf\x00" + buildOptions(opts).key() + "\x00" + src
	return c.get(key, func() (*Grammar, error) { return CompileGBNF(c.vocab, src, opts...) })
}
