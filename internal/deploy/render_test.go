package deploy

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"sigs.k8s.io/yaml"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

const testHeader = "Rendered by a test of internal/deploy."

// goldenCases are the renderings kept in testdata/: the two production targets with GCS
// weights, the Spot and reservation variants, and the CPU defaults.
var goldenCases = []struct {
	name string
	opts Options
}{
	{"tpu", Options{
		Target: TargetTPU, Namespace: "serving", Image: "us-docker.pkg.dev/my-project/tpuserve/tpuserve:tpu",
		Model: "gs://my-models/gemma-3-27b-it", ServedModelName: "google/gemma-3-27b-it",
		MaxModelLen: 8192, MaxNumSeqs: 64, Replicas: 1, MaxReplicas: 3,
	}},
	{"tpu-spot", Options{
		Target: TargetTPU, Namespace: "serving", Image: "us-docker.pkg.dev/my-project/tpuserve/tpuserve:tpu",
		Model: "gs://my-models/gemma-3-27b-it", Spot: true, APIKeySecret: "tpuserve-api-key",
	}},
	{"tpu-reservation", Options{
		Target: TargetTPU, Model: "gs://my-models/gemma-3-27b-it", Tokenizer: "gs://my-tokenizers/gemma3",
		Reservation: "v5e-8-reservation", DisableAutoscale: true,
	}},
	{"gpu", Options{
		Target: TargetGPU, Namespace: "serving", Image: "us-docker.pkg.dev/my-project/tpuserve/tpuserve:gpu",
		Model: "gs://my-models/gemma-3-27b-it", ServedModelName: "google/gemma-3-27b-it",
		MaxModelLen: 8192, MaxNumSeqs: 64,
	}},
	{"cpu", Options{Target: TargetCPU}},
}

func render(t *testing.T, o Options) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := Render(&buf, o, testHeader); err != nil {
		t.Fatalf("Render(%+v): %v", o, err)
	}
	return buf.Bytes()
}

func TestGolden(t *testing.T) {
	for _, tc := range goldenCases {
		t.Run(tc.name, func(t *testing.T) {
			got := render(t, tc.opts)
			path := filepath.Join("testdata", tc.name+".yaml")
			if *update {
				if err := os.WriteFile(path, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("rendering differs from %s (run with -update after checking the diff):\n%s", path, firstDiff(string(want), string(got)))
			}
		})
	}
}

func firstDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	for i := 0; i < max(len(w), len(g)); i++ {
		var wl, gl string
		if i < len(w) {
			wl = w[i]
		}
		if i < len(g) {
			gl = g[i]
		}
		if wl != gl {
			return fmt.Sprintf("line %d:\nwant %q\ngot  %q", i+1, wl, gl)
		}
	}
	return "(no line differs)"
}

// decoded is one rendered document decoded strictly into its API type.
type decoded struct {
	kind string
	obj  any
}

// splitDocs splits a rendered stream into its documents, dropping the header comments.
func splitDocs(t *testing.T, b []byte) []string {
	t.Helper()
	s := string(b)
	if !strings.HasPrefix(s, "# ") && !strings.HasPrefix(s, "---\n") {
		t.Fatalf("stream starts with %q", s[:min(len(s), 20)])
	}
	parts := strings.Split(s, "---\n")
	var docs []string
	for i, p := range parts {
		if i == 0 {
			for _, line := range strings.Split(strings.TrimSpace(p), "\n") {
				if line != "" && !strings.HasPrefix(line, "# ") {
					t.Fatalf("non-comment line before the first document: %q", line)
				}
			}
			continue
		}
		docs = append(docs, p)
	}
	return docs
}

// decodeStrict decodes one YAML document into the Go type of its apiVersion and kind,
// failing on unknown fields, duplicate keys and kinds this package does not render.
func decodeStrict(doc string) (decoded, error) {
	var tm struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
	}
	if err := yaml.Unmarshal([]byte(doc), &tm); err != nil {
		return decoded{}, err
	}
	var obj any
	switch tm.APIVersion + " " + tm.Kind {
	case "v1 ServiceAccount":
		obj = &corev1.ServiceAccount{}
	case "apps/v1 Deployment":
		obj = &appsv1.Deployment{}
	case "v1 Service":
		obj = &corev1.Service{}
	case "autoscaling/v2 HorizontalPodAutoscaler":
		obj = &autoscalingv2.HorizontalPodAutoscaler{}
	case PodMonitoringAPIVersion + " PodMonitoring":
		obj = &PodMonitoring{}
	default:
		return decoded{}, fmt.Errorf("unexpected apiVersion/kind %q %q", tm.APIVersion, tm.Kind)
	}
	if err := yaml.UnmarshalStrict([]byte(doc), obj); err != nil {
		return decoded{}, fmt.Errorf("%s: %w", tm.Kind, err)
	}
	return decoded{tm.Kind, obj}, nil
}

