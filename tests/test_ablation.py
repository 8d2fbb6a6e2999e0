"""benchmarks/ablation.py end to end on a tiny budget: five models plus two equal-compute
variants trained two at a time, curves, both equal-budget comparisons, γ bands, codecs,
and --reuse skipping finished runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import load_benchmark

from pcdm.classical import available_codecs

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("vdm", "c-vdm", "lp-pcdm", "w-pcdm", "lift-pcdm")
RUNS = (*MODELS, "w-pcdm@24", "lift-pcdm@24")  # + equal-compute variants, widened to 24


@pytest.fixture(scope="module")
def ablation():
    return load_benchmark("ablation")


def test_time_at_interpolates_and_extrapolates(ablation):
    steps, times = np.array([10.0, 20.0, 30.0]), np.array([1.0, 2.0, 4.0])
    assert ablation.time_at(20, steps, times) == 2.0
    assert ablation.time_at(25, steps, times) == pytest.approx(3.0)
    assert ablation.time_at(5, steps, times) == pytest.approx(0.5)
    assert ablation.time_at(35, steps, times) == pytest.approx(5.0)  # last rate: 0.2 s/step


def test_minutes_for_parsing(ablation):
    args = ablation.parse_args(["--minutes-for", "fashion-mnist=4", "--minutes-for", "skimage32=2.5"])
    assert args.minutes_for == {"fashion-mnist": 4.0, "skimage32": 2.5}
    with pytest.raises(SystemExit):
        ablation.parse_args(["--minutes-for", "nonsense"])
    with pytest.raises(SystemExit):
        ablation.parse_args(["--models", "vdm,gan"])
    args = ablation.parse_args(
        ["--equal-flops-width", "64", "--variant", "plain=w-pcdm:--no-lattice-features"]
    )
    assert args.runs["w-pcdm@64"] == ("w-pcdm", ["--width", "64"])
    assert args.runs["lift-pcdm@64"] == ("lift-pcdm", ["--width", "64"])
    assert "vdm@64" not in args.runs and "lp-pcdm@64" not in args.runs  # their steps are not cheaper
    assert args.runs["plain"] == ("w-pcdm", ["--no-lattice-features"])
    with pytest.raises(SystemExit):
        ablation.parse_args(["--variant", "x=gan:--width 3"])


@pytest.mark.slow
def test_ablation_end_to_end(ablation, tmp_path, capsys):
    results, work = tmp_path / "results", tmp_path / "work"
    common = ["--datasets", "digits", "--preset", "tiny", "--curve-limit", "50", "--ckpt-every", "5"]
    common += ["--equal-flops-width", "24", "--jobs", "2"]
    common += ["--out-dir", str(work), "--results-dir", str(results)]
    assert ablation.main([*common, "--minutes", "0.05"]) == 0

    md = (results / "ablation.md").read_text()
    report = json.loads((results / "ablation.json").read_text())
    png = results / "ablation_digits.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    (ds,) = report["datasets"]
    assert ds["data"] == "digits" and ds["n_test"] == 297 and ds["n_curve"] == 50
    assert set(ds["models"]) == set(RUNS)
    assert ds["models"]["w-pcdm@24"]["params"] > ds["models"]["w-pcdm"]["params"]  # widened
    assert ds["models"]["lift-pcdm@24"]["flags"] == ["--width", "24"]
    assert "| model | level | gamma<-10 |" in md  # the γ-band table
    for name, r in ds["models"].items():
        assert r["seconds_per_step"] > 0
        et, ei = r["equal_time"], r["equal_images"]
        assert math.isfinite(et["bpd"]) and et["bpd"] > 0 and math.isfinite(et["bpd_se"]), name
        assert et["n_images"] == 297
        assert ei is not None and math.isfinite(ei["bpd"]) and ei["step"] <= ds["common_step"], name
        assert ei["images_seen"] == ei["step"] * r["batch"]
        assert r["final_step"] >= ds["common_step"] and r["params"] > 0
        assert len(r["curve"]) >= 1 and all(math.isfinite(c["bpd"]) for c in r["curve"])
        assert r["curve"][-1]["step"] == r["final_step"]
        times = [c["minutes"] for c in r["curve"]]
        assert times == sorted(times) and 0 < times[-1] < 1
        assert f"| {name} |" in md
    # The slowest model is compared at its final step in both tables.
    slowest = min(ds["models"].values(), key=lambda r: r["final_step"])
    assert slowest["equal_images"]["bpd"] == slowest["equal_time"]["bpd"]

    expected = [c for c in ("png", "webp", "jpegxl") if c in available_codecs()]
    assert expected, "no classical codec available"
    for c in expected:
        assert math.isfinite(ds["codecs"][c]["bpd"])
        assert f"| {c} (lossless) |" in md
    assert "| best classical codec per image |" in md
    assert ds["codecs"]["best"]["bpd"] <= min(ds["codecs"][c]["bpd"] for c in expected) + 1e-9

    assert set(ds["ordering"]["equal_time"]["observed"]) == set(RUNS)
    assert "w-pcdm < lp-pcdm < vdm < c-vdm" in md and "Observed at equal wall-clock" in md
    for needle in ("Command: `python benchmarks/ablation.py", "Seeds:", "Machine:", "torch", "Date:"):
        assert needle in md
    assert report["meta"]["cpu_count"] >= 1

    # --reuse: the finished runs are not trained again (same settings), --fast evaluates the
    # equal-images point on the curve subset.
    capsys.readouterr()
    assert ablation.main([*common, "--minutes", "0.05", "--reuse", "--fast"]) == 0
    out = capsys.readouterr().out
    assert out.count("reusing") == len(RUNS) and "pcdm train" not in out
    again = json.loads((results / "ablation.json").read_text())["datasets"][0]
    assert again["equal_images_on"] == "curve subset"
    for name, r in again["models"].items():
        assert r["final_step"] == ds["models"][name]["final_step"]
        assert r["equal_images"]["n_images"] == 50
    assert "curve subset (50 images)" in (results / "ablation.md").read_text()

    # --keep-from: a dataset of an earlier report that is not run now is carried over, with
    # the command and date of the run that produced it.
    old = dict(report, datasets=[dict(ds, data="other-set")])
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert (
        ablation.main([*common, "--minutes", "0.05", "--reuse", "--keep-from", str(tmp_path / "old.json")])
        == 0
    )
    merged = json.loads((results / "ablation.json").read_text())
    assert [d["data"] for d in merged["datasets"]] == ["digits", "other-set"]
    assert merged["datasets"][1]["from_run"]["command"] == report["meta"]["command"]
    assert merged["datasets"][1]["models"] == json.loads(json.dumps(ds["models"]))
    md = (results / "ablation.md").read_text()
    assert md.count("*Carried over from an earlier run*") == 1 and "## other-set" in md


@pytest.mark.slow
def test_budget_by_steps(ablation, tmp_path):
    """--budget steps: each run's speed is measured alone first and it trains for the steps
    the budget buys at that speed; the time axis is steps × measured seconds per step."""
    results = tmp_path / "results"
    args = ["--datasets", "digits", "--preset", "tiny", "--models", "vdm,w-pcdm", "--budget", "steps"]
    args += ["--speed-steps", "10", "--minutes", "0.02", "--jobs", "2", "--curve-limit", "20"]
    args += ["--out-dir", str(tmp_path / "work"), "--results-dir", str(results), "--ckpt-every", "5"]
    assert ablation.main(args) == 0
    (ds,) = json.loads((results / "ablation.json").read_text())["datasets"]
    assert ds["budget"] == "steps"
    for name, r in ds["models"].items():
        speed = r["seconds_per_step_alone"]
        assert speed > 0, name
        assert r["final_step"] == max(1, round(0.02 * 60 / speed)), name
        assert r["minutes"] == pytest.approx(r["final_step"] * speed / 60, abs=1e-4)  # rounded to 4 places
    assert "Budget by steps" in (results / "ablation.md").read_text()


@pytest.mark.slow
def test_train_speed_script(capsys):
    """benchmarks/train_speed.py times real `pcdm train` steps and reports the ratio to vdm."""
    mod = load_benchmark("train_speed")
    args = ["--data", "digits", "--preset", "tiny", "--models", "vdm,w-pcdm", "--steps", "5", "--json"]
    assert mod.main([*args, "--variant", "w-lat=w-pcdm:--lattice-posterior"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["seconds_per_step"]) == {"vdm", "w-pcdm", "w-lat"}
    assert all(v > 0 for v in out["seconds_per_step"].values())
    sps = out["seconds_per_step"]
    assert out["speedup_vs_vdm"]["w-pcdm"] == pytest.approx(sps["vdm"] / sps["w-pcdm"], rel=1e-2)


@pytest.mark.slow
def test_longer_pair_evaluates_the_checkpoint_each_minute_bought(tmp_path):
    """benchmarks/longer_pair.py: M minutes at s seconds per step → the last checkpoint at or
    below 60 M / s, evaluated; a run that was not trained that far is a clear error."""
    import json
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    run = tmp_path / "r"
    train = [sys.executable, "-m", "pcdm.cli", "train", "--model", "w-pcdm", "--data", "digits",
             "--out", str(run), "--preset", "tiny", "--steps", "6", "--ckpt-every", "2", "--keep", "10",
             "--sample-steps", "0"]  # fmt: skip
    assert subprocess.run(train, capture_output=True, text=True, cwd=root).returncode == 0
    out = tmp_path / "pair.md"
    script = [sys.executable, str(root / "benchmarks" / "longer_pair.py"), "--run", f"a={run}",
              "--s-per-step", "a=30", "--minutes", "1.5", "2.5", "--data", "digits", "--limit", "20",
              "--out", str(out)]  # fmt: skip
    res = subprocess.run(script, capture_output=True, text=True, cwd=root)
    assert res.returncode == 0, res.stderr
    rows = json.loads(out.with_suffix(".json").read_text())
    assert [r["a"]["step"] for r in rows] == [2, 4]  # 3 and 5 steps bought: checkpoints 2 and 4
    assert all(r["a"]["bpd"] > 0 and r["a"]["se"] > 0 for r in rows)
    script[script.index("2.5")] = "3"  # exactly the 6 steps trained
    res = subprocess.run(script, capture_output=True, text=True, cwd=root)
    assert res.returncode == 0, res.stderr
    assert [r["a"]["step"] for r in json.loads(out.with_suffix(".json").read_text())] == [2, 6]
    script[script.index("3")] = "60"  # 120 steps: more than the run has
    res = subprocess.run(script, capture_output=True, text=True, cwd=root)
    assert res.returncode != 0 and "trained to step 6" in res.stderr
