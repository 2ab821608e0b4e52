"""benchmarks/load_memory.py runs end to end on a small checkpoint (the README's figures come from its 2.2 GB
run): every process reads exactly the bytes of its own shards, one process reads the whole checkpoint once,
each of two processes less than that."""

import json

from benchmarks import load_memory


def test_load_memory_benchmark_small(tmp_path):
    out = tmp_path / "result.json"
    assert load_memory.main(["--gb=0.02", f"--dir={tmp_path}", "--modes=one,two", f"--out={out}"]) == 0
    result = json.loads(out.read_text())
    ckpt, rows = result["checkpoint"], result["rows"]
    assert ckpt["shards"] >= 1 and ckpt["bytes"] >= 0.02e9
    assert [(r["mode"], r["devices"]) for r in rows] == [("one", 1), ("two", 4), ("two", 4)]
    for r in rows:
        assert r["bytes_read"] == r["share"] and r["peak_rss"] >= r["baseline_rss"] > 0, r
    assert rows[0]["bytes_read"] == ckpt["bytes"]
    assert all(r["bytes_read"] < ckpt["bytes"] for r in rows[1:])
    assert not (tmp_path / "checkpoint").exists()  # removed unless --keep
