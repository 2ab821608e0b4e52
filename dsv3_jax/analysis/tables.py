"""Table / Row: the report's data model, and its text, markdown and JSON renderings."""

from __future__ import annotations

import dataclasses
import json


@dataclasses.dataclass(frozen=True)
class Row:
    name: str
    paper: float | None  # None: no published figure (informational row)
    ours: float
    note: str = ""
    digits: int | None = None  # overrides the table's decimals for this row

    @property
    def ratio(self) -> float | None:
        return self.ours / self.paper if self.paper else None


@dataclasses.dataclass(frozen=True)
class Table:
    title: str
    unit: str
    source: str  # where the paper's values come from
    rows: tuple[Row, ...]
    digits: int = 2  # decimals when printing values
    notes: tuple[str, ...] = ()


def _fmt(x: float | None, digits: int) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def _cells(table: Table) -> list[list[str]]:
    out = []
    for r in table.rows:
        d = table.digits if r.digits is None else r.digits
        out.append([r.name, _fmt(r.paper, d), _fmt(r.ours, d), _fmt(r.ratio, 3), r.note])
    return out


def to_text(tables: list[Table]) -> str:
    """Aligned plain-text tables."""
    out = []
    for t in tables:
        head = ["", f"paper ({t.unit})", f"ours ({t.unit})", "ratio", "note"]
        rows = [head] + _cells(t)
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        out.append(f"{t.title}  [{t.source}]")
        for i, r in enumerate(rows):
            cells = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:4], widths[1:4])] + [r[4]]
            out.append("  " + "  ".join(cells).rstrip())
            if i == 0:
                out.append("  " + "  ".join("-" * w for w in widths[:4]))
        out += [f"  * {n}" for n in t.notes] + [""]
    return "\n".join(out)


def to_markdown(tables: list[Table]) -> str:
    """GitHub-flavoured markdown tables."""
    out = []
    for t in tables:
        out += [f"### {t.title}", "", f"Source: {t.source}. Unit: {t.unit}.", "",
                "| | paper | ours | ours/paper | note |", "|---|---:|---:|---:|---|"]
        out += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in _cells(t)]
        out += [""] + [f"- {n}" for n in t.notes] + ([""] if t.notes else [])
    return "\n".join(out)


def to_json(tables: list[Table]) -> str:
    """{"tables": [{title, unit, source, notes, rows: [{name, paper, ours, ratio, note}]}]}."""
    doc = {"tables": [{"title": t.title, "unit": t.unit, "source": t.source, "notes": list(t.notes),
                       "rows": [{"name": r.name, "paper": r.paper, "ours": r.ours, "ratio": r.ratio,
                                 "note": r.note} for r in t.rows]} for t in tables]}
    return json.dumps(doc, indent=2)
