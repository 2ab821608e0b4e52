"""The weight gradient dw = xᵀ · dy of a token matmul on this backend, two layouts: `python -m
benchmarks.weight_grad_layout [--tokens 2048] [--repeats 9]`.

Prints a grid over dw's shape [K, N] (K input features, N output features) of GF/s for
  * autodiff's dot, contracting the token axis that is x's major axis (what jax.grad of jnp.dot gives), and
  * the same product from xᵀ materialized row-major first (quant/weight_grad.py's CPU path),
with the time ratio materialized / plain (below 1: the copy pays), and marks the shapes where
quant/weight_grad.cpu_transposes_weight_grad picks the materialized layout. Both run in one process, the two
variants of each shape back to back, medians of `--repeats` warm calls.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.gpu_steps import median_seconds
from dsv3_jax.quant.weight_grad import _weight_grad_plain, _weight_grad_transposed, cpu_transposes_weight_grad

ROWS = (64, 128, 256, 512, 1024, 2048)
COLS = (128, 256, 512, 1024, 2048, 4096)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=2048, help="M, the rows of x and dy")
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--rows", default=",".join(map(str, ROWS)), help="K values, comma-separated")
    p.add_argument("--cols", default=",".join(map(str, COLS)), help="N values, comma-separated")
    a = p.parse_args(argv)
    rows, cols = (tuple(int(v) for v in arg.split(",")) for arg in (a.rows, a.cols))
    plain, transposed = jax.jit(_weight_grad_plain), jax.jit(_weight_grad_transposed)
    rng = np.random.default_rng(0)
    print(f"{jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}, M = {a.tokens}: "
          "GF/s plain / materialized (time ratio; * = the layout quant/weight_grad.py picks on the CPU)\n")
    print("| K \\ N | " + " | ".join(map(str, cols)) + " |\n|---|" + "---|" * len(cols))
    grid = {}
    for k in rows:
        cells = []
        for n in cols:
            x = jnp.asarray(rng.standard_normal((a.tokens, k), np.float32))
            dy = jnp.asarray(rng.standard_normal((a.tokens, n), np.float32))
            t_plain = median_seconds(plain, x, dy, repeats=a.repeats)
            t_trans = median_seconds(transposed, x, dy, repeats=a.repeats)
            flops = 2 * a.tokens * k * n / 1e9
            grid[(k, n)] = (t_plain, t_trans)
            mark = "*" if cpu_transposes_weight_grad(k, n) else ""
            cells.append(f"{flops / t_plain:.0f} / {flops / t_trans:.0f} ({t_trans / t_plain:.2f}){mark}")
        print(f"| {k} | " + " | ".join(cells) + " |", flush=True)
    return grid


if __name__ == "__main__":
    main()
