"""Where a training step spends its time, op by op: `python -m benchmarks.profile_step [--size default]`.
With `--decode B`: where a greedy decoding step at batch B spends it (the on-device loop of infer/generate.py).

Traces a few forward+backward steps of the side-by-side model (benchmarks/side_by_side.py sizes, float32) with
`jax.profiler`, converts the trace with xprof (`pip install xprof`), maps every XLA op back to the model code
through the op_name metadata of the optimized HLO (an op that XLA's passes left without any gets the path
of its first input that has one, marked "≈"), and prints the milliseconds per step of
  * the top ops (kernel name, output shape, the model path they come from), and
  * categories: forward / backward × routed experts, attention, MLP, shared experts, head, norms, the scan's
    residual stacking (dynamic-(update-)slice), and buffer initialization.
--single_thread pins the process to one CPU core (before jax starts its threads), so the per-op times add up to
the step's CPU time (the breakdown used to pick the CPU optimizations of layers/moe/dispatch.py,
layers/attention_core.py and quant/recipe.py). Only leaf ops count: a control-flow op's trace event (a `cond`
of the capacity batch, a `while`) spans the ops of its body, which have events of their own.
--decode B traces the generation loop instead (`infer/generate.run_steps` over split_layers variables, as
benchmarks/side_by_side.py decodes: 32-token prompts, --new tokens) and prints milliseconds per decoding step;
its prefill and first token run before the trace. XLA runs independent ops on both cores at once, so the per-op
times of a step can add up to more than its wall time (printed beside them).
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import re
import shutil
import tempfile
from typing import NamedTuple

# (part of a model path, its category), the first match wins. "final_logits" is the model's last norm and the
# output projection: a head dot without metadata gets the final norm's path from op_info's fallback.
CATEGORIES = (("routed_experts", "routed_experts"), ("shared_experts", "shared_experts"), ("/attn/", "attn"),
              ("/mlp/", "mlp"), ("head", "head"), ("final_logits", "head"), ("log_softmax", "log_softmax"),
              ("norm", "norm"), ("embed", "embed"), ("dynamic_update_slice", "dynamic_update_slice"),
              ("dynamic_slice", "dynamic_slice"), ("/moe/", "moe"))


def trace_step(size: str, steps: int, out_dir: str):
    """(trace directory, optimized HLO text) of `steps` traced forward+backward steps."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from dsv3_jax import losses
    from dsv3_jax.layer_split import join_params, split_params
    from dsv3_jax.model import DeepSeekV3
    from dsv3_jax.train.compile_options import train_compiler_options
    cfg = side_by_side_config(size)
    model = DeepSeekV3(cfg)
    tokens = np.random.default_rng(1).integers(0, cfg.vocab_size, (8, 257)).astype(np.int32)
    x, y = jnp.asarray(tokens[:, :-1]), jnp.asarray(tokens[:, 1:])
    variables = jax.jit(model.init)(jax.random.key(0), x)
    params = split_params(cfg, variables["params"])  # the layout the trainer steps in (train/state.py)
    loss = lambda p: losses.cross_entropy(model.apply({**variables, "params": join_params(cfg, p)}, x).logits, y)
    step = jax.jit(jax.value_and_grad(loss), compiler_options=train_compiler_options())  # the trainer's
    for _ in range(2):
        jax.block_until_ready(step(params))
    with jax.profiler.trace(out_dir):
        for _ in range(steps):
            jax.block_until_ready(step(params))
    return out_dir, step.lower(params).compile().as_text()


def side_by_side_config(size: str):
    """The ModelConfig of benchmarks/side_by_side.py's model at `size` (float32, no MTP)."""
    from benchmarks.side_by_side import SIZES
    from dsv3_jax.config import ModelConfig
    s = SIZES[size]
    return ModelConfig(vocab_size=s["vocab"], dim=s["dim"], inter_dim=s["inter"], moe_inter_dim=s["moe_inter"],
                       n_layers=s["layers"], n_dense_layers=s["dense"], n_heads=s["heads"],
                       n_routed_experts=s["experts"], n_activated_experts=s["topk"], n_expert_groups=s["groups"],
                       n_limited_groups=s["topk_groups"], q_lora_rank=s["q_lora"], kv_lora_rank=s["kv_lora"],
                       qk_nope_head_dim=s["nope"], qk_rope_head_dim=s["rope"], v_head_dim=s["v"],
                       max_seq_len=512, original_seq_len=512, mtp_depth=0, dtype="float32")


