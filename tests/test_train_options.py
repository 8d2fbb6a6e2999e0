"""`pcdm train`'s options come from the config dataclasses, and `--config FILE` re-runs a run."""

from __future__ import annotations

import json
import typing
from dataclasses import fields

import numpy as np
import pytest

from pcdm.cli import build_parser, main
from pcdm.cli.train import DERIVED, _scalar_type
from pcdm.model import ModelConfig
from pcdm.train import TrainConfig


@pytest.fixture
def data(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (24, 8, 8), dtype=np.uint8)
    np.save(tmp_path / "x.npy", arr)
    return str(tmp_path / "x.npy")


def dry_run(capsys, *args) -> dict:
    assert main(["train", "--dry-run", "--steps", "1", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_every_scalar_field_is_a_flag():
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    dests = {a.dest for a in train._actions}
    for cls in (ModelConfig, TrainConfig):
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            if f.name not in DERIVED and _scalar_type(hints[f.name]) is not None:
                assert f.name in dests, f"{cls.__name__}.{f.name} has no flag"
    flags = {s for a in train._actions for s in a.option_strings}
    # the names users type, including the ones the hand-written lists used to miss
    assert {"--weight-decay", "--beta2", "--no-attention", "--detail-width", "--t-sampling"} <= flags


def test_flags_override_the_preset_and_only_when_given(data, tmp_path, capsys):
    base = dry_run(capsys, "--data", data, "--out", str(tmp_path / "r"), "--preset", "tiny")
    assert base["train"]["weight_decay"] == 0.0 and base["model"]["attention"] is False
    got = dry_run(
        capsys, "--data", data, "--out", str(tmp_path / "r"), "--preset", "tiny",
        "--weight-decay", "0.05", "--beta2", "0.95", "--lattice-posterior", "--model", "vdm",
    )  # fmt: skip
    assert got["train"]["weight_decay"] == 0.05 and got["train"]["beta2"] == 0.95
    assert got["model"]["lattice_posterior"] is True and got["model"]["model"] == "vdm"
    assert {k: v for k, v in got["train"].items() if k not in ("weight_decay", "beta2")} == {
        k: v for k, v in base["train"].items() if k not in ("weight_decay", "beta2")
    }


def test_a_runs_config_json_reruns_as_it_is(data, tmp_path, capsys):
    first = dry_run(
        capsys, "--data", data, "--out", str(tmp_path / "a"), "--preset", "tiny", "--model", "lp-pcdm",
        "--detail-width", "8", "--t-sampling", "importance", "--lr", "0.001",
    )  # fmt: skip
    saved = tmp_path / "config.json"
    saved.write_text(json.dumps({"model": first["model"], "train": first["train"], "data": {"K": 256}}))
    again = dry_run(capsys, "--config", str(saved), "--out", str(tmp_path / "b"), "--preset", "tiny")
    assert again == first
    # flags still win over the file; a TOML file of flat keys works too
    toml = tmp_path / "over.toml"
    toml.write_text('model = "vdm"\nwidth = 12\nlr = 0.0005\n')
    out = str(tmp_path / "c")
    got = dry_run(capsys, "--data", data, "--config", str(toml), "--out", out, "--width", "10")
    assert (got["model"]["model"], got["model"]["width"], got["train"]["lr"]) == ("vdm", 10, 0.0005)


@pytest.mark.parametrize(
    "text,suffix,message",
    [
        ('{"model": {"widht": 3}}', ".json", "unknown model option(s) widht"),
        ("lr = 0.1\nfoo = 2\n", ".toml", "unknown option(s) foo"),
        ("{not json", ".json", "not valid json"),
    ],
)
def test_bad_config_files_are_one_line(data, tmp_path, capsys, text, suffix, message):
    path = tmp_path / f"bad{suffix}"
    path.write_text(text)
    code = main(["train", "--dry-run", "--steps", "1", "--data", data, "--config", str(path), "--out", "r"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and "\n" not in err
    assert main(["train", "--data", data, "--config", str(tmp_path / "missing.json"), "--out", "r"]) == 2
