"""OOD detection (SPEC §6): the typicality statistic, AUROC plumbing, built-in OOD sets,
adaptation of foreign data, the Ĥ cache and the ``pcdm ood`` command end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pcdm import checkpoint, ood
from pcdm.cli import main
from pcdm.data import load
from pcdm.model import PCDM, ModelConfig

RNG = np.random.default_rng(0)


# --- statistic and AUROC ------------------------------------------------------


def test_typicality_is_two_sided_distance_to_entropy():
    np.testing.assert_allclose(ood.typicality(np.array([1.0, 3.0, 5.5]), 3.0), [2.0, 0.0, 2.5])


def test_auroc_separable_is_one_and_identical_is_half():
    inl, out = RNG.normal(0, 1, 200), RNG.normal(10, 1, 200)
    assert ood.auroc(inl, out) == 1.0
    assert ood.auroc(out, inl) == 0.0
    same = RNG.normal(0, 1, 100)
    assert ood.auroc(same, same) == 0.5


def test_typicality_catches_too_likely_outliers_that_raw_nll_misses():
    # In-distribution NLL ≈ 3 bpd; the outliers are *more* likely (≈ 1 bpd), like constant
    # images under an image model: raw NLL calls them inliers, |NLL − Ĥ| does not.
    entropy = 3.0
    held_out = RNG.normal(entropy, 0.1, 500)
    inl, out = RNG.normal(entropy, 0.1, 300), RNG.normal(1.0, 0.1, 300)
    h = float(held_out.mean())
    assert ood.auroc(inl, out) < 0.05
    assert ood.auroc(ood.typicality(inl, h), ood.typicality(out, h)) > 0.95


def test_auroc_needs_both_sides():
    with pytest.raises(ValueError):
        ood.auroc(np.array([]), np.array([1.0]))


def test_equal_counts_subsamples_larger_side_deterministically():
    i_in, i_out = ood.equal_counts(10, 4, seed=3)
    assert len(i_in) == len(i_out) == 4
    assert list(i_out) == [0, 1, 2, 3]
    assert len(set(i_in)) == 4 and i_in.max() < 10 and list(i_in) == sorted(i_in)
    again, _ = ood.equal_counts(10, 4, seed=3)
    np.testing.assert_array_equal(i_in, again)
    j_in, j_out = ood.equal_counts(5, 5)
    assert list(j_in) == list(j_out) == list(range(5))
    _, k_out = ood.equal_counts(3, 9)
    assert len(k_out) == 3


def test_split_test_keeps_entropy_images_apart_from_negatives():
    m, h = ood.split_test(100, None, 1000)
    assert (m, h) == (50, 50)
    m, h = ood.split_test(10000, None, 1000)
    assert (m, h) == (9000, 9000)
    m, h = ood.split_test(10000, 20, 1000)
    assert m == 20 and h == 9980 and m <= h
    with pytest.raises(ValueError):
        ood.split_test(1, None, 10)


# --- built-in OOD sets and adaptation ----------------------------------------


@pytest.mark.parametrize("shape", [(8, 8, 1), (6, 4, 3)])
@pytest.mark.parametrize("K", [17, 256])
def test_const_and_uniform_sets(shape, K):
    c = ood.constant_images(50, shape, K, seed=1)
    u = ood.uniform_images(50, shape, K, seed=1)
    for x in (c, u):
        assert x.shape == (50, *shape) and x.dtype == np.uint8
        assert x.min() >= 0 and x.max() <= K - 1
    # each constant image is one value per channel everywhere
    assert (c == c[:, :1, :1, :]).all()
    assert len(np.unique(c[:, 0, 0, 0])) > 5  # values vary across images
    # uniform noise really is noise and covers the range
    assert len(np.unique(u)) > min(K, 50) // 2
    assert u.std(axis=(1, 2, 3)).min() > 0
    np.testing.assert_array_equal(c, ood.constant_images(50, shape, K, seed=1))
    assert not np.array_equal(u, ood.uniform_images(50, shape, K, seed=2))


def test_requantise_keeps_bin_centres():
    v = np.arange(17, dtype=np.uint8)
    r = ood.requantise(v, 17, 256)
    assert r[0] < 16 and r[-1] > 240 and (np.diff(r.astype(int)) > 0).all()
    back = ood.requantise(r, 256, 17)
    np.testing.assert_array_equal(back, v)
    assert ood.requantise(np.array([0, 255], np.uint8), 256, 2).tolist() == [0, 1]


def test_adapt_rgb_to_gray_crop_resize_and_K():
    rgb = RNG.integers(0, 256, size=(3, 40, 32, 3), dtype=np.uint8)
    out, notes = ood.adapt_images(rgb, 256, (8, 8, 1), 17)
    assert out.shape == (3, 8, 8, 1) and out.dtype == np.uint8 and out.max() <= 16
    text = " ".join(notes)
    assert "gray" in text and "cropped" in text and "resized" in text and "K 256→17" in text
    gray = RNG.integers(0, 17, size=(2, 8, 8, 1), dtype=np.uint8)
    same, notes = ood.adapt_images(gray, 17, (8, 8, 1), 17)
    assert notes == [] and same is gray
    rep, notes = ood.adapt_images(gray, 17, (8, 8, 3), 17)
    assert notes == ["gray→RGB (replicated)"]
    np.testing.assert_array_equal(rep, np.repeat(gray, 3, axis=-1))


# --- the tiny run folder -------------------------------------------------------


def make_run(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    cfg = ModelConfig(
        model="w-pcdm",
        levels=2,
        image_shape=(1, 8, 8),
        K=17,
        width=8,
        depth=1,
        attention=False,
        fourier=None,
    )
    model = PCDM(cfg)
    path.mkdir(parents=True, exist_ok=True)
    checkpoint.save_tensors(path / "model.safetensors", model.state_dict())
    checkpoint.write_json(path / "config.json", {"model": cfg.to_dict(), "data": {"spec": "digits", "K": 17}})
    return path


@pytest.fixture()
def run(tmp_path) -> Path:
    return make_run(tmp_path / "run")


def test_entropy_cache_reused_and_invalidated(run):
    model, config = checkpoint.load_run(run)
    images = load("digits", "test", limit=6).images
    calls = []

    def compute():
        calls.append(1)
        return np.array([1.0, 2.0, 3.0])

    def key(imgs=images, n_t=2):
        return ood.entropy_cache_key(run, config, imgs, "digits:test", n_t, 0, 8)

    h, se, hit = ood.cached_entropy(run, key(), compute)
    assert (h, hit) == (2.0, False) and len(calls) == 1 and se > 0
    assert (run / ood.CACHE_FILE).is_file()
    h, _, hit = ood.cached_entropy(run, key(), compute)
    assert (h, hit) == (2.0, True) and len(calls) == 1
    # other settings or other images: recomputed, the first entry kept
    assert not ood.cached_entropy(run, key(n_t=3), compute)[2]
    assert not ood.cached_entropy(run, key(imgs=images[:5]), compute)[2]
    assert ood.cached_entropy(run, key(), compute)[2]
    assert len(calls) == 3
    # retrained model (new weights file): invalidated, stale entries dropped
    make_run(run, seed=1)
    assert not ood.cached_entropy(run, key(), compute)[2]
    assert len(calls) == 4
    doc = json.loads((run / ood.CACHE_FILE).read_text())
    assert len(doc["entries"]) == 1
    # EMA weights appear: the default key now hashes them, --no-ema the raw ones
    state = {k: v + 0.01 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    checkpoint.save_tensors(run / "ema.safetensors", state)
    ema_key = ood.entropy_cache_key(run, config, images, "digits:test", 2, 0, 8, ema=True)
    raw_key = ood.entropy_cache_key(run, config, images, "digits:test", 2, 0, 8, ema=False)
    assert ema_key["weights"] == "ema.safetensors" and raw_key["weights"] == "model.safetensors"
    assert ema_key["weights_sha256"] != raw_key["weights_sha256"]
    assert ema_key == key()  # the default follows load_run: EMA when present
    (run / "ema.safetensors").unlink()
    # a corrupt cache is ignored, then rewritten
    (run / ood.CACHE_FILE).write_text("{not json")
    assert not ood.cached_entropy(run, key(), compute)[2]
    assert ood.cached_entropy(run, key(), compute)[2]


def test_cli_end_to_end_json(run, tmp_path, capsys):
    png = tmp_path / "roc.png"
    argv = [
        "ood", str(run), "--in", "digits", "--ood", "const", "--ood", "uniform",
        "--ood", "skimage32", "--n-t", "2", "--limit", "12", "--batch", "16", "--min-images", "12",
        "--roc", str(png), "--json",
    ]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert {"auroc", "auroc_raw_nll", "n", "entropy_bpd"} <= set(out)
    assert set(out["auroc"]) == set(out["auroc_raw_nll"]) == {"const", "uniform", "skimage32"}
    for table in (out["auroc"], out["auroc_raw_nll"]):
        assert all(0.0 <= v <= 1.0 for v in table.values())
    assert out["n"] == {"const": 12, "uniform": 12, "skimage32": 12}
    assert np.isfinite(out["entropy_bpd"]) and out["entropy_cached"] is False
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "RGB→gray" in out["adapted"]["skimage32"][0]
    assert "adapted" in captured.err  # the adaptation is reported to the user
    # second run: Ĥ from the cache, same number; default ROC path in the run folder
    assert main(argv[:-3] + ["--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["entropy_cached"] is True and again["entropy_bpd"] == out["entropy_bpd"]
    assert (run / ood.ROC_FILE).is_file()


def test_cli_table_output(run, capsys):
    argv = ["ood", str(run), "--in", "digits", "--ood", "uniform", "--n-t", "1", "--limit", "4"]
    assert main(argv) == 2  # 4 images per class: no AUROC worth reporting ...
    err = capsys.readouterr().err.strip()
    assert "only 4 in-distribution test images" in err and "--force" in err and "\n" not in err
    assert main([*argv, "--force"]) == 0  # ... unless forced
    captured = capsys.readouterr()
    out = captured.out
    assert "AUROC" in out and "uniform" in out and "Ĥ" in out
    assert "0.5 = chance" in out and "typical bound" in out  # each number explained
    assert "--entropy-count 1000 capped at 4" in captured.err  # caps are announced


@pytest.mark.parametrize(
    "args",
    [
        ["ood", "{tmp}/missing", "--in", "digits", "--ood", "const"],
        ["ood", "{run}", "--in", "no-such-dataset", "--ood", "const"],
        ["ood", "{run}", "--in", "digits", "--ood", "no-such-dataset", "--limit", "2"],
        ["ood", "{run}", "--in", "skimage32", "--ood", "const"],
        ["ood", "{run}", "--in", "digits", "--ood", "const", "--n-t", "0"],
    ],
)
def test_cli_bad_input_is_one_line(args, run, tmp_path, capsys):
    argv = [a.format(tmp=tmp_path, run=run) for a in args]
    assert main(argv + ["--n-t", "1"] if "--n-t" not in argv else argv) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("pcdm ood: error:") and "\n" not in err and "Traceback" not in err
