#!/usr/bin/env python3
"""Run tpuserve's exported per-chip SPMD program on 8 emulated JAX CPU devices.

tpuserve's tensor-parallel step program is one program per chip (gomlx's SPMD strategy,
explicit stablehlo.all_reduce collectives over stablehlo.num_replicas = 8). This script
loads that program as StableHLO text, compiles it with the XLA client that ships inside
jaxlib for 8 replicas on the CPU platform (XLA_FLAGS=--xla_force_host_platform_device_count=8
gives it 8 devices), feeds each device its chip's inputs (its weight pieces of the HF test
fixture, zeroed KV pools, one prefill step) and compares the logits, joined chip by chip on
the vocabulary axis, with the plain TP=1 program's.

Input: a directory written by
    TPUSERVE_EXPORT_SPMD=DIR go test ./model -run TestExportSPMDProgram -count=1
holding program.mlir, manifest.json, chip0..7.safetensors and expected.safetensors
(scripts/run-spmd-jax.sh does both steps). Exit status 0 when the logits match within the
manifest's tolerance, 1 when they do not, 2 when the run could not happen.

The jaxlib client API this uses (CompileOptions, compile / compile_and_load,
execute_sharded) has moved between jaxlib releases; every call below has the fallbacks
known for jaxlib 0.4.x to 0.6.x. Written without a JAX install at hand: if a call fails,
the message says which one.
"""

import json
import os
import struct
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402

DTYPES = {"F32": np.float32, "I32": np.int32, "U32": np.uint32, "I8": np.int8, "U8": np.uint8, "F16": np.float16}


def read_safetensors(path):
    """A minimal safetensors reader (8-byte little-endian header size, JSON header, data)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in DTYPES:
            raise SystemExit(f"{path}: tensor {name} has dtype {info['dtype']}, this reader knows {sorted(DTYPES)}")
        begin, end = info["data_offsets"]
        arr = np.frombuffer(data[begin:end], dtype=DTYPES[info["dtype"]])
        out[name] = arr.reshape(info["shape"]).copy()
    return out


def fail(msg, code=2):
    print(msg, file=sys.stderr)
    sys.exit(code)


def compile_replicated(client, devices, text, n):
    """Compiles the StableHLO module text for n replicas, one per device."""
    from jax._src.lib import xla_client as xc

    opts = xc.CompileOptions()
    build = opts.executable_build_options
    build.num_replicas = n
    build.num_partitions = 1
    build.device_assignment = xc.DeviceAssignment.create(np.arange(n).reshape(n, 1))
    attempts = []
    if hasattr(client, "compile_and_load"):  # newer jaxlib
        try:
            dl = xc.DeviceList(tuple(devices))
            return client.compile_and_load(text, dl, opts)
        except Exception as e:  # noqa: BLE001
            attempts.append(f"client.compile_and_load: {e}")
    for arg in (text, text.encode()):
        try:
            return client.compile(arg, opts)
        except Exception as e:  # noqa: BLE001
            attempts.append(f"client.compile({type(arg).__name__}): {e}")
    fail("could not compile the program:\n  " + "\n  ".join(attempts))


def execute_replicated(exe, per_param):
    """Runs exe with per_param[i][d] = parameter i's value on device d; returns outs[o][d]."""
    attempts = []
    try:
        res = exe.execute_sharded(per_param)
        return [[np.asarray(x) for x in out] for out in res.disassemble_into_single_device_arrays()]
    except Exception as e:  # noqa: BLE001
        attempts.append(f"execute_sharded: {e}")
    try:
        outs = exe.execute_sharded_on_local_devices(per_param)
        return [[np.asarray(x) for x in out] for out in outs]
    except Exception as e:  # noqa: BLE001
        attempts.append(f"execute_sharded_on_local_devices: {e}")
    fail("could not run the program:\n  " + "\n  ".join(attempts))


def main():
    if len(sys.argv) != 2:
        fail(f"usage: {sys.argv[0]} EXPORT_DIR (written by TPUSERVE_EXPORT_SPMD=DIR go test ./model -run TestExportSPMDProgram)")
    d = sys.argv[1]
    try:
        import jax
    except ImportError:
        fail("JAX is not installed (pip install jax)")
    man = json.load(open(os.path.join(d, "manifest.json")))
    tp = man["tp"]
    devices = jax.devices("cpu")
    if len(devices) < tp:
        fail(f"JAX's CPU client has {len(devices)} devices, the program needs {tp}: set XLA_FLAGS=--xla_force_host_platform_device_count={tp} before JAX starts")
    devices = devices[:tp]
    text = open(os.path.join(d, "program.mlir")).read()
    if f"stablehlo.num_replicas = {tp}" not in text:
        fail(f"program.mlir is not a {tp}-replica SPMD program")
    chips = [read_safetensors(os.path.join(d, f"chip{c}.safetensors")) for c in range(tp)]
    per_param = []
    for p in man["params"]:
        vals = []
        for c in range(tp):
            x = chips[c][p["name"]]
            if list(x.shape) != p["shape"]:
                fail(f"chip {c}: {p['name']} has shape {list(x.shape)}, the manifest {p['shape']}")
            vals.append(jax.device_put(x, devices[c]))
        per_param.append(vals)
    client = devices[0].client
    exe = compile_replicated(client, devices, text, tp)
    outs = execute_replicated(exe, per_param)
    nP = man["num_pools"]
    if len(outs) != nP + 1:
        fail(f"the program returned {len(outs)} outputs, want {nP} pools + the logits")
    parts = outs[nP]
    for c, part in enumerate(parts):
        if list(part.shape) != man["logits_shape"]:
            fail(f"chip {c}: logits of shape {list(part.shape)}, want {man['logits_shape']}")
    got = np.concatenate(parts, axis=-1)
    want = read_safetensors(os.path.join(d, "expected.safetensors"))["logits"]
    if got.shape != want.shape:
        fail(f"joined logits {got.shape}, TP=1 {want.shape}")
    diff = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64))))
    argmax_equal = bool(np.all(np.argmax(got, -1) == np.argmax(want, -1)))
    print(f"{tp} emulated devices, {len(man['tokens'])} tokens of {man['fixture']}: max |TP={tp} - TP=1| = {diff:.3e} "
          f"(tolerance {man['tolerance']:g}), argmax equal at every position: {argmax_equal}")
    sys.exit(0 if diff <= man["tolerance"] and argmax_equal else 1)


if __name__ == "__main__":
    main()
