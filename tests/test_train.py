"""Training at scale: DDP equivalence, exact resume after SIGKILL, safe checkpoints, faults."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import train_one_and_two_processes
from safetensors.torch import load_file

from pcdm.checkpoint import RunError, load_run, save_tensors
from pcdm.cli import main
from pcdm.model import ModelConfig
from pcdm.presets import PRESETS
from pcdm.train import TrainConfig, batch_indices, train

ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
TRAIN = [sys.executable, "-m", "pcdm.cli", "train"]
COMMON = [
    "--data",
    "digits",
    "--preset",
    "tiny",
    "--log-every",
    "1",
    "--sample-steps",
    "0",
    "--device",
    "cpu",
]


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_batch_indices_shard_the_global_batch():
    # One process with batch 2b sees exactly the union of what two ranks with batch b see.
    idx = batch_indices(100, 16, seed=3, micro=7)
    assert len(set(idx)) == 16
    epoch = np.concatenate([batch_indices(100, 16, 3, m) for m in range(6)])
    assert len(set(epoch)) == 96  # a permutation, drop-last
    assert not np.array_equal(batch_indices(100, 16, 3, 0), batch_indices(100, 16, 3, 6))  # new epoch


def test_two_process_torchrun_matches_one_process(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    args = [*COMMON, "--steps", "6", "--model", "w-pcdm"]
    train_one_and_two_processes(one, two, args, port=29517)
    a, b = metrics(one), metrics(two)
    assert [m["step"] for m in a] == [m["step"] for m in b] == list(range(1, 7))
    np.testing.assert_allclose([m["loss"] for m in a], [m["loss"] for m in b], rtol=1e-4)
    wa, wb = load_file(str(one / "model.safetensors")), load_file(str(two / "model.safetensors"))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-3, atol=1e-5)
    cfg = json.loads((two / "config.json").read_text())
    assert cfg["train"]["batch"] == 8  # per rank; global batch 16


@pytest.mark.slow
def test_resume_after_sigkill_is_exact(tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    args = [*COMMON, "--steps", "300", "--ckpt-every", "50", "--model", "lp-pcdm"]
    subprocess.run([*TRAIN, "--out", str(full), *args], env=ENV, check=True, capture_output=True)
    proc = subprocess.Popen(
        [*TRAIN, "--out", str(killed), *args], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    target = killed / "ckpt" / "step_00000100"
    deadline = time.time() + 120
    while not target.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    last = sorted((killed / "ckpt").glob("step_*"))[-1]
    resumed_from = int(last.name.split("_")[1])
    assert 100 <= resumed_from < 300
    res = subprocess.run([*TRAIN, "--resume", str(killed)], env=ENV, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    a = {m["step"]: m["loss"] for m in metrics(full)}
    b = {m["step"]: m["loss"] for m in metrics(killed)}
    assert sorted(b) == list(range(1, 301))  # no duplicated or missing log lines
    after = [s for s in a if s > resumed_from]
    assert [a[s] for s in after] == [b[s] for s in after]  # bit-identical continuation
    for name in ("model.safetensors", "ema.safetensors"):
        wa, wb = load_file(str(full / name)), load_file(str(killed / name))
        for k in wa:
            assert torch.equal(wa[k], wb[k]), (name, k)


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_with_pickle_payload_is_refused(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--steps", "2", *COMMON]) == 0
    payload = _Payload()
    marker = tmp_path / "pwned"
    payload.marker = marker
    for name in ("ema.safetensors", "model.safetensors"):
        (run / name).write_bytes(pickle.dumps({"weight": payload}))
    with pytest.raises(RunError, match="not a valid safetensors"):
        load_run(run)
    ck = sorted((run / "ckpt").glob("step_*"))[-1]
    (ck / "optim.safetensors").write_bytes(pickle.dumps(payload))
    assert main(["train", "--resume", str(run), "--steps", "4"]) != 0
    assert not marker.exists()


def test_nan_checkpoint_is_never_written(tmp_path):
    with pytest.raises(RunError, match="non-finite"):
        save_tensors(tmp_path / "w.safetensors", {"w": torch.tensor([1.0, float("nan")])})
    assert not (tmp_path / "w.safetensors").exists()


def test_nonfinite_loss_skips_then_stops(tmp_path, monkeypatch):
    from pcdm import model as model_mod

    real = model_mod.PCDM.nelbo
    calls = {"n": 0, "bad": {2, 3}}

    def flaky(self, x, *a, **k):
        b = real(self, x, *a, **k)
        calls["n"] += 1
        if calls["n"] in calls["bad"]:
            b.diffusion = b.diffusion * float("nan")
        return b

    monkeypatch.setattr(model_mod.PCDM, "nelbo", flaky)
    mcfg = ModelConfig(model="w-pcdm", image_shape=(1, 8, 8), K=17, **PRESETS["tiny"]["model"])
    tcfg = TrainConfig(data="digits", steps=6, batch=8, sample_steps=0, log_every=1)
    with pytest.warns(UserWarning, match="non-finite"):
        out = train(mcfg, tcfg, tmp_path / "ok", device="cpu")
    assert out["step"] == 6
    for t in load_file(str(tmp_path / "ok" / "model.safetensors")).values():
        assert torch.isfinite(t).all()
    calls["n"], calls["bad"] = 0, set(range(100))
    with pytest.raises(RunError, match="consecutive non-finite"), pytest.warns(UserWarning):
        train(
            mcfg,
            TrainConfig(data="digits", steps=20, batch=8, sample_steps=0, max_bad_steps=3),
            tmp_path / "bad",
        )
    assert not (tmp_path / "bad" / "model.safetensors").exists()


def test_paper_presets_resolve_and_count_parameters(tmp_path, capsys):
    arr = np.random.default_rng(0).integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    np.save(tmp_path / "rgb.npy", arr)
    counts = {}
    for model in ("vdm", "w-pcdm"):
        code = main(
            [
                "train",
                "--preset",
                f"cifar10-{model}",
                "--data",
                str(tmp_path / "rgb.npy"),
                "--out",
                str(tmp_path / model),
                "--dry-run",
            ]
        )
        assert code == 0
        out = json.loads(capsys.readouterr().out)
        counts[model] = out["params"]
        assert out["train"]["ema"] == 0.9999 and out["train"]["lr"] == 2e-4
    # paper: 35M / 42M; ours (the README's table): 30.6M, and 30.6M + 7.8M for w-pcdm, whose
    # detail network has width 64 (+ the γ schedule's 2 parameters)
    assert counts == {"vdm": 30_593_157, "w-pcdm": 38_351_758}


def test_gpu_check_script_runs_on_cpu():
    root = Path(__file__).resolve().parents[1]
    res = subprocess.run(
        ["bash", str(root / "benchmarks" / "gpu_check.sh")],
        env=dict(ENV, SECONDS_PER_MODEL="0.5"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    rows = [json.loads(x) for x in res.stdout.splitlines() if x.startswith("{")]
    assert [r["model"] for r in rows] == ["vdm", "w-pcdm"]
    assert all(r["images_per_s"] > 0 and np.isfinite(r["loss"]) for r in rows)
    sampled = [ln.split() for ln in res.stdout.splitlines() if "images/s" in ln and ":" in ln.split()[1]]
    want = [(m, s) for m in ("vdm", "w-pcdm") for s in ("heun:4", "ancestral:8")]
    assert [(r[0], r[1]) for r in sampled] == want
    assert all(float(r[2]) > 0 for r in sampled)


def test_weight_decay_spares_the_schedule():
    """AdamW's decay never touches γ's parameters (it would drag γ(0) up every step), nor
    biases and norm gains; the networks' weight tensors are decayed."""
    from pcdm.model import PCDM
    from pcdm.train import param_groups

    model = PCDM(ModelConfig(model="w-pcdm", levels=2, image_shape=(1, 8, 8), K=17, width=8, depth=1))
    groups = param_groups(model, 0.5)
    decayed = {id(p) for p in groups[0]["params"]}
    assert groups[0]["weight_decay"] == 0.5 and groups[1]["weight_decay"] == 0.0
    named = dict(model.named_parameters())
    assert id(named["schedule.b"]) not in decayed and id(named["schedule.w"]) not in decayed
    assert id(named["nets.0.conv_in.weight"]) in decayed and id(named["nets.0.conv_in.bias"]) not in decayed
    before = {n: p.detach().clone() for n, p in named.items()}
    opt = torch.optim.AdamW(groups, lr=0.1)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # zero gradient: only weight decay moves anything
    assert torch.equal(named["schedule.b"], before["schedule.b"])
    assert torch.equal(named["nets.1.conv_in.bias"], before["nets.1.conv_in.bias"])
    assert not torch.equal(named["nets.1.conv_in.weight"], before["nets.1.conv_in.weight"])


