"""The paper-vs-ours tables of `dsv3-report` (Insights Tables 1-2, §2.3.2; V3 report §1, README).

Each builder returns a `tables.Table`; `build_tables()` returns them all in the report's order. Paper values
are the published figures (docs/paper.md §1, §5); `ours` comes from the analysis functions, untuned.
"""

from __future__ import annotations

import math

from dsv3_jax.analysis import flops, kv_cache, memory, pipeline_bubbles, tpot
from dsv3_jax.analysis.comparison_models import PaperModel, paper_models
from dsv3_jax.analysis.tables import Row, Table

KB = 1000.0  # Insights Table 1 writes 70.272 KB for 70,272 B
GBS = 1e9


def kv_table(models: dict[str, PaperModel]) -> Table:
    """Insights Table 1: KV cache per token in bf16 (V2: same formula, docs/paper.md §5)."""
    kb = {k: kv_cache.kv_bytes_per_token(models[k].cfg) / KB for k in ("v3", "qwen72b", "llama405b", "v2")}
    rows = [Row(models[k].name, paper, kb[k]) for k, paper in
            (("v3", 70.272), ("qwen72b", 327.680), ("llama405b", 516.096), ("v2", 69.12))]
    rows += [Row("Qwen-2.5 72B / DeepSeek-V3", 4.66, kb["qwen72b"] / kb["v3"]),
             Row("LLaMA-3.1 405B / DeepSeek-V3", 7.28, kb["llama405b"] / kb["v3"],
                 "paper's 7.28x is not 516.096/70.272")]
    return Table("KV cache per token (bf16)", "KB", "Insights Table 1", tuple(rows), digits=3,
                 notes=("MLA: layers x (kv_lora_rank + rope_dim) x 2 B; GQA: layers x kv_heads x (d_k + d_v) x 2 B",))


def flops_table(models: dict[str, PaperModel], seq_len: int = 4096) -> Table:
    """Insights Table 2: training GFLOPs per token at seq_len, one convention (flops.py)."""
    def g(key, causal=True):
        pm = models[key]
        return flops.training_gflops_per_token(pm.cfg, seq_len, causal=causal, counts=pm.counts())

    rows = [Row(models[k].name, paper, g(k)) for k, paper in
            (("v2", 155.0), ("v3", 250.0), ("qwen72b", 394.0), ("llama405b", 2448.0))]
    rows[2] = Row(rows[2].name, rows[2].paper, rows[2].ours, "paper used smaller shapes (see flops.py)")
    rows.append(Row("DeepSeek-V3 non-causal / causal", 43.73 / 38.94, g("v3", False) / g("v3"),
                    "paper: MFU ratio 43.73%/38.94%, Insights Table 4", digits=4))
    return Table(f"Training compute per token, seq {seq_len}", "GFLOPs", "Insights Table 2", tuple(rows),
                 digits=1, notes=("6 x activated params (embedding 0, head counted) + 6 x layers x q_heads x "
                                  "(d_qk + d_v) x seq/2 (causal attention); MTP excluded",))


def params_table(models: dict[str, PaperModel]) -> Table:
    """Published parameter counts (V3 README / report §1; DeepSeek-V2 paper §1)."""
    v3, v2, lite = (models[k].counts() for k in ("v3", "v2", "v2_lite"))
    b = 1e9
    rows = (Row("DeepSeek-V3 total (no MTP)", 671.0, v3.total / b),
            Row("DeepSeek-V3 activated (README)", 36.7, v3.activated / b),
            Row("DeepSeek-V3 activated (report)", 37.0, v3.activated / b),
            Row("DeepSeek-V3 MTP module (unique)", 11.5, v3.mtp / b),
            Row("DeepSeek-V2-Lite total", 15.7, lite.total / b),
            Row("DeepSeek-V2-Lite activated", 2.4, lite.activated / b),
            Row("DeepSeek-V2 total", 236.0, v2.total / b),
            Row("DeepSeek-V2 activated", 21.0, v2.activated / b))
    return Table("Parameters", "B", "V3 README/report, V2 paper", rows, digits=2,
                 notes=(f"counted from: {v3.source}; activated = all non-routed params incl. the output head + "
                        "k/E of the routed experts; the embedding table counts 0 (param_types.py)",))


def tpot_table() -> Table:
    """Insights §2.3.2: the EP-communication bound on time per output token."""
    hid, n = tpot.PAPER_HIDDEN, 61

    def ms(bw, hidden=hid):
        return 1e3 * tpot.tpot_seconds(n, 32, 9, hidden, bw * GBS)

    step_us = 1e6 * tpot.ep_comm_seconds(32, 9, hid, 50 * GBS)
    rows = (Row("EP comm per micro-batch, 50 GB/s", 120.96, step_us, "us"),
            Row("per layer, 2 micro-batches overlapped", 241.92, 2 * step_us, "us"),
            Row("TPOT, 50 GB/s (CX7 IB)", 14.76, ms(50), "ms"),
            Row("tokens/s, 50 GB/s", 67.0, 1e3 / ms(50), "tok/s"),
            Row("TPOT, 900 GB/s (GB200 NVL72)", 0.82, ms(900), "ms"),
            Row("tokens/s, 900 GB/s", 1200.0, 1e3 / ms(900), "tok/s"),
            Row("TPOT, 50 GB/s, hidden 7168 (exact dim)", None, ms(50, 7168), "ms"))
    return Table("TPOT bound from EP communication", "mixed", "Insights §2.3.2", rows, digits=2,
                 notes=("(1 B FP8 dispatch + 2 B BF16 combine) x 32 tokens x 9 experts x 7000 hidden / bandwidth, "
                        "x 2 micro-batches x 61 layers; the paper's '7K' is 7000",))