// renderDecoded renders o and decodes every document strictly.
func renderDecoded(t *testing.T, o Options) (map[string]any, []byte) {
	t.Helper()
	b := render(t, o)
	got := map[string]any{}
	for _, doc := range splitDocs(t, b) {
		d, err := decodeStrict(doc)
		if err != nil {
			t.Fatalf("strict decode: %v\n%s", err, doc)
		}
		if _, dup := got[d.kind]; dup {
			t.Fatalf("two %s documents", d.kind)
		}
		got[d.kind] = d.obj
	}
	return got, b
}

func TestEveryDocumentDecodesStrictly(t *testing.T) {
	for _, tc := range goldenCases {
		t.Run(tc.name, func(t *testing.T) {
			objs, _ := renderDecoded(t, tc.opts)
			want := []string{"Deployment", "Service"}
			if !tc.opts.DisableAutoscale {
				want = append(want, "PodMonitoring", "HorizontalPodAutoscaler")
			}
			if strings.HasPrefix(tc.opts.Model, "gs://") {
				want = append(want, "ServiceAccount")
			}
			for _, k := range want {
				if objs[k] == nil {
					t.Errorf("no %s rendered", k)
				}
			}
			if len(objs) != len(want) {
				t.Errorf("rendered %d kinds, want %v", len(objs), want)
			}
		})
	}
}

// The strict decode must have teeth: a field the API does not know is refused.
func TestStrictDecodeRefusesUnknownFields(t *testing.T) {
	docs := splitDocs(t, render(t, Options{Target: TargetTPU}))
	for _, doc := range docs {
		bad := strings.Replace(doc, "\nspec:\n", "\nspec:\n  notAField: 1\n", 1)
		if bad == doc {
			t.Fatalf("document has no spec:\n%s", doc)
		}
		if _, err := decodeStrict(bad); err == nil || !strings.Contains(err.Error(), "notAField") {
			t.Errorf("strict decode accepted an unknown field (err %v):\n%s", err, bad)
		}
	}
}

func container(t *testing.T, objs map[string]any) (*appsv1.Deployment, corev1.Container) {
	t.Helper()
	d := objs["Deployment"].(*appsv1.Deployment)
	if n := len(d.Spec.Template.Spec.Containers); n != 1 {
		t.Fatalf("%d containers", n)
	}
	return d, d.Spec.Template.Spec.Containers[0]
}

func hasArg(args []string, a string) bool { return slices.Contains(args, a) }

func assertQuantity(t *testing.T, what string, l corev1.ResourceList, name corev1.ResourceName, want int64) {
	t.Helper()
	q, ok := l[name]
	if !ok {
		t.Errorf("%s: no %s", what, name)
		return
	}
	if q.Cmp(*resource.NewQuantity(want, resource.DecimalSI)) != 0 {
		t.Errorf("%s: %s = %s, want %d", what, name, q.String(), want)
	}
}

func TestTPUTransformations(t *testing.T) {
	objs, raw := renderDecoded(t, goldenCases[0].opts)
	d, c := container(t, objs)
	assertQuantity(t, "requests", c.Resources.Requests, ResourceTPU, 8)
	assertQuantity(t, "limits", c.Resources.Limits, ResourceTPU, 8)
	ns := d.Spec.Template.Spec.NodeSelector
	if ns[LabelTPUAccelerator] != "tpu-v5-lite-podslice" || ns[LabelTPUTopology] != "2x4" {
		t.Errorf("node selector %v", ns)
	}
	for _, a := range []string{"--tensor-parallel-size=8", "--backend=xla:tpu", "--dtype=bf16", "serve"} {
		if !hasArg(c.Args, a) {
			t.Errorf("args %q lack %q", c.Args, a)
		}
	}
	for _, a := range c.Args {
		la := strings.ToLower(a)
		for _, banned := range []string{"fp8", "speculative", "quantization", "kv-cache-dtype", "draft"} {
			if strings.Contains(la, banned) {
				t.Errorf("TPU args carry %q: %q", banned, a)
			}
		}
	}
	if bytes.Contains(bytes.ToLower(raw), []byte("nvidia")) {
		t.Errorf("TPU rendering mentions nvidia")
	}
	if !slices.ContainsFunc(d.Spec.Template.Spec.Tolerations, func(tl corev1.Toleration) bool { return tl.Key == string(ResourceTPU) }) {
		t.Errorf("no google.com/tpu toleration: %v", d.Spec.Template.Spec.Tolerations)
	}
}

