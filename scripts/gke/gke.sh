#!/usr/bin/env bash
# gke.sh: the gcloud and kubectl commands of the GKE migration (TPU v5e-8 serving, H100
# baseline), one step per subcommand. By default it only PRINTS the commands (DRY_RUN=1);
# run with DRY_RUN=0 to execute them. See README.md beside this file for the order.
#
#   gke.sh cluster                      Standard cluster: Workload Identity, GCS FUSE CSI, Managed Prometheus
#   gke.sh autopilot                    Autopilot cluster instead (TPU and GPU pods pick nodes by selector)
#   gke.sh tpu-pool [on-demand|spot|reservation]   v5e-8 node pool (ct5lp-hightpu-8t, 2x4)
#   gke.sh tpu-pool-v5e4 [on-demand|spot]          v5e-4 node pool (ct5lp-hightpu-4t, 2x2), for cost comparison
#   gke.sh h100-pool [on-demand|spot|reservation]  H100 node pool (a3-highgpu-1g) for the baseline
#   gke.sh weights LOCAL_DIR            bucket, upload, read access for the serving service account
#   gke.sh metrics-adapter              Custom Metrics Stackdriver Adapter (HPA on vllm:num_requests_waiting)
#   gke.sh image tpu|gpu|cpu            build and push the image to Artifact Registry
#   gke.sh deploy tpu|gpu               render with `tpuserve deploy` and apply
#   gke.sh bench tpu|gpu                benchmark the deployed service from inside the cluster
#
# Settings come from the environment (defaults in brackets):
#   PROJECT_ID (required), REGION [us-central1], ZONE [us-central1-a: has v5e], GPU_ZONE [$ZONE],
#   CLUSTER [tpuserve], NAMESPACE [serving], BUCKET [$PROJECT_ID-models], MODEL_DIR
#   [gemma-3-27b-it], SERVED_MODEL_NAME [google/gemma-3-27b-it], KSA [tpuserve],
#   RESERVATION (for the reservation variants), MAX_NODES [4], TAG [latest].
set -euo pipefail

: "${DRY_RUN:=1}"
: "${REGION:=us-central1}"
: "${ZONE:=us-central1-a}"
: "${GPU_ZONE:=$ZONE}"
: "${CLUSTER:=tpuserve}"
: "${NAMESPACE:=serving}"
: "${MODEL_DIR:=gemma-3-27b-it}"
: "${SERVED_MODEL_NAME:=google/gemma-3-27b-it}"
: "${KSA:=tpuserve}"
: "${MAX_NODES:=4}"
: "${TAG:=latest}"

prog=${0##*/}
die() { echo "$prog: $*" >&2; exit 1; }

# run prints a command and, with DRY_RUN=0, runs it.
run() {
  local a line=+
  for a in "$@"; do
    # Plain words as they are (copy-pastable), anything else shell-quoted.
    if [[ $a =~ ^[A-Za-z0-9_@%+=:,./|-]+$ ]]; then line+=" $a"; else line+=" $(printf '%q' "$a")"; fi
  done
  echo "$line"
  if [[ $DRY_RUN == 0 ]]; then "$@"; fi
}

need_project() {
  [[ -n ${PROJECT_ID:-} ]] || die "set PROJECT_ID"
  : "${BUCKET:=${PROJECT_ID}-models}"
  REPO=${REGION}-docker.pkg.dev/${PROJECT_ID}/tpuserve
}

project_number() {
  if [[ $DRY_RUN == 0 ]]; then
    gcloud projects describe "$PROJECT_ID" --format='value(projectNumber)'
  else
    echo PROJECT_NUMBER
  fi
}

# wi_principal NAMESPACE KSA: the Workload Identity Federation principal of a Kubernetes
# service account, for IAM bindings without a Google service account.
wi_principal() {
  echo "principal://iam.googleapis.com/projects/$(project_number)/locations/global/workloadIdentityPools/${PROJECT_ID}.svc.id.goog/subject/ns/$1/sa/$2"
}

# capacity VARIANT: node pool flags for on-demand, Spot or a specific reservation.
capacity() {
  case ${1:-on-demand} in
    on-demand) ;;
    spot) echo --spot ;;
    reservation)
      [[ -n ${RESERVATION:-} ]] || die "set RESERVATION to the reservation's name"
      echo --reservation-affinity=specific "--reservation=$RESERVATION" ;;
    *) die "capacity must be on-demand, spot or reservation, not '$1'" ;;
  esac
}

