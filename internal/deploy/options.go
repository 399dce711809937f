package deploy

import (
	"errors"
	"fmt"
	"net/url"
	"path"
	"regexp"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/validation"
)

// ErrInvalidOptions is wrapped by every error about a bad option value.
var ErrInvalidOptions = errors.New("deploy: invalid options")

// ErrUnknownTarget is wrapped by the error for a target other than tpu, gpu or cpu.
var ErrUnknownTarget = errors.New("deploy: unknown target")

// Target names an accelerator profile.
type Target string

// The targets Render knows.
const (
	TargetTPU Target = "tpu" // TPU v5e-8 (ct5lp-hightpu-8t, topology 2x4), 8-way tensor parallel
	TargetGPU Target = "gpu" // one NVIDIA H100 80GB (a3-highgpu-1g)
	TargetCPU Target = "cpu" // pure-Go backend, for smoke tests on any node
)

// Targets lists the known targets in a stable order (for help texts).
func Targets() []Target { return []Target{TargetTPU, TargetGPU, TargetCPU} }

// Options are the knobs of a rendering. The zero value of every field except Target means
// "use the default" documented on the field.
type Options struct {
	// Target selects the accelerator profile (required).
	Target Target
	// Name of every rendered object and the app.kubernetes.io/instance label. Default "tpuserve".
	Name string
	// Namespace of every rendered object. Default "default".
	Namespace string
	// Image of the server container. Default "tpuserve:<target>" (the Dockerfile's stage names).
	Image string
	// Model is "tiny", an absolute path inside the container, or gs://BUCKET/PATH (mounted
	// read-only with the GCS FUSE CSI driver at /models/BUCKET). Default "tiny".
	Model string
	// Tokenizer is an optional directory in the same forms as Model (not "tiny").
	Tokenizer string
	// ServedModelName is passed as --served-model-name when set.
	ServedModelName string
	// Replicas is the Deployment's replica count and the autoscaler's minimum. Default 1.
	Replicas int32
	// MaxReplicas is the autoscaler's maximum. Default max(Replicas, 4).
	MaxReplicas int32
	// Autoscale renders the HorizontalPodAutoscaler and its PodMonitoring. Default true
	// (set DisableAutoscale to turn it off).
	DisableAutoscale bool
	// QueueTarget is the average number of waiting requests per replica the autoscaler aims
	// for (vllm:num_requests_waiting). Default 5.
	QueueTarget int64
	// MaxModelLen and MaxNumSeqs are passed to the server when > 0.
	MaxModelLen int
	MaxNumSeqs  int
	// KVCacheMemory is passed as --kv-cache-memory (bytes) when > 0.
	KVCacheMemory int64
	// Port and GRPCPort of the server. Defaults 8000 and 50051.
	Port     int32
	GRPCPort int32
	// DType overrides the target's dtype (bf16 for tpu and gpu, f32 for cpu).
	DType string
	// APIKeySecret names a Secret whose key "api-key" becomes the server's --api-key.
	APIKeySecret string
	// ServiceAccount is the Kubernetes service account of the pods. When the model or the
	// tokenizer is on GCS it is rendered too (default: Name), for Workload Identity.
	ServiceAccount string
	// Spot schedules on Spot VMs (node selector and toleration cloud.google.com/gke-spot).
	Spot bool
	// Reservation schedules on nodes of the named Compute Engine reservation.
	Reservation string
	// ShutdownTimeout is the server's --shutdown-timeout (drain of in-flight requests after
	// SIGTERM). Default 60s.
	ShutdownTimeout time.Duration
	// PreStopSleep keeps a terminating pod serving while the Service and load balancers stop
	// sending it new requests, before SIGTERM starts the drain. Default 15s.
	PreStopSleep time.Duration
}

// Defaults.
const (
	DefaultName            = "tpuserve"
	DefaultNamespace       = "default"
	DefaultModel           = "tiny"
	DefaultPort            = 8000
	DefaultGRPCPort        = 50051
	DefaultQueueTarget     = 5
	DefaultShutdownTimeout = 60 * time.Second
	DefaultPreStopSleep    = 15 * time.Second
	modelsMountRoot        = "/models"
	gcsFuseDriver          = "gcsfuse.csi.storage.gke.io"
)

