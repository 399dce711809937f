package model

import (
	"fmt"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"unsafe"

	"github.com/gomlx/go-xla/pkg/pjrt"
	"github.com/gomlx/go-xla/pkg/stablehlo"
	"github.com/gomlx/gomlx/backends/xla"
	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/gomlx/gomlx/pkg/core/graph"
)

// The StableHLO of the sharded program, without a PJRT plugin.
//
// gomlx's xla backend writes StableHLO in pure Go (go-xla's stablehlo builder) and needs
// the plugin only to compile it. Its Backend type keeps the plugin, client and device
// count in unexported fields, so this test builds a Backend value whose plugin and client
// are empty placeholders (set through reflect+unsafe; gomlx v0.26.0 / go-xla v0.1.4 field
// names), builds the step graph with AutoSharding on it, lets Graph.CompileWithSharding
// write the program (its last step, handing it to PJRT, fails on the empty client and is
// recovered) and reads the program back from the builder. If those internals change the
// test skips, saying so.

// fieldValue is the addressable, settable value of an unexported field of the struct *ptr.
func fieldValue(ptr any, name string) (reflect.Value, bool) {
	v := reflect.ValueOf(ptr)
	if v.Kind() != reflect.Pointer || v.IsNil() || v.Elem().Kind() != reflect.Struct {
		return reflect.Value{}, false
	}
	f := v.Elem().FieldByName(name)
	if !f.IsValid() {
		return reflect.Value{}, false
	}
	return reflect.NewAt(f.Type(), unsafe.Pointer(f.UnsafeAddr())).Elem(), true
}

func setField(ptr any, name string, value any) bool {
	f, ok := fieldValue(ptr, name)
	if !ok || f.Type() != reflect.TypeOf(value) {
		return false
	}
	f.Set(reflect.ValueOf(value))
	return true
}

// pluginlessXLA is an xla backend that can build programs for numDevices devices but not
// compile or run them.
func pluginlessXLA(t testing.TB, numDevices int) *xla.Backend {
	t.Helper()
	b := &xla.Backend{}
	if !(setField(b, "plugin", &pjrt.Plugin{}) && setField(b, "client", &pjrt.Client{}) &&
		setField(b, "numDevices", numDevices) && setField(b, "capabilities", xla.Capabilities.Clone())) {
		t.Skip("gomlx's xla.Backend fields (plugin, client, numDevices, capabilities) changed: cannot build StableHLO without a PJRT plugin")
	}
	return b
}

// shardedStableHLO writes the sharded step program of cfg at tp for one bucket.
func shardedStableHLO(t *testing.T, cfg *Config, tp int, dtype dtypes.DType, layout KVLayout, s BatchShape) (string, *ShardingPlan) {
	t.Helper()
	format, err := formatOf(dtype)
	if err != nil {
		t.Fatal(err)
	}
	plan, err := NewShardingPlan(cfg, tp, format)
	if err != nil {
		t.Fatal(err)
	}
	mesh, err := plan.Mesh()
	if err != nil {
		t.Fatal(err)
	}
	g := graph.NewGraph(pluginlessXLA(t, tp), "gemma3_step")
	if err := g.SetAutoSharding(mesh); err != nil {
		t.Fatal(err)
	}
	var compileErr any
	func() {
		defer func() { compileErr = recover() }()
		outs, specs := buildShardedStep(g, plan, mesh, dtype, layout, s)
		g.CompileWithSharding(outs, specs)
	}()
	if compileErr == nil {
		t.Fatal("compiling with a placeholder PJRT client succeeded?")
	}
	bv, ok := fieldValue(g, "builder")
	if !ok {
		t.Skip("gomlx's graph.Graph has no builder field: cannot read the StableHLO back")
	}
	xb, ok := bv.Interface().(*xla.Builder)
	if !ok {
		t.Skipf("graph builder is %T, not *xla.Builder", bv.Interface())
	}
	sb, ok := fieldValue(xb, "builder")
	if !ok {
		t.Skip("gomlx's xla.Builder has no builder field: cannot read the StableHLO back")
	}
	hlo, ok := sb.Interface().(*stablehlo.Builder)
	if !ok {
		t.Skipf("xla.Builder.builder is %T, not *stablehlo.Builder", sb.Interface())
	}
	text, err := hlo.Build()
	if err != nil {
		t.Fatalf("building the StableHLO (compile stopped with %v): %v", compileErr, err)
	}
	return string(text), plan
}

