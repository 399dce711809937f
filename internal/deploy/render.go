package deploy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"
)

// QueueMetric is the server's gauge the autoscaler follows, with vLLM's name.
const QueueMetric = "vllm:num_requests_waiting"

// QueueExternalMetric is QueueMetric as GKE's Custom Metrics Stackdriver Adapter exposes a
// Managed Prometheus gauge to the HorizontalPodAutoscaler.
const QueueExternalMetric = "prometheus.googleapis.com|" + QueueMetric + "|gauge"

// Node labels and extended resources GKE uses for accelerators.
const (
	LabelTPUAccelerator = "cloud.google.com/gke-tpu-accelerator"
	LabelTPUTopology    = "cloud.google.com/gke-tpu-topology"
	LabelGPUAccelerator = "cloud.google.com/gke-accelerator"
	LabelSpot           = "cloud.google.com/gke-spot"
	LabelReservation    = "cloud.google.com/reservation-name"
	ResourceTPU         = corev1.ResourceName("google.com/tpu")
	ResourceGPU         = corev1.ResourceName("nvidia.com/gpu")
)

// profile is what a target changes in the pod.
type profile struct {
	backend      string
	tp           int
	dtype        string
	nodeSelector map[string]string
	accel        corev1.ResourceName // "" for none
	accelCount   int64
	cpu, memory  string
	shm          string
	// startupSeconds bounds weight loading plus bucket compilation.
	startupSeconds int32
	// deviceMemory is one accelerator's memory: serve sizes the KV cache from its memory
	// plan (and, with TP > 1, needs it to plan the split).
	deviceMemory string
}

func profileFor(t Target) profile {
	switch t {
	case TargetTPU:
		// One whole v5e-8 host per replica: all 8 chips, 8-way tensor parallel. v5e has no
		// FP8 and the migration runs without a speculative model, so neither flag exists here.
		return profile{
			backend: "xla:tpu", tp: 8, dtype: "bf16",
			nodeSelector: map[string]string{
				LabelTPUAccelerator: "tpu-v5-lite-podslice",
				LabelTPUTopology:    "2x4",
			},
			accel: ResourceTPU, accelCount: 8,
			// ct5lp-hightpu-8t has 224 vCPU and 192 GiB; leave room for system pods.
			cpu: "32", memory: "128Gi", shm: "16Gi",
			startupSeconds: 1800,
			deviceMemory:   "16GiB", // HBM per v5e chip
		}
	case TargetGPU:
		return profile{
			backend: "xla:cuda", tp: 1, dtype: "bf16",
			nodeSelector: map[string]string{LabelGPUAccelerator: "nvidia-h100-80gb"},
			accel:        ResourceGPU, accelCount: 1,
			// a3-highgpu-1g has 26 vCPU and 234 GiB.
			cpu: "16", memory: "96Gi", shm: "16Gi",
			startupSeconds: 1800,
			deviceMemory:   "79GiB", // what CUDA reports usable of an H100 80GB
		}
	default: // TargetCPU
		return profile{
			backend: "go", tp: 1, dtype: "f32",
			cpu: "4", memory: "16Gi", shm: "1Gi",
			startupSeconds: 600,
		}
	}
}

// Objects returns the typed objects of a rendering, in apply order: ServiceAccount (only for
// GCS weights), Deployment, Service, then PodMonitoring and HorizontalPodAutoscaler unless
// autoscaling is disabled.
func Objects(o Options) ([]any, error) {
	o, err := o.withDefaults()
	if err != nil {
		return nil, err
	}
	model, err := parseLocation("model", o.Model)
	if err != nil {
		return nil, err
	}
	var tok location
	if o.Tokenizer != "" {
		if tok, err = parseLocation("tokenizer", o.Tokenizer); err != nil {
			return nil, err
		}
	}
	p := profileFor(o.Target)
	if o.DType != "" {
		p.dtype = o.DType
	}

	var buckets []string
	for _, l := range []location{model, tok} {
		if l.bucket != "" && !contains(buckets, l.bucket) {
			buckets = append(buckets, l.bucket)
		}
	}
	sa := o.ServiceAccount
	if sa == "" && len(buckets) > 0 {
		sa = o.Name
	}

	var objs []any
	if len(buckets) > 0 {
		meta := o.meta(nil)
		meta.Name = sa
		objs = append(objs, &corev1.ServiceAccount{
			TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "ServiceAccount"},
			ObjectMeta: meta,
		})
	}
	objs = append(objs, deployment(o, p, model, tok, buckets, sa), service(o))
	if !o.DisableAutoscale {
		objs = append(objs, podMonitoring(o), hpa(o))
	}
	return objs, nil
}

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}

