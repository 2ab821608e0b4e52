"""Multi-host training on one machine: two processes x 4 CPU devices (gloo collectives, jax.distributed via
dsv3-train's --coordinator_address/--num_processes/--process_id) train the tiny EP model for 3 steps with
the same losses as one process with 8 devices; the checkpoint the two processes wrote restores in one
process onto a different mesh and equals the one-process run's. A SIGTERM sent to ONE of two processes stops
both after the same step, with one checkpoint of that step. Subprocesses are bounded in time and only the
ones this test started are killed."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np

from tests.conftest import REPO

CONFIG = '''
from dsv3_jax.experiment_config import experiment_config
from tests.conftest import tiny_config


def get_config(arg=None):
    model = tiny_config(vocab_size=259, init_std=0.02, n_layers=1, n_dense_layers=0, q_lora_rank=0,
                        moe_impl="ep").to_dict()
    cd = experiment_config(model)
    cd.data.update(dict(source="synthetic", synthetic_bytes=20_000, val_fraction=0.1))
    cd.train.update(dict(steps=3, batch_size=8, seq_len=8, lr=3e-3, warmup_steps=1, log_every=1, eval_every=100,
                         eval_batches=1, checkpoint_every=100, sample_tokens=0))
    cd.mesh.update(dict(data=1, expert=8))  # the expert axis spans both processes: 2 "nodes"
    return cd
'''
XLA = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
TIMEOUT_S = 480


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(tmp_path, name, n_devices, *flags):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO,
               XLA_FLAGS=f"--xla_force_host_platform_device_count={n_devices} {XLA}")
    log = open(tmp_path / f"{name}.log", "w")
    cmd = [sys.executable, "-m", "dsv3_jax.train", f"--config={tmp_path / 'cfg.py'}", *flags]
    return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)


def _wait(procs, tmp_path):
    try:
        for name, p in procs.items():
            p.wait(timeout=TIMEOUT_S)
    finally:
        for p in procs.values():  # only our own children, by their handles
            if p.poll() is None:
                p.kill()
                p.wait()
    for name, p in procs.items():
        assert p.returncode == 0, f"{name} exited {p.returncode}:\n{(tmp_path / f'{name}.log').read_text()[-3000:]}"


def _train_rows(workdir):
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    return {r["step"]: r for r in rows if r["kind"] == "train"}


RESTORE = """
import json, sys, jax, numpy as np
import importlib.util
from dsv3_jax.experiment_config import model_config
from dsv3_jax.parallel.layout import setup_mesh
from dsv3_jax.train import checkpoint, layout, optim
from dsv3_jax.train.state import init_state
spec = importlib.util.spec_from_file_location("cfg", sys.argv[1]); mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod); cd = mod.get_config()
mesh, cfg = setup_mesh({"data": 2, "expert": 4}, model_config(cd), cd.train.batch_size)  # another mesh
opt = optim.make_optimizer(cd.train)
shardings = layout.state_shardings(cfg, opt, mesh, cd.train.seq_len)
abstract = jax.eval_shape(lambda: init_state(cfg, opt, 0, cd.train.seq_len))
target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
ckpts = [checkpoint.Checkpointer(d) for d in sys.argv[2:4]]
states = [c.restore(c.latest_step(), target) for c in ckpts]
(a, data_a), (b, data_b) = states
w1 = a.params["moe_layers"]["moe"]["routed_experts"]["w1"]
diff = max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
mu = [v for path, v in jax.tree_util.tree_flatten_with_path(a.opt_state)[0]
      if "mu" in jax.tree_util.keystr(path) and "w1" in jax.tree_util.keystr(path)][0]  # Adam moment of w1
print(json.dumps(dict(step=int(a.step), data_equal=data_a == data_b, max_diff=diff, w1_spec=str(w1.sharding.spec),
                      w1_shard=list(w1.addressable_shards[0].data.shape), mu_spec=str(mu.sharding.spec),
                      bias_spec=str(jax.tree.leaves(a.router)[0].sharding.spec))))
"""


def test_two_processes_train_like_one_and_checkpoint_moves_mesh(tmp_path):
    (tmp_path / "cfg.py").write_text(CONFIG)
    port = _free_port()
    procs = {"one_process": _launch(tmp_path, "one_process", 8, f"--workdir={tmp_path / 'one'}")}
    for pid in (0, 1):
        procs[f"process_{pid}"] = _launch(tmp_path, f"process_{pid}", 4, f"--workdir={tmp_path / 'two'}",
                                          f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                                          f"--process_id={pid}")
    _wait(procs, tmp_path)
    one, two = _train_rows(tmp_path / "one"), _train_rows(tmp_path / "two")
    assert sorted(one) == sorted(two) == [1, 2, 3]
    np.testing.assert_allclose([two[s]["loss"] for s in (1, 2, 3)], [one[s]["loss"] for s in (1, 2, 3)], rtol=1e-5)
    # One process is one node; across two processes the expert axis spans 2 nodes (auto-detected).
    assert all(one[s]["comm_bytes/dispatch_cross_node"] == 0 for s in (1, 2, 3))
    assert all(two[s]["comm_bytes/dispatch_cross_node"] > 0 for s in (1, 2, 3))
    assert sorted(os.listdir(tmp_path / "two" / "checkpoints")) == ["3"]

    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO,
               XLA_FLAGS=f"--xla_force_host_platform_device_count=8 {XLA}")
    proc = subprocess.run([sys.executable, "-c", RESTORE, str(tmp_path / "cfg.py"), str(tmp_path / "two"),
                           str(tmp_path / "one")], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["step"] == 3 and out["data_equal"] and out["max_diff"] <= 1e-5, out
    assert "None, 'expert'" in out["w1_spec"] and out["w1_shard"] == [1, 2, 32, 16], out  # 8 experts / 4
    assert out["mu_spec"] == out["w1_spec"] and out["bias_spec"] in ("P()", "PartitionSpec()"), out  # ZeRO


def test_sigterm_to_one_process_stops_both_at_the_same_step(tmp_path):
    # Landed code: each process handled SIGTERM alone, so the other one hung in the next step's collectives.
    (tmp_path / "cfg.py").write_text(CONFIG)
    port, workdir = _free_port(), tmp_path / "two"
    procs = {f"process_{pid}": _launch(tmp_path, f"process_{pid}", 4, f"--workdir={workdir}",
                                       f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                                       f"--process_id={pid}", "--config.train.steps=1000")
             for pid in (0, 1)}
    try:
        deadline = time.time() + TIMEOUT_S
        while time.time() < deadline and all(p.poll() is None for p in procs.values()):
            if (workdir / "metrics.jsonl").exists() and len(_train_rows(workdir)) >= 2:
                break
            time.sleep(0.05)
        procs["process_1"].send_signal(signal.SIGTERM)  # process 0 never gets a signal
        for p in procs.values():
            p.wait(timeout=TIMEOUT_S)
    finally:
        for p in procs.values():  # only our own children, by their handles
            if p.poll() is None:
                p.kill()
                p.wait()
    codes = {name: p.returncode for name, p in procs.items()}
    assert codes == {"process_0": 143, "process_1": 143}, (codes, (tmp_path / "process_0.log").read_text()[-3000:])
    last = max(_train_rows(workdir))
    assert last < 1000 and sorted(os.listdir(workdir / "checkpoints")) == [str(last)]
    assert f"interrupted at step {last} (SIGTERM), checkpoint saved" in (tmp_path / "process_0.log").read_text()
