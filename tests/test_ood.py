"""OOD detection (docs/math.md §8): the typicality statistic, the scale-aware scores on a model
whose right answer is known, AUROC against the pairwise definition, built-in OOD sets,
adaptation of foreign data, the reference cache, that nothing is fitted on OOD images, and
the ``pcdm ood`` command end to end."""

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


def test_auroc_is_the_pairwise_probability_with_ties_halved():
    # Mann–Whitney: AUROC = P(out > in) + ½ P(out = in) over all pairs; integer scores tie.
    inl, out = RNG.integers(0, 6, 70).astype(float), RNG.integers(2, 9, 50).astype(float)
    pairs = out[:, None] - inl[None, :]
    expected = ((pairs > 0).sum() + 0.5 * (pairs == 0).sum()) / pairs.size
    assert ood.auroc(inl, out) == pytest.approx(expected, abs=1e-12)
    fpr, tpr = ood.roc_curve(inl, out)
    assert np.trapezoid(tpr, fpr) == pytest.approx(expected, abs=1e-12)  # the curve's area


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


def test_gaussian_and_paired_transform_sets():
    g = ood.gaussian_images(400, (8, 8, 1), 256, seed=0)
    assert g.dtype == np.uint8 and abs(g.mean() - 127.5) < 1.0 and abs(g.std() - 255 / 6) < 1.0
    x = RNG.integers(0, 17, size=(5, 6, 4, 3), dtype=np.uint8)
    np.testing.assert_array_equal(ood.transformed(x, "hflip", 17)[:, :, ::-1], x)
    np.testing.assert_array_equal(ood.transformed(x, "vflip", 17)[:, ::-1], x)
    np.testing.assert_array_equal(ood.transformed(x, "invert", 17).astype(int), 16 - x.astype(int))
    images, name, notes = ood.load_ood_set("invert", 3, (6, 4, 3), 17, 0, negatives=x)
    assert len(images) == 3 and name == "invert" and "negatives" in notes[0]


def test_mnist_like_set_has_mnist_statistics():
    x = ood.mnist_like_images()
    assert x.shape == (1797, 28, 28, 1) and x.dtype == np.uint8  # every scikit-learn digit
    assert 0.7 < (x == 0).mean() < 0.9  # MNIST: about 81 % background
    strokes = x[x > 0]
    assert (strokes >= 250).mean() > 0.5  # saturated strokes, anti-aliased edges
    assert (x[:, :2] > 0).mean() < 0.01 and (x[:, :, :2] > 0).mean() < 0.01  # margins nearly black
    rows, cols = np.arange(28)[None, :, None], np.arange(28)[None, None, :]
    mass = x[..., 0].astype(float).sum((1, 2))
    cy = (x[..., 0] * rows).sum((1, 2)) / mass
    cx = (x[..., 0] * cols).sum((1, 2)) / mass
    assert np.mean(np.abs(cy - 13.5) <= 0.5 + 1e-9) > 0.99  # centred by mass to the pixel
    assert np.mean(np.abs(cx - 13.5) <= 0.5 + 1e-9) > 0.99
    np.testing.assert_array_equal(x[:10], ood.mnist_like_images(10))


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