func (o Options) labels() map[string]string {
	return map[string]string{
		"app.kubernetes.io/name":     "tpuserve",
		"app.kubernetes.io/instance": o.Name,
	}
}

func (o Options) meta(extra map[string]string) metav1.ObjectMeta {
	l := o.labels()
	l["app.kubernetes.io/component"] = "server"
	for k, v := range extra {
		l[k] = v
	}
	return metav1.ObjectMeta{Name: o.Name, Namespace: o.Namespace, Labels: l}
}

// serverArgs are the arguments of `tpuserve serve` for this rendering.
func serverArgs(o Options, p profile, model, tok location) []string {
	args := []string{
		"serve",
		"--model=" + model.arg,
		"--backend=" + p.backend,
		"--dtype=" + p.dtype,
		"--tensor-parallel-size=" + strconv.Itoa(p.tp),
		"--host=0.0.0.0",
		"--port=" + strconv.Itoa(int(o.Port)),
		"--grpc-port=" + strconv.Itoa(int(o.GRPCPort)),
		"--shutdown-timeout=" + o.ShutdownTimeout.String(),
	}
	if tok.arg != "" {
		args = append(args, "--tokenizer="+tok.arg)
	}
	if o.ServedModelName != "" {
		args = append(args, "--served-model-name="+o.ServedModelName)
	}
	if o.MaxModelLen > 0 {
		args = append(args, "--max-model-len="+strconv.Itoa(o.MaxModelLen))
	}
	if o.MaxNumSeqs > 0 {
		args = append(args, "--max-num-seqs="+strconv.Itoa(o.MaxNumSeqs))
	}
	if o.KVCacheMemory > 0 && p.tp == 1 {
		args = append(args, "--kv-cache-memory="+strconv.FormatInt(o.KVCacheMemory, 10))
	} else if p.deviceMemory != "" {
		args = append(args, "--device-memory="+p.deviceMemory)
	}
	if o.APIKeySecret != "" {
		// Kubernetes expands $(VAR) from the container's env, so the key never sits in the
		// manifest.
		args = append(args, "--api-key=$(TPUSERVE_API_KEY)")
	}
	return args
}