def test_resume_is_exact_with_dropout_and_sample_grids(tmp_path):
    """Dropout draws from the global generator and in-training sample grids run in between:
    6 steps straight and 3 + --resume to 6 still give identical weights."""
    opts = [*COMMON, "--dropout", "0.1", "--sample-every", "3", "--sample-steps", "2", "--ckpt-every", "3"]
    assert main(["train", "--model", "w-pcdm", "--out", str(tmp_path / "a"), "--steps", "6", *opts]) == 0
    assert main(["train", "--model", "w-pcdm", "--out", str(tmp_path / "b"), "--steps", "3", *opts]) == 0
    assert main(["train", "--resume", str(tmp_path / "b"), "--steps", "6"]) == 0
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [m["loss"] for m in metrics(tmp_path / "a")] == [m["loss"] for m in metrics(tmp_path / "b")]


def test_resume_with_another_world_size_is_refused(tmp_path):
    run = tmp_path / "r"
    assert main(["train", "--model", "w-pcdm", "--out", str(run), "--steps", "2", *COMMON]) == 0
    ck = sorted((run / "ckpt").glob("step_*"))[-1] / "state.json"
    state = json.loads(ck.read_text())
    assert state["world"] == 1
    ck.write_text(json.dumps(dict(state, world=4)))
    with pytest.raises(RunError, match="4 process"):
        train(
            ModelConfig.from_dict(json.loads((run / "config.json").read_text())["model"]),
            TrainConfig(**json.loads((run / "config.json").read_text())["train"]),
            run,
            resume=True,
        )