def trace_decode(size: str, batch: int, new: int, runs: int, out_dir: str):
    """(trace directory, optimized HLO text of the loop program, loop steps traced, wall ms per step) of `runs`
    greedy generation loops of new - 1 steps each, after prefill and the first token (as generate runs them)."""
    import time

    import jax
    import numpy as np

    from dsv3_jax.infer import emit
    from dsv3_jax.infer.generate import run_steps, start_loop
    from dsv3_jax.infer.sampling import SamplingParams
    from dsv3_jax.layer_split import split_layers
    from dsv3_jax.model import DeepSeekV3
    if new < 2:
        raise ValueError(f"--new: the loop runs new - 1 steps after the first token; expected >= 2, got {new}")
    cfg = side_by_side_config(size)
    prompts = np.random.default_rng(2).integers(0, cfg.vocab_size, (batch, 32)).astype(np.int32)
    variables = split_layers(cfg, jax.jit(DeepSeekV3(cfg).init)(jax.random.key(0), prompts))
    sp, stop = SamplingParams(), emit.stop_array(())

    def start():  # a fresh loop state: run_steps donates it
        return start_loop(cfg, variables, prompts.tolist(), new, sp, stop)

    def loops(states):  # seconds per loop
        walls = []
        for state in states:
            t0 = time.perf_counter()
            jax.block_until_ready(run_steps(cfg, variables, state, new - 1, sp, stop))
            walls.append(time.perf_counter() - t0)
        return walls

    hlo = run_steps.lower(cfg, variables, start(), new - 1, sp, stop).compile().as_text()
    loops([start() for _ in range(2)])  # warm-up
    walls = loops(jax.block_until_ready([start() for _ in range(runs)]))  # untraced: no profiler overhead
    states = jax.block_until_ready([start() for _ in range(runs)])
    with jax.profiler.trace(out_dir):
        loops(states)
    return out_dir, hlo, runs * (new - 1), 1e3 * float(np.median(walls)) / (new - 1)


def op_times(trace_dir: str, steps: int) -> collections.Counter:
    """{XLA op name: ms per step} from the trace (xprof's trace viewer conversion)."""
    from xprof.convert import raw_to_tool_data
    paths = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True))[-1:]
    data, _ = raw_to_tool_data.xspace_to_tool_data(paths, "trace_viewer", {})
    return leaf_times(json.loads(data)["traceEvents"], steps)


# Their events span their bodies' ops; XLA names copies of a computation "cond.27.clone" (the decoding programs).
CONTAINER_OP = re.compile(r"(cond|conditional|while|call)(\.\d+)*(\.clone(\.\d+)?)?")


# Host-side runtime events, not ops: thread-pool regions and waits, the thunk executor, the Python dispatch of a
# jitted call, its argument parsing and PJRT's execution of it (which spans the whole program), and the markers
# of async ops' ends.
RUNTIME_EVENTS = ("ThreadpoolListener", "ThunkExecutor", "SlinkyThreadPool", "PjitFunction", "CommonPjRt",
                  "ParseArguments", "end: ", "$")


def leaf_times(events, steps: int) -> collections.Counter:
    """{XLA op name: ms per step} of the complete ("X") trace events of leaf ops: runtime events
    (RUNTIME_EVENTS) and control-flow ops, whose events include their bodies', left
    out, so that the times add up without counting a branch's ops twice."""
    dur = collections.Counter()
    for e in events:
        name = e.get("name", "")
        if e.get("ph") != "X" or "dur" not in e or CONTAINER_OP.fullmatch(name):
            continue
        if not name.startswith(RUNTIME_EVENTS):
            dur[name] += e["dur"] / 1000 / steps
    return dur


APPROX = "≈ "  # marks a model path taken from an op's inputs (the op itself has no op_name metadata)


class HloOps(NamedTuple):
    """The optimized HLO text indexed: {op name: its defining line} of every instruction (fused computations
    too), {computation name: its ops' names} and {op name: the conditional whose branch holds it}."""
    lines: dict
    bodies: dict
    branch_of: dict


def hlo_ops(hlo: str) -> HloOps:
    lines, bodies, body = {}, {}, None
    for line in hlo.splitlines():
        header = re.match(r"(?:ENTRY )?%([\w.\-]+) .*\{$", line)
        if header:
            body = bodies.setdefault(header.group(1), [])
            continue
        m = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = ", line)
        if m:
            lines.setdefault(m.group(1), line)
            if body is not None:
                body.append(m.group(1))
    branch_of = {}
    for name, line in lines.items():
        called = re.search(r"branch_computations=\{([^}]*)\}", line)
        for c in re.findall(r"%([\w.\-]+)", called.group(1)) if called else ():
            branch_of.update((op, name) for op in bodies.get(c, []))
    return HloOps(lines, bodies, branch_of)