func deployment(o Options, p profile, model, tok location, buckets []string, sa string) *appsv1.Deployment {
	httpProbe := func(period, failures int32) *corev1.Probe {
		return &corev1.Probe{
			ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
				Path: "/health", Port: intstr.FromString("http"),
			}},
			PeriodSeconds: period, TimeoutSeconds: 5, FailureThreshold: failures,
		}
	}
	startup := httpProbe(10, p.startupSeconds/10)
	readiness := httpProbe(5, 3)
	liveness := httpProbe(15, 4)

	res := corev1.ResourceRequirements{
		Requests: corev1.ResourceList{
			corev1.ResourceCPU:    quantity(p.cpu),
			corev1.ResourceMemory: quantity(p.memory),
		},
		Limits: corev1.ResourceList{corev1.ResourceMemory: quantity(p.memory)},
	}
	var tolerations []corev1.Toleration
	if p.accel != "" {
		n := *resource.NewQuantity(p.accelCount, resource.DecimalSI)
		res.Requests[p.accel] = n
		res.Limits[p.accel] = n
		// GKE taints accelerator nodes with the resource name; say so explicitly rather than
		// rely on the admission controller adding it.
		tolerations = append(tolerations, corev1.Toleration{
			Key: string(p.accel), Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule,
		})
	}
	nodeSelector := map[string]string{}
	for k, v := range p.nodeSelector {
		nodeSelector[k] = v
	}
	if o.Spot {
		nodeSelector[LabelSpot] = "true"
		tolerations = append(tolerations, corev1.Toleration{
			Key: LabelSpot, Operator: corev1.TolerationOpEqual, Value: "true", Effect: corev1.TaintEffectNoSchedule,
		})
	}
	if o.Reservation != "" {
		nodeSelector[LabelReservation] = o.Reservation
	}
	if len(nodeSelector) == 0 {
		nodeSelector = nil
	}

	shm := quantity(p.shm)
	volumes := []corev1.Volume{{
		Name: "dshm",
		VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{
			Medium: corev1.StorageMediumMemory, SizeLimit: &shm,
		}},
	}}
	mounts := []corev1.VolumeMount{{Name: "dshm", MountPath: "/dev/shm"}}
	annotations := map[string]string{}
	for _, b := range buckets {
		name := volumeName(b)
		readOnly := true
		volumes = append(volumes, corev1.Volume{
			Name: name,
			VolumeSource: corev1.VolumeSource{CSI: &corev1.CSIVolumeSource{
				Driver:   gcsFuseDriver,
				ReadOnly: &readOnly,
				VolumeAttributes: map[string]string{
					"bucketName": b,
					// implicit-dirs: weights uploaded with gsutil/gcloud have no directory
					// placeholder objects.
					"mountOptions": "implicit-dirs",
				},
			}},
		})
		mounts = append(mounts, corev1.VolumeMount{Name: name, MountPath: modelsMountRoot + "/" + b, ReadOnly: true})
	}
	if len(buckets) > 0 {
		// The GCS FUSE CSI driver injects its sidecar only into annotated pods; "0" lifts
		// the sidecar's default resource limits, which throttle multi-GB weight reads.
		annotations["gke-gcsfuse/volumes"] = "true"
		annotations["gke-gcsfuse/cpu-limit"] = "0"
		annotations["gke-gcsfuse/memory-limit"] = "0"
		annotations["gke-gcsfuse/ephemeral-storage-limit"] = "0"
	}
	if len(annotations) == 0 {
		annotations = nil
	}

	env := []corev1.EnvVar{
		// The image carries its PJRT plugin; never try to download one at start-up.
		{Name: "GOMLX_NO_AUTO_INSTALL", Value: "1"},
	}
	if o.APIKeySecret != "" {
		env = append(env, corev1.EnvVar{Name: "TPUSERVE_API_KEY", ValueFrom: &corev1.EnvVarSource{
			SecretKeyRef: &corev1.SecretKeySelector{
				LocalObjectReference: corev1.LocalObjectReference{Name: o.APIKeySecret},
				Key:                  "api-key",
			},
		}})
	}

	noEscalation := false
	container := corev1.Container{
		Name:    "tpuserve",
		Image:   o.Image,
		Command: []string{"/usr/local/bin/tpuserve"},
		Args:    serverArgs(o, p, model, tok),
		Ports: []corev1.ContainerPort{
			{Name: "http", ContainerPort: o.Port, Protocol: corev1.ProtocolTCP},
			{Name: "grpc", ContainerPort: o.GRPCPort, Protocol: corev1.ProtocolTCP},
		},
		Env:            env,
		Resources:      res,
		VolumeMounts:   mounts,
		StartupProbe:   startup,
		ReadinessProbe: readiness,
		LivenessProbe:  liveness,
		Lifecycle: &corev1.Lifecycle{PreStop: &corev1.LifecycleHandler{
			// Native sleep (no shell needed in the image): endpoints drop the pod while it
			// still serves; SIGTERM then makes the server finish in-flight requests.
			Sleep: &corev1.SleepAction{Seconds: int64(o.PreStopSleep / time.Second)},
		}},
		SecurityContext: &corev1.SecurityContext{
			AllowPrivilegeEscalation: &noEscalation,
			Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
		},
	}
	// preStop sleep + server drain + a margin for the process to exit.
	grace := int64((o.PreStopSleep + o.ShutdownTimeout + 15*time.Second) / time.Second)

	replicas := o.Replicas
	maxSurge := intstr.FromInt32(1)
	maxUnavailable := intstr.FromInt32(0)
	podMeta := metav1.ObjectMeta{Labels: o.meta(nil).Labels, Annotations: annotations}
	return &appsv1.Deployment{
		TypeMeta:   metav1.TypeMeta{APIVersion: "apps/v1", Kind: "Deployment"},
		ObjectMeta: o.meta(map[string]string{"tpuserve/target": string(o.Target)}),
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: o.labels()},
			// One accelerator host per replica: surge one new pod (the node pool autoscaler
			// adds a host) and keep every old one serving until it is ready.
			Strategy: appsv1.DeploymentStrategy{
				Type: appsv1.RollingUpdateDeploymentStrategyType,
				RollingUpdate: &appsv1.RollingUpdateDeployment{
					MaxSurge: &maxSurge, MaxUnavailable: &maxUnavailable,
				},
			},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: podMeta,
				Spec: corev1.PodSpec{
					ServiceAccountName:            sa,
					TerminationGracePeriodSeconds: &grace,
					NodeSelector:                  nodeSelector,
					Tolerations:                   tolerations,
					Containers:                    []corev1.Container{container},
					Volumes:                       volumes,
				},
			},
		},
	}
}

