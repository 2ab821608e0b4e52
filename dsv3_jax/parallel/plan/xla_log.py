"""What XLA's SPMD partitioner says while it compiles: captured from the process's stderr, parsed.

The partitioner writes (C++ logging, straight to file descriptor 2, so Python's sys.stderr never sees it)

    [SPMD] Involuntary full rematerialization. The compiler cannot go from sharding {devices=[64,1,1]<=[64]}
    to {devices=[1,1,8,8]<=[64] last_tile_dim_replicate} efficiently for HLO operation %gather =
    f32[1,1024,7168]{2,1,0} gather(...), ..., metadata={op_name="jit(train_step)/.../embed/..."}. As the last
    resort, SPMD will replicate the tensor and then partition it ...

whenever it must replicate a tensor to change its sharding (docs/paper.md §8): the whole array appears on every
device. `capture_stderr` redirects fd 2 into a file around a compile; `rematerializations` turns the text into
records {op, shape, from, to, path}.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile

MARKER = "Involuntary full rematerialization"
_REMAT = re.compile(r"cannot go from sharding (\{.*?\}) to (\{.*?\}) efficiently for HLO operation "
                    r"%?([\w.\-]+) = (\S+)")
_PATH = re.compile(r'op_name="([^"]*)"')


@contextlib.contextmanager
def capture_stderr():
    """Collect everything written to file descriptor 2 (C++ and Python) inside the block; yields a list that
    holds the captured text as its one element when the block ends. The text is also echoed unless
    DSV3_PLAN_QUIET is set."""
    out: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield out
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode("utf-8", "replace")
            out.append(text)
            if text and not os.environ.get("DSV3_PLAN_QUIET"):
                keep = [ln for ln in text.splitlines() if MARKER not in ln]
                if keep:
                    sys.stderr.write("\n".join(keep) + "\n")


def rematerializations(log: str) -> list[dict]:
    """Every involuntary full rematerialization in an XLA log: {op, shape, from, to, path} (path: the JAX
    op_name of the op's metadata, '' when the partitioner printed none)."""
    out = []
    for line in log.splitlines():
        if MARKER not in line:
            continue
        m = _REMAT.search(line)
        if not m:
            out.append({"op": "", "shape": "", "from": "", "to": "", "path": "", "raw": line[:300]})
            continue
        path = _PATH.search(line)
        out.append({"op": m.group(3), "shape": m.group(4).split("{")[0], "from": m.group(1), "to": m.group(2),
                    "path": path.group(1) if path else ""})
    return out
