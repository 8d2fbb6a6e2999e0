"""Disturbance-aware timing (pcdm/machine.py, docs/math.md §10): the /proc/stat arithmetic,
the pair check, the slowdown line, and a training run beside a CPU burner on its core."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest

from pcdm import machine
from pcdm.machine import Disturbed, Monitor, Reading, check_pair, other_cores, parse_stat

linux = pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="needs /proc")

STAT = """cpu  1000 10 300 5000 40 5 6 7 100 0
cpu0 600 10 100 2000 20 2 3 4 100 0
cpu1 400 0 200 3000 20 3 3 3 0 0
intr 12345 0 0
ctxt 999
"""
BURN = "import time\nt = time.time()\nwhile time.time() - t < {s}: pass\n"


def burner(core: int, seconds: float) -> subprocess.Popen:
    """A busy loop pinned to ``core``, bounded in time."""
    return subprocess.Popen(
        [sys.executable, "-c", BURN.format(s=seconds)], preexec_fn=lambda: os.sched_setaffinity(0, {core})
    )


def test_parse_stat_counts_steal_not_guest_and_selects_cores():
    # busy = user + nice + system + irq + softirq + steal; guest (col 9) is inside user already
    assert parse_stat(STAT, None) == (1000 + 10 + 300 + 5 + 6 + 7, 1328 + 5000 + 40)
    assert parse_stat(STAT, {0}) == (600 + 10 + 100 + 2 + 3 + 4, 719 + 2000 + 20)
    assert parse_stat(STAT, {1}) == (400 + 200 + 3 + 3 + 3, 609 + 3000 + 20)
    both = parse_stat(STAT, {0, 1})
    assert both == tuple(a + b for a, b in zip(parse_stat(STAT, {0}), parse_stat(STAT, {1})))
    assert parse_stat(STAT, {7}) is None  # a core /proc/stat does not list
    assert parse_stat("cpu0 1 2 3\n", {0}) == (6, 6)  # old kernels: fewer columns


def test_other_cores_subtracts_the_job_and_divides_by_wall_time():
    tick = 100.0
    a = Reading(wall=10.0, busy=1000, total=5000, own=3.0)
    # 4 s of wall time, 600 ticks = 6 core-seconds busy, of which the job used 2.4 s
    b = Reading(wall=14.0, busy=1600, total=5800, own=5.4)
    assert other_cores(a, b, tick) == pytest.approx((6.0 - 2.4) / 4)
    # the job alone: nothing left for others (rounding below zero is clamped)
    assert other_cores(a, Reading(14.0, 1200, 5800, 5.05), tick) == 0.0
    assert other_cores(a, Reading(14.0, None, None, 5.0), tick) is None  # no /proc/stat
    assert other_cores(a, a, tick) is None  # no time elapsed


def pair(cores, threshold=machine.THRESHOLD):
    return {"other_cores": cores, "threshold": threshold, "disturbed": cores > threshold}


def test_check_pair_refuses_a_disturbed_side_unless_allowed():
    assert check_pair(pair(0.02), pair(0.05)) is None
    with pytest.raises(Disturbed, match=r"b: other processes used 0\.90 cores"):
        check_pair(pair(0.02), pair(0.9))
    why = check_pair(pair(0.5), pair(0.02), allow_busy=True)
    assert why.startswith("a: other processes used 0.50 cores")
    # a stricter threshold given by the caller overrides the recorded one
    with pytest.raises(Disturbed):
        check_pair(pair(0.05), pair(0.02), threshold=0.01)
    # a resumed run: a disturbed earlier session taints the run
    resumed = {**pair(0.0), "earlier": [pair(0.7)]}
    with pytest.raises(Disturbed):
        check_pair(resumed, pair(0.0))
    # unknown (no /proc, or an old run without a record) is said, not refused
    assert check_pair(None, pair(0.0)).startswith("a: unknown")
    assert "unknown" in check_pair(pair(0.0), {"other_cores": None})


def test_slowdown_is_reported_once(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(machine.time, "monotonic", lambda: clock[0])
    m = Monitor(window_s=10.0).start()
    notes, step = [], 0
    for k in range(400):  # 10 steps/s for 20 s, then 2 steps/s
        clock[0] += 0.1 if k < 200 else 0.5
        step += 1
        if note := m.sample(step):
            notes.append(note)
    assert len(notes) == 1
    ratio = float(re.search(r"([0-9.]+)x the first", notes[0]).group(1))
    assert ratio <= machine.SLOW and "10.00" in notes[0]  # printed to 2 digits; first window 10 steps/s
    s = m.summary()
    assert s["steps_per_s_first_min"] == pytest.approx(10.0, rel=0.05)
    assert s["steps_per_s_last_min"] == pytest.approx(2.0, rel=0.05)
    assert s["steps"] == 400
    json.dumps(s)  # JSON-able


def test_steady_throughput_says_nothing(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(machine.time, "monotonic", lambda: clock[0])
    m = Monitor(window_s=5.0).start()
    for step in range(1, 301):
        clock[0] += 0.1
        assert m.sample(step) is None
    assert m.summary()["steps_per_s_last_min"] == pytest.approx(10.0, rel=0.05)


@linux
def test_tree_cpu_counts_live_children():
    before = machine.tree_cpu(os.getpid())
    proc = burner(sorted(os.sched_getaffinity(0))[0], 1.0)
    time.sleep(1.2)
    during = machine.tree_cpu(os.getpid())  # the child may still be alive (not reaped)
    proc.wait()
    after = machine.tree_cpu(os.getpid())
    assert during - before > 0.3  # a shared machine may give the burner less than a core
    assert after >= during - 0.02


@linux
def test_a_burner_is_other_work_unless_it_is_in_the_job():
    core = sorted(os.sched_getaffinity(0))[-1]
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        outside = Monitor(root=sleeper.pid, cores={core}).start()  # the burner is not its child
        inside = Monitor(cores={core}).start()  # the burner is this process's child
        proc = burner(core, 1.5)
        proc.wait()
        a, b = outside.summary(), inside.summary()
    finally:
        sleeper.kill()
        sleeper.wait()
    # the core was fully busy: burner plus whatever else the machine ran there
    assert a["other_cores"] > 0.7 and a["disturbed"]
    assert a["other_cores"] - b["other_cores"] > 0.3  # the job's own burner is not "other"
    assert a["cores_allowed"] == 1 and a["threshold"] == machine.THRESHOLD


# --- end to end: pcdm train --minutes beside a burner on its core -------------------------

ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
TRAIN = [sys.executable, "-m", "pcdm.cli", "train", "--data", "digits", "--preset", "tiny"]
TRAIN += ["--sample-steps", "0", "--device", "cpu", "--minutes", "0.15"]


def train_pinned(out, core: int) -> tuple[dict, str]:
    res = subprocess.run(
        [*TRAIN, "--out", str(out)],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=180,
        preexec_fn=lambda: os.sched_setaffinity(0, {core}),
    )
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads((out / "machine.json").read_text()), res.stderr.strip().splitlines()[-1]


def idlest_core() -> int:
    cores = sorted(os.sched_getaffinity(0))
    a = [parse_stat(open("/proc/stat").read(), {c}) for c in cores]
    time.sleep(1.0)
    b = [parse_stat(open("/proc/stat").read(), {c}) for c in cores]
    return min(zip(cores, a, b), key=lambda x: x[2][0] - x[1][0])[0]


@linux
@pytest.mark.slow
def test_training_reports_a_burner_on_its_core_and_none_alone(tmp_path):
    core = sorted(os.sched_getaffinity(0))[-1]
    proc = burner(core, 40)  # bounded; killed as soon as the run ends
    try:
        busy, last = train_pinned(tmp_path / "busy", core)
    finally:
        proc.kill()
        proc.wait()
    assert busy["disturbed"] is True
    assert busy["other_cores"] > 0.3  # the burner takes about half of a shared core
    assert busy["cores_allowed"] == 1 and busy["threads"] == 1
    assert last.strip().startswith("machine busy: other processes used")
    assert f"{busy['other_cores']:.2f} cores" in last

    # alone: the same run, on the idlest core, watched from outside as well
    core = idlest_core()
    outside = Monitor(cores={core}).start()  # this process's tree = the run, once reaped
    clean, last = train_pinned(tmp_path / "clean", core)
    seen = outside.summary()
    if clean["disturbed"] and seen["other_cores"] > machine.THRESHOLD:
        pytest.skip(f"the shared machine ran other work on core {core} ({seen['other_cores']:.2f} cores)")
    assert clean["disturbed"] is False and clean["other_cores"] <= machine.THRESHOLD
    assert last.strip().startswith("machine idle: other processes used")
    assert clean["steps"] > busy["steps"]  # the burner cost the busy run steps


def test_training_records_the_machine_and_a_resume_keeps_the_earlier_session(tmp_path, capsys):
    from pcdm.cli import main

    run = tmp_path / "run"
    args = ["--data", "digits", "--preset", "tiny", "--sample-steps", "0", "--device", "cpu"]
    assert main(["train", "--out", str(run), *args, "--steps", "3"]) == 0
    first = json.loads((run / "machine.json").read_text())
    assert first["steps"] == 3 and first["wall_s"] > 0 and first["cpu_s"] > 0
    assert first["cores_allowed"] == len(os.sched_getaffinity(0)) >= first["threads"]
    assert capsys.readouterr().err.strip().splitlines()[-1].lstrip().startswith("machine ")
    assert main(["train", "--resume", str(run), "--steps", "5"]) == 0
    record = json.loads((run / "machine.json").read_text())
    assert record["steps"] == 2  # this session's steps only
    assert [e["steps"] for e in record["earlier"]] == [3]
    clean = not first["disturbed"] and not record["disturbed"]  # either session taints the run
    assert (machine.disturbance(record) is None) == clean