func TestGPUTransformations(t *testing.T) {
	objs, raw := renderDecoded(t, goldenCases[3].opts)
	d, c := container(t, objs)
	assertQuantity(t, "requests", c.Resources.Requests, ResourceGPU, 1)
	assertQuantity(t, "limits", c.Resources.Limits, ResourceGPU, 1)
	if !hasArg(c.Args, "--backend=xla:cuda") || !hasArg(c.Args, "--tensor-parallel-size=1") {
		t.Errorf("args %q", c.Args)
	}
	if d.Spec.Template.Spec.NodeSelector[LabelGPUAccelerator] != "nvidia-h100-80gb" {
		t.Errorf("node selector %v", d.Spec.Template.Spec.NodeSelector)
	}
	if bytes.Contains(raw, []byte("google.com/tpu")) || bytes.Contains(raw, []byte("gke-tpu")) {
		t.Errorf("GPU rendering mentions TPUs")
	}
}

func TestCPUHasNoAccelerator(t *testing.T) {
	objs, raw := renderDecoded(t, Options{Target: TargetCPU})
	d, c := container(t, objs)
	if !hasArg(c.Args, "--backend=go") || !hasArg(c.Args, "--model=tiny") {
		t.Errorf("args %q", c.Args)
	}
	if d.Spec.Template.Spec.NodeSelector != nil || d.Spec.Template.Spec.Tolerations != nil {
		t.Errorf("cpu pods are pinned: %v %v", d.Spec.Template.Spec.NodeSelector, d.Spec.Template.Spec.Tolerations)
	}
	for _, s := range []string{"google.com/tpu", "nvidia", "gcsfuse"} {
		if bytes.Contains(raw, []byte(s)) {
			t.Errorf("cpu rendering mentions %s", s)
		}
	}
}

// Probes, drain, shared memory, ports, autoscaling: the parts common to every target.
func TestPodLifecycleAndAutoscaling(t *testing.T) {
	for _, tc := range goldenCases {
		if tc.opts.DisableAutoscale {
			continue
		}
		t.Run(tc.name, func(t *testing.T) {
			objs, _ := renderDecoded(t, tc.opts)
			d, c := container(t, objs)
			for name, p := range map[string]*corev1.Probe{"startup": c.StartupProbe, "readiness": c.ReadinessProbe, "liveness": c.LivenessProbe} {
				if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/health" || p.HTTPGet.Port.StrVal != "http" {
					t.Errorf("%s probe %+v", name, p)
				}
			}
			if c.Lifecycle == nil || c.Lifecycle.PreStop == nil || c.Lifecycle.PreStop.Sleep == nil || c.Lifecycle.PreStop.Sleep.Seconds <= 0 {
				t.Errorf("no preStop drain: %+v", c.Lifecycle)
			}
			grace := *d.Spec.Template.Spec.TerminationGracePeriodSeconds
			if grace <= c.Lifecycle.PreStop.Sleep.Seconds+60 {
				t.Errorf("grace period %ds leaves no time to drain after the %ds preStop", grace, c.Lifecycle.PreStop.Sleep.Seconds)
			}
			if !hasArg(c.Args, "--shutdown-timeout=1m0s") {
				t.Errorf("args %q lack the drain timeout", c.Args)
			}
			shm := false
			for _, m := range c.VolumeMounts {
				if m.MountPath == "/dev/shm" {
					for _, v := range d.Spec.Template.Spec.Volumes {
						if v.Name == m.Name && v.EmptyDir != nil && v.EmptyDir.Medium == corev1.StorageMediumMemory {
							shm = true
						}
					}
				}
			}
			if !shm {
				t.Errorf("no memory-backed /dev/shm")
			}
			ports := map[string]int32{}
			for _, p := range c.Ports {
				ports[p.Name] = p.ContainerPort
			}
			if ports["http"] != 8000 || ports["grpc"] != 50051 {
				t.Errorf("container ports %v", ports)
			}
			svc := objs["Service"].(*corev1.Service)
			for _, p := range svc.Spec.Ports {
				if _, ok := ports[p.TargetPort.StrVal]; !ok {
					t.Errorf("service port %s targets unknown port %q", p.Name, p.TargetPort.StrVal)
				}
			}
			if !selects(svc.Spec.Selector, d.Spec.Template.Labels) {
				t.Errorf("service selector %v does not select pods %v", svc.Spec.Selector, d.Spec.Template.Labels)
			}

			pm := objs["PodMonitoring"].(*PodMonitoring)
			if !selects(pm.Spec.Selector.MatchLabels, d.Spec.Template.Labels) {
				t.Errorf("PodMonitoring selector %v does not select pods", pm.Spec.Selector.MatchLabels)
			}
			if len(pm.Spec.Endpoints) != 1 || pm.Spec.Endpoints[0].Path != "/metrics" || ports[pm.Spec.Endpoints[0].Port.StrVal] == 0 {
				t.Errorf("PodMonitoring endpoints %+v", pm.Spec.Endpoints)
			}

			h := objs["HorizontalPodAutoscaler"].(*autoscalingv2.HorizontalPodAutoscaler)
			if h.Spec.ScaleTargetRef.Kind != "Deployment" || h.Spec.ScaleTargetRef.Name != d.Name {
				t.Errorf("HPA targets %+v", h.Spec.ScaleTargetRef)
			}
			if len(h.Spec.Metrics) != 1 || h.Spec.Metrics[0].External == nil {
				t.Fatalf("HPA metrics %+v", h.Spec.Metrics)
			}
			m := h.Spec.Metrics[0].External.Metric
			if m.Name != "prometheus.googleapis.com|vllm:num_requests_waiting|gauge" {
				t.Errorf("HPA metric %q", m.Name)
			}
			if m.Selector.MatchLabels["resource.labels.job"] != pm.Name || m.Selector.MatchLabels["resource.labels.namespace"] != pm.Namespace {
				t.Errorf("HPA metric selector %v does not pick the PodMonitoring %s/%s", m.Selector.MatchLabels, pm.Namespace, pm.Name)
			}
			if *h.Spec.MinReplicas != *d.Spec.Replicas || h.Spec.MaxReplicas < *h.Spec.MinReplicas {
				t.Errorf("HPA replicas %d..%d, deployment %d", *h.Spec.MinReplicas, h.Spec.MaxReplicas, *d.Spec.Replicas)
			}
		})
	}
}

