package backendtest

import (
	"os"
	"sync"
	"testing"

	"github.com/gomlx/gomlx/backends"
	"github.com/tpuserve/tpuserve/model"
)

var (
	once    sync.Once
	backend backends.Backend
	err     error
)

// Spec is the backend spec the tests use.
func Spec() string {
	if s := os.Getenv("TPUSERVE_BACKEND"); s != "" {
		return s
	}
	return "go"
}

// Backend returns the process-wide test backend, failing the test if it cannot be created
// (a named PJRT plugin that is missing is a failure, not a skip: the run asked for it).
func Backend(t testing.TB) backends.Backend {
	t.Helper()
	once.Do(func() { backend, err = model.NewBackend(Spec()) })
	if err != nil {
		t.Fatalf("test backend %q: %v", Spec(), err)
	}
	return backend
}
