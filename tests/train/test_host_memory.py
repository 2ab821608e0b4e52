"""train/host_memory.py: glibc keeps a step's freed temporaries, so later steps do not page-fault them in again;
results are unchanged; the CPU check and the CLI switch."""

import json
import os
import platform
import subprocess
import sys
import types

import pytest

from dsv3_jax.cli import train as train_cli
from dsv3_jax.train import host_memory

# A jitted function with a 64 MiB temporary ([2048, 8192] float32), run in a fresh process with or without the
# settings; prints the median page faults of a call and a checksum of the result. The warm-up calls let the heap
# reach the size it settles at (in the first calls, with threads freeing and allocating in varying order, it grows).
PROBE = """
import json, resource, sys
from dsv3_jax.train import host_memory
applied = host_memory.keep_freed_memory() if sys.argv[1] == "kept" else False
import jax, jax.numpy as jnp
x = jnp.linspace(-1.0, 1.0, 2048 * 256, dtype=jnp.float32).reshape(2048, 256)
w = jnp.linspace(-0.01, 0.01, 256 * 8192, dtype=jnp.float32).reshape(256, 8192)
f = jax.jit(lambda x, w: jnp.tanh(jnp.exp(x @ w) @ w.T))
for _ in range(20):
    out = f(x, w).block_until_ready()
faults = []
for _ in range(7):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    out = f(x, w).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps(dict(applied=applied, faults=sorted(faults)[3], checksum=float(jnp.sum(out)))))
"""


def probe(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not host_memory.available(), reason="the settings are glibc's")
def test_kept_memory_is_not_faulted_in_again_and_results_are_identical():
    kept, system = probe("kept"), probe("system")
    assert kept["applied"] is True
    # glibc's defaults map the 64 MiB temporary afresh at every call: 16,384 pages of 4 KiB
    assert system["faults"] > 8_000, system
    assert kept["faults"] < system["faults"] / 8, (kept, system)
    assert kept["checksum"] == system["checksum"]


def test_no_glibc_no_settings(monkeypatch):
    monkeypatch.setattr(platform, "libc_ver", lambda: ("", ""))
    monkeypatch.setattr(host_memory.ctypes, "CDLL", lambda *a: pytest.fail("mallopt called without glibc"))
    assert host_memory.available() is False
    assert host_memory.keep_freed_memory() is False


@pytest.mark.parametrize("platforms, expected", [("cpu", True), (" CPU ", True), ("cpu,cuda", True),
                                                 ("cuda", False), ("cuda,cpu", False), ("tpu", False)])
def test_runs_on_cpu_follows_the_first_platform(platforms, expected):
    assert host_memory.runs_on_cpu(platforms) is expected


def test_runs_on_cpu_reads_jax_platforms(monkeypatch):
    monkeypatch.setenv("JAX_PLATFORMS", "cuda")
    assert host_memory.runs_on_cpu() is False
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    assert host_memory.runs_on_cpu() is True


def test_runs_on_cpu_sees_an_accelerator_plugin(monkeypatch):
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    monkeypatch.setattr(host_memory.importlib.metadata, "entry_points", lambda group: [object()])
    assert host_memory.runs_on_cpu() is False


def test_cli_switch(monkeypatch):
    calls = []
    monkeypatch.setattr(host_memory, "keep_freed_memory", lambda: calls.append(1) or True)
    monkeypatch.setattr(host_memory, "runs_on_cpu", lambda: True)
    args = train_cli.make_parser().parse_args(["--config=configs/tiny.py", "--system_malloc"])
    assert args.system_malloc and train_cli.setup_host_memory(args) is False and not calls
    args = types.SimpleNamespace(system_malloc=False)
    assert train_cli.setup_host_memory(args) is True and calls == [1]
    monkeypatch.setattr(host_memory, "runs_on_cpu", lambda: False)
    assert train_cli.setup_host_memory(args) is False and calls == [1]
