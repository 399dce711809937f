package grammar_test

import (
	"fmt"

	"github.com/tpuserve/tpuserve/engine/grammar"
)

// A request's lifecycle: compile once (here through a Cache), then per decoding step fill
// the mask, pick a token the mask allows, and advance.
func Example() {
	pieces := []string{"<eos>", `{"`, `ok`, `": `, `true`, `false`, `}`, `x`}
	tokens := make([][]byte, len(pieces))
	for i, p := range pieces[1:] {
		tokens[i+1] = []byte(p)
	}
	vocab, err := grammar.NewVocabulary(tokens, []int32{0}) // id 0 ends the sequence
	if err != nil {
		panic(err)
	}
	cache := grammar.NewCache(vocab, 128)
	g, err := cache.JSONSchema([]byte(`{"type":"object","properties":{"ok":{"type":"boolean"}},"required":["ok"],"additionalProperties":false}`),
		grammar.WithSeparators(", ", ": "))
	if err != nil {
		panic(err)
	}
	m := g.NewMatcher()
	mask := make([]uint32, vocab.MaskWords())
	for !m.IsTerminated() {
		if err := m.FillMask(mask); err != nil {
			panic(err)
		}
		var allowed []string
		next := int32(-1)
		for id := range pieces {
			if mask[id/32]&(1<<(id%32)) != 0 {
				allowed = append(allowed, pieces[id])
				if next < 0 {
					next = int32(id) // a sampler would choose among them
				}
			}
		}
		fmt.Println(allowed)
		if err := m.Advance(next); err != nil {
			panic(err)
		}
	}
	// Output:
	// [{"]
	// [ok]
	// [": ]
	// [true false]
	// [}]
	// [<eos>]
}
