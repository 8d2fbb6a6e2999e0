"""benchmarks/standings.py: paired differences and ratios against a reference run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import load_benchmark

from pcdm.checkpoint import save_tensors, write_json
from pcdm.data import load
from pcdm.evaluate import per_image_bpd
from pcdm.model import PCDM, ModelConfig

SMALL = dict(image_shape=(1, 8, 8), K=17, width=8, depth=1, attention=False)  # digits


@pytest.fixture(scope="module")
def standings():
    return load_benchmark("standings")


def _run(path: Path, model: str, seed: int) -> tuple[Path, PCDM]:
    """A run folder as training writes it, with perturbed (non-trivial) network weights."""
    torch.manual_seed(seed)
    m = PCDM(ModelConfig(model=model, **SMALL))
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.startswith("nets."):
                p.add_(0.1 * torch.randn_like(p))
    path.mkdir(parents=True)
    cfg = {"model": m.config.to_dict(), "data": {"spec": "digits", "K": 17, "shape": [1, 8, 8]}}
    write_json(path / "config.json", cfg)
    save_tensors(path / "ema.safetensors", m.state_dict())
    return path, m.eval()


def test_paired_ratio_and_difference(standings):
    rng = np.random.default_rng(0)
    b = rng.uniform(2, 4, 400)
    exact = standings.paired(2 * b, b)
    assert exact["ratio"] == pytest.approx(2.0) and exact["ratio_se"] == pytest.approx(0.0, abs=1e-12)
    assert exact["difference"] == pytest.approx(b.mean())
    assert exact["difference_se"] == pytest.approx(b.std(ddof=1) / np.sqrt(len(b)))
    # The delta-method standard error of the ratio agrees with a bootstrap over images.
    a = 0.9 * b + rng.normal(0, 0.2, len(b))
    got = standings.paired(a, b)
    idx = rng.integers(0, len(b), (4000, len(b)))
    boot = a[idx].mean(1) / b[idx].mean(1)
    assert got["ratio"] == pytest.approx(a.mean() / b.mean())
    assert got["ratio_se"] == pytest.approx(boot.std(), rel=0.1)


def test_runs_on_the_same_images_and_draws(standings, tmp_path, capsys):
    ref, ref_model = _run(tmp_path / "vdm", "vdm", 0)
    other, other_model = _run(tmp_path / "w", "w-pcdm", 1)
    results = tmp_path / "out" / "standings.md"
    argv = ["--reference", f"vdm={ref}", "--run", f"w={other}", "--run", f"same={ref}"]
    assert standings.main([*argv, "--limit", "20", "--results", str(results)]) == 0
    report = json.loads(results.with_suffix(".json").read_text())
    images = load("digits", "test", limit=20).images
    want = {
        n: per_image_bpd(m, images, progress=False)["bpd"]
        for n, m in [("vdm", ref_model), ("w", other_model)]
    }
    rows = report["runs"]
    assert report["images"] == 20 and report["reference"] == "vdm"
    assert rows["vdm"]["bpd"] == pytest.approx(want["vdm"].mean(), rel=1e-6)
    assert rows["w"]["difference"] == pytest.approx((want["w"] - want["vdm"]).mean(), rel=1e-5)
    # The reference evaluated again is the same draws on the same images: no difference at all.
    assert rows["same"]["difference"] == 0 and rows["same"]["difference_se"] == 0
    assert "| w |" in results.read_text() and "| same |" in capsys.readouterr().out


def test_bad_run_argument(standings):
    with pytest.raises(SystemExit):
        standings.main(["--reference", "just-a-path"])