var (
	argRE    = regexp.MustCompile(`%([A-Za-z0-9_]+): tensor<([^>]*)> \{ sdy\.sharding = (#sdy\.sharding<@mesh, \[[^\]]*\]>) \}`)
	resultRE = regexp.MustCompile(`tensor<([^>]*)> \{ sdy\.sharding = (#sdy\.sharding<@mesh, \[[^\]]*\]>) \}`)
)

// wantSharding is the annotation a tensor of rank `rank` split on axis (-1: none) over
// meshAxes should carry, written independently of the plan code.
func wantSharding(rank, axis int, meshAxes ...string) string {
	dims := make([]string, rank)
	for i := range dims {
		dims[i] = "{}"
	}
	if axis >= 0 {
		q := make([]string, len(meshAxes))
		for i, a := range meshAxes {
			q[i] = fmt.Sprintf("%q", a)
		}
		dims[axis] = "{" + strings.Join(q, ", ") + "}"
	}
	return "#sdy.sharding<@mesh, [" + strings.Join(dims, ", ") + "]>"
}

func TestShardedStableHLO(t *testing.T) {
	for _, tc := range []struct {
		preset string
		tp     int
		dtype  dtypes.DType
		// mesh is the expected mesh declaration; all/kv are the mesh axes of full splits
		// and of kv-head splits.
		mesh    string
		all, kv []string
	}{
		{"gemma3-27b", 8, dtypes.BFloat16, `sdy.mesh @mesh = <["tp"=8]>`, []string{"tp"}, []string{"tp"}},
		{"gemma3-12b", 4, dtypes.BFloat16, `sdy.mesh @mesh = <["tp"=4]>`, []string{"tp"}, []string{"tp"}},
		{"gemma3-4b", 8, dtypes.BFloat16, `sdy.mesh @mesh = <["tp"=4, "tp_rep"=2]>`, []string{"tp", "tp_rep"}, []string{"tp"}},
		{"gemma3-1b", 2, dtypes.BFloat16, `sdy.mesh @mesh = <["tp"=1, "tp_rep"=2]>`, []string{"tp", "tp_rep"}, []string{"tp"}},
		{"tiny", 2, dtypes.Float32, `sdy.mesh @mesh = <["tp"=2]>`, []string{"tp"}, []string{"tp"}},
	} {
		t.Run(fmt.Sprintf("%s/tp%d", tc.preset, tc.tp), func(t *testing.T) {
			cfg, err := Preset(tc.preset)
			if err != nil {
				t.Fatal(err)
			}
			layout := KVLayout{PageSize: 16, NumGlobalPages: 8, NumSlidingPages: 8}
			s := BatchShape{T: 16, B: 1, Q: 16, EG: 2, ES: SlidingPagesPerRow(&cfg, 16, 16), N: 1}
			text, plan := shardedStableHLO(t, &cfg, tc.tp, tc.dtype, layout, s)
			if !strings.Contains(text, fmt.Sprintf("stablehlo.num_partitions = %d", tc.tp)) {
				t.Errorf("module does not declare %d partitions", tc.tp)
			}
			if !strings.Contains(text, tc.mesh) {
				t.Errorf("module does not declare %s", tc.mesh)
			}
			main := text[strings.Index(text, "func.func @main("):]
			sig, results, ok := strings.Cut(main[:strings.Index(main, "\n")], ") -> (")
			if !ok {
				t.Fatal("main has no annotated results: the program was not finished")
			}
			args := map[string][2]string{}
			for _, m := range argRE.FindAllStringSubmatch(sig, -1) {
				args[m[1]] = [2]string{m[2], m[3]}
			}
			dt := map[dtypes.DType]string{dtypes.BFloat16: "bf16", dtypes.Float32: "f32"}[tc.dtype]
			specs := WeightSpecs(&cfg)
			for _, w := range specs {
				axis, axes := -1, []string(nil)
				switch {
				case len(w.Shape) == 1:
				case w.Name == "model.embed_tokens.weight":
					axis, axes = 0, tc.all
				case strings.Contains(w.Name, "k_proj"), strings.Contains(w.Name, "v_proj"):
					axis, axes = 0, tc.kv
				case strings.Contains(w.Name, "q_proj"), strings.Contains(w.Name, "gate_proj"), strings.Contains(w.Name, "up_proj"):
					axis, axes = 0, tc.all
				case strings.Contains(w.Name, "o_proj"), strings.Contains(w.Name, "down_proj"):
					axis, axes = 1, tc.all
				default:
					t.Fatalf("unexpected tensor %s", w.Name)
				}
				got, ok := args[stablehlo.NormalizeIdentifier(w.Name)]
				if !ok {
					t.Errorf("%s: no annotated parameter", w.Name)
					continue
				}
				dims := make([]string, len(w.Shape))
				for i, d := range w.Shape {
					dims[i] = fmt.Sprint(d)
				}
				if want := strings.Join(dims, "x") + "x" + dt; got[0] != want {
					t.Errorf("%s: parameter type tensor<%s>, want the logical shape tensor<%s>", w.Name, got[0], want)
				}
				if want := wantSharding(len(w.Shape), axis, axes...); got[1] != want {
					t.Errorf("%s: sharding %s, want %s", w.Name, got[1], want)
				}
			}
			poolSharding := wantSharding(4, 2, tc.kv...)
			for _, p := range plan.PoolPlans(layout) {
				got, ok := args[stablehlo.NormalizeIdentifier(p.Name)]
				if !ok || got[1] != poolSharding {
					t.Errorf("%s: sharding %q, want %s", p.Name, got[1], poolSharding)
				}
			}
			for _, name := range []string{"step.tokens", "step.grid_index", "step.global_page", "step.logits_index"} {
				got := args[stablehlo.NormalizeIdentifier(name)]
				if strings.Contains(got[1], `"tp`) {
					t.Errorf("%s: step inputs must be replicated, got %s", name, got[1])
				}
			}
			// The step inputs, then LogitsIndex: this is the one-off program with logits inside.
			if want := len(specs) + len(plan.PoolPlans(layout)) + numStepInputs + 1; len(args) != want {
				t.Errorf("%d annotated parameters, want %d", len(args), want)
			}
			res := resultRE.FindAllStringSubmatch(results, -1)
			if len(res) != 2*cfg.NumHiddenLayers+1 {
				t.Fatalf("%d annotated results, want %d pools + logits", len(res), 2*cfg.NumHiddenLayers)
			}
			for i, r := range res[:len(res)-1] {
				if r[2] != poolSharding {
					t.Errorf("result %d (pool): sharding %s, want %s (the input's, for in-place donation)", i, r[2], poolSharding)
				}
			}
			logits := res[len(res)-1]
			if want := fmt.Sprintf("%dx%dxf32", s.N, cfg.VocabSize); logits[1] != want || logits[2] != wantSharding(2, -1) {
				t.Errorf("logits result tensor<%s> %s, want tensor<%s> replicated", logits[1], logits[2], want)
			}
			// The layers are all there: one q_proj contraction per layer reads its parameter.
			for l := range cfg.NumHiddenLayers {
				if !strings.Contains(text, "%"+stablehlo.NormalizeIdentifier(fmt.Sprintf("model.layers.%d.self_attn.q_proj.weight", l))+")") &&
					!strings.Contains(text, "%"+stablehlo.NormalizeIdentifier(fmt.Sprintf("model.layers.%d.self_attn.q_proj.weight", l))+",") {
					t.Errorf("layer %d's q_proj is not used in the program", l)
				}
			}
		})
	}
}
