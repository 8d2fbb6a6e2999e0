"""The paper's ablation at CPU scale: vdm vs c-vdm vs lp-pcdm vs w-pcdm (vs lift-pcdm).

The paper claims, at equal architecture and training, test bpd ordered
``w-pcdm < lp-pcdm < vdm < c-vdm``. For every dataset this script trains the models
(``--models``; ``--jobs J`` runs J trainings side by side, one core each) with the same
per-level network (``--preset``), the same seed and the same wall-clock budget each
(``pcdm train --minutes M`` in a subprocess), then

* evaluates the EMA weights of every saved checkpoint on a fixed test subset (the first
  ``--curve-limit`` test images, one fixed noise draw) and plots test bpd against training
  minutes (time from ``metrics.jsonl``) → ``ablation_<dataset>.png``;
* compares the models at equal budget two ways:
  (a) equal wall-clock: each model's final checkpoint on the full test split, ± standard error;
  (b) equal images seen: the largest step all four runs reached (images = step × batch),
      each model's last checkpoint at or below it, on the full test split (``--fast``: on
      the curve subset instead; the table says which);
* puts lossless PNG / WebP / JPEG-XL (each image its own file) and the best of them per
  image, on the same test images, into the same table;
* writes ``ablation.md`` (tables, observed vs claimed ordering, each level's diffusion
  term by γ band, command, seeds, budget, machine, date) and ``ablation.json`` (every
  number) into ``--results-dir``.

Equal compute, not only equal architecture: ``--equal-flops-width W`` adds a variant
``<model>@W`` of every multi-scale model whose training step is cheaper than vdm's (w-pcdm,
lift-pcdm: both levels at half resolution) with all its networks widened to W, so that one
of its steps costs about what a vdm step costs; the report gives every run's measured
seconds per step, so the reader sees how equal the cost really was. ``--variant
NAME=MODEL:FLAGS`` adds any other variant (extra ``pcdm train`` flags), e.g.
``--variant "w-pcdm-plain=w-pcdm:--no-lattice-features"``.

``--budget steps`` makes the equal wall-clock comparison robust to what else the machine
does: each run's seconds per step are first measured alone (``--speed-steps`` timed steps,
one run at a time, one core), and each run then trains for the number of steps that the
budget buys at that speed, side by side with ``--jobs``. The curves' time axis is then
steps × measured seconds per step (idle-machine minutes). ``--budget time`` (default)
trains for ``--minutes`` of its own wall-clock, which is only fair on an idle machine.

Both datasets in about 35–40 minutes on 2 idle CPU cores (see ``--help``)::

    python benchmarks/ablation.py --minutes-for fashion-mnist=3.5 --minutes-for skimage32=2.5

Where the time goes (2 cores, preset small): training 4 × 3.5 + 4 × 2.5 = 24 min; Fashion-MNIST
evaluation ≈ 9 min (full 10 000-image test split twice at 1–7 ms/image/model, checkpoint
curves on 500 images, codecs ≈ 1 min); skimage32 (342 test images) ≈ 2 min; process
start-up ≈ 1 min. ``--fast`` saves ≈ 3 min on Fashion-MNIST. The default budget
``--minutes 6`` per model (24 minutes of training per dataset plus evaluation) keeps one
dataset around half an hour; the issue allows up to 20 minutes per model on Fashion-MNIST.
Run folders go to ``--out-dir`` (git-ignored); ``--reuse`` skips runs that already
finished with the same settings (the evaluation is always redone).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from pcdm import classical  # noqa: E402
from pcdm.checkpoint import load_tensors, read_config  # noqa: E402
from pcdm.data import DataError, load  # noqa: E402
from pcdm.evaluate import per_image_bpd, summarize  # noqa: E402
from pcdm.model import PCDM, ModelConfig, count_parameters  # noqa: E402

MODELS = ("vdm", "c-vdm", "lp-pcdm", "w-pcdm", "lift-pcdm")
CLAIMED = ("w-pcdm", "lp-pcdm", "vdm", "c-vdm")  # the paper: best (lowest bpd) first
CHEAP = ("w-pcdm", "lift-pcdm")  # a step costs less than vdm's at equal width
DONE = "ablation_done.json"  # marker written into a run folder once its training finished
PARTS = ("bpd_prior", "bpd_diffusion", "bpd_recon")


# --- command line ----------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument(
        "--datasets",
        default="auto",
        help="comma-separated DATA specs; 'auto' = fashion-mnist plus cifar10 if its files are "
        "present, else skimage32",
    )
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated model families")
    p.add_argument(
        "--equal-flops-width",
        type=int,
        help=f"also train {', '.join(CHEAP)} with every network widened to this width (equal compute)",
    )
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=MODEL:FLAGS",
        help="an extra run: MODEL trained with extra pcdm-train FLAGS under the name NAME (repeatable)",
    )
    p.add_argument("--jobs", type=int, default=1, help="trainings run side by side (one core each)")
    p.add_argument(
        "--budget",
        choices=("time", "steps"),
        default="time",
        help="time: train --minutes of wall-clock; steps: the steps --minutes buy at each run's speed "
        "measured alone first",
    )
    p.add_argument("--speed-steps", type=int, default=40, help="timed steps per run for --budget steps")
    p.add_argument("--minutes", type=float, default=6.0, help="wall-clock training budget per model")
    p.add_argument(
        "--minutes-for",
        action="append",
        default=[],
        metavar="DATA=M",
        help="per-dataset budget overriding --minutes (repeatable)",
    )
    p.add_argument("--preset", default="small", help="network/training preset shared by all models")
    p.add_argument("--levels", type=int, default=2, help="levels S of the multi-scale models")
    p.add_argument("--batch", type=int, help="training batch (default: the preset's)")
    p.add_argument("--ckpt-every", type=int, default=100, help="checkpoint (curve point) every N steps")
    p.add_argument("--seed", type=int, default=0, help="training seed (the same for every model)")
    p.add_argument("--limit-train", type=int, help="use only the first N training images")
    p.add_argument("--curve-limit", type=int, default=500, help="test images of the bpd-vs-time curve")
    p.add_argument("--test-limit", type=int, help="cap the 'full' test split (default: all of it)")
    p.add_argument("--n-t", type=int, default=1, help="Monte-Carlo time draws per image in evaluation")
    p.add_argument("--eval-batch", type=int, default=128, help="evaluation batch size")
    p.add_argument("--eval-seed", type=int, default=0, help="seed of the evaluation noise")
    p.add_argument(
        "--fast", action="store_true", help="equal-images comparison on the curve subset, not the full split"
    )
    p.add_argument("--codecs", default="png,webp,jpegxl", help="classical lossless codecs to compare")
    p.add_argument("--device", default="cpu", help="device for training and evaluation")
    p.add_argument(
        "--threads", type=int, help="torch CPU threads for training and evaluation (default: torch's)"
    )
    p.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks/work/ablation", help="run folders")
    p.add_argument("--results-dir", type=Path, default=ROOT / "benchmarks/results", help="report folder")
    p.add_argument("--reuse", action="store_true", help="skip training runs that already finished")
    p.add_argument("--conditions", help="free text on the machine's load during the run, for the report")
    p.add_argument(
        "--keep-from",
        type=Path,
        help="an earlier ablation.json: its datasets not run now are carried into the report, "
        "each with the command, date and conditions of the run that produced it",
    )
    args = p.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    for m in args.models:
        if m not in MODELS:
            p.error(f"unknown model {m!r}; choose from {', '.join(MODELS)}")
    # name → (model family, extra pcdm-train flags)
    args.runs = {m: (m, []) for m in args.models}
    if args.equal_flops_width:
        for m in CHEAP:
            if m in args.models:
                args.runs[f"{m}@{args.equal_flops_width}"] = (m, ["--width", str(args.equal_flops_width)])
    for item in args.variant:
        name, sep, rest = item.partition("=")
        family, sep2, flags = rest.partition(":")
        if not (sep and sep2 and name) or family not in MODELS:
            p.error(f"--variant wants NAME=MODEL:FLAGS with MODEL in {', '.join(MODELS)}, got {item!r}")
        args.runs[name] = (family, shlex.split(flags))
    if args.jobs < 1:
        p.error("--jobs must be ≥ 1")
    args.out_dir, args.results_dir = args.out_dir.resolve(), args.results_dir.resolve()
    args.codecs = [c.strip() for c in args.codecs.split(",") if c.strip()]
    per = {}
    for item in args.minutes_for:
        name, sep, val = item.rpartition("=")
        try:
            per[name] = float(val)
        except ValueError:
            sep = ""
        if not sep or not name:
            p.error(f"--minutes-for wants DATA=MINUTES, got {item!r}")
    args.minutes_for = per
    if args.ckpt_every < 1 or args.curve_limit < 2 or args.n_t < 1:
        p.error("--ckpt-every and --n-t must be ≥ 1 and --curve-limit ≥ 2")
    return args


def default_datasets() -> list[str]:
    try:
        load("cifar10", "test", limit=1, download=False)
        return ["fashion-mnist", "cifar10"]
    except (DataError, OSError, ValueError):
        return ["fashion-mnist", "skimage32"]


def slug(spec: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", spec).strip("_") or "data"


# --- training ---------------------------------------------------------------------------


def train_command(args, data: str, name: str, run: Path, minutes=None, steps=None) -> list[str]:
    model, flags = args.runs[name]
    cmd = ["train", "--model", model, "--data", data, "--out", str(run), "--preset", args.preset, *flags]
    if model != "vdm":
        cmd += ["--levels", str(args.levels)]
    cmd += ["--minutes", f"{minutes:g}"] if steps is None else ["--steps", str(steps)]
    cmd += ["--ckpt-every", str(args.ckpt_every), "--keep", "1000"]
    cmd += ["--log-every", "10", "--seed", str(args.seed), "--sample-steps", "0", "--device", args.device]
    if args.batch:
        cmd += ["--batch", str(args.batch)]
    if args.limit_train:
        cmd += ["--limit", str(args.limit_train)]
    return cmd


def _env(threads: int | None) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


def measure_speeds(args, data: str, log=print) -> dict[str, float]:
    """Seconds per training step of every run, measured alone, one after the other, on
    ``--threads`` (default 1) threads: steps 10 … 10 + ``--speed-steps`` of a short run
    (the first steps pay for warm-up)."""
    speeds = {}
    for name in args.runs:
        run = args.out_dir / slug(data) / f".speed_{slug(name)}"
        shutil.rmtree(run, ignore_errors=True)
        cmd = train_command(args, data, name, run, steps=10 + args.speed_steps)
        subprocess.run(
            [sys.executable, "-m", "pcdm.cli", *cmd], check=True, capture_output=True,
            env=_env(args.threads or 1), cwd=ROOT,
        )  # fmt: skip
        steps, times = step_times(run)
        speeds[name] = float((times[-1] - time_at(10, steps, times)) / (steps[-1] - 10))
        shutil.rmtree(run, ignore_errors=True)
        log(f"  {name}: {speeds[name]:.4f} s/step measured alone")
    return speeds


def train_runs(args, data: str, minutes: float, speeds: dict | None = None) -> dict[str, Path]:
    """Train every run of ``args.runs`` (``--jobs`` at a time, one core each), for
    ``minutes`` of wall-clock or, given ``speeds``, for the steps that buys; reuse finished
    runs with identical settings. Returns name → run folder."""
    out, pending = {}, []
    for name in args.runs:
        run = args.out_dir / slug(data) / slug(name)
        out[name] = run
        if speeds is None:
            cmd = train_command(args, data, name, run, minutes=minutes)
        else:
            cmd = train_command(args, data, name, run, steps=max(1, round(minutes * 60 / speeds[name])))
        marker = run / DONE
        if args.reuse and marker.is_file():
            done = json.loads(marker.read_text())
            if done.get("command") == cmd:
                print(f"  {name}: reusing {run} (finished at step {done['step']})", flush=True)
                continue
            print(f"  {name}: {run} was trained with other settings, retraining", flush=True)
        pending.append((name, run, cmd))
    env = _env(args.threads or (1 if args.jobs > 1 else None))
    running: list[tuple] = []
    while pending or running:
        while pending and len(running) < args.jobs:
            name, run, cmd = pending.pop(0)
            shutil.rmtree(run, ignore_errors=True)
            run.parent.mkdir(parents=True, exist_ok=True)
            log = run.parent / f"{run.name}.train.log"
            print(f"  {name}: pcdm {shlex.join(cmd)}", flush=True)
            fh = open(log, "w")
            proc = subprocess.Popen(
                [sys.executable, "-m", "pcdm.cli", *cmd],
                stdout=fh,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=ROOT,
            )
            running.append((name, run, cmd, proc, fh, log, time.time()))
        time.sleep(1)
        for item in [r for r in running if r[3].poll() is not None]:
            running.remove(item)
            name, run, cmd, proc, fh, log, t0 = item
            fh.close()
            if proc.returncode != 0:
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
                raise SystemExit(
                    f"training {name} on {data} failed (exit {proc.returncode}); see {log}:\n{tail}"
                )
            done = {"command": cmd, "step": checkpoints(run)[-1][0], "wall_s": round(time.time() - t0, 1)}
            (run / DONE).write_text(json.dumps(done, indent=2) + "\n")
            print(
                f"  {name}: {done['step']} steps in {done['wall_s']:.0f} s (process wall-clock)", flush=True
            )
    return out


def checkpoints(run: Path) -> list[tuple[int, Path]]:
    out = []
    for d in sorted((run / "ckpt").glob("step_*")):
        if (d / "ema.safetensors").is_file() and (d / "state.json").is_file():
            out.append((int(d.name.split("_")[1]), d))
    if not out:
        raise SystemExit(f"{run} has no complete checkpoint")
    return out


def step_times(run: Path) -> tuple[np.ndarray, np.ndarray]:
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    rows = [r for r in rows if "time_s" in r]
    return np.array([r["step"] for r in rows], float), np.array([r["time_s"] for r in rows], float)


def time_at(step: int, steps: np.ndarray, times: np.ndarray) -> float:
    """Training seconds at ``step``: logged exactly, else interpolated (extrapolated past the
    last logged step at the last logged rate)."""
    if len(steps) == 0:
        return float("nan")
    hit = np.nonzero(steps == step)[0]
    if len(hit):
        return float(times[hit[0]])
    if step > steps[-1]:
        rate = times[-1] / steps[-1] if len(steps) < 2 else (times[-1] - times[-2]) / (steps[-1] - steps[-2])
        return float(times[-1] + rate * (step - steps[-1]))
    return float(np.interp(step, np.r_[0.0, steps], np.r_[0.0, times]))


# --- evaluation -------------------------------------------------------------------------


def load_ema(run: Path, ckpt: Path, device: str) -> PCDM:
    model = PCDM(ModelConfig.from_dict(read_config(run)["model"]))
    model.load_state_dict(load_tensors(ckpt / "ema.safetensors"))
    return model.to(device).eval()


def evaluate(model: PCDM, images: np.ndarray, args) -> dict[str, np.ndarray]:
    return per_image_bpd(
        model, images, n_t=args.n_t, batch_size=args.eval_batch, seed=args.eval_seed, progress=False
    )


def summary(per_image: dict[str, np.ndarray]) -> dict:
    out = summarize(per_image)
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in out.items()}


def paired_diff(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Mean of a − b over the same images and its standard error (paired)."""
    d = np.asarray(a, float) - np.asarray(b, float)
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else float("nan")


