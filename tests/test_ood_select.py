"""The OOD score selection protocol (docs/math.md §8, "Choosing the default score"): the choice
never sees the unseen sets, fitted candidates are rated on sets they were not fitted on, the
bootstrap standard error matches the known spread of the AUROC, the new OOD sets are
well-formed, and ``pcdm ood``'s default is the protocol's recorded choice."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from pcdm import ood
from pcdm.ood import select as sel

ROOT = Path(__file__).resolve().parents[1]


def feats(n: int, seed: int, level1=1.0, level2=2.0, L=4.0, spread=0.2) -> dict:
    rng = np.random.default_rng(seed)
    l1, l2 = rng.normal(level1, spread, n), rng.normal(level2, spread, n)
    recon = rng.normal(0.1, 0.01, n)
    return {"nll": l1 + l2 + recon, "level1": l1, "level2": l2, "recon": recon, "L": rng.normal(L, 0.3, n)}


def validation_sets() -> dict:
    return {
        "coarse-high": feats(80, 10, level1=1.6),
        "fine-low": feats(80, 11, level2=1.4),
        "simple": feats(80, 12, L=3.0, level1=0.7),
    }


def test_selection_never_looks_at_unseen_sets():
    ref, neg, val = feats(120, 1), feats(100, 2), validation_sets()
    first = sel.select(ref, neg, val, seed=0)
    # The choice is a function of (reference, negatives, validation) only: its signature has
    # no place for unseen data, and reporting on two quite different unseen sets afterwards
    # leaves the choice and every validation number as they were.
    again = sel.select(ref, neg, val, seed=0)
    assert again.to_json() == first.to_json()
    for unseen in ({"u": feats(90, 3, level1=0.2)}, {"u": feats(90, 4, level2=5.0, L=1.0)}):
        rep = sel.report_sets([first.chosen], ref, neg, unseen, first.fitted, n_boot=20)
        assert 0.0 <= rep[first.chosen]["u"][0] <= 1.0
        assert sel.select(ref, neg, val, seed=0).to_json() == first.to_json()
    # …whereas changing a validation set can change what is chosen or how it is rated.
    changed = {**val, "simple": feats(80, 12, L=4.0, level1=1.0)}
    assert sel.select(ref, neg, changed, seed=0).to_json() != first.to_json()


def test_fitted_candidates_are_rated_leave_one_set_out():
    # A fitted candidate's rating on a validation set is the AUROC of the fit made on the
    # *other* validation sets: recomputed by hand here, and different from the in-sample fit.
    ref, neg, val = feats(150, 1), feats(150, 2), validation_sets()
    s = sel.select(ref, neg, val, candidates=["logistic", "typ:level1"])
    r = ood.Reference.fit(ref)
    for held in val:
        others = [f for k, f in val.items() if k != held]
        m = sel.fit("logistic", ref, r, others)
        a, b = sel._paired(m.apply(neg, r), m.apply(val[held], r), 0)
        assert s.validation["logistic"][held] == pytest.approx(ood.auroc(a, b), abs=1e-12)
    inside = sel.fit("logistic", ref, r, list(val.values()))
    in_sample = [ood.auroc(inside.apply(neg, r), inside.apply(f, r)) for f in val.values()]
    assert np.mean(in_sample) >= s.mean["logistic"] - 1e-9
    assert s.fitted["logistic"] == inside.params  # what is reported on unseen sets: all sets


def test_two_sided_score_is_chosen_when_validation_sets_shift_both_ways():
    ref, neg = feats(150, 1), feats(150, 2)
    val = {"up": feats(150, 20, level1=2.0), "down": feats(150, 21, level1=0.0)}
    s = sel.select(ref, neg, val, candidates=["level1", "typ:level1", "nll-aL"])
    assert s.chosen == "typ:level1"
    assert min(s.validation["typ:level1"].values()) > 0.99
    assert s.validation["level1"]["down"] < 0.01  # the one-sided score fails one direction


def test_bootstrap_se_matches_the_known_spread_of_auroc():
    # Inliers N(0, 1), outliers N(d, 1): AUROC = Φ(d/√2); its sampling s.e. (Hanley–McNeil)
    # is known in closed form, and the bootstrap estimate of it should be close.
    from scipy.stats import norm

    rng = np.random.default_rng(5)
    n, d = 400, 1.0
    a, b = rng.normal(0, 1, n), rng.normal(d, 1, n)
    value, se = sel.bootstrap_auroc(a, b, n_boot=600, seed=1)
    truth = norm.cdf(d / math.sqrt(2))
    q1, q2 = truth / (2 - truth), 2 * truth**2 / (1 + truth)
    hanley = math.sqrt((truth * (1 - truth) + (n - 1) * (q1 - truth**2) + (n - 1) * (q2 - truth**2)) / n**2)
    assert value == pytest.approx(ood.auroc(a, b))
    assert abs(value - truth) < 4 * hanley
    assert 0.75 * hanley < se < 1.33 * hanley
    assert sel.bootstrap_auroc(a, b, n_boot=600, seed=1) == (value, se)  # seeded
    assert sel.bootstrap_auroc(np.zeros(50), np.ones(50), n_boot=50)[1] == 0.0  # separable: no spread


def test_fast_auroc_equals_sklearn_with_ties():
    rng = np.random.default_rng(2)
    a, b = rng.integers(0, 5, 60).astype(float), rng.integers(1, 7, 45).astype(float)
    assert sel._fast_auroc(a, b) == pytest.approx(ood.auroc(a, b), abs=1e-12)


def test_logistic_and_alpha_fits_use_validation_outliers():
    ref, neg = feats(150, 1), feats(150, 2)
    out = [feats(150, 30, level2=2.8)]
    r = ood.Reference.fit(ref)
    lg = sel.fit("logistic", ref, r, out)
    assert ood.auroc(lg.apply(neg, r), lg.apply(feats(150, 31, level2=2.8), r)) > 0.95
    a = sel.fit("nll-aL", ref, r, [feats(150, 32, L=2.0)])  # OOD = simpler, same NLL: α > 0
    assert a.params["alpha"] > 0


def test_new_ood_sets_are_well_formed_and_seeded():
    g = ood.load_ood_set("glyphs", 12, (28, 28, 1), 256, 0, None)[0]
    assert g.shape == (12, 28, 28, 1) and g.dtype == np.uint8
    assert np.array_equal(g, ood.load_ood_set("glyphs", 12, (28, 28, 1), 256, 0, None)[0])
    # MNIST's format: a black border and bright strokes, centred by mass
    assert g[:, :2].max() == 0 and g.max() == 255 and 0.05 < (g > 128).mean() < 0.4
    d = ood.load_ood_set("glyph-digits", 5, (8, 8, 1), 17, 0, None)[0]
    assert d.shape == (5, 8, 8, 1) and d.max() <= 16
    s = ood.load_ood_set("shapes", 10, (28, 28, 1), 256, 3, None)[0]
    assert s.shape == (10, 28, 28, 1) and s.max() >= 128 and (s == 0).mean() > 0.3
    x = np.random.default_rng(0).integers(0, 256, (4, 28, 28, 1)).astype(np.uint8)
    b = ood.load_ood_set("blur", 4, (28, 28, 1), 256, 0, x)[0]
    assert b.shape == x.shape and b.astype(float).std() < x.astype(float).std() / 2


def test_pcdm_ood_default_is_the_recorded_choice():
    assert sel.DEFAULT_SCORE in ood.score_names(2)  # a score pcdm ood computes
    path = ROOT / "benchmarks/results/ood_selection/selection.json"
    if path.is_file():  # the benchmark's record of the validation-only choice
        record = json.loads(path.read_text())
        assert record["chosen_default"] == sel.DEFAULT_SCORE
        assert record["chosen"] == sel.OVERALL_CHOICE
        assert record["mean"][sel.DEFAULT_SCORE] == max(record["mean"][k] for k in ood.score_names(2))


def test_pcdm_ood_reports_the_default_score(tmp_path, capsys):
    import torch

    from pcdm import checkpoint
    from pcdm.cli import main
    from pcdm.model import PCDM, ModelConfig

    torch.manual_seed(0)
    cfg = ModelConfig(
        model="w-pcdm", levels=2, image_shape=(1, 8, 8), K=17, width=8, depth=1, attention=False, fourier=None
    )
    run = tmp_path / "run"
    run.mkdir()
    checkpoint.save_tensors(run / "model.safetensors", PCDM(cfg).state_dict())
    checkpoint.write_json(run / "config.json", {"model": cfg.to_dict(), "data": {"spec": "digits", "K": 17}})
    argv = ["ood", str(run), "--in", "digits", "--ood", "const", "--ood", "glyphs", "--n-t", "1",
            "--limit", "12", "--batch", "16", "--min-images", "12", "--score", "nll-L",
            "--roc", str(tmp_path / "r.png")]  # fmt: skip
    assert main([*argv, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["default_score"] == sel.DEFAULT_SCORE
    assert out["auroc_default"] == out["scores"][sel.DEFAULT_SCORE]  # kept even under --score
    assert set(out["auroc_default"]) == {"const", "glyphs"}
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert any(line.startswith(f"{sel.DEFAULT_SCORE} *") for line in table.splitlines())


def test_benchmark_choice_is_the_same_whatever_the_unseen_sets(tmp_path, monkeypatch):
    # End to end through benchmarks/ood_selection.py: the recorded choice and every validation
    # number are identical when the unseen sets are replaced by entirely different ones.
    import sys

    import torch

    from pcdm import checkpoint
    from pcdm.model import PCDM, ModelConfig

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import ood_selection as bench

    torch.manual_seed(0)
    cfg = ModelConfig(
        model="w-pcdm", levels=2, image_shape=(1, 8, 8), K=17, width=8, depth=1, attention=False, fourier=None
    )
    run = tmp_path / "run"
    run.mkdir()
    checkpoint.save_tensors(run / "model.safetensors", PCDM(cfg).state_dict())
    checkpoint.write_json(run / "config.json", {"model": cfg.to_dict(), "data": {"spec": "digits", "K": 17}})
    monkeypatch.setattr(sel, "VALIDATION_SETS", ("const", "uniform", "invert"))
    common = ["--run", str(run), "--data", "digits", "--limit", "20", "--entropy-count", "20", "--n-t", "1"]
    common += ["--n-boot", "10", "--cache", str(tmp_path / "cache")]
    assert bench.main([*common, "--phase", "validation", "--out", str(tmp_path / "v")]) == 0
    first = json.loads((tmp_path / "v/selection.json").read_text())
    # the unseen phase refuses to run while the code's default differs from the record
    monkeypatch.setattr(sel, "DEFAULT_SCORE", "not-this-one")
    assert bench.main([*common, "--out", str(tmp_path / "refused")]) == 2
    assert not (tmp_path / "refused/runs.json").exists()
    monkeypatch.setattr(sel, "DEFAULT_SCORE", first["chosen_default"])
    monkeypatch.setattr(sel, "OVERALL_CHOICE", first["chosen"])
    docs = []
    for i, unseen in enumerate((("glyphs", "mnist-like"), ("gaussian", "shapes"))):
        monkeypatch.setattr(sel, "UNSEEN_SETS", unseen)
        assert bench.main([*common, "--out", str(tmp_path / f"u{i}")]) == 0
        docs.append(json.loads((tmp_path / f"u{i}/runs.json").read_text()))
        assert json.loads((tmp_path / f"u{i}/selection.json").read_text()) == first
        assert set(docs[-1]["unseen"][first["chosen_default"]]) == set(unseen)
    assert (
        docs[0]["selection"]
        == docs[1]["selection"]
        == {k: v for k, v in first.items() if k in docs[0]["selection"]}
    )
