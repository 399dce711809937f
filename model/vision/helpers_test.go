package vision

import (
	"testing"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/tpuserve/tpuserve/internal/backendtest"
)

// runEncodeOnce runs encode with opts in a throwaway program on host weights (float32).
func runEncodeOnce(t testing.TB, cfg *Config, w *Weights, images [][]float32, opts encodeOptions) []float32 {
	t.Helper()
	numW := len(w.Tensors)
	exec, err := graph.NewExec(backendtest.Backend(t), func(in []*graph.Node) []*graph.Node {
		return []*graph.Node{encode(cfg, in[:numW], in[numW], opts)}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer exec.Finalize()
	S := cfg.ImageSize
	flat := make([]float32, 0, len(images)*3*S*S)
	for _, img := range images {
		flat = append(flat, img...)
	}
	pixels := tensors.FromFlatDataAndDimensions(flat, len(images), 3, S, S)
	args := make([]any, 0, numW+1)
	for _, t := range w.Tensors {
		args = append(args, t)
	}
	args = append(args, pixels)
	outs, err := exec.Exec(args...)
	if err != nil {
		t.Fatal(err)
	}
	if outs[0].DType() != dtypes.Float32 {
		t.Fatalf("output dtype %s", outs[0].DType())
	}
	return flatF32(t, outs[0])
}