def run_dataset(args, data: str) -> dict:
    minutes = args.minutes_for.get(data, args.minutes)
    print(f"== {data}: {len(args.runs)} runs × {minutes:g} min, {args.jobs} at a time", flush=True)
    test = load(data, "test", limit=args.test_limit)
    curve_n = min(args.curve_limit, len(test.images))
    curve_images = test.images[:curve_n]
    speeds = measure_speeds(args, data) if args.budget == "steps" else None
    runs = {name: {"run": run} for name, run in train_runs(args, data, minutes, speeds).items()}

    results: dict[str, dict] = {}
    per_image_full: dict[str, dict] = {}
    for model, info in runs.items():
        run = info["run"]
        cfg = read_config(run)
        steps, times = step_times(run)
        batch = cfg["train"]["batch"] * cfg["train"].get("accum", 1)
        curve = []
        t0 = time.time()
        for step, ck in checkpoints(run):
            per = evaluate(load_ema(run, ck, args.device), curve_images, args)
            s = summary(per)
            seconds = time_at(step, steps, times) if speeds is None else step * speeds[model]
            curve.append(
                {
                    "step": step,
                    "minutes": round(seconds / 60, 4),
                    "bpd": s["bpd"],
                    "bpd_se": s["bpd_se"],
                    "per_image": per["bpd"],
                }
            )
        final_step, final_ck = checkpoints(run)[-1]
        final_model = load_ema(run, final_ck, args.device)
        per_full = evaluate(final_model, test.images, args)
        per_image_full[model] = per_full
        results[model] = {
            "run": str(run),
            "family": args.runs[model][0],
            "flags": args.runs[model][1],
            "seconds_per_step": round(time_at(final_step, steps, times) / final_step, 4),
            "seconds_per_step_alone": None if speeds is None else round(speeds[model], 4),
            "params": count_parameters(final_model),
            "batch": batch,
            "final_step": final_step,
            "images_seen": final_step * batch,
            "minutes": curve[-1]["minutes"],
            "equal_time": summary(per_full),
            "curve": curve,
        }
        print(
            f"  {model}: {final_step} steps, test bpd {results[model]['equal_time']['bpd']:.4f} "
            f"± {results[model]['equal_time']['bpd_se']:.4f} ({len(curve)} checkpoints evaluated "
            f"in {time.time() - t0:.0f} s)",
            flush=True,
        )

    # (b) equal images seen: the largest step every run reached.
    common = min(r["final_step"] for r in results.values())
    eq_images_split = "curve subset" if args.fast else "full test split"
    per_image_eq: dict[str, np.ndarray] = {}
    for model, r in results.items():
        run = Path(r["run"])
        at = [(s, ck) for s, ck in checkpoints(run) if s <= common]
        if not at:  # no checkpoint at or below the common step: nothing comparable
            r["equal_images"] = None
            continue
        step, ck = at[-1]
        if args.fast:
            point = next(c for c in r["curve"] if c["step"] == step)
            per = {"bpd": point["per_image"]}
            s = {"bpd": point["bpd"], "bpd_se": point["bpd_se"], "n_images": curve_n}
        elif step == r["final_step"]:
            per, s = per_image_full[model], r["equal_time"]
        else:
            per = evaluate(load_ema(run, ck, args.device), test.images, args)
            s = summary(per)
        per_image_eq[model] = per["bpd"]
        r["equal_images"] = dict(s, step=step, images_seen=step * r["batch"])

    # Classical codecs on the same test images (the curve subset is a prefix of them).
    t0 = time.time()
    names = [c for c in args.codecs if c in classical.available_codecs()]
    if missing := sorted(set(args.codecs) - set(names)):
        print(f"  codecs not available here, left out: {', '.join(missing)}", flush=True)
    codec = classical.compare(test.images, codecs=names, progress=False) if names else {}
    codecs = {}
    for name, c in codec.items():
        per = np.asarray(c["per_image"], float)
        codecs[name] = {
            "bpd": float(per.mean()),
            "se": float(per.std(ddof=1) / math.sqrt(len(per))),
            "bpd_curve_subset": float(per[:curve_n].mean()),
            "se_curve_subset": float(per[:curve_n].std(ddof=1) / math.sqrt(curve_n)),
        }
    listed = ", ".join(f"{k} {v['bpd']:.3f}" for k, v in codecs.items())
    print(f"  codecs: {listed} ({time.time() - t0:.0f} s)", flush=True)

    ordering = {
        "equal_time": ordering_of(results, "equal_time", {m: p["bpd"] for m, p in per_image_full.items()}),
        "equal_images": ordering_of(results, "equal_images", per_image_eq),
    }
    plot(data, results, codecs, args.results_dir / f"ablation_{slug(data)}.png")
    for r in results.values():
        for c in r["curve"]:
            c.pop("per_image")
    return {
        "data": data,
        "K": test.K,
        "shape_chw": list(test.shape_chw),
        "n_test": len(test.images),
        "n_curve": curve_n,
        "minutes_budget": minutes,
        "budget": args.budget,
        "batch": next(iter(results.values()))["batch"],
        "common_step": common,
        "equal_images_on": eq_images_split,
        "models": results,
        "codecs": codecs,
        "ordering": ordering,
        "plot": f"ablation_{slug(data)}.png",
    }