def _op_name(line: str) -> str:
    m = re.search(r'op_name="([^"]*)"', line)
    return m.group(1) if m else ""


def _inputs(ops: HloOps, line: str) -> list:
    """What an HLO instruction line reads: the %names inside its opcode's parentheses, then the ops of the
    computations it calls (a fusion's body)."""
    rhs = line.split(" = ", 1)[1]
    call = re.search(r"\s[\w\-]+\(", rhs)  # "opcode(" after the shape (shapes hold no such word)
    if call is None:
        return []
    start, depth, end = call.end() - 1, 0, len(rhs)
    for i in range(start, len(rhs)):
        depth += {"(": 1, ")": -1}.get(rhs[i], 0)
        if depth == 0:
            end = i
            break
    called = [op for c in re.findall(r"(?:calls|to_apply|body|condition)=%([\w.\-]+)", rhs[end:])
              for op in ops.bodies.get(c, [])]
    return [o for o in re.findall(r"%([\w.\-]+)", rhs[start:end]) + called if o in ops.lines]


def op_info(ops: HloOps, name: str, depth: int = 3) -> tuple[str, str]:
    """(output shape, model path) of one op of the optimized HLO: the path is the op's op_name metadata. Some
    ops that XLA's passes rewrote carry none (at batch 1: the head's and the routed experts' dots, the
    latent-score fusions, the products inside a lone token's expert switches; constant fusions); their path is
    then the conditional's whose branch holds the op, or else the first input's that has one (operands, then
    the ops of a fusion's body), searched up to `depth` levels deep; marked with APPROX either way, so that such
    ops still land in their layer's category."""
    line = ops.lines.get(name)
    if line is None:
        return "", ""
    shape = line.split(" = ", 1)[1].split(" ", 1)[0]
    path, frontier = _op_name(line), [name]
    if not path and name in ops.branch_of:  # inside a branch: the path of the conditional that runs it
        path = _op_name(ops.lines[ops.branch_of[name]])
        path = APPROX + path if path else ""
    for _ in range(depth):
        if path:
            break
        frontier = [o for n in frontier for o in _inputs(ops, ops.lines[n])]
        found = next((_op_name(ops.lines[o]) for o in frontier if _op_name(ops.lines[o])), "")
        path = APPROX + found if found else ""
    return shape, path


def category(path: str) -> str:
    direction = "backward" if "transpose(" in path else "forward"
    for part, name in CATEGORIES:
        if part in path:
            return f"{direction} {name}"
    return f"{direction} other" if path else "buffer init / unlabeled"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="default", choices=("default", "tiny"))
    p.add_argument("--steps", type=int, default=3, help="steps traced (with --decode: generation loops)")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--single_thread", "--single-thread", action="store_true")
    p.add_argument("--decode", type=int, default=0, metavar="B",
                   help="profile a greedy decoding step at batch B instead of a training step")
    p.add_argument("--new", type=int, default=64, help="--decode: new tokens per generation (the loop runs new-1)")
    a = p.parse_args(argv)
    if a.single_thread:
        # XLA:CPU's flags do not make it single-threaded (its YNNPACK fusions and the thunk executor still use
        # every core); an affinity of one core does, for every thread started after this.
        if not hasattr(os, "sched_setaffinity"):
            raise SystemExit("--single_thread needs os.sched_setaffinity (Linux)")
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    tmp = tempfile.mkdtemp()
    try:
        if a.decode:
            trace_dir, hlo, steps, wall = trace_decode(a.size, a.decode, a.new, a.steps, tmp)
        else:
            (trace_dir, hlo), steps, wall = trace_step(a.size, a.steps, tmp), a.steps, None
        times = op_times(trace_dir, steps)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    what = f"decoding step at batch {a.decode}" if a.decode else "training step"
    timed = f" ({wall:.2f} ms wall per step, untraced)" if wall is not None else ""
    digits = 3 if a.decode else 1
    print(f"{what}: ops total {sum(times.values()):.{digits}f} ms per step{timed}\n\n"
          "| ms/step | op | shape | model path |\n|---|---|---|---|")
    ops = hlo_ops(hlo)
    for name, t in times.most_common(a.top):
        shape, path = op_info(ops, name)
        mark = APPROX if path.startswith(APPROX) else ""  # kept when the path is cut to its last 80 characters
        print(f"| {t:.{digits}f} | {name} | {shape} | {mark}{path[len(mark):][-80:]} |")
    cats = collections.Counter()
    for name, t in times.items():
        cats[category(op_info(ops, name)[1])] += t
    print("\n| ms/step | category |\n|---|---|")
    for c, t in cats.most_common():
        print(f"| {t:.{digits}f} | {c} |")


if __name__ == "__main__":
    main()
