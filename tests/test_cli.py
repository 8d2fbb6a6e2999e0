"""End to end through the real command line: train → eval → sample, and clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pcdm.cli import main

TINY = ["--preset", "tiny", "--sample-steps", "0", "--log-every", "5"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "run"
    code = main(
        [
            "train",
            "--model",
            "w-pcdm",
            "--data",
            "fashion-mnist",
            "--limit",
            "256",
            "--out",
            str(out),
            "--steps",
            "30",
            *TINY,
            "--sample-steps",
            "4",
        ]
    )
    assert code == 0
    return out


def test_train_writes_a_complete_run(run):
    import os

    mask = os.umask(0)
    os.umask(mask)
    for name in ("config.json", "ema.safetensors", "model.safetensors"):  # the user's umask, not 0600
        assert (run / name).stat().st_mode & 0o777 == 0o666 & ~mask, name
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"]["model"] == "w-pcdm" and cfg["data"]["K"] == 256
    assert cfg["model"]["image_shape"] == [1, 28, 28]
    for name in ("model.safetensors", "ema.safetensors", "metrics.jsonl"):
        assert (run / name).is_file()
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [5, 10, 15, 20, 25, 30]
    assert all(np.isfinite(m["loss"]) for m in lines)
    # γ(0) and γ(1) of the schedule are logged (docs/math.md §3: where σ₀ goes matters)
    assert all(m["gamma_0"] < m["gamma_1"] and np.isfinite(m["gamma_0"]) for m in lines)
    grid = sorted((run / "samples").glob("*.png"))
    assert grid and Image.open(grid[-1]).size[0] > 28


def test_eval_parts_add_up(run, capsys):
    assert main(["eval", str(run), "--limit", "64", "--n-t", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_images"] == 64 and out["dims"] == 784
    assert np.isfinite(out["bpd"]) and out["bpd_se"] > 0
    assert out["bpd"] == pytest.approx(out["bpd_prior"] + out["bpd_diffusion"] + out["bpd_recon"], rel=1e-5)
    assert out["bpd"] == pytest.approx(out["bpd_level1"] + out["bpd_level2"] + out["bpd_recon"], rel=1e-5)
    assert main(["eval", str(run), "--limit", "16", "--steps", "20", "--json"]) == 0
    assert np.isfinite(json.loads(capsys.readouterr().out)["bpd"])


def test_sample_writes_grid_and_level_previews(run, tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert main(["sample", str(run), "-n", "4", "--out", str(out), "--steps", "5"]) == 0
    img = Image.open(out)
    assert img.size == (2 * 29 + 1, 2 * 29 + 1) and img.mode == "L"  # 2×2 grid of 28×28, 1-px borders
    coarse = Image.open(tmp_path / "grid_level1.png")
    assert coarse.size == (2 * 15 + 1, 2 * 15 + 1)  # 14×14 tiles
    assert not (tmp_path / "grid_level2.png").exists()  # the finest level is the grid itself


def _err(argv, capsys) -> str:
    code = main(argv)
    assert code != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_bad_inputs_give_one_clear_line(run, tmp_path, capsys):
    out = str(tmp_path / "x")
    assert "unknown" in _err(["train", "--data", "no-such-set", "--out", out, "--steps", "1"], capsys).lower()
    _err(["train", "--data", str(tmp_path / "missing.npy"), "--out", out, "--steps", "1"], capsys)
    bad = tmp_path / "corrupt.npy"
    bad.write_bytes(b"\x93NUMPY garbage")
    _err(["train", "--data", str(bad), "--out", out, "--steps", "1"], capsys)
    np.save(tmp_path / "float.npy", np.zeros((4, 8, 8), np.float32))
    assert "float32" in _err(
        ["train", "--data", str(tmp_path / "float.npy"), "--out", out, "--steps", "1"], capsys
    )
    np.save(tmp_path / "odd.npy", np.zeros((4, 10, 10), np.uint8))
    msg = _err(
        ["train", "--data", str(tmp_path / "odd.npy"), "--levels", "3", "--out", out, "--steps", "1"], capsys
    )
    assert "10×10" in msg and "divisible" in msg
    folder = tmp_path / "mixed"
    folder.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "a.png")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(folder / "b.png")
    assert "size" in _err(["eval", str(run), "--data", str(folder)], capsys).lower()
    assert "shape" in _err(["eval", str(run), "--data", "digits"], capsys)
    assert "run folder" in _err(["eval", str(tmp_path)], capsys)
    assert "already holds a run" in _err(
        ["train", "--data", "digits", "--out", str(run), "--steps", "1"], capsys
    )


def test_unknown_model_exits_nonzero_without_traceback():
    res = subprocess.run(
        [sys.executable, "-m", "pcdm.cli", "train", "--model", "gan", "--data", "digits"],
        capture_output=True,
        text=True,
    )
    assert res.returncode != 0 and "Traceback" not in res.stderr and "invalid choice" in res.stderr


def test_lift_pcdm_end_to_end(tmp_path, capsys):
    """The fifth model through the command line: train, eval (parts add up), sample."""
    run = tmp_path / "lift"
    args = ["train", "--model", "lift-pcdm", "--data", "digits", "--out", str(run), "--steps", "5", *TINY]
    assert main(args) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--limit", "32", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == "lift-pcdm" and out["n_images"] == 32
    parts = out["bpd_level1"] + out["bpd_level2"]  # each level holds its own decoder
    assert abs(parts - out["bpd"]) < 1e-4
    assert set(out["diffusion_bands"]) == {"level1", "level2"}
    assert main(["sample", str(run), "-n", "4", "--out", str(tmp_path / "s.png"), "--steps", "3"]) == 0
    assert Image.open(tmp_path / "s_level1.png").size == (2 * 5 + 1, 2 * 5 + 1)  # 2×2 grid of 4×4 + borders


def test_folder_eval_is_whole_and_runs_survive_another_cwd(tmp_path, monkeypatch, capsys):
    """Data that is not the run's own is evaluated whole by default; a run trained with a
    relative --data path evaluates from another working directory; a grayscale image among
    RGB ones is named as a channel mismatch."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 24), ("test", 7)):
        (tmp_path / "imgs" / split).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
                tmp_path / "imgs" / split / f"{i}.png"
            )
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    assert (
        main(["train", "--model", "w-pcdm", "--data", "imgs/train", "--out", str(run), "--steps", "2", *TINY])
        == 0
    )
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["train"]["data"] == str(tmp_path / "imgs" / "train")  # stored resolved
    other = tmp_path / "elsewhere"
    other.mkdir()
    monkeypatch.chdir(other)
    capsys.readouterr()
    assert main(["eval", str(run), "--json"]) == 0  # its own data: the held-out 10 %
    own = json.loads(capsys.readouterr().out)
    assert own["split"] == "test" and own["n_images"] == 24 - int(24 * 0.9)
    assert main(["eval", str(run), "--data", str(tmp_path / "imgs" / "test"), "--json"]) == 0
    whole = json.loads(capsys.readouterr().out)
    assert whole["n_images"] == 7 and whole["split"] == "all"
    assert whole["classical_bpd"]["png"] > 0  # a reference point beside the bound
    Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(
        tmp_path / "imgs" / "test" / "gray.png"
    )
    assert main(["eval", str(run), "--data", str(tmp_path / "imgs" / "test")]) == 2
    err = capsys.readouterr().err
    assert "differ in channels" in err and "gray.png" in err and len(err.strip().splitlines()) == 1


def test_help_shows_defaults_and_training_says_what_next(tmp_path, capsys):
    for command in ("train", "eval", "sample", "ood"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "(default:" in capsys.readouterr().out, command
    run = tmp_path / "r"
    assert (
        main(["train", "--model", "w-pcdm", "--data", "digits", "--out", str(run), "--steps", "2", *TINY])
        == 0
    )
    err = capsys.readouterr().err
    assert "EMA bound" in err and "held-out" in err and "lower is better" in err
    assert str(run / "ema.safetensors") in err and f"pcdm eval {run}" in err