// gcsBucketRE follows Cloud Storage's bucket naming rules (without the dotted-name length
// special case, which is rare for model buckets).
var gcsBucketRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$`)

func invalid(field, format string, args ...any) error {
	return fmt.Errorf("%w: %s: %s", ErrInvalidOptions, field, fmt.Sprintf(format, args...))
}

// withDefaults returns a copy of o with defaults filled in, or an error naming the first
// bad field.
func (o Options) withDefaults() (Options, error) {
	switch o.Target {
	case TargetTPU, TargetGPU, TargetCPU:
	case "":
		return o, invalid("target", "required (one of tpu, gpu, cpu)")
	default:
		return o, fmt.Errorf("%w %q (want tpu, gpu or cpu)", ErrUnknownTarget, string(o.Target))
	}
	if o.Name == "" {
		o.Name = DefaultName
	}
	if o.Namespace == "" {
		o.Namespace = DefaultNamespace
	}
	// Names end up in labels, ports and volume names: keep them DNS-1123 labels and short
	// enough that "<name>-..." derived names still fit.
	if errs := validation.IsDNS1123Label(o.Name); len(errs) > 0 || len(o.Name) > 50 {
		return o, invalid("name", "%q must be a DNS-1123 label of at most 50 characters", o.Name)
	}
	if errs := validation.IsDNS1123Label(o.Namespace); len(errs) > 0 {
		return o, invalid("namespace", "%q must be a DNS-1123 label: %s", o.Namespace, strings.Join(errs, "; "))
	}
	if o.Image == "" {
		o.Image = "tpuserve:" + string(o.Target)
	}
	if strings.ContainsAny(o.Image, " \t\n") {
		return o, invalid("image", "%q contains whitespace", o.Image)
	}
	if o.Model == "" {
		o.Model = DefaultModel
	}
	if o.Replicas == 0 {
		o.Replicas = 1
	}
	if o.Replicas < 0 {
		return o, invalid("replicas", "%d must be positive", o.Replicas)
	}
	if o.MaxReplicas == 0 {
		o.MaxReplicas = max(o.Replicas, 4)
	}
	if o.MaxReplicas < o.Replicas {
		return o, invalid("max-replicas", "%d is below replicas %d", o.MaxReplicas, o.Replicas)
	}
	if o.QueueTarget == 0 {
		o.QueueTarget = DefaultQueueTarget
	}
	if o.QueueTarget < 0 {
		return o, invalid("queue-target", "%d must be positive", o.QueueTarget)
	}
	if o.MaxModelLen < 0 {
		return o, invalid("max-model-len", "%d must not be negative", o.MaxModelLen)
	}
	if o.MaxNumSeqs < 0 {
		return o, invalid("max-num-seqs", "%d must not be negative", o.MaxNumSeqs)
	}
	if o.KVCacheMemory < 0 {
		return o, invalid("kv-cache-memory", "%d must not be negative", o.KVCacheMemory)
	}
	if o.Port == 0 {
		o.Port = DefaultPort
	}
	if o.GRPCPort == 0 {
		o.GRPCPort = DefaultGRPCPort
	}
	for _, p := range []struct {
		field string
		v     int32
	}{{"port", o.Port}, {"grpc-port", o.GRPCPort}} {
		if p.v < 1 || p.v > 65535 {
			return o, invalid(p.field, "%d is not a TCP port", p.v)
		}
	}
	if o.Port == o.GRPCPort {
		return o, invalid("grpc-port", "%d equals port", o.GRPCPort)
	}
	switch o.DType {
	case "", "f32", "bf16":
	default:
		return o, invalid("dtype", "%q (want f32 or bf16)", o.DType)
	}
	if o.APIKeySecret != "" {
		if errs := validation.IsDNS1123Subdomain(o.APIKeySecret); len(errs) > 0 {
			return o, invalid("api-key-secret", "%q is not a valid Secret name", o.APIKeySecret)
		}
	}
	if o.ServiceAccount != "" {
		if errs := validation.IsDNS1123Subdomain(o.ServiceAccount); len(errs) > 0 {
			return o, invalid("service-account", "%q is not a valid ServiceAccount name", o.ServiceAccount)
		}
	}
	if o.Reservation != "" {
		if errs := validation.IsValidLabelValue(o.Reservation); len(errs) > 0 {
			return o, invalid("reservation", "%q is not a valid label value", o.Reservation)
		}
	}
	if o.ShutdownTimeout == 0 {
		o.ShutdownTimeout = DefaultShutdownTimeout
	}
	if o.ShutdownTimeout < 0 {
		return o, invalid("shutdown-timeout", "%v must be positive", o.ShutdownTimeout)
	}
	if o.PreStopSleep == 0 {
		o.PreStopSleep = DefaultPreStopSleep
	}
	if o.PreStopSleep < time.Second {
		return o, invalid("prestop-sleep", "%v must be at least 1s", o.PreStopSleep)
	}
	return o, nil
}

// location is where the server finds a model or tokenizer directory.
type location struct {
	arg    string // what the server's flag gets
	bucket string // non-empty for gs:// locations
}

// parseLocation turns a --model or --tokenizer value into the server's path and, for GCS,
// the bucket to mount.
func parseLocation(field, v string) (location, error) {
	if v == "tiny" {
		if field != "model" {
			return location{}, invalid(field, `"tiny" is only a model`)
		}
		return location{arg: v}, nil
	}
	if strings.HasPrefix(v, "/") {
		return location{arg: path.Clean(v)}, nil
	}
	u, err := url.Parse(v)
	if err != nil || u.Scheme == "" {
		return location{}, invalid(field, "%q is neither tiny, an absolute path nor gs://BUCKET/PATH", v)
	}
	if u.Scheme != "gs" {
		return location{}, invalid(field, "unsupported URI scheme %q in %q (want gs://BUCKET/PATH)", u.Scheme, v)
	}
	if !gcsBucketRE.MatchString(u.Host) || strings.Contains(u.Host, "..") {
		return location{}, invalid(field, "%q is not a valid Cloud Storage bucket name", u.Host)
	}
	if u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return location{}, invalid(field, "%q: query, fragment or user info not allowed", v)
	}
	p := path.Clean("/" + u.Path)
	return location{arg: path.Join(modelsMountRoot, u.Host, p), bucket: u.Host}, nil
}

// quantity parses a resource quantity that is a constant of this package.
func quantity(s string) resource.Quantity { return resource.MustParse(s) }