func selects(sel, labels map[string]string) bool {
	if len(sel) == 0 {
		return false
	}
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return true
}

func TestModelLocations(t *testing.T) {
	tests := []struct {
		name, model, tokenizer string
		wantArgs               []string
		wantBuckets            []string
	}{
		{"tiny", "tiny", "", []string{"--model=tiny"}, nil},
		{"absolute path", "/weights/gemma", "/weights/tok", []string{"--model=/weights/gemma", "--tokenizer=/weights/tok"}, nil},
		{"gcs", "gs://my-models/gemma-3-27b-it/", "", []string{"--model=/models/my-models/gemma-3-27b-it"}, []string{"my-models"}},
		{"gcs bucket root", "gs://my-models", "", []string{"--model=/models/my-models"}, []string{"my-models"}},
		{"two buckets", "gs://my-models/g", "gs://tok.example/t", []string{"--model=/models/my-models/g", "--tokenizer=/models/tok.example/t"}, []string{"my-models", "tok.example"}},
		{"one bucket twice", "gs://my-models/g", "gs://my-models/t", []string{"--model=/models/my-models/g", "--tokenizer=/models/my-models/t"}, []string{"my-models"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			objs, _ := renderDecoded(t, Options{Target: TargetTPU, Model: tc.model, Tokenizer: tc.tokenizer})
			d, c := container(t, objs)
			for _, a := range tc.wantArgs {
				if !hasArg(c.Args, a) {
					t.Errorf("args %q lack %q", c.Args, a)
				}
			}
			var buckets []string
			for _, v := range d.Spec.Template.Spec.Volumes {
				if v.CSI != nil {
					if v.CSI.Driver != "gcsfuse.csi.storage.gke.io" || v.CSI.ReadOnly == nil || !*v.CSI.ReadOnly {
						t.Errorf("volume %s: %+v", v.Name, v.CSI)
					}
					b := v.CSI.VolumeAttributes["bucketName"]
					buckets = append(buckets, b)
					if !slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool {
						return m.Name == v.Name && m.MountPath == "/models/"+b && m.ReadOnly
					}) {
						t.Errorf("bucket %s is not mounted read-only at /models/%s: %+v", b, b, c.VolumeMounts)
					}
				}
			}
			if !slices.Equal(buckets, tc.wantBuckets) {
				t.Errorf("mounted buckets %v, want %v", buckets, tc.wantBuckets)
			}
			ann := d.Spec.Template.Annotations["gke-gcsfuse/volumes"]
			sa := objs["ServiceAccount"]
			if len(tc.wantBuckets) > 0 {
				if ann != "true" || sa == nil || d.Spec.Template.Spec.ServiceAccountName != sa.(*corev1.ServiceAccount).Name {
					t.Errorf("GCS pods need the gcsfuse annotation (%q) and their service account (%v, pod uses %q)", ann, sa, d.Spec.Template.Spec.ServiceAccountName)
				}
			} else if ann != "" || sa != nil || d.Spec.Template.Spec.ServiceAccountName != "" {
				t.Errorf("no GCS, yet annotation %q, service account %v", ann, sa)
			}
		})
	}
}