def fake_features(n: int, shift: float = 0.0, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    level1, level2, recon = rng.normal(1 + shift, 0.2, n), rng.normal(2, 0.3, n), rng.normal(0.1, 0.01, n)
    L = rng.normal(4, 0.5, n)
    return {"nll": level1 + level2 + recon, "level1": level1, "level2": level2, "recon": recon, "L": L}


def test_reference_cache_reused_and_invalidated(run):
    model, config = checkpoint.load_run(run)
    images = load("digits", "test", limit=6).images
    calls = []

    def compute():
        calls.append(1)
        return fake_features(6)

    def key(imgs=images, n_t=2):
        return ood.entropy_cache_key(run, config, imgs, "digits:test", n_t, 0, 8)

    expected = fake_features(6)["nll"].mean()
    ref, se, hit = ood.cached_reference(run, key(), compute)
    assert (ref.means["nll"], hit) == (pytest.approx(expected), False) and len(calls) == 1 and se > 0
    assert (run / ood.CACHE_FILE).is_file()
    again, _, hit = ood.cached_reference(run, key(), compute)
    assert hit and len(calls) == 1
    assert again.means == ref.means and np.array_equal(again.joint_std, ref.joint_std)
    # other settings or other images: recomputed, the first entry kept
    assert not ood.cached_reference(run, key(n_t=3), compute)[2]
    assert not ood.cached_reference(run, key(imgs=images[:5]), compute)[2]
    assert ood.cached_reference(run, key(), compute)[2]
    assert len(calls) == 3
    # retrained model (new weights file): invalidated, stale entries dropped
    make_run(run, seed=1)
    assert not ood.cached_reference(run, key(), compute)[2]
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
    assert not ood.cached_reference(run, key(), compute)[2]
    assert ood.cached_reference(run, key(), compute)[2]


# --- the scores ------------------------------------------------------------------


def test_scores_use_only_held_out_fits_and_each_image_alone():
    held, inl, out = fake_features(300), fake_features(200, seed=1), fake_features(200, 1.5, seed=2)
    ref = ood.Reference.fit(held)
    assert ref.means["nll"] == pytest.approx(held["nll"].mean())
    assert ref.means["detail"] == pytest.approx((held["level2"] + held["recon"]).mean())
    s_out = ood.scores(out, ref)
    assert set(s_out) == set(ood.score_names(2))
    # an image's score is a function of its own features and the reference only
    half = {k: v[::2] for k, v in out.items()}
    for name, v in ood.scores(half, ref).items():
        np.testing.assert_allclose(v, s_out[name][::2], err_msg=name)
    s_in = ood.scores(inl, ref)
    # a shifted coarse level: detail-level1 and level1 see it, level2 and L do not
    assert ood.auroc(s_in["level1"], s_out["level1"]) > 0.99
    assert ood.auroc(s_in["detail-level1"], s_out["detail-level1"]) < 0.01  # cheaper detail ratio
    assert 0.4 < ood.auroc(s_in["level2"], s_out["level2"]) < 0.6
    assert 0.4 < ood.auroc(s_in["L"], s_out["L"]) < 0.6
    assert ood.auroc(s_in["joint"], s_out["joint"]) > 0.99
    # joint is Σ z² of (level1, level2, recon, L): its held-out mean is the feature count
    assert ood.scores(held, ref)["joint"].mean() == pytest.approx(4 * 299 / 300)
    # one level: no detail scores, and saying so
    vdm = {"nll": held["nll"], "level1": held["level1"], "recon": held["recon"], "L": held["L"]}
    assert "detail" not in ood.score_names(1) and set(ood.scores(vdm, ood.Reference.fit(vdm))) == set(
        ood.score_names(1)
    )


def test_level_scores_find_an_ood_set_whose_fine_level_is_pure_noise():
    """Known answer: in-distribution images are constant on 2×2 blocks, so their Haar detail
    level is exactly 0 and the Bayes-optimal detail denoiser is ε̂ = z_t/σ_t, a detail bound of
    0 bits. The OOD images share the coarse level's distribution but add pixel noise to the
    detail. With that denoiser (and ε̂ = 0 for the coarse level, whose bits then do not depend
    on the image at all), the detail scores separate perfectly and level 1 is at chance."""
    torch.manual_seed(0)
    cfg = ModelConfig(model="w-pcdm", levels=2, image_shape=(1, 8, 8), K=16, width=4, depth=1)
    model = PCDM(cfg).double()

    def denoiser(k, z, gamma, cond):
        if k == 0:
            return torch.zeros_like(z)
        sigma = torch.sigmoid(gamma).sqrt().view(-1, 1, 1, 1)
        return z / sigma

    model.eps_hat = denoiser
    rng = np.random.default_rng(0)

    def blocky(n):
        coarse = rng.integers(1, 15, size=(n, 4, 4, 1))
        return coarse.repeat(2, axis=1).repeat(2, axis=2).astype(np.uint8)

    inl = blocky(64)
    noisy = np.clip(blocky(64) + rng.integers(-1, 2, size=(64, 8, 8, 1)), 0, 15).astype(np.uint8)
    held = blocky(64)
    f_held, f_in, f_out = (ood.features(model, x, n_t=4, batch_size=64, seed=0) for x in (held, inl, noisy))
    # the exact denoiser pays no diffusion bits: only the prior's constant KL remains
    np.testing.assert_allclose(f_in["level2"], f_in["level2"][0], rtol=1e-9)
    assert f_in["level2"][0] < 1e-4
    ref = ood.Reference.fit(f_held)
    s_in, s_out = ood.scores(f_in, ref), ood.scores(f_out, ref)
    for name in ("level2", "detail", "detail-share", "typ:level2", "typ:detail", "joint"):
        assert ood.auroc(s_in[name], s_out[name]) == 1.0, name
    # the coarse level is at chance, so are the complexity and the decoder: same distribution
    for name in ("level1", "recon"):
        assert 0.3 < ood.auroc(s_in[name], s_out[name]) < 0.7, name
    assert ood.auroc(s_in["nll"], s_out["nll"]) > 0.9  # the total sees it, through the noise of level 1


def test_run_ood_fits_on_held_out_images_only(run, monkeypatch):
    from pcdm.ood import experiment

    model, config = checkpoint.load_run(run)
    test = load("digits", "test").images
    seen, fitted = [], []
    real_features, real_fit = experiment.features, ood.Reference.fit

    def spy_features(model, images, *a, **k):
        f = real_features(model, images, *a, **k)
        seen.append((images.copy(), f))
        return f

    def spy_fit(held_out):
        fitted.append(held_out)
        return real_fit(held_out)

    monkeypatch.setattr(experiment, "features", spy_features)
    monkeypatch.setattr(ood.Reference, "fit", staticmethod(spy_fit))
    kw = dict(n_t=1, limit=20, batch_size=32, entropy_count=20, min_images=20)
    one = ood.run_ood(model, config, run, "digits", ["const"], **kw)
    (held_images, held_f), *_ = seen
    np.testing.assert_array_equal(held_images, test[-20:])  # the last test images, nothing else
    assert len(fitted) == 1 and fitted[0] is held_f
    both = ood.run_ood(model, config, run, "digits", ["uniform", "const"], **kw)  # cached reference
    assert len(fitted) == 1 and both.entropy_cached
    assert both.auroc["joint"]["const"] == one.auroc["joint"]["const"]  # other OOD sets change nothing
    assert both.reference.means == one.reference.means


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
    assert "RGB→gray" in captured.err  # the adaptation is reported to the user
    assert {"joint", "nll-L", "detail-level1", "typ:L"} <= set(out["scores"])
    assert out["scores"]["typ:nll"] == out["auroc"] and out["scores"]["nll"] == out["auroc_raw_nll"]
    assert "held-out" in out["fitted_on"]
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
        ["ood", "{run}", "--in", "digits", "--ood", "const", "--score", "no-such-score"],
    ],
)
def test_cli_bad_input_is_one_line(args, run, tmp_path, capsys):
    argv = [a.format(tmp=tmp_path, run=run) for a in args]
    assert main(argv + ["--n-t", "1"] if "--n-t" not in argv else argv) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("pcdm ood: error:") and "\n" not in err and "Traceback" not in err


