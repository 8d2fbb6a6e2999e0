"""FID / KID (docs/math.md §11): the Fréchet distance and KID against direct reference
computations, the Inception-v3 loading path, resize and statistics with a file saved from a
randomly initialised network, the domain classifier's cache, and ``pcdm fid``'s one-line
errors that write nothing."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.linalg
import torch

from pcdm import features, fid
from pcdm.cli import main
from pcdm.data import load
from pcdm.features import DomainClassifier, InceptionV3


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    """One cache for the module: the digits classifier is trained once."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def cache(shared_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("PCDM_CACHE", str(shared_cache))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))  # never the real hub cache
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # small tensors, shared CPU
    yield shared_cache
    torch.set_num_threads(n)


def random_features(n, d, seed, scale=1.0):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) / math.sqrt(d)
    return rng.normal(size=(n, d)) @ mix * scale + rng.normal(size=d)


def reference_frechet(f1, f2):
    """The textbook formula with scipy.linalg.sqrtm of Σ₁Σ₂."""
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = np.real(scipy.linalg.sqrtm(s1 @ s2))
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def test_frechet_distance_matches_a_reference_computation():
    f1, f2 = random_features(400, 12, 0), random_features(300, 12, 1, scale=1.5)
    want = reference_frechet(f1, f2)
    mu1, s1 = fid.statistics(f1)
    mu2, s2 = fid.statistics(f2)
    assert fid.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(want, abs=1e-6)
    assert fid.frechet_to_features(f1, mu2, s2) == pytest.approx(want, abs=1e-6)
    # fewer images than dimensions: the N × N route gives the same number as sqrtm
    few = random_features(9, 40, 2)
    many = random_features(500, 40, 3)
    mu, s = fid.statistics(many)
    assert fid.frechet_to_features(few, mu, s) == pytest.approx(reference_frechet(few, many), abs=1e-6)
    # one dimension: (μ₁ − μ₂)² + (s₁ − s₂)²
    assert fid.frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4 + 1, abs=1e-12)
    assert abs(fid.frechet_distance(mu1, s1, mu1, s1)) < 1e-9
    with pytest.raises(ValueError, match="different sizes"):
        fid.frechet_distance(mu1, s1, mu1[:3], s1[:3, :3])


def test_kid_matches_a_direct_double_sum():
    x, y = random_features(15, 4, 4), random_features(15, 4, 5, scale=2.0)

    def k(a, b):
        return (a @ b / 4 + 1) ** 3

    m = len(x)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / m**2
    assert fid.polynomial_mmd2(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-10)
    # one subset of the whole sets is a permutation of them: the same number, std 0
    mean, std = fid.kid(x, y, subset=m, subsets=3)
    assert mean == pytest.approx(xx + yy - 2 * xy, rel=1e-10) and std < 1e-10
    # unbiased: two draws from one distribution average to ≈ 0, well below a shifted set's
    rng = np.random.default_rng(6)
    a, b = rng.normal(size=(600, 8)), rng.normal(size=(600, 8))
    same, _ = fid.kid(a, b, subset=200, subsets=20)
    shifted, _ = fid.kid(a, b + 0.5, subset=200, subsets=20)
    assert abs(same) < 0.05 * shifted