def ordering_of(results: dict, key: str, per_image: dict[str, np.ndarray]) -> dict:
    """Observed ranking (lowest bpd first), paired differences of neighbours, and whether
    it agrees with the paper's claim on the models that were run."""
    models = [m for m in results if results[m].get(key) and m in per_image]
    ranked = sorted(models, key=lambda m: results[m][key]["bpd"])
    claimed = [m for m in CLAIMED if m in ranked]
    pairs = []
    for a, b in zip(claimed, claimed[1:]):  # the claim says a < b
        d, se = paired_diff(per_image[a], per_image[b])
        pairs.append(
            {
                "claim": f"{a} < {b}",
                "diff": round(d, 5),
                "se": round(se, 5),
                "holds": bool(d < 0),
                "significant": bool(abs(d) > 2 * se),
            }
        )
    agrees = [m for m in ranked if m in CLAIMED] == claimed  # the claim is about the paper's four
    return {"observed": ranked, "claimed": claimed, "agrees": agrees, "pairs": pairs}


# --- outputs ----------------------------------------------------------------------------


def plot(data: str, results: dict, codecs: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for model, r in results.items():
        xs = [c["minutes"] for c in r["curve"]]
        ys = [c["bpd"] for c in r["curve"]]
        ax.plot(xs, ys, marker="o", ms=3, label=model)
    if "best" in codecs:
        ax.axhline(codecs["best"]["bpd_curve_subset"], color="gray", ls="--", lw=1, label="best codec/image")
    ax.set_yscale("log")
    ax.set_xlabel("training time (minutes)")
    ax.set_ylabel("test bpd (EMA, curve subset)")
    ax.set_title(f"{data}: test bpd vs training time")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fmt(v: float | None, se: float | None = None, nd: int = 3) -> str:
    if v is None or not math.isfinite(v):
        return "—"
    return f"{v:.{nd}f}" if se is None or not math.isfinite(se) else f"{v:.{nd}f} ± {se:.{nd}f}"


def markdown(report: dict) -> str:
    meta = report["meta"]
    lines = [
        "# Ablation at CPU scale: vdm vs c-vdm vs lp-pcdm vs w-pcdm vs lift-pcdm",
        "",
        f"Paper's claim (equal architecture and training): **{' < '.join(CLAIMED)}** in test bpd.",
        "",
        "Every model: the same per-level network (preset "
        f"`{meta['preset']}`, {meta['levels']} levels for the multi-scale ones), the same seed "
        f"({meta['seed']}), the same wall-clock budget, trained {meta.get('jobs', 1)} at a time on "
        f"{meta['device']} (variants named `model@W` have every network widened to W: equal "
        "compute per step instead of equal architecture). bpd is the EMA weights' bound on the test images "
        f"({meta['n_t']} time draw(s) per image, evaluation seed {meta['eval_seed']}); ± is the "
        "standard error over images. c-vdm's number is an upper bound that drops the sum over "
        "the other scales (docs/math.md §2), so it is expected to be worst.",
        "",
    ]
    for ds in report["datasets"]:
        lines += dataset_markdown(ds)
    lines += [
        "## Run details",
        "",
        f"- Command: `{meta['command']}`",
        f"- Seeds: training {meta['seed']} (all models), evaluation {meta['eval_seed']}",
        "- Budget: "
        + ", ".join(f"{d['data']} {d['minutes_budget']:g} min per model" for d in report["datasets"]),
        f"- Checkpoint every {meta['ckpt_every']} steps; batch "
        + ", ".join(f"{d['data']} {d['batch']}" for d in report["datasets"])
        + "; "
        f"training images: {meta['limit_train'] or 'all'}",
        f"- Machine: {meta['platform']}, {meta['cpu_count']} CPUs (os.cpu_count), torch {meta['torch']} "
        f"with {meta.get('threads', '?')} thread(s), Python {meta['python']}",
        f"- Date: {meta['date']}; total wall-clock {meta['total_minutes']:.1f} min",
        f"- Load average (1/5/15 min) at start {meta['loadavg_start']}, at end {meta['loadavg_end']}: "
        "equal wall-clock is only fair on an otherwise idle machine",
    ]
    if meta.get("conditions"):
        lines.append(f"- Conditions: {meta['conditions']}")
    lines.append("")
    return "\n".join(lines)


def dataset_markdown(ds: dict) -> list[str]:
    res, codecs = ds["models"], ds["codecs"]
    eq_on = ds["equal_images_on"]
    n_eq = ds["n_curve"] if eq_on == "curve subset" else ds["n_test"]
    if n_eq == ds["n_test"]:
        eq_on = "full test split"
    c, h, w = ds["shape_chw"]
    lines = [
        f"## {ds['data']} ({c}×{h}×{w}, K = {ds['K']}; {ds['minutes_budget']:g} min per model)",
        "",
        f"Equal wall-clock: final checkpoint on the full test split ({ds['n_test']} images). "
        f"Equal images seen: the largest step all runs reached ({ds['common_step']}), each model's "
        f"last checkpoint at or below it, on the {eq_on} ({n_eq} images). Per-part bpd at equal time.",
        "",
    ]
    if ds.get("budget") == "steps":
        lines += [
            "Budget by steps: each run's seconds per step were measured alone first (one core, "
            "nothing else running; the `s / step` column), and each run trained for the steps "
            f"{ds['minutes_budget']:g} minutes buy at that speed, so co-load during training does not "
            "change what each model got. `minutes` = steps × its measured seconds per step.",
            "",
        ]
    if ds.get("from_run"):
        r = ds["from_run"]
        lines += [
            f"*Carried over from an earlier run* ({r['date']}, {r.get('threads') or '?'} thread(s)): "
            f"`{r['command']}`. {r.get('conditions') or ''}",
            "",
        ]
    lines += [
        "| model | params | steps | s / step | images seen | minutes | test bpd (equal time) "
        "| step / images (equal images) | test bpd (equal images) | prior | diffusion | recon |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m, r in res.items():
        et, ei = r["equal_time"], r.get("equal_images")
        eis = f"{ei['step']} / {ei['images_seen']}" if ei else "—"
        sps = fmt(r.get("seconds_per_step_alone") or r.get("seconds_per_step"))
        lines.append(
            f"| {m} | {r['params']:,} | {r['final_step']} | {sps} | {r['images_seen']:,} "
            f"| {r['minutes']:.2f} "
            f"| {fmt(et['bpd'], et['bpd_se'])} | {eis} | {fmt(ei['bpd'], ei['bpd_se']) if ei else '—'} "
            f"| {fmt(et.get('bpd_prior'))} | {fmt(et.get('bpd_diffusion'))} | {fmt(et.get('bpd_recon'))} |"
        )
    sub = eq_on == "curve subset"
    for name, cd in codecs.items():
        label = "best classical codec per image" if name == "best" else f"{name} (lossless)"
        ei = fmt(cd["bpd_curve_subset"], cd["se_curve_subset"]) if sub else fmt(cd["bpd"], cd["se"])
        lines.append(f"| {label} | — | — | — | — | — | {fmt(cd['bpd'], cd['se'])} | — | {ei} | — | — | — |")
    lines += ["", f"![test bpd vs training time]({ds['plot']})", ""]
    bands = {m: r["equal_time"].get("diffusion_bands") for m, r in res.items()}
    if any(bands.values()):
        labels = next(iter(next(b for b in bands.values() if b).values()))
        lines += [
            "Where the bits go (equal time): each level's diffusion term split by the γ band of its "
            "sampled time, bpd of the whole image (the bands of a level add up to its diffusion term).",
            "",
            "| model | level | " + " | ".join(labels) + " |",
            "|---|---:|" + "---:|" * len(labels),
        ]
        for m, per_level in bands.items():
            for level, row in (per_level or {}).items():
                cells = " | ".join(fmt(row.get(lb)) for lb in labels)
                lines.append(f"| {m} | {level.removeprefix('level')} | {cells} |")
        lines.append("")
    for key, title in (("equal_time", "equal wall-clock"), ("equal_images", "equal images seen")):
        o = ds["ordering"][key]
        if not o["observed"]:
            continue
        verdict = "**agrees** with" if o["agrees"] else "**does not agree** with"
        lines.append(
            f"- Observed at {title}: **{' < '.join(o['observed'])}** — {verdict} the paper's "
            f"{' < '.join(o['claimed'])}."
        )
        for p in o["pairs"]:
            state = "holds" if p["holds"] else "is reversed"
            sig = "" if p["significant"] else " (within 2 paired standard errors: not resolved)"
            lines.append(f"  - {p['claim']} {state}: difference {p['diff']:+.4f} ± {p['se']:.4f} bpd{sig}")
    lines.append("")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    start, load_start = time.time(), os.getloadavg()
    datasets = (
        default_datasets() if args.datasets == "auto" else [d.strip() for d in args.datasets.split(",")]
    )
    args.results_dir.mkdir(parents=True, exist_ok=True)
    report = {"datasets": [run_dataset(args, d) for d in datasets]}
    if args.keep_from:
        old = json.loads(args.keep_from.read_text())
        m = old["meta"]
        for ds in old["datasets"]:
            if ds["data"] not in datasets:
                ds.setdefault("from_run", {k: m.get(k) for k in ("command", "date", "threads", "conditions")})
                report["datasets"].append(ds)
    report["meta"] = {
        "command": "python benchmarks/ablation.py " + shlex.join(sys.argv[1:] if argv is None else argv),
        "models": args.models,
        "runs": {name: {"model": m, "flags": f} for name, (m, f) in args.runs.items()},
        "jobs": args.jobs,
        "preset": args.preset,
        "levels": args.levels,
        "batch": args.batch or "preset",
        "ckpt_every": args.ckpt_every,
        "seed": args.seed,
        "eval_seed": args.eval_seed,
        "n_t": args.n_t,
        "limit_train": args.limit_train,
        "curve_limit": args.curve_limit,
        "test_limit": args.test_limit,
        "fast": args.fast,
        "device": args.device,
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "total_minutes": (time.time() - start) / 60,
        "loadavg_start": [round(x, 2) for x in load_start],
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "conditions": args.conditions,
    }
    (args.results_dir / "ablation.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.results_dir / "ablation.md").write_text(markdown(report))
    print(f"wrote {args.results_dir / 'ablation.md'} and ablation.json", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
