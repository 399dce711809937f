// Package deploy renders the Kubernetes manifests that run `tpuserve serve` on GKE: a
// Deployment, a Service, a HorizontalPodAutoscaler on vllm:num_requests_waiting with the
// PodMonitoring (GKE Managed Prometheus) that feeds it, and, when weights come from Cloud
// Storage, the ServiceAccount the GCS FUSE CSI driver authenticates as.
//
// It owns the per-target transformations: --target tpu asks for a whole TPU v5e-8 host
// (google.com/tpu: 8, topology 2x4, --tensor-parallel-size=8, backend xla:tpu, no FP8, no
// speculative model, nothing NVIDIA); --target gpu asks for one H100 (nvidia.com/gpu: 1,
// backend xla:cuda); --target cpu runs the pure-Go backend. Every object is a typed
// k8s.io/api value (PodMonitoring, a CRD, has its own small typed structs in this package)
// marshalled with sigs.k8s.io/yaml, so a field the API does not know cannot be rendered.
//
// Errors: Render and Objects return an error wrapping ErrInvalidOptions that names the bad
// option (for example `model: unsupported URI scheme "s3"`), or ErrUnknownTarget for a
// target other than tpu, gpu or cpu. Nothing panics on bad input.
//
// Concurrency: the package has no state; Render and Objects may be called from any
// goroutine.
package deploy