# --- Inception-v3 ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    """A randomly initialised FID Inception-v3 with batch-norm statistics set from one batch
    (so that its features have unit scale and loading them is visible), saved like the
    public .pth files: a plain state dict."""
    torch.manual_seed(0)
    net = InceptionV3()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 1.0
    net.train()
    with torch.no_grad():
        net(InceptionV3.preprocess(torch.randint(0, 256, (2, 3, 20, 20), dtype=torch.uint8)))
    net.eval()
    path = tmp_path_factory.mktemp("hub") / "inception.pth"
    torch.save(net.state_dict(), path)
    return path, net


def numpy_bilinear(img, size):
    """Half-pixel-centre bilinear resize of one (H, W) image, separably with np.interp."""

    def axis(n):
        return np.clip((np.arange(size) + 0.5) * n / size - 0.5, 0, n - 1)

    h, w = img.shape
    rows = np.stack([np.interp(axis(w), np.arange(w), r) for r in img])
    return np.stack([np.interp(axis(h), np.arange(h), c) for c in rows.T]).T


def test_preprocess_resizes_bilinearly_and_repeats_gray():
    x = torch.randint(0, 17, (2, 1, 5, 7), dtype=torch.uint8)
    v = InceptionV3.preprocess(x, K=17)
    assert v.shape == (2, 3, 299, 299)
    assert torch.equal(v[:, 0], v[:, 1]) and torch.equal(v[:, 0], v[:, 2])  # gray → 3 channels
    want = numpy_bilinear(x[1, 0].double().numpy() * 255 / 16, 299)
    np.testing.assert_allclose(v[1, 0].double().numpy() * 128 + 128, want, atol=1e-3)
    white = InceptionV3.preprocess(torch.full((1, 3, 4, 4), 16, dtype=torch.uint8), K=17)
    torch.testing.assert_close(white, torch.full_like(white, 127 / 128))  # 255 → (255 − 128)/128


def test_inception_file_loads_and_gives_its_features(inception_file):
    path, net = inception_file
    _, digest = features.load_inception(path)
    x = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    with torch.no_grad():
        want = net(InceptionV3.preprocess(x))
    assert want.shape == (3, 2048) and float(want.std()) > 1e-2  # not a dead network
    space = features.inception_space(path)  # the loading path pcdm fid uses
    assert space.id == f"inception-{digest}" and "Inception" in space.metric
    f = space.extract(x, 256, progress=False)
    np.testing.assert_allclose(f, want.double().numpy(), rtol=1e-5, atol=1e-6)
    mu, sigma = fid.statistics(f)
    assert abs(fid.frechet_to_features(f, mu, sigma)) < 1e-6 * np.trace(sigma)  # a set against itself


def test_bad_inception_files_are_one_clear_line(tmp_path, inception_file):
    with pytest.raises(ValueError, match="put pt_inception-2015-12-05-6726825d.pth in"):
        features.load_inception(None)  # offline, no file in the (temporary) hub cache
    other = tmp_path / "classifier.pth"
    torch.save(DomainClassifier(1, 10, 256).state_dict(), other)
    with pytest.raises(ValueError, match="not an Inception-v3 FID .* state dict") as err:
        features.load_inception(other)
    assert "\n" not in str(err.value)

    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    evil = tmp_path / "evil.pth"
    torch.save({"x": Payload()}, evil)
    with pytest.raises(ValueError, match="loads without running code"):
        features.load_inception(evil)
    with pytest.raises(ValueError, match="no such file"):
        features.load_inception(tmp_path / "missing.pth")
    # the hub cache is where it is looked for without a path
    hub = tmp_path / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / features.INCEPTION_FILES[0]).write_bytes(inception_file[0].read_bytes())
    assert features.find_inception_weights(None) == hub / features.INCEPTION_FILES[0]


# --- the domain classifier and pcdm fid -----------------------------------------------


def test_domain_classifier_is_trained_once_and_cached(cache, monkeypatch, capsys):
    space = features.domain_space("digits", progress=False)
    assert space.accuracy > 0.8 and space.metric == "domain FID (Fréchet classifier distance)"
    assert (cache / "features" / "domain-digits.safetensors").is_file()
    assert "accuracy" in capsys.readouterr().out

    def fail(*a, **k):
        raise AssertionError("retrained")

    monkeypatch.setattr(features, "train_domain_classifier", fail)
    again = features.domain_space("digits", progress=False)
    x = torch.from_numpy(load("digits", "test").images[:20]).permute(0, 3, 1, 2)
    np.testing.assert_array_equal(space.extract(x, 17, progress=False), again.extract(x, 17, progress=False))


def test_pcdm_fid_on_samples_end_to_end_and_bad_input(cache, tmp_path, capsys):
    test = load("digits", "test").images  # 297 real images as "samples"
    good = tmp_path / "good.npz"
    np.savez(good, images=test, K=17)
    assert main(["fid", "--samples", str(good), "--ref", "digits", "--ref-split", "test", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["metric"] == "domain FID (Fréchet classifier distance)" and out["n"] == out["n_ref"] == 297
    assert out["features"] == "domain:digits"
    cached = sorted((cache / "fid").iterdir())
    assert len(cached) == 1
    with np.load(cached[0]) as z:
        scale = np.trace(z["sigma"])
    assert abs(out["fid"]) < 1e-6 * scale  # the reference against itself
    assert main(["fid", "--samples", str(good), "--ref", "digits", "--n", "100", "--json"]) == 0
    far = json.loads(capsys.readouterr().out)
    assert far["n"] == 100 and far["n_ref"] == 1500 and far["fid"] > 0 and far["ref_split"] == "train"

    files_before = sorted(p.name for p in (cache / "fid").iterdir())
    small = tmp_path / "small.npz"
    np.savez(small, images=np.zeros((10, 4, 4), np.uint8), K=17)
    wrong_k = tmp_path / "k.npz"
    np.savez(wrong_k, images=test[:10], K=256)
    cases = [
        (["--samples", str(small), "--ref", "digits"], "images with K = 17, the reference"),
        (["--samples", str(wrong_k), "--ref", "digits"], "K = 256"),
        (["--samples", str(good), "--ref", "digits", "--n-ref", "5000"], "fewer than the 5000 asked"),
        (["--samples", str(good), "--ref", "digits", "--n", "1000"], "fewer than the 1000 asked"),
        (["--samples", str(good)], "give a RUN"),
        (["--samples", str(good), "--ref", "digits", "--features", "inception"], "nothing is downloaded"),
    ]
    for argv, message in cases:
        assert main(["fid", *argv]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err and "Traceback" not in err, err
    assert sorted(p.name for p in (cache / "fid").iterdir()) == files_before  # nothing written


def test_pcdm_fid_samples_a_run(tmp_path, capsys):
    run = tmp_path / "run"
    argv = [
        "train",
        "--model",
        "vdm",
        "--data",
        "digits",
        "--out",
        str(run),
        "--steps",
        "3",
        "--preset",
        "tiny",
    ]
    assert main([*argv, "--sample-steps", "0"]) == 0
    capsys.readouterr()
    saved = tmp_path / "drawn.npz"
    argv = ["fid", str(run), "--n", "30", "--steps", "3", "--ref-split", "test", "--save-samples", str(saved)]
    assert main([*argv, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 30 and out["sampler"] == "heun" and out["steps"] == 3 and out["fid"] > 0
    assert np.load(saved)["images"].shape == (30, 8, 8, 1)
    assert main(["fid", "--samples", str(saved), "--ref", "digits", "--ref-split", "test", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["fid"] == pytest.approx(out["fid"], rel=1e-6)  # the same images, scored from the file
