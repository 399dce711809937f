package hlotest

import (
	"reflect"
	"testing"
	"unsafe"

	"github.com/gomlx/go-xla/pkg/pjrt"
	"github.com/gomlx/go-xla/pkg/stablehlo"
	"github.com/gomlx/gomlx/backends/xla"
	"github.com/gomlx/gomlx/pkg/core/distributed"
	"github.com/gomlx/gomlx/pkg/core/graph"
)

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

// PluginlessXLA is an xla backend that can build programs for numDevices devices but not
// compile or run them.
func PluginlessXLA(t testing.TB, numDevices int) *xla.Backend {
	t.Helper()
	b := &xla.Backend{}
	if !(setField(b, "plugin", &pjrt.Plugin{}) && setField(b, "client", &pjrt.Client{}) &&
		setField(b, "numDevices", numDevices) && setField(b, "capabilities", xla.Capabilities.Clone())) {
		t.Skip("gomlx's xla.Backend fields (plugin, client, numDevices, capabilities) changed: cannot build StableHLO without a PJRT plugin")
	}
	return b
}

// SPMDProgram writes the StableHLO text of one chip's program of an SPMD graph over
// devices devices (a 1-D mesh named axis): build declares its parameters in g and returns
// its outputs.
func SPMDProgram(t testing.TB, devices int, axis, name string, build func(g *graph.Graph) []*graph.Node) string {
	t.Helper()
	mesh, err := distributed.NewDeviceMesh([]int{devices}, []string{axis})
	if err != nil {
		t.Fatal(err)
	}
	g := graph.NewGraph(PluginlessXLA(t, devices), name)
	if err := g.SetSPMD(mesh); err != nil {
		t.Fatal(err)
	}
	var compileErr any
	func() {
		defer func() { compileErr = recover() }()
		g.Compile(build(g)...)
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
		t.Skipf("graph builder is %T, not *xla.Builder (compile stopped with %v)", bv.Interface(), compileErr)
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
	return string(text)
}
