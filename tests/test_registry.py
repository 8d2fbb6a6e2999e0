"""A map is the one extension point: a map defined here, outside the package, registered
with one call, trains, evaluates, samples and compresses through the real command line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pcdm import PCDM, ModelConfig, registry
from pcdm.cli import build_parser, main
from pcdm.data import load
from pcdm.maps import HierarchicalMap, check_divisible
from pcdm.presets import get_preset


def block_rotation() -> torch.Tensor:
    """A fixed orthogonal 4×4 whose first row is (1, 1, 1, 1)/2, the rest not Haar's."""
    m = torch.tensor([[1.0, 1, 1, 1], [1, 2, 0, -3], [0, 1, -2, 1], [3, 0, 1, -1]], dtype=torch.float64).T
    q, r = torch.linalg.qr(m)
    return (q * torch.sign(torch.diagonal(r))).T


class BlockRotation(HierarchicalMap):
    """Two levels from each 2×2 block [[a, b], [c, d]]: v = Q (a, b, c, d) with Q orthogonal
    and Q's first row (1, 1, 1, 1)/2. Level 0 = v₀ (the block sum / 2, C channels), level
    1 = v₁…v₃ (3C channels), conditioned on level 0. Orthonormal, so exact."""

    name = "block-rotation"

    def __init__(self, levels: int = 2):
        if levels != 2:
            raise ValueError(f"block-rotation has 2 levels, got {levels}")
        super().__init__(2)
        self.q = block_rotation()

    def level_shapes(self, chw):
        c, h, w = chw
        check_divisible(chw, 2)
        return [(c, h // 2, w // 2), (3 * c, h // 2, w // 2)]

    def forward(self, f):
        check_divisible(f.shape, 2)
        u = F.pixel_unshuffle(f, 2)  # (N, 4C, h, w): channel 4c + j, j the position in the block
        n, _, h, w = u.shape
        v = torch.einsum("ij,ncjhw->nichw", self.q.to(f.dtype), u.view(n, -1, 4, h, w))
        return [v[:, 0], v[:, 1:].reshape(n, -1, h, w)]

    def reconstruct(self, cs):
        if len(cs) == 1:  # the coarse image alone (previews)
            return cs[0]
        n, c, h, w = cs[0].shape
        v = torch.cat([cs[0][:, None], cs[1].view(n, 3, c, h, w)], 1)
        u = torch.einsum("ij,nichw->ncjhw", self.q.to(v.dtype), v).reshape(n, 4 * c, h, w)
        return F.pixel_shuffle(u, 2)

    def condition(self, cs, k):
        return None if k == 0 else cs[0]


@pytest.fixture
def rot_model():
    registry.register("rot-pcdm", BlockRotation, "test: an orthogonal rotation of each 2×2 block", levels=2)
    yield "rot-pcdm"
    registry.unregister("rot-pcdm")


def test_the_test_map_is_orthonormal():
    m = BlockRotation()
    chw = (2, 4, 4)
    A = torch.autograd.functional.jacobian(
        lambda v: torch.cat([c.reshape(-1) for c in m(v.reshape(1, *chw))]),
        torch.zeros(32, dtype=torch.float64),
    )
    torch.testing.assert_close(A.T @ A, torch.eye(32, dtype=torch.float64), atol=1e-12, rtol=0)
    f = torch.randn(3, *chw, dtype=torch.float64)
    torch.testing.assert_close(m.reconstruct(m(f)), f)


def test_registry_is_where_models_come_from(rot_model):
    assert registry.names()[:5] == ("vdm", "c-vdm", "lp-pcdm", "w-pcdm", "lift-pcdm")
    assert rot_model in registry.names()
    cfg = ModelConfig(model=rot_model, levels=5, image_shape=(1, 8, 8), width=8, depth=1)
    assert cfg.levels == 2 and isinstance(PCDM(cfg).map, BlockRotation)  # S fixed by the spec
    assert get_preset("cifar10-rot-pcdm")["model"]["model"] == rot_model
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    (model_arg,) = [a for a in train._actions if a.dest == "model"]
    assert rot_model in model_arg.choices
    with pytest.raises(ValueError, match="already registered"):
        registry.register(rot_model, BlockRotation, "again")
    with pytest.raises(ValueError, match="unknown model 'nope'; choose one of vdm, c-vdm"):
        ModelConfig(model="nope")


def test_out_of_package_map_trains_evaluates_samples_and_compresses(rot_model, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["--data", "digits", "--preset", "tiny", "--sample-steps", "0", "--limit", "256"]
    assert main(["train", "--model", rot_model, "--out", str(run), "--steps", "3", *args]) == 0
    assert json.loads((run / "config.json").read_text())["model"]["model"] == rot_model
    capsys.readouterr()
    assert main(["eval", str(run), "--limit", "16", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_images"] == 16 and np.isfinite(out["bpd"]) and 0 < out["bpd"] < 20
    assert out["bpd"] == pytest.approx(out["bpd_level1"] + out["bpd_level2"] + out["bpd_recon"], rel=1e-5)
    assert main(["sample", str(run), "-n", "2", "--out", str(tmp_path / "s.png"), "--steps", "3"]) == 0
    assert (tmp_path / "s.png").is_file()
    images = load("digits", "test", limit=8).images[..., 0]
    np.save(tmp_path / "x.npy", images)
    blob = tmp_path / "x.pcdm"
    compress = ["compress", str(run), str(tmp_path / "x.npy"), "-o", str(blob), "--steps", "2"]
    capsys.readouterr()
    assert main([*compress, "--container", "bits-back", "--json", "--quiet"]) == 0
    stats = json.loads(capsys.readouterr().out)  # the model's bits-back coder, not the classical one
    assert stats["container"] == "bits-back" and stats["seed_images"] < stats["n_images"] == 8
    back = tmp_path / "y.npy"
    assert main(["decompress", str(run), str(blob), "-o", str(back), "--quiet"]) == 0
    assert np.array_equal(np.load(back), images)
