#!/usr/bin/env bash
# Exports one chip's TP=8 program of the HF test fixture (StableHLO, each chip's inputs, the
# TP=1 logits) and runs it on 8 emulated JAX CPU devices: see scripts/run-spmd-jax.py.
# Needs Go and Python 3 with jax and numpy (pip install jax). Usage: scripts/run-spmd-jax.sh [DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:-$(mktemp -d)}"
TPUSERVE_EXPORT_SPMD="$dir" go test ./model -run '^TestExportSPMDProgram$' -count=1
XLA_FLAGS="${XLA_FLAGS:---xla_force_host_platform_device_count=8}" JAX_PLATFORMS=cpu python3 scripts/run-spmd-jax.py "$dir"