// volumeName derives a DNS-1123 label from a bucket name.
func volumeName(bucket string) string {
	n := "gcs-" + strings.NewReplacer(".", "-", "_", "-").Replace(bucket)
	if len(n) > 63 {
		n = n[:63]
	}
	return strings.TrimRight(n, "-")
}

func service(o Options) *corev1.Service {
	h2c := "kubernetes.io/h2c"
	httpProto := "http"
	return &corev1.Service{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Service"},
		ObjectMeta: o.meta(nil),
		Spec: corev1.ServiceSpec{
			Type:     corev1.ServiceTypeClusterIP,
			Selector: o.labels(),
			Ports: []corev1.ServicePort{
				{Name: "http", Port: o.Port, TargetPort: intstr.FromString("http"), Protocol: corev1.ProtocolTCP, AppProtocol: &httpProto},
				{Name: "grpc", Port: o.GRPCPort, TargetPort: intstr.FromString("grpc"), Protocol: corev1.ProtocolTCP, AppProtocol: &h2c},
			},
		},
	}
}

func podMonitoring(o Options) *PodMonitoring {
	return &PodMonitoring{
		TypeMeta:   metav1.TypeMeta{APIVersion: PodMonitoringAPIVersion, Kind: "PodMonitoring"},
		ObjectMeta: o.meta(nil),
		Spec: PodMonitoringSpec{
			Selector: metav1.LabelSelector{MatchLabels: o.labels()},
			Endpoints: []ScrapeEndpoint{{
				Port: intstr.FromString("http"), Path: "/metrics", Interval: "15s",
			}},
		},
	}
}

func hpa(o Options) *autoscalingv2.HorizontalPodAutoscaler {
	minReplicas := o.Replicas
	target := resource.NewQuantity(o.QueueTarget, resource.DecimalSI)
	return &autoscalingv2.HorizontalPodAutoscaler{
		TypeMeta:   metav1.TypeMeta{APIVersion: "autoscaling/v2", Kind: "HorizontalPodAutoscaler"},
		ObjectMeta: o.meta(nil),
		Spec: autoscalingv2.HorizontalPodAutoscalerSpec{
			ScaleTargetRef: autoscalingv2.CrossVersionObjectReference{
				APIVersion: "apps/v1", Kind: "Deployment", Name: o.Name,
			},
			MinReplicas: &minReplicas,
			MaxReplicas: o.MaxReplicas,
			Metrics: []autoscalingv2.MetricSpec{{
				Type: autoscalingv2.ExternalMetricSourceType,
				External: &autoscalingv2.ExternalMetricSource{
					Metric: autoscalingv2.MetricIdentifier{
						Name: QueueExternalMetric,
						// Managed Prometheus sets job to the PodMonitoring's name: only this
						// deployment's pods count.
						Selector: &metav1.LabelSelector{MatchLabels: map[string]string{
							"resource.labels.namespace": o.Namespace,
							"resource.labels.job":       o.Name,
						}},
					},
					// AverageValue divides the summed queue by the replica count.
					Target: autoscalingv2.MetricTarget{
						Type: autoscalingv2.AverageValueMetricType, AverageValue: target,
					},
				},
			}},
		},
	}
}

// Render writes the rendering as a multi-document YAML stream, each document preceded by
// "---". header, when non-empty, is written first as comment lines.
func Render(w io.Writer, o Options, header string) error {
	objs, err := Objects(o)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	for _, line := range strings.Split(strings.TrimRight(header, "\n"), "\n") {
		if line != "" {
			fmt.Fprintf(&buf, "# %s\n", line)
		}
	}
	for _, obj := range objs {
		b, err := marshal(obj)
		if err != nil {
			return err
		}
		buf.WriteString("---\n")
		buf.Write(b)
	}
	if _, err := w.Write(buf.Bytes()); err != nil {
		return fmt.Errorf("deploy: write manifests: %w", err)
	}
	return nil
}

// marshal renders one object as YAML without its (always empty) status, which kubectl
// would ignore but which makes the manifests read as if they were read back from a cluster.
func marshal(obj any) ([]byte, error) {
	j, err := json.Marshal(obj)
	if err != nil {
		return nil, fmt.Errorf("deploy: marshal %T: %w", obj, err)
	}
	var m map[string]any
	if err := json.Unmarshal(j, &m); err != nil {
		return nil, fmt.Errorf("deploy: re-read %T: %w", obj, err)
	}
	delete(m, "status")
	b, err := yaml.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("deploy: yaml %T: %w", obj, err)
	}
	return b, nil
}
