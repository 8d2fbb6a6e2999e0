"""The experiment runner: one experiment file in, ``benchmarks/results/<experiment>/`` out.

    python benchmarks/run.py benchmarks/experiments/standings_fashion-mnist.toml

An experiment (``benchmarks/experiments/*.toml``, documented in ``benchmarks/experiments/README.md``)
names the data, a budget, the runs (a model and its ModelConfig/TrainConfig overrides) and
what to measure. The runner

1. measures each run's seconds per training step alone, one run at a time, in this same
   invocation (a budget given as time is converted to steps with these, so that the
   comparison is at equal idle-machine time whatever else the machine does later);
2. trains every run with ``pcdm train`` (``jobs`` side by side, ``threads`` each), reusing a
   finished run trained with the same command (``--reuse``);
3. evaluates in-process on the same held-out images and noise for every run: the bound
   (bpd ± s.e., paired against the reference run), optionally at equal steps too, the
   probability-flow ODE bound, sample quality (FID/KID) and sampling time;
4. writes ``report.md`` (tables, the command, the machine) and ``runs.json`` (every number).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import tomllib

from pcdm import machine

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402  (benchmarks/ is not a package)

ROOT = report.ROOT
WORK = ROOT / "benchmarks" / "work"
DONE = "runner_done.json"

EXPERIMENT_KEYS = {"title", "question", "data", "preset", "seed", "threads", "jobs", "work", "budget", "eval"}
EXPERIMENT_KEYS |= {"runs"}
BUDGET_KEYS = {
    "steps",
    "minutes",
    "reference_steps",
    "wall_minutes",
    "reference",
    "speed_steps",
    "ckpt_every",
}
BUDGETS = ("steps", "minutes", "reference_steps", "wall_minutes")
EVAL_KEYS = {"split", "limit", "n_t", "seed", "batch", "reference", "equal_steps", "ode", "fid", "sampling"}


# --- the experiment file --------------------------------------------------------------------


@dataclass
class Run:
    name: str
    model: str
    overrides: dict = field(default_factory=dict)  # ModelConfig / TrainConfig fields
    processes: int = 1  # training processes (torchrun, data-parallel, one global batch)
    levels: str | None = None  # "parallel": one process per level; or a --level-budget spec

    @property
    def per_level(self) -> bool:
        return self.levels is not None

    def layout(self) -> str:
        """How the run trains, in words, for the report."""
        if self.levels == "parallel":
            return f"levels in parallel, {self.processes} processes"
        ddp = f"DDP ×{self.processes}" if self.processes > 1 else "1 process"
        return f"levels by --level-budget {self.levels}, {ddp}" if self.levels else ddp


@dataclass
class Experiment:
    name: str
    title: str
    data: str
    runs: list[Run]
    question: str = ""
    preset: str = "small"
    seed: int = 0
    threads: int = 1
    jobs: int = 1
    budget: dict = field(default_factory=dict)
    eval: dict = field(default_factory=dict)
    work: str | None = None  # share the run folders (and measured speeds) of another experiment

    @property
    def folder(self) -> str:
        return self.work or self.name

    @property
    def reference(self) -> str:
        return self.eval.get("reference", self.runs[0].name)


def load_experiment(path: Path) -> Experiment:
    """Read and check an experiment file; every mistake is one line naming the file."""
    path = Path(path)
    try:
        d = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise SystemExit(f"{path}: no such experiment file") from None
    except tomllib.TOMLDecodeError as err:
        raise SystemExit(f"{path}: not valid TOML ({err})") from None

    def fail(msg: str):
        raise SystemExit(f"{path}: {msg}")

    for where, got, known in (
        ("", d, EXPERIMENT_KEYS),
        ("[budget] ", d.get("budget", {}), BUDGET_KEYS),
        ("[eval] ", d.get("eval", {}), EVAL_KEYS),
    ):
        if unknown := sorted(set(got) - known):
            fail(f"unknown {where}key(s) {', '.join(unknown)}")
    runs = []
    for i, r in enumerate(d.get("runs", [])):
        if "name" not in r or "model" not in r:
            fail(f"run {i + 1} needs a name and a model")
        if unknown := sorted(set(r) - {"name", "model", "overrides", "processes", "levels"}):
            fail(f"run {r['name']}: unknown key(s) {', '.join(unknown)}")
        run = Run(
            r["name"], r["model"], dict(r.get("overrides", {})), int(r.get("processes", 1)), r.get("levels")
        )
        if run.processes < 1:
            fail(f"run {run.name}: processes must be at least 1")
        runs.append(run)
    if not runs:
        fail("no [[runs]]")
    if len({r.name for r in runs}) != len(runs):
        fail("two runs have the same name")
    missing = [k for k in ("title", "data") if k not in d]
    if missing:
        fail(f"missing {', '.join(missing)}")
    exp = Experiment(name=path.stem, runs=runs, **{k: v for k, v in d.items() if k != "runs"})
    b = exp.budget
    if sum(k in b for k in BUDGETS) != 1:
        fail(f"[budget] needs exactly one of {', '.join(BUDGETS)}")
    for run in runs:
        if (run.processes > 1 or run.per_level) and not ("steps" in b or "wall_minutes" in b):
            fail(
                f"run {run.name}: several processes or per-level training need [budget] steps or wall_minutes"
            )
    if "wall_minutes" in b and exp.jobs != 1:
        fail("[budget] wall_minutes times every run on the machine alone: jobs must be 1")
    for where, name in (("[eval]", exp.reference), ("[budget]", b.get("reference", exp.reference))):
        if name not in {r.name for r in runs}:
            fail(f"{where} reference {name!r} is not a run")
    return exp


# --- budgets --------------------------------------------------------------------------------


def steps_for(exp: Experiment, speeds: dict[str, float] | None) -> dict[str, int]:
    """Training steps of every run. ``steps``: the same for all (equal steps). ``minutes``: M
    minutes of idle-machine time at each run's measured s/step. ``reference_steps``: the
    budget's reference run (default: the evaluation's) gets N steps and every other run the
    time they take it, N × s_ref / s_run."""
    b = exp.budget
    if "steps" in b:
        return {r.name: int(b["steps"]) for r in exp.runs}
    if "wall_minutes" in b:  # each run stops on its own clock; the steps it reached are read after
        return {r.name: 0 for r in exp.runs}
    if speeds is None:
        raise ValueError("a time budget needs the measured speeds")
    if "minutes" in b:
        return {r.name: max(1, round(b["minutes"] * 60 / speeds[r.name])) for r in exp.runs}
    ref = speeds[b.get("reference", exp.reference)]
    return {r.name: max(1, round(b["reference_steps"] * ref / speeds[r.name])) for r in exp.runs}


# --- training -------------------------------------------------------------------------------


def run_dir(exp: Experiment, run: Run, work: Path = WORK) -> Path:
    return work / exp.folder / run.name


def train_command(exp: Experiment, run: Run, out: Path, steps: int) -> list[str]:
    """``pcdm train`` for one run: the preset, then the run's overrides as ``--config``."""
    config = out.parent / f"{run.name}.config.json"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(json.dumps(run.overrides, indent=2, sort_keys=True) + "\n")
    ckpt = exp.budget.get("ckpt_every", max(1, steps // 10))
    budget = (
        ["--minutes", str(exp.budget["wall_minutes"])]
        if "wall_minutes" in exp.budget
        else ["--steps", str(steps)]
    )
    return [
        "train",
        "--model",
        run.model,
        "--data",
        exp.data,
        "--preset",
        exp.preset,
        "--config",
        str(config),
        "--out",
        str(out),
        *budget,
        "--seed",
        str(exp.seed),
        "--ckpt-every",
        str(ckpt),
        "--keep",
        "1000",
        "--log-every",
        "10",
        "--sample-steps",
        "0",
        "--device",
        "cpu",
    ]


def n_levels(cmd: list[str]) -> int:
    """The number of levels of the model a ``pcdm train`` command resolves (``--dry-run``)."""
    model = json.loads(_pcdm([*cmd, "--dry-run"], _env(1), capture=True).stdout)["model"]
    from pcdm.model import PCDM, ModelConfig

    return len(PCDM(ModelConfig.from_dict(model)).level_shapes)


def launch_commands(exp: Experiment, run: Run, cmd: list[str]) -> list[list[str]]:
    """The processes that train one run from its ``train_command``, each a full command line.
    One process; under torchrun, ``processes`` data-parallel ranks with the per-rank batch that
    keeps the global batch of one process; ``levels = "parallel"``: one ``--levels-only k`` job
    per level, side by side (``processes`` must be the number of levels); any other ``levels``:
    one ``--level-budget`` job (its rounds data-parallel over ``processes``)."""
    from pcdm.presets import get_preset

    pcdm = [sys.executable, "-m", "pcdm.cli"]
    if run.levels == "parallel":
        s = n_levels(cmd)
        if run.processes != s:
            raise SystemExit(
                f'run {run.name}: levels = "parallel" trains {s} levels, one process each: processes = {s}'
            )
        return [[*pcdm, *cmd, "--levels-only", str(k)] for k in range(s)]
    if run.levels is not None:
        cmd = [*cmd, "--level-budget", run.levels]
    if run.processes == 1:
        return [[*pcdm, *cmd]]
    batch = int(run.overrides.get("batch", get_preset(exp.preset)["train"]["batch"]))
    if batch % run.processes:
        raise SystemExit(f"run {run.name}: batch {batch} does not split over {run.processes} processes")
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={run.processes}",
    ]
    return [[*torchrun, "-m", "pcdm.cli", *cmd, "--batch", str(batch // run.processes)]]


def _env(threads: int) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


def step_times(run: Path) -> tuple[np.ndarray, np.ndarray]:
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    rows = [r for r in rows if "time_s" in r and "step" in r]
    return np.array([r["step"] for r in rows], float), np.array([r["time_s"] for r in rows], float)


def measure_speeds(exp: Experiment, work: Path, log=print) -> tuple[dict[str, float], dict[str, dict]]:
    """Seconds per step of every run, alone and one after another: steps 10 … 10 + n of a
    short run (the first ten pay for start-up); and what else used the machine meanwhile
    (``RUN/machine.json`` of each measurement, pcdm.machine)."""
    n = int(exp.budget.get("speed_steps", 30))
    speeds, machines = {}, {}
    for run in exp.runs:
        out = work / exp.folder / f".speed_{run.name}"
        shutil.rmtree(out, ignore_errors=True)
        cmd = train_command(exp, run, out, 10 + n)
        _pcdm(cmd, _env(exp.threads), capture=True)
        steps, times = step_times(out)
        t10 = float(np.interp(10, steps, times))
        speeds[run.name] = float((times[-1] - t10) / (steps[-1] - 10))
        record = out / "machine.json"
        machines[run.name] = json.loads(record.read_text()) if record.is_file() else None
        shutil.rmtree(out, ignore_errors=True)
        log(f"  {run.name}: {speeds[run.name]:.4f} s/step alone; {machine.describe(machines[run.name])}")
    return speeds, machines


def check_disturbance(exp: Experiment, machines: dict[str, dict], allow_busy: bool) -> dict[str, str]:
    """An equal-time budget rests on the speeds: refuse one measured on a disturbed machine
    (more than pcdm.machine.THRESHOLD cores used by other processes) unless ``allow_busy``;
    then return run → reason, for the report to mark the rows."""
    ref = exp.budget.get("reference", exp.reference)
    marks = {}

    def named(text: str, name: str) -> str:
        return text.replace("a: ", f"{ref}: ").replace("b: ", f"{name}: ")

    for run in exp.runs:
        if run.name == ref and len(exp.runs) > 1:
            continue
        try:
            why = machine.check_pair(machines.get(ref), machines.get(run.name), allow_busy=allow_busy)
        except machine.Disturbed as err:
            raise SystemExit(f"{exp.name}: {run.name} against {ref}: {named(str(err), run.name)}") from None
        if why:
            marks[run.name] = named(why, run.name)
    return marks


def _pcdm(cmd: list[str], env: dict, capture: bool = False, stdout=None):
    full = [sys.executable, "-m", "pcdm.cli", *cmd]
    if capture:
        proc = subprocess.run(full, capture_output=True, text=True, env=env, cwd=ROOT)
        if proc.returncode != 0:
            raise SystemExit(f"pcdm {shlex.join(cmd)} failed:\n{proc.stderr[-2000:]}")
        return proc
    return subprocess.Popen(full, stdout=stdout, stderr=subprocess.STDOUT, env=env, cwd=ROOT)


def train_all(exp: Experiment, steps: dict[str, int], work: Path, reuse: bool, log=print) -> dict[str, dict]:
    """Train every run (``jobs`` at a time); returns name → {dir, step, level_steps, wall_s,
    command}."""
    out, pending = {}, []
    for run in exp.runs:
        folder = run_dir(exp, run, work)
        base = train_command(exp, run, folder, steps[run.name])
        cmds = launch_commands(exp, run, base)
        marker = folder / DONE
        old = json.loads(marker.read_text()) if reuse and marker.is_file() else {}
        single = len(cmds) == 1 and cmds[0][3:] == base
        if old and (old.get("commands") == cmds or (single and old.get("command") == cmds[0][3:])):
            out[run.name] = json.loads(marker.read_text())
            log(f"  {run.name}: reusing {folder}")
            continue
        pending.append((run, folder, base, cmds))
    env = _env(exp.threads)
    if exp.jobs == 1:  # this runner's process tree is the one job: its own processes are no load
        env["PCDM_JOB_ROOT"] = str(os.getpid())
    running = []
    while pending or running:
        while pending and len(running) < exp.jobs:
            run, folder, base, cmds = pending.pop(0)
            shutil.rmtree(folder, ignore_errors=True)
            folder.parent.mkdir(parents=True, exist_ok=True)
            logfile = folder.parent / f"{run.name}.train.log"
            fh = open(logfile, "w")
            procs = []
            for cmd in cmds:
                log(f"  {run.name}: {shlex.join(cmd[1:])}")
                procs.append(subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT))
            running.append((run, folder, base, cmds, procs, fh, logfile, time.time()))
        time.sleep(0.5)
        for item in [r for r in running if all(p.poll() is not None for p in r[4])]:
            running.remove(item)
            run, folder, base, cmds, procs, fh, logfile, t0 = item
            fh.close()
            if bad := [p.returncode for p in procs if p.returncode != 0]:
                tail = "\n".join(logfile.read_text(errors="replace").splitlines()[-15:])
                raise SystemExit(f"training {run.name} failed (exit {bad[0]}); see {logfile}:\n{tail}")
            reached = saved_steps(folder)
            done = {
                "dir": str(folder),
                "command": base,
                "commands": cmds,
                "step": min(max(s) for s in reached),
                "level_steps": [max(s) for s in reached] if run.per_level else None,
                "wall_s": round(time.time() - t0, 1),
                "machine": machine_records(folder),
            }
            (folder / DONE).write_text(json.dumps(done, indent=2) + "\n")
            out[run.name] = done
            log(f"  {run.name}: {done['level_steps'] or done['step']} steps in {done['wall_s']:.0f} s")
    return out


def saved_steps(folder: Path) -> list[list[int]]:
    """The steps of every complete checkpoint of a run, per level (a lockstep run: one list)."""
    from pcdm.checkpoint import checkpoints, read_config

    def steps(d: Path) -> list[int]:
        if not (found := [n for n, _ in checkpoints(d)]):
            raise SystemExit(f"{d} has no complete checkpoint")
        return found

    if not read_config(folder).get("per_level"):
        return [steps(folder)]
    return [steps(d) for d in sorted((folder / "levels").glob("level_*"), key=lambda d: int(d.name[6:]))]


def machine_records(folder: Path) -> list[dict]:
    """The machine records (pcdm.machine) a run's training wrote: one, or one per level."""
    paths = [folder / "machine.json", *sorted((folder / "levels").glob("level_*/machine.json"))]
    return [json.loads(p.read_text()) for p in paths if p.is_file()]


def load_at(folder: Path, step: int):
    """The run's model at its newest checkpoint(s) at or below ``step`` (every level's, for a
    per-level run); returns (model, the step of each level's weights)."""
    from pcdm import levels
    from pcdm.checkpoint import load_run, read_config
    from pcdm.model import PCDM, ModelConfig

    if not read_config(folder).get("per_level"):
        found, ckpt = checkpoint_at(folder, step)
        return load_run(ckpt)[0], [found]
    model = PCDM(ModelConfig.from_dict(read_config(folder)["model"]))
    model.load_state_dict(levels.assemble_state(folder, model, step=step))
    return model.eval(), [max(s for s in level if s <= step) for level in saved_steps(folder)]


def checkpoint_at(folder: Path, step: int) -> tuple[int, Path]:
    """The newest complete checkpoint at or below ``step``."""
    from pcdm.checkpoint import checkpoints

    if not (found := [(n, c) for n, c in checkpoints(folder) if n <= step]):
        raise SystemExit(f"{folder} has no checkpoint at or below step {step}")
    return found[-1]


# --- evaluation -----------------------------------------------------------------------------


def evaluate(exp: Experiment, trained: dict[str, dict], log=print) -> dict:
    """Every measurement the experiment asks for, on the same images and draws for all runs."""
    from pcdm import stats
    from pcdm.checkpoint import load_run
    from pcdm.data import load
    from pcdm.evaluate import check_matches, per_image_bpd, summarize

    e = exp.eval
    data = load(exp.data, e.get("split", "test"), limit=e.get("limit"))
    seed, n_t, batch = e.get("seed", 0), e.get("n_t", 1), e.get("batch", 128)
    results = {"data": data.name, "split": e.get("split", "test"), "n_images": len(data.images), "runs": {}}
    per_image = {}
    # equal steps: the largest step every level of every run saved a checkpoint at or below
    last = min(t["step"] for t in trained.values())
    common = min(
        max(s for s in lv if s <= last) for t in trained.values() for lv in saved_steps(Path(t["dir"]))
    )
    for run in exp.runs:
        folder = Path(trained[run.name]["dir"])
        model, _ = load_run(folder)
        check_matches(model, data)
        log(f"  {run.name}: bound on {len(data.images)} images")
        pi = per_image_bpd(model, data.images, n_t=n_t, batch_size=batch, seed=seed, desc=run.name)
        per_image[run.name] = pi["bpd"]
        r = {"model": run.model, "overrides": run.overrides, "step": trained[run.name]["step"]}
        r.update(layout=run.layout(), level_steps=trained[run.name].get("level_steps"))
        r["train_wall_s"] = trained[run.name].get("wall_s")
        r["bound"] = {k: v for k, v in summarize(pi).items()}
        if e.get("equal_steps") and common < max(
            trained[run.name].get("level_steps") or [trained[run.name]["step"]]
        ):
            m, at = load_at(folder, common)
            eq = per_image_bpd(
                m, data.images, n_t=n_t, batch_size=batch, seed=seed, desc=f"{run.name}@{common}"
            )
            r["equal_steps"] = {"step": max(at), "level_steps": at, **summarize(eq)}
            per_image[run.name + "@equal"] = eq["bpd"]
        elif e.get("equal_steps"):
            r["equal_steps"] = {"step": trained[run.name]["step"], **r["bound"]}
            per_image[run.name + "@equal"] = pi["bpd"]
        if measured(e, "ode", run):
            limit = e["ode"].get("limit_for", {}).get(run.name, e["ode"].get("limit"))
            r["ode"] = ode_bound(model, data.images[:limit], e["ode"], seed, log)
        if measured(e, "sampling", run):
            r["sampling"] = sampling_time(model, e["sampling"], seed, log)
        if measured(e, "fid", run):
            r["fid"] = sample_quality(model, exp.data, e["fid"], seed, log)
        results["runs"][run.name] = r
    ref = exp.reference
    for run in exp.runs:
        r = results["runs"][run.name]
        if run.name != ref:
            r["vs_reference"] = stats.paired(per_image[run.name], per_image[ref])
            if e.get("equal_steps"):
                r["equal_steps"]["vs_reference"] = stats.paired(
                    per_image[run.name + "@equal"], per_image[ref + "@equal"]
                )
    return results


def measured(e: dict, what: str, run: Run) -> bool:
    """Whether the experiment measures ``what`` for this run (``runs = [...]`` limits a measure)."""
    return what in e and run.name in e[what].get("runs", [run.name])


def ode_bound(model, images: np.ndarray, opts: dict, seed: int, log) -> dict:
    """The PF-ODE bound and the ELBO on these images (docs/math.md §12)."""
    from pcdm.evaluate import per_image_ode_bpd, summarize_ode
    from pcdm.ode import ODEOptions

    runner_keys = ("limit", "limit_for", "batch", "runs")
    options = ODEOptions(**{k: v for k, v in opts.items() if k not in runner_keys})
    x = images
    log(f"    ODE bound on {len(x)} images")
    out = summarize_ode(per_image_ode_bpd(model, x, options, batch_size=opts.get("batch", 64), seed=seed))
    return {**out, "options": asdict(options)}


def _samplers(specs: list[str]) -> list[tuple[str, int]]:
    out = []
    for spec in specs:
        name, _, steps = spec.partition(":")
        if name not in ("ancestral", "heun") or not steps.isdigit():
            raise SystemExit(f"sampler {spec!r}: expected ancestral:T or heun:N")
        out.append((name, int(steps)))
    return out


def sampling_time(model, opts: dict, seed: int, log) -> dict:
    """Seconds to draw ``n`` images with each sampler, one batch, this process's threads."""
    import torch

    from pcdm import edm

    n, out = int(opts.get("n", 64)), {}
    for name, steps in _samplers(opts.get("samplers", ["heun:18", "ancestral:256"])):
        g = torch.Generator().manual_seed(seed)
        t0 = time.perf_counter()
        edm.draw(model, n, name, steps, 0.0, g)
        seconds = time.perf_counter() - t0
        out[f"{name}:{steps}"] = {
            "n": n,
            "seconds": round(seconds, 3),
            "seconds_per_image": seconds / n,
            "evaluations_per_level": edm.evaluations_per_level(name, steps),
        }
        log(f"    {name}:{steps}: {seconds:.1f} s for {n} images")
    return out


def sample_quality(model, spec: str, opts: dict, seed: int, log) -> dict:
    """Domain (or Inception) FID and KID of ``n`` samples per sampler against the training split."""
    import torch

    from pcdm import edm
    from pcdm.features import domain_space, inception_space
    from pcdm.fid import Reference, score

    n = int(opts.get("n", 2000))
    ref = Reference(spec, opts.get("ref_split", "train"), opts.get("n_ref"))
    if opts.get("features", "domain") == "inception":
        space = inception_space(opts.get("inception_weights"))
    else:
        space = domain_space(ref.spec, log=log)
    out = {}
    for name, steps in _samplers(opts.get("samplers", ["heun:18"])):
        g = torch.Generator().manual_seed(seed)
        t0 = time.perf_counter()
        x = edm.draw(model, n, name, steps, 0.0, g, batch=opts.get("batch", 500))
        seconds = time.perf_counter() - t0
        s = score(x, model.config.K, space, ref, progress=False)
        s.update(sample_seconds=round(seconds, 2), classifier_test_accuracy=getattr(space, "accuracy", None))
        out[f"{name}:{steps}"] = s
        log(f"    {name}:{steps}: {s['metric']} {s['fid']:.3f}, KID {s['kid']:.5f} (N = {n})")
    return out


# --- the report -----------------------------------------------------------------------------


def markdown(exp: Experiment, res: dict, argv: list[str]) -> list[str]:
    fmt, ref = report.fmt, exp.reference
    b = exp.budget
    if "steps" in b:
        budget = f"{b['steps']} training steps each (equal steps)"
    elif "wall_minutes" in b:
        budget = (
            f"{b['wall_minutes']} minutes of wall-clock time each, every run alone on the machine with "
            "all its processes (equal total time at an equal number of processes)"
        )
    elif "minutes" in b:
        budget = f"{b['minutes']} minutes of idle-machine time each (steps from the s/step measured alone)"
    else:
        budget = (
            f"the time {b.get('reference', ref)} takes for {b['reference_steps']} steps, converted to each "
            "run's steps by the "
            "s/step measured alone in this run (equal idle-machine time)"
        )
    lines = [f"# {exp.title}", ""]
    if exp.question:
        lines += [exp.question, ""]
    m = res["machine"]
    lines += [
        f"Experiment `benchmarks/experiments/{exp.name}.toml`, run by `{report.command_line(argv)}` on "
        f"{m['date']} ({m['platform']}, Python {m['python']}, torch {m['torch']}, {m['cores_allowed']} cores "
        f"allowed; {exp.jobs} training job(s) side by side, {exp.threads} thread(s) each).",
        "",
        f"Data: {res['data']}, preset `{exp.preset}`, seed {exp.seed}. Budget: {budget}. Evaluation: "
        f"{res['n_images']} images of the {res['split']} split, {exp.eval.get('n_t', 1)} draw(s) of t per "
        f"image, the same images and noise for every run; differences and ratios are paired against "
        f"**{ref}** (± one standard error).",
        "",
        "## The bound",
        "",
    ]
    rows = []
    layouts = any(r.processes > 1 or r.per_level for r in exp.runs)
    for run in exp.runs:
        r = res["runs"][run.name]
        bd, vs = r["bound"], r.get("vs_reference")
        s = res["speeds"].get(run.name) if res.get("speeds") else None
        rows.append(
            [
                run.name + (f" ({run.layout()})" if layouts else ""),
                run.model,
                " / ".join(map(str, r["level_steps"])) if r.get("level_steps") else r["step"],
                fmt(s, digits=4) if s else "—",
                fmt(bd["bpd"], bd["bpd_se"]),
                fmt(bd.get("bpd_recon")),
                fmt(vs["difference"], vs["difference_se"]) if vs else "—",
                fmt(vs["ratio"], vs["ratio_se"]) if vs else "reference",
            ]
        )
    lines += report.table(
        ["run", "model", "steps", "s/step alone", "test bpd", "recon", f"− {ref}", f"÷ {ref}"],
        rows,
        "llrrrrrr",
    )
    busy = {k: v for k, v in res.get("busy", {}).items() if k != ref or len(exp.runs) == 1}
    if busy and all("unknown" in why for why in busy.values()):
        note = "The speed measurements have no machine record (pcdm.machine): equal time holds only as far"
        lines += ["", note + " as the machine was idle, which nothing here shows."]
    else:
        for name, why in busy.items():
            lines += ["", f"**{name}: speed measured on a busy machine** ({why}): equal time is approximate"]
    parts = sorted({k for r in res["runs"].values() for k in r["bound"] if k.startswith("bpd_level")})
    if len(parts) > 1:  # where the bits are: totals compare across runs, terms only at equal γ(0)
        lines += ["", "## The bound by level", ""]
        rows = []
        for run in exp.runs:
            bd = res["runs"][run.name]["bound"]
            terms = [fmt(bd.get(k)) if k in bd else "—" for k in parts]
            rows.append([run.name, *terms, fmt(bd.get("bpd_recon")), fmt(bd["bpd"])])
        names = [f"level {k.removeprefix('bpd_level')} (prior + diffusion)" for k in parts]
        lines += report.table(["run", *names, "recon", "total"], rows)
        lines += [
            "",
            "bpd of the whole image; vdm's single level is its level 1. A term compares between "
            "runs only at the same γ(0) (it moves bits between diffusion and reconstruction); the "
            "totals always compare.",
        ]
    if exp.eval.get("equal_steps"):
        lines += ["", "## At equal steps", ""]
        rows = []
        for run in exp.runs:
            q = res["runs"][run.name]["equal_steps"]
            vs = q.get("vs_reference")
            rows.append(
                [
                    run.name,
                    " / ".join(map(str, q["level_steps"]))
                    if len(q.get("level_steps") or []) > 1
                    else q["step"],
                    fmt(q["bpd"], q["bpd_se"]),
                    fmt(vs["ratio"], vs["ratio_se"]) if vs else "reference",
                ]
            )
        lines += report.table(["run", "step", "test bpd", f"÷ {ref}"], rows)
    if "ode" in exp.eval:
        lines += ["", "## Probability-flow ODE bound (docs/math.md §12)", ""]
        rows = []
        for run in exp.runs:
            if (o := res["runs"][run.name].get("ode")) is None:
                continue
            rows.append(
                [
                    run.name,
                    o["n_images"],
                    fmt(o["bpd"], o["bpd_se"]),
                    fmt(o["elbo_bpd"], o["elbo_bpd_se"]),
                    fmt(o["ode_minus_elbo"], o["ode_minus_elbo_se"]),
                    f"{o['nfe']:.0f}",
                    fmt(o["seconds"], digits=3),
                ]
            )
        lines += report.table(
            ["run", "images", "ODE bpd", "ELBO bpd", "ODE − ELBO", "NFE", "s / image"], rows
        )
        lines += [
            "",
            "Both bounds are upper bounds on −log₂ P(x)/d of the same images; the ODE's comes from "
            "variational dequantization through the model's own q(z₀ | x).",
        ]
    if "fid" in exp.eval:
        lines += ["", "## Sample quality", ""]
        rows = []
        for run in exp.runs:
            for key, s in res["runs"][run.name].get("fid", {}).items():
                rows.append(
                    [
                        run.name,
                        key,
                        s["n"],
                        fmt(s["fid"], digits=2),
                        fmt(s["kid"], s["kid_std"], digits=5),
                        fmt(s["sample_seconds"] / s["n"], digits=4),
                    ]
                )
        first = next(s for r in res["runs"].values() for s in r.get("fid", {}).values())
        lines += report.table(["run", "sampler", "N", first["metric"], "KID", "s / image"], rows, "llrrrr")
        if first["features"] != "inception":
            acc = first.get("classifier_test_accuracy")
            lines += [
                "",
                f"**{first['metric']}** is a Fréchet distance in the features of a small classifier "
                f"trained on {first['ref']}'s labels (test accuracy {acc:.3f}), against {first['n_ref']} "
                "training images: comparable between the rows of this table, not with published "
                "Inception FIDs.",
            ]
    if "sampling" in exp.eval:
        lines += ["", "## Sampling time", ""]
        rows = []
        for run in exp.runs:
            for key, s in res["runs"][run.name].get("sampling", {}).items():
                rows.append([run.name, key, s["evaluations_per_level"], s["n"], fmt(s["seconds"], digits=2)])
        lines += report.table(
            ["run", "sampler", "network evaluations per level", "images", "seconds"], rows, "llrrr"
        )
    lines += ["", "Runs (git-ignored folders):", ""]
    for run in exp.runs:
        cmds = res["runs"][run.name].get("commands") or [["", "", "", *res["runs"][run.name]["command"]]]
        lines += [f"- {run.name}: `{_shown(cmd)}`" for cmd in cmds]
    return lines


def _shown(cmd: list[str]) -> str:
    """A launched command line as a reader would type it (``pcdm …`` / ``torchrun …``)."""
    if cmd[1:3] == ["-m", "pcdm.cli"] or cmd[:1] == [""]:
        return "pcdm " + shlex.join(cmd[3:])
    at = cmd.index("pcdm.cli")
    return "torchrun " + shlex.join([*cmd[3 : at - 1], "-m", "pcdm.cli", *cmd[at + 1 :]])


def plot_fid(exp: Experiment, res: dict, path: Path) -> bool:
    """FID against Heun steps per run, when the experiment asks for more than one step count."""
    curves = {}
    for run in exp.runs:
        pts = [
            (int(k.split(":")[1]), s["fid"])
            for k, s in res["runs"][run.name].get("fid", {}).items()
            if k.startswith("heun:")
        ]
        if len(pts) > 1:
            curves[run.name] = sorted(pts)
    if not curves:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, pts in curves.items():
        ax.plot(*zip(*pts), marker="o", label=name)
    first = next(s for r in res["runs"].values() for s in r.get("fid", {}).values())
    ax.set(xlabel="Heun σ grid points per level", ylabel=first["metric"], xscale="log", title=exp.title[:60])
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_report(exp: Experiment, res: dict, folder: Path, argv: list[str]) -> Path:
    """``report.md`` (with the FID plot when there is one) and ``runs.json`` into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = markdown(exp, res, argv)
    if plot_fid(exp, res, folder / "fid_vs_steps.png"):
        lines += ["", "![FID against Heun steps](fid_vs_steps.png)"]
    return report.write(folder, res, lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("experiment", type=Path, help="benchmarks/experiments/NAME.toml")
    p.add_argument("--reuse", action="store_true", help="keep runs already trained with the same command")
    p.add_argument("--work", type=Path, default=WORK, help="run folders (git-ignored)")
    p.add_argument("--results", type=Path, default=report.RESULTS, help="results root")
    p.add_argument("--dry-run", action="store_true", help="print the training commands and stop")
    p.add_argument("--report-only", action="store_true", help="rewrite report.md from the saved runs.json")
    p.add_argument(
        "--allow-busy",
        action="store_true",
        help="report an equal-time comparison whose speeds were measured on a busy machine (rows marked)",
    )
    args = p.parse_args(argv)
    exp = load_experiment(args.experiment)
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    if args.report_only:  # the report again from runs.json (after a change to the report's form)
        folder = args.results / exp.name
        res = json.loads((folder / "runs.json").read_text())
        argv_then = res.get("argv", ["benchmarks/run.py", str(args.experiment)])
        log(f"wrote {write_report(exp, res, folder, argv_then)}")
        return 0
    speeds, machines, marks = None, {}, {}
    cache = args.work / exp.folder / "speeds.json"
    if not ({"steps", "wall_minutes"} & set(exp.budget)) and not args.dry_run:
        saved = json.loads(cache.read_text()) if args.reuse and cache.is_file() else {}
        if saved and "speeds" not in saved:  # a file from before the machine records
            saved = {"speeds": saved}
        if all(r.name in saved.get("speeds", {}) for r in exp.runs):
            speeds = {r.name: saved["speeds"][r.name] for r in exp.runs}
            machines = {r.name: saved.get("machines", {}).get(r.name) for r in exp.runs}
            log(f"{exp.name}: reusing the seconds per step measured in {cache}")
        else:
            log(f"{exp.name}: measuring seconds per step, one run at a time")
            speeds, machines = measure_speeds(exp, args.work, log)
            cache.parent.mkdir(parents=True, exist_ok=True)
            merged = {"speeds": {**saved.get("speeds", {}), **speeds}}
            merged["machines"] = {**saved.get("machines", {}), **machines}
            cache.write_text(json.dumps(merged, indent=2) + "\n")
        marks = check_disturbance(exp, machines, args.allow_busy)
    timed = speeds or {"steps", "wall_minutes"} & set(exp.budget)
    steps = steps_for(exp, speeds) if timed else {r.name: 0 for r in exp.runs}
    if args.dry_run:
        for run in exp.runs:
            base = train_command(exp, run, run_dir(exp, run, args.work), steps[run.name] or 1)
            for cmd in launch_commands(exp, run, base):
                print(shlex.join(cmd))
        return 0
    log(f"{exp.name}: training {', '.join(f'{k}={v}' for k, v in steps.items())} steps")
    trained = train_all(exp, steps, args.work, args.reuse, log)
    if "wall_minutes" in exp.budget:  # equal wall time holds as far as nothing else ran meanwhile
        for run in exp.runs:
            why = [w for m in trained[run.name].get("machine") or [] if (w := machine.disturbance(m))]
            if why or not trained[run.name].get("machine"):
                marks[run.name] = "; ".join(why) or "unknown: no machine record"
                log(f"  {run.name}: {marks[run.name]}")
    res = evaluate(exp, trained, log)
    res.update(experiment=exp.name, machine=report.machine(), speeds=speeds, steps=steps)
    res.update(speed_machines=machines, busy=marks, argv=["benchmarks/run.py", *argv])
    for run in exp.runs:
        res["runs"][run.name]["command"] = trained[run.name]["command"]
        res["runs"][run.name]["commands"] = trained[run.name].get("commands")
        res["runs"][run.name]["machine"] = trained[run.name].get("machine")
    folder = args.results / exp.name
    path = write_report(exp, res, folder, res["argv"])
    log(f"wrote {path} and {folder / 'runs.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
