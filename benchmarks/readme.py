"""Regenerate the README's result tables from the files under ``benchmarks/results/``.

    python benchmarks/readme.py          # rewrite the tables in README.md
    python benchmarks/readme.py --check  # exit 1 if README.md's tables are not the regenerated ones

A table lives between ``<!-- results:NAME -->`` and ``<!-- /results -->``; NAME is a results
file (``standings_fashion-mnist.json``) or an experiment folder (``sample_quality_fashion-mnist``)
under ``benchmarks/results/``, optionally followed by ``:run,run,…`` to show only those runs.
No number in the README is typed by hand.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402

README = report.ROOT / "README.md"
BLOCK = re.compile(r"(<!-- results:(?P<name>[\w.:,-]+) -->\n)(?P<body>.*?)(<!-- /results -->)", re.S)


def standings(res: dict, source: str) -> list[str]:
    """A standings table: the runner's ``runs.json``, or the JSON of the standings script before it."""
    fmt, rows = report.fmt, []
    if "experiment" in res:  # the runner's format
        ref = next(name for name, r in res["runs"].items() if "vs_reference" not in r)
        for name, r in res["runs"].items():
            vs = r.get("vs_reference")
            rows.append([name, r["step"], fmt(r["bound"]["bpd"], r["bound"]["bpd_se"]), _vs(vs)])
        n = res["n_images"]
    else:
        ref = res["reference"] if isinstance(res["reference"], str) else res["reference"]["name"]
        for name, r in res["runs"].items():
            vs = r if "ratio" in r else None
            rows.append([name, r["step"], fmt(r["bpd"], r["bpd_se"]), _vs(vs)])
        n = res["images"]
    lines = report.table(["run", "steps", "test bpd", f"÷ {ref} (paired)"], rows, "lrrr")
    return lines + ["", f"{n} test images of {res['data']}; from `{source}`."]


def _vs(vs: dict | None) -> str:
    return "reference" if vs is None else report.fmt(vs["ratio"], vs["ratio_se"])


def sample_quality(res: dict, source: str) -> list[str]:
    fmt, rows, metric = report.fmt, [], None
    for name, r in res["runs"].items():
        fid = r.get("fid", {})
        heun = {k: v for k, v in fid.items() if k.startswith("heun:")}
        best = max(heun, key=lambda k: int(k.split(":")[1])) if heun else None
        s = heun.get(best)
        metric = metric or (s and s["metric"])
        t = r.get("sampling", {})
        rows.append([
            name, r["step"], fmt(r["bound"]["bpd"], r["bound"]["bpd_se"]),
            f"{s['fid']:.1f} ({best})" if s else "—",
            fmt(s["kid"], s["kid_std"], digits=4) if s else "—",
            " / ".join(f"{v['seconds_per_image']:.3f}" for v in t.values()) or "—",
        ])  # fmt: skip
    samplers = " / ".join(next((r["sampling"] for r in res["runs"].values() if "sampling" in r), {}))
    n = next((s["n"] for r in res["runs"].values() for s in r.get("fid", {}).values()), None)
    header = ["run", "steps", "test bpd", f"{metric}, N = {n}", "KID", f"s / image ({samplers})"]
    return report.table(header, rows, "lrrrrr") + ["", f"From `{source}`."]


def ode_likelihood(res: dict, source: str) -> list[str]:
    fmt, rows = report.fmt, []
    for name, r in res["runs"].items():
        if (o := r.get("ode")) is None:
            continue
        rows.append([
            name, o["n_images"], fmt(o["bpd"], o["bpd_se"]), fmt(o["elbo_bpd"], o["elbo_bpd_se"]),
            fmt(o["ode_minus_elbo"], o["ode_minus_elbo_se"]), f"{o['nfe']:.0f}", f"{o['seconds']:.2f}",
        ])  # fmt: skip
    header = ["run", "images", "ODE bound (bpd)", "ELBO (bpd)", "ODE − ELBO (paired)", "NFE", "s / image"]
    return report.table(header, rows, "lrrrrrr") + ["", f"From `{source}`."]


def ood_selection(res: dict, source: str) -> list[str]:
    """The default OOD score on the sets that played no part in choosing it, beside the paper's
    typicality and the model-free typ:L."""
    sets, default = res["unseen_sets"], res["default_score"]
    rows = []
    for score, label in (
        (default, f"`{default}` (default)"),
        ("typ:nll", "`typ:nll` (the paper)"),
        ("typ:L", "`typ:L`"),
    ):
        aurocs = res["unseen"][score]
        rows.append([label, *(report.fmt(*aurocs[name]) for name in sets)])
    return report.table(["score", *sets], rows) + ["", f"AUROC ± bootstrap s.e.; from `{source}`."]


def levels(res: dict, source: str) -> list[str]:
    """Equal total time at an equal number of processes: each layout's bound and ratio to the
    reference, and the same at equal steps."""
    fmt, rows = report.fmt, []
    ref = next(name for name, r in res["runs"].items() if "vs_reference" not in r)
    for name, r in res["runs"].items():
        eq = r.get("equal_steps", {})
        rows.append([
            f"{name} ({r['layout']})", " / ".join(map(str, r.get("level_steps") or [r["step"]])),
            fmt(r["bound"]["bpd"], r["bound"]["bpd_se"]), _vs(r.get("vs_reference")),
            _vs(eq.get("vs_reference")) if eq else "—",
        ])  # fmt: skip
    step = next((r["equal_steps"]["step"] for r in res["runs"].values() if "equal_steps" in r), None)
    header = ["run (processes)", "steps (per level)", "test bpd", f"÷ {ref}", f"÷ {ref} at {step} steps"]
    return report.table(header, rows, "lrrrr") + ["", f"{res['n_images']} test images; from `{source}`."]


RENDER = {
    "levels": levels,
    "standings": standings,
    "sample_quality": sample_quality,
    "ode_likelihood": ode_likelihood,
    "ood_selection": ood_selection,
}


def render(name: str) -> list[str]:
    name, _, only = name.partition(":")
    path = report.RESULTS / name
    source = f"benchmarks/results/{name}"
    if path.is_dir():
        path, source = path / "runs.json", f"{source}/report.md"
    res = json.loads(path.read_text())
    if only:
        res["runs"] = {k: res["runs"][k] for k in only.split(",")}
    kind = next(k for k in RENDER if name.startswith(k))
    return RENDER[kind](res, source)


def regenerate(text: str) -> str:
    def sub(m: re.Match) -> str:
        return m.group(1) + "\n".join(render(m.group("name"))) + "\n" + m.group(4)

    return BLOCK.sub(sub, text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="only check that README.md is up to date")
    args = p.parse_args(argv)
    text = README.read_text()
    new = regenerate(text)
    if args.check:
        if new != text:
            print(
                "README.md's result tables differ from benchmarks/results/: run python benchmarks/readme.py"
            )
            return 1
        return 0
    README.write_text(new)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