def test_resume_survives_a_torn_log_and_bad_state_is_one_line(tmp_path, capsys):
    run = tmp_path / "r"
    assert main(["train", "--model", "w-pcdm", "--out", str(run), "--steps", "2", *COMMON]) == 0
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 3, "lo')  # a crash mid-write
    assert main(["train", "--resume", str(run), "--steps", "3"]) == 0
    assert [m["step"] for m in metrics(run)] == [1, 2, 3]
    (run / "ckpt" / ".tmp_step_00000009_1").mkdir()  # left by a crash mid-checkpoint
    assert main(["train", "--resume", str(run), "--steps", "4"]) == 0
    assert not list((run / "ckpt").glob(".tmp_step_*"))
    capsys.readouterr()
    state = sorted((run / "ckpt").glob("step_*"))[-1] / "state.json"
    state.write_text("[]")
    assert main(["train", "--resume", str(run), "--steps", "5"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a valid checkpoint state" in err
    assert (
        main(
            [
                "train",
                "--model",
                "w-pcdm",
                "--out",
                str(tmp_path / "k"),
                "--steps",
                "2",
                "--keep",
                "0",
                *COMMON,
            ]
        )
        == 2
    )
    assert "--keep must be ≥ 1" in capsys.readouterr().err


def test_torn_weight_mirrors_are_never_loaded_together(tmp_path):
    """The top-level model/EMA mirrors are two renames; if a crash leaves them from different
    steps, load_run takes the newest complete checkpoint (a consistent pair) instead."""
    from pcdm.checkpoint import saved_step

    run = tmp_path / "r"
    assert (
        main(["train", "--model", "w-pcdm", "--out", str(run), "--steps", "4", "--ckpt-every", "2", *COMMON])
        == 0
    )
    assert saved_step(run / "ema.safetensors") == saved_step(run / "model.safetensors") == "4"
    newest = run / "ckpt" / "step_00000004"
    (run / "ema.safetensors").write_bytes((run / "ckpt" / "step_00000002" / "ema.safetensors").read_bytes())
    model, _ = load_run(run)
    want = load_file(newest / "ema.safetensors")
    assert all(torch.equal(v, want[k]) for k, v in model.state_dict().items())
