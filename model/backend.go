package model

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/gomlx/gomlx/backends"
	_ "github.com/gomlx/gomlx/backends/simplego" // the pure-Go CPU backend ("go")
	"github.com/gomlx/gomlx/backends/xla"        // PJRT plugins ("xla:<plugin>")
)

func init() {
	// gomlx downloads a missing PJRT plugin from the internet by default; TPU nodes often
	// have no egress, so a start-up must not reach for it unless asked (SetPJRTAutoInstall).
	xla.EnableAutoInstall(false)
}

// SetPJRTAutoInstall lets (or stops) an xla: backend download a missing PJRT plugin.
// It is off by default; serve's --pjrt-auto-install turns it on.
func SetPJRTAutoInstall(enable bool) { xla.EnableAutoInstall(enable) }

// ErrBackend is wrapped by errors creating a backend.
var ErrBackend = errors.New("backend")

// DefaultBackend is the pure-Go CPU backend in the configuration that does not deadlock
// (the default SimpleGo config hangs intermittently on nested worker-pool waits; running ops
// one at a time does not), with the simple DotGeneral kernel: the blocked one copies and
// pads its operands on every call, which made a decode step of the tiny model (logits
// against a 262k-row embedding) 9× slower at batch 1 (docs/performance.md).
const DefaultBackend = "go:ops_sequential,dotgeneral_small"

// NewBackend creates a backend from a spec: "go" (or "go:<simplego options>"), or
// "xla:<plugin>" where plugin is a name (cpu, cuda, tpu) or an absolute path to a PJRT
// plugin .so.
func NewBackend(spec string) (b backends.Backend, err error) {
	switch {
	case spec == "" || spec == "go":
		spec = DefaultBackend
	case strings.HasPrefix(spec, "go:"):
	case strings.HasPrefix(spec, "xla:"):
		plugin := strings.TrimPrefix(spec, "xla:")
		if plugin == "" {
			return nil, fmt.Errorf("%w: %q names no PJRT plugin (want xla:cpu, xla:cuda, xla:tpu or xla:/abs/plugin.so)", ErrBackend, spec)
		}
		if strings.ContainsRune(plugin, os.PathSeparator) {
			if !filepath.IsAbs(plugin) {
				return nil, fmt.Errorf("%w: plugin path %q must be absolute", ErrBackend, plugin)
			}
			if _, statErr := os.Stat(plugin); statErr != nil {
				return nil, fmt.Errorf("%w: plugin %s: %w", ErrBackend, plugin, statErr)
			}
		}
	default:
		return nil, fmt.Errorf("%w: unknown backend %q (want go, xla:<plugin name> or xla:/abs/plugin.so)", ErrBackend, spec)
	}
	// gomlx panics on some construction errors; turn them into errors.
	defer func() {
		if r := recover(); r != nil {
			b, err = nil, fmt.Errorf("%w: %s: %v", ErrBackend, spec, r)
		}
	}()
	b, err = backends.NewWithConfig(spec)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrBackend, spec, err)
	}
	return b, nil
}