# --- which images --in reads: the rule of pcdm eval (data.default_split) ----------------


def make_npy_run(path: Path, train_file: Path) -> Path:
    torch.manual_seed(0)
    cfg = ModelConfig(
        model="w-pcdm",
        levels=2,
        image_shape=(1, 8, 8),
        K=256,
        width=8,
        depth=1,
        attention=False,
        fourier=None,
    )
    path.mkdir(parents=True, exist_ok=True)
    checkpoint.save_tensors(path / "model.safetensors", PCDM(cfg).state_dict())
    checkpoint.write_json(
        path / "config.json", {"model": cfg.to_dict(), "data": {"spec": str(train_file), "K": 256}}
    )
    return path


def test_ood_in_other_file_uses_all_of_it_and_training_data_its_test_part(tmp_path, capsys, monkeypatch):
    rng = np.random.default_rng(0)
    train, other = tmp_path / "train.npy", tmp_path / "other.npy"
    np.save(train, rng.integers(0, 256, (200, 8, 8), dtype=np.uint8))
    np.save(other, rng.integers(0, 128, (40, 8, 8), dtype=np.uint8))
    run = make_npy_run(tmp_path / "run", train)
    common = ["--ood", "const", "--n-t", "1", "--min-images", "5", "--entropy-count", "1000", "--json"]
    # Another file: every one of its 40 images, half reference, half negatives.
    assert main(["ood", str(run), "--in", str(other), *common]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["split"] == "all" and "not the run's training data" in out["split_reason"]
    assert out["counts"]["in_available"] == 40
    assert out["counts"]["reference"] == 20 and out["counts"]["negatives"] == 20 == out["n_in"]
    assert out["counts"]["sets"]["const"]["negatives"] == out["n"]["const"] == 20
    # The run's training data, named by another path to the same file: its held-out 10 %.
    monkeypatch.chdir(tmp_path)
    assert main(["ood", str(run), "--in", "./train.npy", *common]) == 0
    own = json.loads(capsys.readouterr().out)
    assert own["split"] == "test" and "held-out" in own["split_reason"]
    assert own["counts"]["in_available"] == 20
    assert own["counts"]["reference"] == 10 and own["counts"]["negatives"] == 10
    # --split overrides the rule; the table states the counts.
    assert main(["ood", str(run), "--in", str(other), "--split", "test", "--force", *common[:-1]]) == 0
    table = capsys.readouterr().out
    assert "split test: --split; 4 images read" in table
    assert "n reference" in table and "n negatives" in table and "n OOD (of)" in table
