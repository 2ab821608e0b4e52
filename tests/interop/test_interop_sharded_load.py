"""The sharded streaming load (interop/streaming.py, from_pretrained(mesh=...)):
  * on 8 fake devices (fsdp 2 x expert 2 x tensor 2) it equals the one-device load bit for bit, for float and
    FP8 checkpoints (dequantized per shard, or kept FP8 with block scales laid out alongside), whether shards are
    assembled on the host or on their device chunk by chunk; every distinct shard was read from exactly its
    own byte ranges (compared with tests/interop/shard_checks.py's independent offsets) and each byte once;
  * with 2 processes x 4 devices (jax.distributed on loopback, as tests/test_multihost.py) each process reads
    only its own shards' bytes, fewer than the checkpoint holds, and gets the right values."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

from tests.conftest import REPO, run_with_devices

SETUP = """
import json, numpy as np, jax
from dsv3_jax import sharding
from dsv3_jax.interop import load_hf_checkpoint, save_hf_checkpoint, safetensors_io as st
from dsv3_jax.interop.hf_checkpoint import open_checkpoint
from dsv3_jax.interop.pretrained import load_hf_variables, variable_shardings
from tests.interop.conftest import random_variables, tiny_v3
from tests.interop import shard_checks

def equal(a, b):
    return all(jax.tree.leaves(jax.tree.map(lambda x, y: np.array_equal(np.asarray(x), np.asarray(y)), a, b)))
"""

EIGHT_DEVICES = SETUP + """
import sys
from tests.interop.test_interop_fp8 import FP8_CFG, _fp8_checkpoint
import pathlib
tmp = pathlib.Path(sys.argv[1])
mesh = sharding.make_mesh({"fsdp": 2, "expert": 2, "tensor": 2})
cfg = tiny_v3(vocab_size=64)
ckpt = open_checkpoint(save_hf_checkpoint(cfg, random_variables(cfg), str(tmp / "f32"), shard_size="30KB"))
whole = load_hf_variables(ckpt, variable_shardings(cfg))
out = {}
for name, host_bytes in (("host", 1 << 30), ("device", 0)):
    records = []
    sharded = load_hf_variables(ckpt, variable_shardings(cfg, mesh), reader=st.Reader(records),
                                host_bytes=host_bytes, chunk_bytes=600)
    read, expected = shard_checks.check_reads(ckpt, sharded, records)
    out[name] = dict(equal=equal(sharded, whole), read=read, expected=expected, total=ckpt.nbytes())
w1 = sharded["params"]["moe_layers"]["moe"]["routed_experts"]["w1"]
out["w1"] = [list(w1.sharding.spec), list(w1.addressable_shards[0].data.shape)]

fp8_cfg = tiny_v3(**FP8_CFG)
path, _, _ = _fp8_checkpoint(tmp, fp8_cfg)
fp8 = open_checkpoint(path)
for keep in (False, True):
    one = load_hf_variables(fp8, variable_shardings(fp8_cfg), keep_fp8=keep)
    eight = load_hf_variables(fp8, variable_shardings(fp8_cfg, mesh), keep_fp8=keep, host_bytes=0, chunk_bytes=4096)
    out[f"fp8_keep={keep}"] = equal(one, eight)
wkv_a = eight["params"]["dense_layers"]["attn"]["wkv_a"]
out["fp8_kept"] = [str(wkv_a.value.dtype), list(wkv_a.value.sharding.spec), list(wkv_a.scale_inv.sharding.spec)]
odd = tiny_v3(vocab_size=67)  # 67 rows cannot be split over tensor=2
odd_ckpt = open_checkpoint(save_hf_checkpoint(odd, random_variables(odd), str(tmp / "odd")))
try:
    load_hf_variables(odd_ckpt, variable_shardings(odd, mesh))
except ValueError as e:
    out["uneven"] = str(e)
print(json.dumps(out))
"""


def test_eight_devices_equal_one_device_and_read_own_bytes(tmp_path):
    out = json.loads(run_with_devices(EIGHT_DEVICES.replace("sys.argv[1]", repr(str(tmp_path))), 8)
                     .strip().splitlines()[-1])
    for name in ("host", "device"):
        r = out[name]
        assert r["equal"], name
        assert r["read"] == r["expected"] == r["total"], r  # each byte once, and only the shards' bytes
    assert out["w1"] == [[None, "expert", "fsdp", "tensor"], [2, 4, 16, 8]]
    assert out["fp8_keep=False"] and out["fp8_keep=True"]
    # e4m3 values sharded as the kernel; the scales of an axis whose shards split 128-blocks stay replicated
    assert out["fp8_kept"] == ["float8_e4m3fn", [None, "fsdp", None], [None, None, None]]
    assert out["uneven"].startswith("variable params/embed/embedding (67, 32): cannot be laid out as"), out["uneven"]


PROCESS = SETUP + """
import sys
from dsv3_jax.parallel import distributed
path, port, pid = sys.argv[1], sys.argv[2], int(sys.argv[3])
distributed.initialize(f"127.0.0.1:{port}", 2, pid)
ckpt = open_checkpoint(path)
mesh = sharding.make_mesh({"fsdp": 2, "expert": 2, "tensor": 2})  # fsdp splits the two processes
records = []
got = load_hf_variables(ckpt, variable_shardings(ckpt.cfg, mesh), reader=st.Reader(records), host_bytes=0)
read, expected = shard_checks.check_reads(ckpt, got, records)
_, host = load_hf_checkpoint(path)
flat_got, flat_host = jax.tree.leaves(got), jax.tree.leaves(host)
ok = all(np.array_equal(np.asarray(s.data), h[s.index]) for a, h in zip(flat_got, flat_host)
         for s in a.addressable_shards)
print(json.dumps(dict(pid=pid, read=read, expected=expected, total=ckpt.nbytes(), ok=ok,
                      devices=jax.device_count(), local=jax.local_device_count())))
"""


def test_two_processes_read_their_own_shards(tmp_path):
    from dsv3_jax.interop import save_hf_checkpoint
    from tests.interop.conftest import random_variables, tiny_v3

    cfg = tiny_v3(vocab_size=64)
    path = save_hf_checkpoint(cfg, random_variables(cfg), str(tmp_path / "hf"), shard_size="30KB")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    procs = [subprocess.Popen([sys.executable, "-c", PROCESS, path, str(port), str(pid)], env=env, cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for pid in (0, 1)]
    try:
        results = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:  # only our own children, by their handles
            if p.poll() is None:
                p.kill()
                p.wait()
    outs = []
    for p, (stdout, stderr) in zip(procs, results):
        assert p.returncode == 0, stderr[-3000:]
        outs.append(json.loads(stdout.strip().splitlines()[-1]))
    total = outs[0]["total"]
    for o in outs:
        assert o["ok"] and (o["devices"], o["local"]) == (8, 4), o
        assert o["read"] == o["expected"] < total, o  # its own shards' bytes only
    assert outs[0]["read"] + outs[1]["read"] > total  # replicated variables are read by both