step=${1:-}
[[ -n $step ]] || { sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
shift

case $step in
cluster)
  need_project
  # Standard regional cluster, nodes in ZONE, a small default pool for system pods;
  # accelerator pools are added by the next steps.
  run gcloud container clusters create "$CLUSTER" \
    --project="$PROJECT_ID" --location="$REGION" --node-locations="$ZONE" \
    --release-channel=regular \
    --workload-pool="${PROJECT_ID}.svc.id.goog" \
    --addons=GcsFuseCsiDriver \
    --enable-managed-prometheus \
    --machine-type=e2-standard-8 --num-nodes=1
  run gcloud container clusters get-credentials "$CLUSTER" --project="$PROJECT_ID" --location="$REGION"
  run kubectl create namespace "$NAMESPACE"
  ;;

autopilot)
  need_project
  # Autopilot has Workload Identity, the GCS FUSE CSI driver and Managed Prometheus on by
  # default and creates TPU and GPU nodes from the pods' node selectors (the rendered
  # manifests carry them): skip the *-pool steps. --spot in `tpuserve deploy` asks for Spot.
  run gcloud container clusters create-auto "$CLUSTER" \
    --project="$PROJECT_ID" --location="$REGION" --release-channel=rapid
  run gcloud container clusters get-credentials "$CLUSTER" --project="$PROJECT_ID" --location="$REGION"
  run kubectl create namespace "$NAMESPACE"
  ;;

tpu-pool|tpu-pool-v5e4)
  need_project
  variant=${1:-on-demand}
  machine=ct5lp-hightpu-8t pool=tpu-v5e-8 # 8 chips, topology 2x4, one host
  if [[ $step == tpu-pool-v5e4 ]]; then machine=ct5lp-hightpu-4t pool=tpu-v5e-4; fi
  [[ $variant == on-demand ]] || pool=$pool-$variant
  cap=$(capacity "$variant")
  # shellcheck disable=SC2086 # capacity's words are separate flags
  run gcloud container node-pools create "$pool" \
    --project="$PROJECT_ID" --cluster="$CLUSTER" --location="$REGION" --node-locations="$ZONE" \
    --machine-type="$machine" \
    --enable-autoscaling --min-nodes=0 --max-nodes="$MAX_NODES" \
    --workload-metadata=GKE_METADATA \
    $cap
  ;;

h100-pool)
  need_project
  variant=${1:-on-demand}
  pool=h100
  [[ $variant == on-demand ]] || pool=$pool-$variant
  cap=$(capacity "$variant")
  # The baseline: one H100 80GB per node; GKE installs the driver.
  # shellcheck disable=SC2086
  run gcloud container node-pools create "$pool" \
    --project="$PROJECT_ID" --cluster="$CLUSTER" --location="$REGION" --node-locations="$GPU_ZONE" \
    --machine-type=a3-highgpu-1g \
    --accelerator=type=nvidia-h100-80gb,count=1,gpu-driver-version=latest \
    --enable-autoscaling --min-nodes=0 --max-nodes="$MAX_NODES" \
    --workload-metadata=GKE_METADATA \
    $cap
  ;;

weights)
  need_project
  src=${1:-}
  [[ -n $src ]] || die "usage: $prog weights LOCAL_MODEL_DIR (config.json, *.safetensors, tokenizer.json)"
  run gcloud storage buckets create "gs://$BUCKET" --project="$PROJECT_ID" --location="$REGION" \
    --uniform-bucket-level-access
  run gcloud storage cp --recursive "$src" "gs://$BUCKET/$MODEL_DIR"
  # The pods' Kubernetes service account reads the bucket through the GCS FUSE CSI driver.
  run gcloud storage buckets add-iam-policy-binding "gs://$BUCKET" \
    --member="$(wi_principal "$NAMESPACE" "$KSA")" --role=roles/storage.objectViewer
  ;;