func TestSpotReservationAndAPIKey(t *testing.T) {
	objs, raw := renderDecoded(t, Options{Target: TargetTPU, Spot: true, Reservation: "res-1", APIKeySecret: "keys"})
	d, c := container(t, objs)
	ns := d.Spec.Template.Spec.NodeSelector
	if ns[LabelSpot] != "true" || ns[LabelReservation] != "res-1" || ns[LabelTPUTopology] != "2x4" {
		t.Errorf("node selector %v", ns)
	}
	if !slices.ContainsFunc(d.Spec.Template.Spec.Tolerations, func(tl corev1.Toleration) bool { return tl.Key == LabelSpot }) {
		t.Errorf("no Spot toleration")
	}
	if !hasArg(c.Args, "--api-key=$(TPUSERVE_API_KEY)") {
		t.Errorf("args %q", c.Args)
	}
	if !slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool {
		return e.Name == "TPUSERVE_API_KEY" && e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil && e.ValueFrom.SecretKeyRef.Name == "keys"
	}) {
		t.Errorf("env %+v", c.Env)
	}
	if bytes.Contains(raw, []byte("nvidia")) {
		t.Errorf("TPU Spot rendering mentions nvidia")
	}
}

func TestBadOptionsAreRefused(t *testing.T) {
	tests := []struct {
		name    string
		opts    Options
		wantErr error
		field   string
	}{
		{"unknown target", Options{Target: "tpu-v4"}, ErrUnknownTarget, "tpu-v4"},
		{"no target", Options{}, ErrInvalidOptions, "target"},
		{"s3 model", Options{Target: TargetTPU, Model: "s3://bucket/m"}, ErrInvalidOptions, "model"},
		{"relative model", Options{Target: TargetTPU, Model: "models/gemma"}, ErrInvalidOptions, "model"},
		{"bad bucket", Options{Target: TargetTPU, Model: "gs://UPPER/m"}, ErrInvalidOptions, "model"},
		{"tiny tokenizer", Options{Target: TargetCPU, Tokenizer: "tiny"}, ErrInvalidOptions, "tokenizer"},
		{"bad namespace", Options{Target: TargetCPU, Namespace: "Serving_NS"}, ErrInvalidOptions, "namespace"},
		{"bad name", Options{Target: TargetCPU, Name: "-x"}, ErrInvalidOptions, "name"},
		{"negative replicas", Options{Target: TargetCPU, Replicas: -1}, ErrInvalidOptions, "replicas"},
		{"max below min", Options{Target: TargetCPU, Replicas: 3, MaxReplicas: 2}, ErrInvalidOptions, "max-replicas"},
		{"fp8 dtype", Options{Target: TargetTPU, DType: "fp8"}, ErrInvalidOptions, "dtype"},
		{"same ports", Options{Target: TargetCPU, Port: 9000, GRPCPort: 9000}, ErrInvalidOptions, "grpc-port"},
		{"port range", Options{Target: TargetCPU, Port: 70000}, ErrInvalidOptions, "port"},
		{"image with space", Options{Target: TargetCPU, Image: "a b"}, ErrInvalidOptions, "image"},
		{"short preStop", Options{Target: TargetCPU, PreStopSleep: 1}, ErrInvalidOptions, "prestop-sleep"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			err := Render(&buf, tc.opts, "")
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			if !strings.Contains(err.Error(), tc.field) {
				t.Errorf("error %q does not name %q", err, tc.field)
			}
			if buf.Len() != 0 {
				t.Errorf("wrote %d bytes despite the error", buf.Len())
			}
		})
	}
}

func BenchmarkRenderTPU(b *testing.B) {
	var buf bytes.Buffer
	for b.Loop() {
		buf.Reset()
		if err := Render(&buf, goldenCases[0].opts, testHeader); err != nil {
			b.Fatal(err)
		}
	}
}
