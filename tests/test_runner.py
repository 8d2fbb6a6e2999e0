"""benchmarks/run.py: experiment files, budgets as steps, and one tiny experiment end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, load_benchmark


@pytest.fixture(scope="module")
def runner():
    return load_benchmark("run")


def write(tmp_path: Path, text: str, name: str = "exp.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


RUNS = """
[[runs]]
name = "vdm"
model = "vdm"
[[runs]]
name = "w"
model = "w-pcdm"
overrides = { width = 8 }
"""


def test_every_experiment_file_loads(runner):
    files = sorted((ROOT / "benchmarks" / "experiments").glob("*.toml"))
    assert files, "benchmarks/experiments/ holds no experiment"
    for path in files:
        exp = runner.load_experiment(path)
        assert exp.name == path.stem and exp.runs and exp.reference in {r.name for r in exp.runs}


@pytest.mark.parametrize(
    "text, message",
    [
        ('title = "t"\ndata = "digits"\ncolour = 1\n[budget]\nsteps = 1\n' + RUNS, "unknown key(s) colour"),
        ('title = "t"\ndata = "digits"\n[budget]\nsteps = 1\nminutes = 2\n' + RUNS, "exactly one of"),
        ('title = "t"\ndata = "digits"\n[budget]\nsteps = 1\n[eval]\nreference = "x"\n' + RUNS, "not a run"),
        ('title = "t"\ndata = "digits"\n[budget]\nsteps = 1\n', "no [[runs]]"),
        ('title = "t"\n[budget]\nsteps = 1\n' + RUNS, "missing data"),
        ('title = "t"\ndata = "digits"\n[budget]\nsteps = 1\n[[runs]]\nname = "a"\n', "needs a name"),
        ("title = ", "not valid TOML"),
    ],
)
def test_bad_experiment_is_one_line_naming_the_file(runner, tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(SystemExit) as err:
        runner.load_experiment(path)
    assert str(path) in str(err.value) and message in str(err.value)
    assert "\n" not in str(err.value)


def test_time_budgets_become_steps_at_the_measured_speeds(runner, tmp_path):
    head = 'title = "t"\ndata = "digits"\n[eval]\nreference = "vdm"\n'
    exp = runner.load_experiment(write(tmp_path, head + "[budget]\nreference_steps = 1000\n" + RUNS))
    # w is 2.5× faster per step than vdm: in vdm's time for 1000 steps it takes 2500.
    assert runner.steps_for(exp, {"vdm": 0.5, "w": 0.2}) == {"vdm": 1000, "w": 2500}
    exp = runner.load_experiment(write(tmp_path, head + "[budget]\nminutes = 2\n" + RUNS))
    assert runner.steps_for(exp, {"vdm": 0.5, "w": 0.2}) == {"vdm": 240, "w": 600}
    exp = runner.load_experiment(write(tmp_path, head + "[budget]\nsteps = 7\n" + RUNS))
    assert runner.steps_for(exp, None) == {"vdm": 7, "w": 7}
    exp = runner.load_experiment(write(tmp_path, head + "[budget]\nminutes = 1\n" + RUNS))
    with pytest.raises(ValueError):
        runner.steps_for(exp, None)


def test_overrides_reach_the_trained_config(runner, tmp_path):
    """A run's overrides are ModelConfig/TrainConfig fields: pcdm train resolves them."""
    import subprocess
    import sys

    text = 'title = "t"\ndata = "digits"\n[budget]\nsteps = 3\n' + RUNS
    exp = runner.load_experiment(write(tmp_path, text))
    w = exp.runs[1]
    cmd = runner.train_command(exp, w, tmp_path / "w", 3) + ["--dry-run"]
    out = subprocess.run([sys.executable, "-m", "pcdm.cli", *cmd], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    cfg = json.loads(out.stdout)
    assert cfg["model"]["width"] == 8 and cfg["model"]["model"] == "w-pcdm" and cfg["train"]["steps"] == 3


@pytest.mark.slow
def test_tiny_experiment_end_to_end(runner, tmp_path):
    """Two runs trained, evaluated on the same images: the report's bound of each run is the
    library's bound of its final weights on those images, and equal steps use a step both saved."""
    from pcdm.checkpoint import load_run
    from pcdm.data import load
    from pcdm.evaluate import per_image_bpd

    text = (
        'title = "tiny"\ndata = "digits"\npreset = "tiny"\njobs = 2\n'
        "[budget]\nsteps = 12\nckpt_every = 5\n"
        '[eval]\nlimit = 40\nreference = "vdm"\nequal_steps = true\n'
        'sampling = { n = 2, samplers = ["heun:4"], runs = ["w"] }\n' + RUNS
    )
    path = write(tmp_path, text, "tiny.toml")
    assert runner.main([str(path), "--work", str(tmp_path / "work"), "--results", str(tmp_path / "res")]) == 0
    res = json.loads((tmp_path / "res" / "tiny" / "runs.json").read_text())
    images = load("digits", "test", limit=40).images
    for name in ("vdm", "w"):
        model, _ = load_run(tmp_path / "work" / "tiny" / name)
        want = per_image_bpd(model, images, seed=0, progress=False)["bpd"].mean()
        assert res["runs"][name]["bound"]["bpd"] == pytest.approx(float(want), rel=1e-6)
        assert res["runs"][name]["equal_steps"]["step"] == 12  # both saved their final step
    assert "sampling" in res["runs"]["w"] and "sampling" not in res["runs"]["vdm"]
    vs = res["runs"]["w"]["vs_reference"]
    assert np.isfinite(vs["ratio_se"]) and vs["ratio"] > 0
    report = (tmp_path / "res" / "tiny" / "report.md").read_text()
    assert "| w | w-pcdm | 12 |" in report


@pytest.mark.parametrize(
    "extra, runs, message",
    [
        ("[budget]\nminutes = 2\n", "processes = 2\n", "need [budget] steps or wall_minutes"),
        ("[budget]\nreference_steps = 9\n", 'levels = "parallel"\n', "need [budget] steps or wall_minutes"),
        ("jobs = 2\n[budget]\nwall_minutes = 1\n", "", "jobs must be 1"),
        ("[budget]\nsteps = 1\n", "processes = 0\n", "processes must be at least 1"),
    ],
)
def test_process_layouts_are_checked(runner, tmp_path, extra, runs, message):
    text = 'title = "t"\ndata = "digits"\n' + extra + '[[runs]]\nname = "lp"\nmodel = "lp-pcdm"\n' + runs
    with pytest.raises(SystemExit) as err:
        runner.load_experiment(write(tmp_path, text))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_launch_commands_of_each_layout(runner, tmp_path):
    """DDP keeps one process's global batch; level-parallel is one --levels-only job per level;
    an allocator run is one --level-budget job; wall_minutes trains by the clock."""
    runs = ""
    for name, keys in [
        ("one", ""),
        ("ddp", "processes = 2\n"),
        ("par", 'processes = 2\nlevels = "parallel"\n'),
        ("auto", 'processes = 2\nlevels = "auto"\n'),
        ("three", 'processes = 3\nlevels = "parallel"\n'),
        ("odd", "processes = 3\n"),
    ]:
        runs += f'[[runs]]\nname = "{name}"\nmodel = "lp-pcdm"\n{keys}'
    text = 'title = "t"\ndata = "digits"\n[budget]\nwall_minutes = 0.5\n' + runs
    exp = runner.load_experiment(write(tmp_path, text))
    by = {r.name: r for r in exp.runs}

    def cmds(name):
        return runner.launch_commands(exp, by[name], runner.train_command(exp, by[name], tmp_path / name, 0))

    [one] = cmds("one")
    assert one[1:3] == ["-m", "pcdm.cli"] and "--minutes" in one and "--steps" not in one
    [ddp] = cmds("ddp")
    assert "torch.distributed.run" in ddp and "--nproc_per_node=2" in ddp
    assert ddp[ddp.index("--batch") + 1] == "16"  # the small preset's batch 32 over 2 ranks
    par = cmds("par")
    assert [c[c.index("--levels-only") + 1] for c in par] == ["0", "1"]
    assert all("torch.distributed.run" not in c and "--batch" not in c for c in par)
    [auto] = cmds("auto")
    assert auto[auto.index("--level-budget") + 1] == "auto" and "--nproc_per_node=2" in auto
    with pytest.raises(SystemExit, match="one process each: processes = 2"):
        cmds("three")
    with pytest.raises(SystemExit, match="does not split over 3 processes"):
        cmds("odd")
    assert by["par"].layout() == "levels in parallel, 2 processes"


@pytest.mark.slow
def test_level_parallel_and_data_parallel_runs_end_to_end(runner, tmp_path):
    """A DDP run and a level-parallel run by the clock: the report's bound is the library's
    bound of the assembled run, and equal steps assemble every level at the common step."""
    from pcdm import levels
    from pcdm.checkpoint import load_run
    from pcdm.data import load
    from pcdm.evaluate import per_image_bpd
    from pcdm.model import PCDM, ModelConfig

    text = (
        'title = "tiny"\ndata = "digits"\npreset = "tiny"\n'
        "[budget]\nwall_minutes = 0.08\nckpt_every = 10\n"
        '[eval]\nlimit = 24\nreference = "vdm"\nequal_steps = true\n'
        '[[runs]]\nname = "vdm"\nmodel = "vdm"\nprocesses = 2\n'
        '[[runs]]\nname = "lp"\nmodel = "lp-pcdm"\nprocesses = 2\nlevels = "parallel"\n'
    )
    path = write(tmp_path, text, "tiny.toml")
    assert runner.main([str(path), "--work", str(tmp_path / "work"), "--results", str(tmp_path / "res")]) == 0
    res = json.loads((tmp_path / "res" / "tiny" / "runs.json").read_text())
    images = load("digits", "test", limit=24).images
    lp = tmp_path / "work" / "tiny" / "lp"
    reached = levels.level_steps(lp)
    assert res["runs"]["lp"]["level_steps"] == [reached[0], reached[1]] and min(reached.values()) >= 10
    model, _ = load_run(lp)
    want = per_image_bpd(model, images, seed=0, progress=False)["bpd"].mean()
    assert res["runs"]["lp"]["bound"]["bpd"] == pytest.approx(float(want), rel=1e-6)
    eq = res["runs"]["lp"]["equal_steps"]
    common = eq["step"]
    assert common % 10 == 0 and common <= min(res["runs"]["vdm"]["step"], *reached.values())
    at = PCDM(ModelConfig.from_dict(json.loads((lp / "config.json").read_text())["model"]))
    at.load_state_dict(levels.assemble_state(lp, at, step=common))
    want = per_image_bpd(at.eval(), images, seed=0, progress=False)["bpd"].mean()
    assert eq["bpd"] == pytest.approx(float(want), rel=1e-6)
    report = (tmp_path / "res" / "tiny" / "report.md").read_text()
    assert "lp (levels in parallel, 2 processes)" in report and "torchrun" in report
