"""Reporting helpers every benchmark shares: where and when it ran, Markdown tables, and the
``benchmarks/results/<experiment>/{report.md, runs.json}`` pair a result is kept as.

The statistics themselves (mean ± s.e., paired differences and ratios) are ``pcdm.stats``."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def machine() -> dict:
    """The facts a reader needs to judge a timing: host, cores this process may use, versions."""
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cores_allowed": cores,
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def command_line(argv: list[str] | None = None) -> str:
    """The command that reproduces a report, relative to the repository root."""
    argv = sys.argv if argv is None else argv
    script = Path(argv[0])
    try:
        script = script.resolve().relative_to(ROOT)
    except ValueError:
        pass
    return shlex.join(["python", str(script), *argv[1:]])


def fmt(value, se=None, digits: int = 3) -> str:
    """A number for a table: '—' when missing, '3.142 ± 0.023' with a standard error."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if isinstance(value, int):
        return str(value)
    if se is None or not math.isfinite(se):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} ± {se:.{digits}f}"


def table(header: list[str], rows: list[list], align: str | None = None) -> list[str]:
    """A Markdown table; ``align`` has one letter per column (l or r; default: first l)."""
    align = align or "l" + "r" * (len(header) - 1)
    rule = ["---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def write(folder: Path, runs: dict, markdown: list[str]) -> Path:
    """Write ``report.md`` and ``runs.json`` into ``folder``; returns the report's path."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "runs.json").write_text(json.dumps(runs, indent=2, sort_keys=False, default=_jsonable) + "\n")
    (folder / "report.md").write_text("\n".join(markdown).rstrip() + "\n")
    return folder / "report.md"


def _jsonable(obj):
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")
