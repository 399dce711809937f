# syntax=docker/dockerfile:1.7
#
# tpuserve images. One Dockerfile, three final stages:
#
#   docker buildx build --target tpu -t REGISTRY/tpuserve:tpu .   # libtpu.so PJRT plugin (TPU v5e)
#   docker buildx build --target gpu -t REGISTRY/tpuserve:gpu .   # xla_cuda_plugin.so + NVIDIA libraries
#   docker buildx build --target cpu -t REGISTRY/tpuserve:cpu .   # pure-Go backend only (also runs `bench`)
#
# Build arguments: VERSION (stamped into `tpuserve version`), LIBTPU_VERSION (libtpu wheel;
# empty = newest), JAX_VERSION (jax-cuda13-pjrt and the matching NVIDIA wheels). Pin both
# plugin versions for reproducible images. The build needs PyPI for the wheels; the image
# downloads nothing at run time (GOMLX_NO_AUTO_INSTALL=1). docs/deploy.md has the details.

ARG GO_VERSION=1.26.8
ARG DEBIAN=bookworm

# ---- build: the tpuserve binary -------------------------------------------------------
# cgo is on only because go-xla dlopen()s the PJRT plugin: the binary links nothing but
# glibc (libc, libdl, libpthread). It cannot be fully static: a static glibc binary cannot
# safely dlopen libtpu.so or the CUDA plugin, which link the system glibc themselves.
# netgo/osusergo keep DNS and user lookups in Go, so no NSS modules are needed either.
FROM golang:${GO_VERSION}-${DEBIAN} AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ARG VERSION=dev
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=1 go build -trimpath -tags netgo,osusergo \
      -ldflags "-s -w -X main.version=${VERSION}" -o /out/tpuserve ./cmd/tpuserve \
 && { ldd /out/tpuserve || echo "statically linked (no cgo package in this build)"; } \
 && /out/tpuserve version

# ---- TPU plugin: libtpu.so from the libtpu wheel --------------------------------------
FROM python:3.12-slim-${DEBIAN} AS plugin-tpu
ARG LIBTPU_VERSION=
COPY scripts/install-pjrt-plugin.sh /usr/local/bin/install-pjrt-plugin.sh
RUN pip download --no-deps --only-binary=:all: --dest /wheels "libtpu${LIBTPU_VERSION:+==${LIBTPU_VERSION}}" \
 && install-pjrt-plugin.sh --dest /opt/go-xla /wheels/libtpu-*.whl

# ---- GPU plugin: xla_cuda_plugin.so from jax-cuda13-pjrt, NVIDIA libraries from their wheels
FROM python:3.12-slim-${DEBIAN} AS plugin-gpu
ARG JAX_VERSION=0.11.2
COPY scripts/install-pjrt-plugin.sh /usr/local/bin/install-pjrt-plugin.sh
# jax-cuda13-plugin[with-cuda] pins the NVIDIA wheels (cuBLAS, cuDNN, NCCL, nvcc's ptxas, …)
# that this jax-cuda13-pjrt was built against.
RUN pip download --only-binary=:all: --dest /wheels \
      "jax-cuda13-pjrt==${JAX_VERSION}" "jax-cuda13-plugin[with-cuda]==${JAX_VERSION}" \
 && install-pjrt-plugin.sh --dest /opt/go-xla /wheels/jax_cuda13_pjrt-*.whl \
 && install-pjrt-plugin.sh --nvidia-libs --dest /opt/go-xla /wheels/nvidia_*.whl

# ---- runtime base -----------------------------------------------------------------------
FROM debian:${DEBIAN}-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/tpuserve /usr/local/bin/tpuserve
# The image carries its plugin; never download one when a pod starts.
ENV GOMLX_NO_AUTO_INSTALL=1
EXPOSE 8000 50051
ENTRYPOINT ["/usr/local/bin/tpuserve"]

# ---- cpu: pure-Go backend ---------------------------------------------------------------
FROM runtime AS cpu
USER 65532:65532
CMD ["serve", "--model", "tiny", "--backend", "go"]

# ---- gpu: one H100, --backend xla:cuda --------------------------------------------------
FROM runtime AS gpu
# go-xla finds the plugin as /usr/local/lib/go-xla/nvidia/pjrt_c_api_cuda_plugin.so and the
# CUDA data directory (ptxas, libdevice) in /usr/local/lib/go-xla/nvidia.
COPY --from=plugin-gpu /opt/go-xla/ /usr/local/lib/go-xla/
RUN find /usr/local/lib/go-xla/nvidia -type d -name lib > /etc/ld.so.conf.d/go-xla-nvidia.conf \
 && ldconfig
# GKE mounts the host's driver (libcuda.so) here at run time.
ENV LD_LIBRARY_PATH=/usr/local/nvidia/lib64
USER 65532:65532
CMD ["serve", "--backend", "xla:cuda", "--dtype", "bf16"]

# ---- tpu: a v5e-8 host, --backend xla:tpu -----------------------------------------------
FROM runtime AS tpu
# go-xla finds the plugin as /usr/local/lib/go-xla/pjrt_c_api_tpu_plugin.so.
COPY --from=plugin-tpu /opt/go-xla/ /usr/local/lib/go-xla/
# Runs as root, as Google's TPU serving images do: libtpu opens the TPU device nodes
# (/dev/vfio, /dev/accel*), whose permissions a non-root user cannot rely on across GKE
# versions.
CMD ["serve", "--backend", "xla:tpu", "--tensor-parallel-size", "8", "--dtype", "bf16"]
