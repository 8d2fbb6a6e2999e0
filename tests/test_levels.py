"""Per-level training (docs/math.md §10, "Per-level training"): level shares of the bound,
per-level run folders, concurrent level jobs, exact per-level resume, the budget allocator,
the lp-pcdm-cpu preset."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import train_one_and_two_processes
from safetensors.torch import load_file

from pcdm import levels
from pcdm.checkpoint import RunError, load_run
from pcdm.cli import main
from pcdm.data import load
from pcdm.model import PCDM, ModelConfig, Noise, count_parameters
from pcdm.presets import PRESETS

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
COMMON += ["--limit", "256", "--schedule", "fixed"]


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(name: str) -> PCDM:
    torch.manual_seed(0)
    cfg = ModelConfig(model=name, levels=2, image_shape=(1, 8, 8), K=17, width=8, depth=1, attention=False)
    return PCDM(cfg).double()


@pytest.mark.parametrize("name", ["lp-pcdm", "lift-pcdm"])
def test_level_shares_sum_to_the_bound_on_the_same_draws(name):
    """Σ_k (what level k's job reports) = the combined −ELBO, image by image, on the same x
    and noise; and level k's share does not depend on any other level's network."""
    model = tiny(name)
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 17, (6, 1, 8, 8), generator=g)
    noise = Noise.draw(x.shape, 2, g, dtype=torch.float64)
    with torch.no_grad():
        total = model.nelbo(x, noise=noise).total
        shares = [levels.LevelLoss(model, k)(x, noise=noise)[0] for k in range(2)]
        torch.testing.assert_close(shares[0] + shares[1], total, rtol=1e-12, atol=1e-9)
        other = copy.deepcopy(model)  # level 1's network changed: level 0's share is not
        for p in other.nets[1].parameters():
            p.add_(torch.randn_like(p))
        torch.testing.assert_close(levels.LevelLoss(other, 0)(x, noise=noise)[0], shares[0])
        assert not torch.allclose(levels.LevelLoss(other, 1)(x, noise=noise)[0], shares[1])


def test_budget_split_and_allocation_rule():
    assert levels.split_budget(10, [0.25, 0.75]) == [3, 7]
    assert levels.split_budget(7, [1 / 3] * 3) == [3, 2, 2]
    assert sum(levels.split_budget(101, [0.1, 0.2, 0.7])) == 101
    assert levels.budget_weights("proportional", [196, 588]) == [0.25, 0.75]
    assert levels.budget_weights("1:3", [196, 588]) == [0.25, 0.75]
    assert levels.budget_weights("auto", [196, 588]) is None
    for bad in ("1:2:3", "a:b", "0:0", "-1:2"):
        with pytest.raises(ValueError):
            levels.budget_weights(bad, [196, 588])
    # auto: unmeasured levels first, then the largest recent d(bits)/d(second)
    assert levels.next_level([None, None]) == 0
    assert levels.next_level([0.5, None]) == 1
    assert levels.next_level([0.5, 0.8]) == 1
    assert levels.next_level([0.9, 0.8, -0.1]) == 0
    # synthetic diminishing returns: gain_k(n) = a_k / (1 + n_k); the rule equalises gains
    a, given = [4.0, 1.0], [0, 0]
    gains = [None, None]
    for _ in range(20):
        k = levels.next_level(gains)
        given[k] += 1
        gains[k] = a[k] / (1 + given[k])
    assert given[0] > 3 * given[1] > 0  # the level that still learns fastest gets most rounds


def test_parse_levels():
    assert levels.parse_levels("0,1", 2) == [0, 1]
    for bad in ("2", "0,0", "x", ""):
        with pytest.raises(ValueError):
            levels.parse_levels(bad, 2)


def test_per_level_run_mechanics_refusal_and_exact_resume(tmp_path, capsys):
    """Fast: levels trained one at a time into one run; a level never trained is one line;
    the run knows each level's step; resuming a level is exact."""
    run = tmp_path / "run"
    opts = ["--model", "lp-pcdm", "--levels", "2", *COMMON]
    assert (
        main(["train", "--out", str(run), *opts, "--levels-only", "1", "--steps", "4", "--lr", "1e-2"]) == 0
    )
    capsys.readouterr()
    with pytest.raises(RunError, match="level 0 was never trained") as err:
        load_run(run)
    assert "\n" not in str(err.value)
    assert main(["eval", str(run), "--limit", "8"]) != 0
    out = capsys.readouterr()
    assert "level 0 was never trained" in out.err and len(out.err.strip().splitlines()) == 1
    assert main(["train", "--resume", str(run)]) != 0  # a per-level run resumes level by level
    assert levels.level_steps(run) == {0: None, 1: 4}
    # level 0 in two halves with a resume, vs the same in one go in another run
    assert main(["train", "--out", str(run), *opts, "--levels-only", "0", "--steps", "2"]) == 0
    assert main(["train", "--resume", str(run), "--levels-only", "0", "--steps", "4"]) == 0
    other = tmp_path / "other"
    assert main(["train", "--out", str(other), *opts, "--levels-only", "0,1", "--steps", "4"]) == 0
    assert levels.level_steps(run) == {0: 4, 1: 4}
    a = load_file(str(levels.level_dir(run, 0) / "ema.safetensors"))
    b = load_file(str(levels.level_dir(other, 0) / "ema.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # level 1 had its own options (lr 1e-2): its weights differ from the 2e-3 run's
    a1 = load_file(str(levels.level_dir(run, 1) / "ema.safetensors"))
    b1 = load_file(str(levels.level_dir(other, 1) / "ema.safetensors"))
    assert any(not torch.equal(a1[k], b1[k]) for k in a1 if k.startswith("nets.1."))
    assert json.loads((levels.level_dir(run, 1) / "train.json").read_text())["lr"] == 1e-2
    model, _ = load_run(run)
    for k in (0, 1):  # the assembled model holds each level's newest EMA weights
        part = load_file(str(levels.level_dir(run, k) / "ema.safetensors"))
        sd = model.state_dict()
        assert all(torch.equal(sd[n], t) for n, t in part.items() if n.startswith(f"nets.{k}."))
    # a job with another model config is refused on an existing run
    assert (
        main(["train", "--out", str(run), *opts, "--width", "24", "--levels-only", "1", "--steps", "1"]) != 0
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lp-pcdm", "lift-pcdm"])
def test_two_concurrent_level_jobs_give_a_run_that_evaluates_samples_and_codes(tmp_path, capsys, name):
    run = tmp_path / "run"
    opts = ["--out", str(run), "--model", name, "--levels", "2", "--steps", "6", *COMMON]
    procs = [
        subprocess.Popen([*TRAIN, *opts, "--levels-only", str(k)], env=ENV, stderr=subprocess.PIPE, text=True)
        for k in (0, 1)
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
    assert levels.level_steps(run) == {0: 6, 1: 6}
    capsys.readouterr()
    assert main(["eval", str(run), "--limit", "16", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert np.isfinite(out["bpd"]) and 0 < out["bpd"] < 20
    assert main(["sample", str(run), "-n", "2", "--out", str(tmp_path / "s.png"), "--steps", "3"]) == 0
    assert (tmp_path / "s.png").is_file()
    images = load("digits", "test", limit=6).images[..., 0]
    np.save(tmp_path / "x.npy", images)
    blob, back = tmp_path / "x.pcdm", tmp_path / "y.npy"
    compress = ["compress", str(run), str(tmp_path / "x.npy"), "-o", str(blob), "--steps", "2"]
    capsys.readouterr()
    assert main([*compress, "--container", "bits-back", "--json", "--quiet"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["container"] == "bits-back"
    assert main(["decompress", str(run), str(blob), "-o", str(back), "--quiet"]) == 0
    assert np.array_equal(np.load(back), images)
    ood = ["ood", str(run), "--in", "digits", "--ood", "uniform", "--limit", "32", "--n-t", "2"]
    capsys.readouterr()
    assert main([*ood, "--entropy-count", "32", "--min-images", "8", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)


def test_budget_driver_runs_rounds(tmp_path):
    run = tmp_path / "run"
    opts = ["--model", "lp-pcdm", "--levels", "2", *COMMON, "--steps", "8"]
    assert main(["train", "--out", str(run), *opts, "--level-budget", "auto", "--level-rounds", "4"]) == 0
    rounds = [json.loads(ln) for ln in (run / "levels" / "budget.jsonl").read_text().splitlines()]
    assert [r["level"] for r in rounds[:2]] == [0, 1] and len(rounds) == 4
    steps = levels.level_steps(run)
    assert steps[0] + steps[1] == 8 and min(steps.values()) >= 2
    prop = tmp_path / "prop"
    assert main(["train", "--out", str(prop), *opts, "--level-budget", "proportional"]) == 0
    assert levels.level_steps(prop) == {0: 2, 1: 6}  # 8 × (16 : 48) dimensions of an 8×8 image


@pytest.mark.parametrize("name", ["lp-pcdm", "lift-pcdm"])
def test_oracle_levels_assembled_separately_give_the_entropy(name):
    """Bayes-optimal level denoisers, each level's share computed by its own job (its own
    model copy whose other networks are random): Σ shares − (−log P(x)) ≈ 0."""
    from test_oracle import PI, LiftOracle, Oracle, check_zero, exact_nll, make_model, sample_x

    base = make_model(name, 2)
    jobs = []
    for k in range(2):
        m = copy.deepcopy(base)
        with torch.no_grad():
            for j in range(2):
                if j != k:
                    for p in m.nets[j].parameters():
                        p.normal_()
        oracle = (LiftOracle if name == "lift-pcdm" else Oracle)(m, PI)
        jobs.append(levels.LevelLoss(m, k, denoiser=oracle))
    gen = torch.Generator().manual_seed(77)
    gaps = []
    with torch.no_grad():
        for _ in range(24):
            x = sample_x(PI, 1500, gen)
            noise = Noise.draw(x.shape, 2, gen, dtype=torch.float64)
            nats = sum(job(x, noise=noise)[0] for job in jobs)
            gaps.append(((nats - exact_nll(PI, x)) / x[0].numel()).mean())
    check_zero(torch.stack(gaps), f"{name} levels assembled separately")


def test_lp_pcdm_cpu_preset_parameter_count():
    m = PRESETS["lp-pcdm-cpu"]["model"]
    assert m["model"] == "lp-pcdm" and m["attention"] is False and m["detail_width"] == 16
    assert PRESETS["lp-pcdm-cpu"]["train"]["t_sampling"] == "importance"
    model = PCDM(ModelConfig(**m, image_shape=(1, 28, 28), K=256))
    assert count_parameters(model) == 273_892


@pytest.mark.slow
def test_torchrun_inside_a_level_matches_one_process(tmp_path):
    """DDP on 2 processes for level 1 alone = one process with the same global batch."""
    args = [*COMMON, "--model", "lp-pcdm", "--levels", "2", "--steps", "4", "--levels-only", "1"]
    one, two = tmp_path / "one", tmp_path / "two"
    train_one_and_two_processes(one, two, args, port=29531)
    assert levels.level_steps(two) == {0: None, 1: 4}
    wa = load_file(str(levels.level_dir(one, 1) / "model.safetensors"))
    wb = load_file(str(levels.level_dir(two, 1) / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        if k == "nets.1.conv_out.bias":
            # a constant output is projected out of the detail subspace (Πₖ ε̂, docs/math.md §3):
            # its gradient is 0 up to rounding, which Adam's normalisation turns into ±lr steps
            continue
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-3, atol=1e-5, msg=k)
    la, lb = (
        [json.loads(ln)["loss"] for ln in (levels.level_dir(r, 1) / "metrics.jsonl").read_text().splitlines()]
        for r in (one, two)
    )
    assert len(la) == 4
    np.testing.assert_allclose(la, lb, rtol=1e-5)
    start = PCDM(ModelConfig.from_dict(json.loads((one / "config.json").read_text())["model"]))
    moved = [k for k in wa if k.startswith("nets.1.") and not torch.equal(wa[k], start.state_dict()[k])]
    assert moved  # level 1 trained


@pytest.mark.slow
def test_budget_driver_under_torchrun_matches_one_process(tmp_path):
    """--level-budget under torchrun: every round is data-parallel in the same two processes
    (one process group for all rounds; before, the second round hung joining it again), and
    the rounds give the levels the steps one process with the same global batch gives them."""
    args = [*COMMON, "--model", "lp-pcdm", "--levels", "2", "--steps", "6"]
    args += ["--level-budget", "proportional", "--sample-steps", "0"]
    one, two = tmp_path / "one", tmp_path / "two"
    res = train_one_and_two_processes(one, two, args, port=29533)
    assert res.stderr.count("levels at step") == 1  # one report, from rank 0
    assert levels.level_steps(two) == levels.level_steps(one) == {0: 2, 1: 4}
    rounds = (two / "levels" / "budget.jsonl").read_text().splitlines()
    assert len(rounds) == 2  # written by rank 0 only
    for k in (0, 1):
        la, lb = (
            [
                json.loads(ln)["loss"]
                for ln in (levels.level_dir(r, k) / "metrics.jsonl").read_text().splitlines()
            ]
            for r in (one, two)
        )
        np.testing.assert_allclose(la, lb, rtol=1e-5)


def test_levels_only_is_a_generated_flag_and_a_config_key(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text('levels_only = "1"\nlevel_budget = "proportional"\n')
    args = ["train", "--out", str(tmp_path / "r"), *COMMON, "--model", "lp-pcdm", "--steps", "2", "--dry-run"]
    assert main([*args, "--config", str(cfg)]) == 0
    train = json.loads(capsys.readouterr().out)["train"]
    assert train["levels_only"] == "1" and train["level_budget"] == "proportional"
    assert main([*args, "--levels-only", "0,1"]) == 0
    assert json.loads(capsys.readouterr().out)["train"]["levels_only"] == "0,1"
    assert not (tmp_path / "r").exists()