def dualpipe_table(pp: int = 16, chunks: int = 40) -> Table:
    """V3 report Table 2: published bubble formula (paper) vs the schedule simulator (ours).

    Two duration sets: F=1, B=2, W=1 (where the formulas are exact) and Insights Table 4's per-chunk times
    (F 1.13 s, B 1.99 s, W 0.48 s), where the simulator gives the schedule's exact bubble."""
    title = f"Pipeline bubbles, PP={pp}, {chunks} micro-batches (DualPipeV: PP/2 devices)"
    rows = []
    for label, (f, b, w) in (("F=1 B=2 W=1", (1.0, 2.0, 1.0)), ("Insights Table 4 times (s)", (1.13, 1.99, 0.48))):
        for r in pipeline_bubbles.bubble_rows(pp, chunks, f, b, w):
            note = "within the formula's assumptions" if r["assumptions_hold"] else "outside the formula's assumptions"
            rows.append(Row(f"{r['schedule']} bubble, {label}", r["formula"], r["simulated"], note))
    for r in pipeline_bubbles.bubble_rows(pp, chunks, 1.0, 2.0, 1.0):
        rows.append(Row(f"{r['schedule']} peak activations/device", r["formula_activations"],
                        r["peak_activations"], "micro-batches of one stage", digits=0))
    return Table(title, "F units / s", "V3 report Table 2 (paper = its formula)", tuple(rows), digits=2,
                 notes=("F&B = F + B (no overlap gain); Insights' 1B is taken as the full backward; simulator: "
                        "dsv3_jax/parallel/pipeline/simulate.py",))


def memory_table(models: dict[str, PaperModel]) -> Table:
    """Estimated V3 training memory per device on the paper's 2048-GPU layout (no published figure)."""
    mesh = dict(data=2, expert=64, pipe=16)  # 16-way PP, 64-way EP, ZeRO-1 DP (V3 report §3.2)
    opts = memory.TrainMemoryOptions(param_bytes=2, master_bytes=4, grad_bytes=4, moment_bytes=2,
                                     pipeline_param_copies=2, inflight_microbatches=17, remat="full")
    est = memory.training_memory_per_device(models["v3"].cfg, mesh, 2048, opts, counts=models["v3"].counts())
    rows = tuple(Row(k, None, v) for k, v in est.gib().items())
    return Table("DeepSeek-V3 training memory per device (estimate)", "GiB", "no paper figure", rows, notes=(
        "2048 devices: pipe 16 (DualPipe: 2 stages/rank, 17 micro-batches in flight), expert 64, data 2; "
        "ZeRO-1; bf16 params, fp32 master + grads, bf16 moments; full remat; 1 x 4096 tokens per micro-batch",))


def build_tables(seq_len: int = 4096) -> list[Table]:
    """All report tables, in order."""
    models = paper_models()
    return [kv_table(models), flops_table(models, seq_len), params_table(models), tpot_table(),
            dualpipe_table(), memory_table(models)]


def config_table(cd, n_devices: int | None = None, label: str = "config") -> Table:
    """Cost-model numbers of one experiment ConfigDict (configs/*.py): no paper values."""
    from dsv3_jax.analysis.params import param_counts
    from dsv3_jax.experiment_config import model_config

    cfg, seq = model_config(cd), int(cd.train.seq_len)
    counts = param_counts(cfg)
    mesh = {k: int(v) for k, v in cd.mesh.items()}
    n_devices = n_devices or abs(math.prod(mesh.values()))  # data=-1 -> 1 replica
    sizes = memory.resolve_mesh(mesh, n_devices)
    replicas = sizes["data"] * sizes["fsdp"] * sizes["expert"]
    opts = memory.TrainMemoryOptions(seq_len=seq, microbatch_seqs=max(1, int(cd.train.batch_size) // replicas),
                                     moment_bytes=2 if cd.train.get("bf16_moments") else 4)
    est = memory.training_memory_per_device(cfg, sizes, n_devices, opts, counts=counts)
    rows = (Row("total params (no MTP)", None, counts.total / 1e6, "M"),
            Row("activated params per token", None, counts.activated / 1e6, "M"),
            Row("MTP params (unique)", None, counts.mtp / 1e6, "M"),
            Row("KV cache per token (bf16)", None, kv_cache.kv_bytes_per_token(cfg) / KB, "KB"),
            Row(f"training GFLOPs per token, seq {seq}", None, flops.training_gflops_per_token(cfg, seq, counts=counts),
                "GFLOPs"),
            Row(f"training memory per device, {n_devices} devices", None, est.gib()["total"], "GiB"))
    return Table(f"{label}", "mixed", "this config (no paper figure)", rows, digits=2,
                 notes=(f"mesh {sizes}; whole batch as one micro-batch per replica; params from {counts.source}",))