metrics-adapter)
  need_project
  # Serves Managed Prometheus series as external metrics to the HorizontalPodAutoscaler
  # (prometheus.googleapis.com|vllm:num_requests_waiting|gauge).
  run kubectl apply -f https://raw.githubusercontent.com/GoogleCloudPlatform/k8s-stackdriver/master/custom-metrics-stackdriver-adapter/deploy/production/adapter_new_resource_model.yaml
  run gcloud projects add-iam-policy-binding "projects/$PROJECT_ID" --role=roles/monitoring.viewer \
    --member="$(wi_principal custom-metrics custom-metrics-stackdriver-adapter)" --condition=None
  ;;

image)
  need_project
  target=${1:-}
  [[ $target =~ ^(tpu|gpu|cpu)$ ]] || die "usage: $prog image tpu|gpu|cpu"
  run gcloud artifacts repositories create tpuserve --project="$PROJECT_ID" \
    --repository-format=docker --location="$REGION"
  run gcloud auth configure-docker "${REGION}-docker.pkg.dev"
  run docker buildx build --target "$target" --build-arg "VERSION=$TAG" \
    -t "$REPO/tpuserve:$target-$TAG" --push .
  ;;

deploy)
  need_project
  target=${1:-}
  [[ $target =~ ^(tpu|gpu)$ ]] || die "usage: $prog deploy tpu|gpu"
  out=tpuserve-$target.yaml
  # Renders Deployment, Service, PodMonitoring, HPA and the ServiceAccount; review, then apply.
  run tpuserve deploy --target "$target" --namespace "$NAMESPACE" --name "tpuserve-$target" \
    --service-account "$KSA" --image "$REPO/tpuserve:$target-$TAG" \
    --model "gs://$BUCKET/$MODEL_DIR" --served-model-name "$SERVED_MODEL_NAME" \
    --max-model-len 8192 --replicas 1 --max-replicas "$MAX_NODES"
  if [[ $DRY_RUN == 0 ]]; then
    tpuserve deploy --target "$target" --namespace "$NAMESPACE" --name "tpuserve-$target" \
      --service-account "$KSA" --image "$REPO/tpuserve:$target-$TAG" \
      --model "gs://$BUCKET/$MODEL_DIR" --served-model-name "$SERVED_MODEL_NAME" \
      --max-model-len 8192 --replicas 1 --max-replicas "$MAX_NODES" >"$out"
  fi
  run kubectl apply -f "$out"
  # Weight loading from GCS and compiling every shape bucket take a while on first start.
  run kubectl -n "$NAMESPACE" rollout status "deploy/tpuserve-$target" --timeout=45m
  ;;

bench)
  need_project
  target=${1:-}
  [[ $target =~ ^(tpu|gpu)$ ]] || die "usage: $prog bench tpu|gpu"
  # A client pod next to the server (no port-forward in the measured path), from the cpu
  # image that carries the same binary.
  run kubectl -n "$NAMESPACE" run tpuserve-bench --image="$REPO/tpuserve:cpu-$TAG" \
    --restart=Never --command -- sleep infinity
  run kubectl -n "$NAMESPACE" wait --for=condition=Ready pod/tpuserve-bench --timeout=5m
  run kubectl -n "$NAMESPACE" exec tpuserve-bench -- /usr/local/bin/tpuserve bench \
    --base-url "http://tpuserve-$target.$NAMESPACE.svc:8000" --model "$SERVED_MODEL_NAME" \
    --num-prompts 500 --random-input-len 1024 --random-output-len 256 --ignore-eos \
    --request-rate 4 --max-concurrency 64 --goodput ttft:2000 tpot:100 \
    --result-json "/tmp/$target.json" --chart "/tmp/$target.html" --disable-tqdm
  run kubectl -n "$NAMESPACE" cp "tpuserve-bench:/tmp/$target.json" "$target.json"
  run kubectl -n "$NAMESPACE" cp "tpuserve-bench:/tmp/$target.html" "$target.html"
  run kubectl -n "$NAMESPACE" delete pod tpuserve-bench
  ;;

*)
  die "unknown step '$step' (run without arguments for the list)"
  ;;
esac
