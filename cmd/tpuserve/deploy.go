package main

import (
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/tpuserve/tpuserve/internal/deploy"
)

func init() {
	register("deploy", "render Kubernetes manifests for GKE (--target tpu|gpu|cpu) to stdout", runDeploy)
}

func runDeploy(args []string, _ io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("deploy", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o deploy.Options
	var target string
	var replicas, maxReplicas, port, grpcPort int
	fs.StringVar(&target, "target", "", "accelerator profile: tpu (v5e-8, TP=8), gpu (one H100) or cpu (required)")
	fs.StringVar(&o.Model, "model", deploy.DefaultModel, "model: tiny, an absolute path in the image, or gs://BUCKET/PATH (GCS FUSE)")
	fs.StringVar(&o.Tokenizer, "tokenizer", "", "tokenizer directory: absolute path or gs://BUCKET/PATH (default: the server's)")
	fs.IntVar(&replicas, "replicas", 1, "replicas (and the autoscaler's minimum)")
	fs.IntVar(&maxReplicas, "max-replicas", 0, "autoscaler maximum (default max(replicas, 4))")
	fs.StringVar(&o.Namespace, "namespace", deploy.DefaultNamespace, "namespace of every object")
	fs.StringVar(&o.Image, "image", "", "server image (default tpuserve:<target>)")
	fs.StringVar(&o.Name, "name", deploy.DefaultName, "name of every object")
	fs.StringVar(&o.ServedModelName, "served-model-name", "", "model name the API reports (passed to serve)")
	fs.IntVar(&o.MaxModelLen, "max-model-len", 0, "serve --max-model-len (0: server default)")
	fs.IntVar(&o.MaxNumSeqs, "max-num-seqs", 0, "serve --max-num-seqs (0: server default)")
	fs.Int64Var(&o.KVCacheMemory, "kv-cache-memory", 0, "serve --kv-cache-memory in bytes (0: server default)")
	fs.IntVar(&port, "port", deploy.DefaultPort, "HTTP port")
	fs.IntVar(&grpcPort, "grpc-port", deploy.DefaultGRPCPort, "gRPC port")
	fs.StringVar(&o.DType, "dtype", "", "override the target's dtype (f32 or bf16)")
	fs.StringVar(&o.APIKeySecret, "api-key-secret", "", "Secret whose key api-key becomes serve --api-key")
	fs.StringVar(&o.ServiceAccount, "service-account", "", "Kubernetes service account (default: --name when weights are on GCS)")
	fs.BoolVar(&o.Spot, "spot", false, "schedule on Spot VMs")
	fs.StringVar(&o.Reservation, "reservation", "", "schedule on nodes of this Compute Engine reservation")
	noHPA := fs.Bool("no-autoscale", false, "render no HorizontalPodAutoscaler or PodMonitoring")
	fs.Int64Var(&o.QueueTarget, "queue-target", deploy.DefaultQueueTarget, "autoscaler target: average vllm:num_requests_waiting per replica")
	fs.DurationVar(&o.ShutdownTimeout, "shutdown-timeout", deploy.DefaultShutdownTimeout, "serve --shutdown-timeout (drain after SIGTERM)")
	fs.DurationVar(&o.PreStopSleep, "prestop-sleep", deploy.DefaultPreStopSleep, "preStop sleep before SIGTERM")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	o.Target = deploy.Target(target)
	o.DisableAutoscale = *noHPA
	for _, c := range []struct {
		name string
		v    int
		dst  *int32
	}{{"replicas", replicas, &o.Replicas}, {"max-replicas", maxReplicas, &o.MaxReplicas}, {"port", port, &o.Port}, {"grpc-port", grpcPort, &o.GRPCPort}} {
		if c.v < 0 || c.v > 1<<30 {
			return fmt.Errorf("--%s: %d out of range", c.name, c.v)
		}
		*c.dst = int32(c.v)
	}
	if o.Replicas == 0 {
		return fmt.Errorf("--replicas: must be at least 1")
	}
	header := "Rendered by: tpuserve deploy " + strings.Join(args, " ") + "\nApply with: kubectl apply -f FILE"
	return deploy.Render(stdout, o, header)
}
