package hlotest

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

var (
	// collectiveRE finds a collective op; the reduction in its body and its closing line
	// follow.
	collectiveRE = regexp.MustCompile(`"stablehlo\.(all_reduce|all_gather|all_to_all|reduce_scatter|collective_permute|collective_broadcast)"`)
	// allReduceEndRE is the closing line of an all_reduce: its replica groups and type.
	allReduceEndRE = regexp.MustCompile(`\}\) \{ replica_groups = dense<([^>]*)> : [^}]*\} : \((tensor<[^>]*>)\) -> `)
	reductionRE    = regexp.MustCompile(`"stablehlo\.(add|maximum|minimum)"`)
	mainArgRE      = regexp.MustCompile(`%([A-Za-z0-9_]+): tensor<([^>]*)>`)
)

// Collective is one collective op of a program: its kind (all_reduce, all_gather, …), its
// reduction (add, maximum, minimum), operand type (e.g. tensor<8x5376xbf16>) and replica
// groups ([[0, 1, …]]).
type Collective struct{ Kind, Reduction, Operand, Groups string }

// Collectives lists the collectives of a StableHLO module, in program order.
func Collectives(t testing.TB, text string) []Collective {
	t.Helper()
	var out []Collective
	for _, loc := range collectiveRE.FindAllStringSubmatchIndex(text, -1) {
		c := Collective{Kind: text[loc[2]:loc[3]]}
		if c.Kind == "all_reduce" {
			rest := text[loc[1]:]
			end := allReduceEndRE.FindStringSubmatchIndex(rest)
			if end == nil {
				t.Fatalf("all_reduce without a closing line at offset %d", loc[0])
			}
			if r := reductionRE.FindStringSubmatch(rest[:end[0]]); r != nil {
				c.Reduction = r[1]
			}
			c.Groups, c.Operand = rest[end[2]:end[3]], rest[end[4]:end[5]]
		}
		out = append(out, c)
	}
	return out
}

// TensorBytes is the size of a StableHLO tensor type's body ("16x64xf32").
func TensorBytes(t testing.TB, typ string) int64 {
	t.Helper()
	parts := strings.Split(typ, "x")
	size := map[string]int64{"f32": 4, "bf16": 2, "i32": 4, "ui32": 4, "i8": 1, "ui8": 1, "i1": 1}[parts[len(parts)-1]]
	if size == 0 {
		t.Fatalf("unknown element type in tensor<%s>", typ)
	}
	for _, d := range parts[:len(parts)-1] {
		n, err := strconv.ParseInt(d, 10, 64)
		if err != nil {
			t.Fatalf("tensor<%s>: %v", typ, err)
		}
		size *= n
	}
	return size
}

// MainParams are the parameters of the module's main function: name → tensor type body.
func MainParams(text string) map[string]string {
	main := text[strings.Index(text, "func.func @main("):]
	sig := main[:strings.Index(main, ") -> ")]
	params := map[string]string{}
	for _, m := range mainArgRE.FindAllStringSubmatch(sig, -1) {
		params[m[1]] = m[2]
	}
	return params
}

// AllDevices is the replica groups of a collective over all n devices: [[0, 1, …, n−1]].
func AllDevices(n int) string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprint(i)
	}
	return "[[" + strings.Join(ids, ", ") + "]]"
}

// Param is one parameter of a module's main function.
type Param struct{ Name, Type string }

// MainParamList is the main function's parameters in order.
func MainParamList(text string) []Param {
	main := text[strings.Index(text, "func.func @main("):]
	sig := main[:strings.Index(main, ") -> ")]
	var out []Param
	for _, m := range mainArgRE.FindAllStringSubmatch(sig, -1) {
		out = append(out, Param{m[1], m[2]})
	}
	return out
}

// TensorType is the StableHLO tensor type body of a gomlx dtype name and shape
// ("19x64xf32"; "i32" for a scalar).
func TensorType(shape []int, dtype string) string {
	el := map[string]string{"Float32": "f32", "BFloat16": "bf16", "Int32": "i32", "Uint32": "ui32", "Int8": "i8", "Uint8": "ui8", "Bool": "i1"}[dtype]
	parts := make([]string, 0, len(shape)+1)
	for _, d := range shape {
		parts = append(parts, fmt.Sprint(d))
	}
	return strings.Join(append(parts, el), "x")
}
