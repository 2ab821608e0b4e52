"""One program's plan: XLA's per-device numbers next to the analytic estimate, time bounds, collectives and the
verdict against a device memory; as a JSON-ready dict and as a readable table.

Time bounds (per step, per device): compute = dot FLOPs / peak (bf16, or FP8 with an FP8 recipe), also at the
paper's measured MFU (docs/paper.md §4: 38.94% causal); communication = collective wire bytes over
InfiniBand (every byte leaves the node: a bound from above) and over NVLink (every byte stays in the node: a
bound from below). The EP exchange is compared with the paper's rule for one token's dispatch and combine
(Insights §2.3.2, docs/paper.md §5): (1 B FP8 dispatch + 2 B BF16 combine) · hidden · k per MoE layer.
"""

from __future__ import annotations

from dsv3_jax.parallel.plan import hardware, hlo

GIB = 2**30


def paper_ep_bytes_per_token(cfg) -> float:
    """Forward EP bytes one token moves per MoE layer by the paper's rule: (1 + 2) · D · k."""
    return 3.0 * cfg.dim * cfg.n_activated_experts


def time_bounds(flops: float, totals: dict, acc: hardware.Accelerator, fp8: bool) -> dict[str, float]:
    wire = sum(t["wire_bytes"] for t in totals.values())
    peak = acc.peak_flops(fp8)
    return {"compute_s_at_peak": flops / peak, "compute_s_at_paper_mfu": flops / (peak * hardware.PAPER_MFU),
            "comm_s_infiniband": wire / (acc.ib_gb_s * hardware.GB), "comm_s_nvlink": wire / (acc.nvlink_gb_s * hardware.GB),
            "peak_tflops": peak / 1e12}


def plan_entry(name: str, memory: dict, flops: float, totals: dict, collectives: list[dict], remats: list[dict],
               analytic: dict, device_memory: float, acc: hardware.Accelerator, fp8: bool, cfg,
               tokens_per_device: float, moe_layers: int, notes: list[str], extra: dict | None = None) -> dict:
    """The JSON record of one planned program (keys documented in dsv3_jax/cli/plan.py)."""
    a2a = sum(t["bytes"] for k, t in totals.items() if k in ("all-to-all", "ragged-all-to-all"))
    per_token_layer = a2a / max(tokens_per_device * max(moe_layers, 1), 1.0)
    out = {
        "name": name,
        "per_device_bytes": {k: memory[k] for k in ("argument", "output", "temp", "alias", "total")},
        "analytic_bytes_per_device": analytic,
        "xla_over_analytic": memory["total"] / analytic["total"] if analytic.get("total") else None,
        "flops_per_device": flops,
        "time_bounds": time_bounds(flops, totals, acc, fp8),
        "collectives": collectives,
        "collective_totals": totals,
        "collective_bytes_per_step": sum(t["bytes"] for t in totals.values()),
        "ep_all_to_all_bytes_per_token_per_moe_layer": per_token_layer,
        "paper_ep_bytes_per_token_per_moe_layer_forward": paper_ep_bytes_per_token(cfg),
        "involuntary_rematerializations": remats,
        "device_memory_bytes": device_memory,
        "fits": memory["total"] <= device_memory,
        "accelerator": acc.name,
        "notes": notes,
    }
    out.update(extra or {})
    return out


def _g(x: float) -> str:
    return f"{x / GIB:9.2f}"


def table(entry: dict) -> str:
    """A readable block for one planned program."""
    m, a = entry["per_device_bytes"], entry["analytic_bytes_per_device"]
    lines = [f"== {entry['name']}", *[f"   {n}" for n in entry["notes"]],
             "   per device (GiB)    argument   output    alias     temp    total   | analytic",
             f"   XLA memory analysis {_g(m['argument'])}{_g(m['output'])}{_g(m['alias'])}{_g(m['temp'])}"
             f"{_g(m['total'])}   | {a.get('total', 0) / GIB:8.2f}"
             + (f"  (XLA/analytic {entry['xla_over_analytic']:.2f})" if entry["xla_over_analytic"] else ""),
             "   analytic parts:     " + ", ".join(f"{k} {v / GIB:.2f}" for k, v in a.items() if k != "total")]
    tb = entry["time_bounds"]
    lines.append(f"   FLOPs/device {entry['flops_per_device']:.3e}: {tb['compute_s_at_peak']:.3f} s at "
                 f"{tb['peak_tflops']:.0f} TFLOP/s ({entry['accelerator']}), {tb['compute_s_at_paper_mfu']:.3f} s "
                 f"at the paper's MFU; comm {tb['comm_s_nvlink']:.3f} s (NVLink) .. {tb['comm_s_infiniband']:.3f} s (IB)")
    lines.append("   collective            ops  executions   GiB/step  wire GiB/step")
    for kind, t in sorted(entry["collective_totals"].items()):
        lines.append(f"   {kind:20s}{t['ops']:5.0f}{t['count']:12.0f}{t['bytes'] / GIB:11.3f}{t['wire_bytes'] / GIB:15.3f}")
    lines.append(f"   EP all-to-all per token per MoE layer: {entry['ep_all_to_all_bytes_per_token_per_moe_layer'] / 1e3:.1f} KB"
                 f" (measured{', forward + backward' if entry.get('training') else ''}) | paper rule, forward: "
                 f"{entry['paper_ep_bytes_per_token_per_moe_layer_forward'] / 1e3:.1f} KB")
    buf = entry.get("largest_buffers")
    if buf and buf.get("peak") is not None:
        lines.append("   live at XLA's peak (largest): " + ", ".join(
            f"{b['shape'] or b['value']} {b['bytes'] / GIB:.2f}" for b in buf["peak"][:6]))
        lines.append(f"   of the total, XLA:CPU float32 copies of bf16 arrays at the peak: "
                     f"{buf['cpu_upcast_bytes_at_peak'] / GIB:.2f} GiB (a GPU multiplies and scatters bf16 natively)")
    remats = entry["involuntary_rematerializations"]
    lines.append(f"   involuntary rematerializations: {len(remats)}")
    lines += [f"     {r['op']} {r['shape']} {r['from']} -> {r['to']} at {r['path'] or '?'}" for r in remats[:20]]
    verdict = "FITS" if entry["fits"] else "DOES NOT FIT"
    lines.append(f"   verdict: {verdict} in {entry['device_memory_bytes'] / 1e9:.0f} GB "
                 f"({m['total'] / 1e9:.1f} GB needed per device)")
    return "\n".join(lines)


def collective_list(collectives: list[hlo.Collective]) -> list[dict]:
    from dsv3_jax.parallel.plan.measure import collective_dict
    return [collective_dict(c) for c in collectives]
