"""Host memory and read volume of the sharded streaming load (interop/streaming.py) on a synthetic checkpoint.

    python -m benchmarks.load_memory [--gb=2.2] [--dir=/tmp/dsv3_load_memory] [--keep] [--out=result.json]

Writes a random DeepSeek-V3-shaped checkpoint of a widened config (float32, several safetensors shards of at
most --shard_mb and a model.safetensors.index.json; one tensor in memory at a time), then loads it in fresh
processes, each measuring its own resident set (Linux /proc/self/status; the peak counter VmHWM is reset via
/proc/self/clear_refs once jax and the model's shapes are set up, which is the baseline):
  one      the whole model on one device
  eight    sharded over 8 fake CPU devices (fsdp 2 x expert 2 x tensor 2), one process
  two      the same mesh over 2 processes x 4 devices (jax.distributed on loopback): each reads its own shards
Per process: baseline RSS, peak RSS, the loaded arrays' bytes, bytes read from the files, the bytes of the
distinct shards it holds (its share), seconds and GB/s. On a CPU the "device" arrays ARE host memory, so the
loader's own overhead is peak - baseline - arrays; the goal is overhead <= 1.5 x the largest single tensor
(no whole-model host copy), and bytes read == the process's share.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MESH = {"fsdp": 2, "expert": 2, "tensor": 2}
WIDE = dict(vocab_size=32768, dim=2048, inter_dim=5632, moe_inter_dim=1024, n_heads=16, n_routed_experts=16,
            n_shared_experts=1, n_activated_experts=4, n_expert_groups=4, n_limited_groups=2, q_lora_rank=512,
            kv_lora_rank=256, qk_nope_head_dim=64, qk_rope_head_dim=32, v_head_dim=64, max_seq_len=4096,
            original_seq_len=1024, rope_factor=4.0, mtp_depth=0)
SMALL = dict(WIDE, vocab_size=2048, dim=256, inter_dim=512, moe_inter_dim=128, n_heads=4, q_lora_rank=64,
             kv_lora_rank=64, qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32)


def _model_bytes(cfg) -> int:
    from dsv3_jax.interop.hf_names import variable_shapes

    return 4 * sum(math.prod(s) for p, s in variable_shapes(cfg).items())


def widened_config(target_bytes: int):
    """A V3-shaped ModelConfig (1 dense layer, then MoE layers) whose float32 weights are >= target_bytes."""
    from dsv3_jax.config import ModelConfig

    base = WIDE if target_bytes >= 256e6 else SMALL
    one, two = (_model_bytes(ModelConfig(**base, n_layers=n, n_dense_layers=1)) for n in (2, 3))
    layers = 2 + max(0, math.ceil((target_bytes - one) / (two - one)))
    return ModelConfig(**base, n_layers=layers, n_dense_layers=1)


def write_checkpoint(path: str, cfg, shard_bytes: int, seed: int = 0) -> dict:
    """Random float32 weights (norms 1) in shards + index, written tensor by tensor; returns a summary."""
    import numpy as np

    from dsv3_jax.interop import hf_names, safetensors_io as st
    from dsv3_jax.interop.hf_config import config_to_hf

    rng, shapes = np.random.default_rng(seed), hf_names.variable_shapes(cfg)
    entries = []
    for slot in hf_names.model_slots(cfg):
        shape = hf_names.slot_shape(slot, shapes[slot.path])
        norm = slot.hf_name.endswith("norm.weight")
        make = (lambda s=shape: np.ones(s, np.float32)) if norm else (
            lambda s=shape: (0.02 * rng.standard_normal(s, np.float32)))
        entries.append((slot.hf_name, "F32", shape, make))
    sizes = [4 * math.prod(e[2]) for e in entries]
    shards = st.plan_shards(sizes, shard_bytes)
    files = st.shard_file_names(len(shards))
    with st.atomic_directory(path, overwrite=True) as tmp:
        with open(os.path.join(tmp, "config.json"), "w", encoding="utf-8") as f:
            json.dump(config_to_hf(cfg), f, indent=1)
        for file, idx in zip(files, shards):
            st.write_file(os.path.join(tmp, file), [entries[i] for i in idx])
        with open(os.path.join(tmp, st.INDEX_FILE), "w", encoding="utf-8") as f:
            json.dump({"metadata": {"total_size": sum(sizes)},
                       "weight_map": {entries[i][0]: file for file, idx in zip(files, shards) for i in idx}}, f)
    return dict(bytes=sum(sizes), tensors=len(entries), shards=len(files), largest_tensor=max(sizes),
                layers=cfg.n_layers)


def _status(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def worker(path: str, mode: str, port: int = 0, pid: int = 0) -> dict:
    """Load the checkpoint in this process and measure (see the module docstring)."""
    import jax

    if mode == "two":
        from dsv3_jax.parallel import distributed
        distributed.initialize(f"127.0.0.1:{port}", 2, pid)
    from dsv3_jax import sharding
    from dsv3_jax.interop import safetensors_io as st
    from dsv3_jax.interop.hf_checkpoint import open_checkpoint
    from dsv3_jax.interop.pretrained import load_hf_variables, variable_shardings

    ckpt = open_checkpoint(path)
    shardings = variable_shardings(ckpt.cfg, None if mode == "one" else sharding.make_mesh(MESH))
    base = _status("VmRSS")
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")  # reset VmHWM (the peak) to the current RSS
    reader, start = st.Reader(), time.perf_counter()
    variables = load_hf_variables(ckpt, shardings, reader=reader)
    jax.block_until_ready(variables)
    seconds = time.perf_counter() - start
    peak, leaves = _status("VmHWM"), jax.tree.leaves(variables)
    arrays = sum(s.data.nbytes for a in leaves for s in a.addressable_shards)
    share = sum(s.data.nbytes for a in leaves for s in {tuple((x.start, x.stop) for x in s.index): s
                                                       for s in a.addressable_shards}.values())
    return dict(mode=mode, process=pid, devices=jax.local_device_count(), baseline_rss=base, peak_rss=peak,
                arrays=arrays, overhead=peak - base - arrays, bytes_read=reader.bytes_read, share=share,
                seconds=seconds, gb_per_s=reader.bytes_read / seconds / 1e9,
                largest_tensor=ckpt.largest_tensor().end - ckpt.largest_tensor().start)


def _spawn(path: str, mode: str, n_devices: int, extra=()) -> subprocess.Popen:
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={n_devices}",
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "benchmarks.load_memory", "--worker", mode, "--dir", path, *map(str, extra)]
    return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _collect(procs, timeout: int) -> list[dict]:
    try:
        results = [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:  # only our own children, by their handles
            if p.poll() is None:
                p.kill()
                p.wait()
    out = []
    for p, (stdout, stderr) in zip(procs, results):
        if p.returncode:
            raise RuntimeError(f"worker exited {p.returncode}:\n{stderr[-3000:]}")
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def run(path: str, modes, timeout: int = 1800) -> list[dict]:
    rows = []
    for mode in modes:
        if mode == "two":
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            procs = [_spawn(path, mode, 4, ("--port", port, "--pid", pid)) for pid in (0, 1)]
        else:
            procs = [_spawn(path, mode, 1 if mode == "one" else 8)]
        rows += _collect(procs, timeout)
    return rows


def table(rows, ckpt: dict) -> str:
    mb = lambda b: f"{b / 2**20:,.0f}"
    lines = [f"checkpoint: {ckpt['bytes'] / 1e9:.2f} GB float32 in {ckpt['shards']} shards, {ckpt['tensors']} "
             f"tensors, largest {mb(ckpt['largest_tensor'])} MiB; {os.cpu_count()} CPUs, load "
             f"{os.getloadavg()[0]:.2f}",
             "| mode | process | baseline RSS MiB | peak RSS MiB | arrays MiB | overhead MiB (<= 1.5 x largest = "
             f"{mb(1.5 * ckpt['largest_tensor'])}) | read MiB | share MiB | s | GB/s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['mode']} ({r['devices']} dev) | {r['process']} | {mb(r['baseline_rss'])} | "
                     f"{mb(r['peak_rss'])} | {mb(r['arrays'])} | {mb(r['overhead'])} | {mb(r['bytes_read'])} | "
                     f"{mb(r['share'])} | {r['seconds']:.1f} | {r['gb_per_s']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks.load_memory", description=__doc__.splitlines()[0])
    p.add_argument("--gb", type=float, default=2.2, help="checkpoint size to write, in GB (10^9 bytes)")
    p.add_argument("--dir", default=None, help="where to write it (default: a temporary directory)")
    p.add_argument("--shard_mb", type=int, default=400, help="max MB per safetensors shard")
    p.add_argument("--modes", default="one,eight,two", help="comma-separated: one, eight, two")
    p.add_argument("--keep", action="store_true", help="keep the checkpoint (default: delete it at the end)")
    p.add_argument("--out", default=None, help="also write the results as JSON here")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--pid", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.dir, args.worker, args.port, args.pid)))
        return 0
    root = args.dir or tempfile.mkdtemp(prefix="dsv3_load_memory_")
    path = os.path.join(root, "checkpoint")
    try:
        start = time.perf_counter()
        ckpt = write_checkpoint(path, widened_config(int(args.gb * 1e9)), args.shard_mb * 10**6)
        print(f"wrote {path} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
        rows = run(path, [m for m in args.modes.split(",") if m])
    finally:
        if not args.keep:
            shutil.rmtree(root if args.dir is None else path, ignore_errors=True)
    print(table(rows, ckpt))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump({"checkpoint": ckpt, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
