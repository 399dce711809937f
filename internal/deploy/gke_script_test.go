package deploy

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

var gkeScript = filepath.Join("..", "..", "scripts", "gke", "gke.sh")

// runGKE runs scripts/gke/gke.sh in its default print-only mode.
func runGKE(t *testing.T, env []string, args ...string) (string, error) {
	t.Helper()
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("bash not installed")
	}
	cmd := exec.Command("bash", append([]string{gkeScript}, args...)...)
	cmd.Env = append(append(os.Environ(), "DRY_RUN=1", "PROJECT_ID=my-proj"), env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// The documented gcloud commands carry the flags the migration depends on.
func TestGKEScriptCommands(t *testing.T) {
	tests := []struct {
		name string
		env  []string
		args []string
		want []string
		not  []string
	}{
		{"tpu on demand", nil, []string{"tpu-pool"}, []string{"node-pools create tpu-v5e-8 ", "--machine-type=ct5lp-hightpu-8t", "--enable-autoscaling", "--min-nodes=0"}, []string{"--spot", "--reservation"}},
		{"tpu spot", nil, []string{"tpu-pool", "spot"}, []string{"tpu-v5e-8-spot", "--machine-type=ct5lp-hightpu-8t", "--spot"}, nil},
		{"tpu reservation", []string{"RESERVATION=v5e-res"}, []string{"tpu-pool", "reservation"}, []string{"--reservation-affinity=specific --reservation=v5e-res"}, nil},
		{"v5e-4", nil, []string{"tpu-pool-v5e4", "spot"}, []string{"--machine-type=ct5lp-hightpu-4t", "--spot"}, nil},
		{"h100", nil, []string{"h100-pool"}, []string{"--machine-type=a3-highgpu-1g", "--accelerator=type=nvidia-h100-80gb,count=1,gpu-driver-version=latest"}, nil},
		{"cluster", nil, []string{"cluster"}, []string{"--addons=GcsFuseCsiDriver", "--enable-managed-prometheus", "--workload-pool=my-proj.svc.id.goog"}, nil},
		{"autopilot", nil, []string{"autopilot"}, []string{"clusters create-auto"}, nil},
		{"weights", nil, []string{"weights", "/data/gemma"}, []string{"gcloud storage cp --recursive /data/gemma gs://my-proj-models/gemma-3-27b-it", "roles/storage.objectViewer", "/subject/ns/serving/sa/tpuserve"}, nil},
		{"adapter", nil, []string{"metrics-adapter"}, []string{"custom-metrics-stackdriver-adapter", "roles/monitoring.viewer"}, nil},
		{"image", nil, []string{"image", "tpu"}, []string{"docker buildx build --target tpu", "us-central1-docker.pkg.dev/my-proj/tpuserve/tpuserve:tpu-latest"}, nil},
		{"deploy", nil, []string{"deploy", "tpu"}, []string{"tpuserve deploy --target tpu", "--model gs://my-proj-models/gemma-3-27b-it", "kubectl apply -f tpuserve-tpu.yaml"}, nil},
		{"bench", nil, []string{"bench", "gpu"}, []string{"tpuserve bench --base-url http://tpuserve-gpu.serving.svc:8000", "--result-json /tmp/gpu.json"}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, err := runGKE(t, tc.env, tc.args...)
			if err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
			for _, n := range tc.not {
				if strings.Contains(out, n) {
					t.Errorf("output has %q:\n%s", n, out)
				}
			}
		})
	}
	for _, bad := range [][]string{{"tpu-pool", "reservation"}, {"tpu-pool", "preemptible"}, {"image", "arm"}, {"nonsense"}} {
		if out, err := runGKE(t, nil, bad...); err == nil || strings.Contains(out, "node-pools create") {
			t.Errorf("%q: err %v, output %q", bad, err, out)
		}
	}
}
