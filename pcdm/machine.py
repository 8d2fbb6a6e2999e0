"""What else used the machine while a timed job ran (docs/math.md §10, "Disturbance-aware timing").

An equal-time comparison measures the models only if the machine gave both runs the same
cores. :class:`Monitor` reads the busy time of the cores the job may run on
(``os.sched_getaffinity``) from the per-core lines of ``/proc/stat``, subtracts the CPU
time of the job's own process tree (``/proc/PID/stat`` of the root and its live
descendants, reaped children included), and divides by the wall time:
``other_cores`` = how many of the job's cores other processes (or the hypervisor, as steal
time) used on average. Above :data:`THRESHOLD` (0.10 of a core) the job was *disturbed*.
Without ``/proc`` the measure is unknown (``other_cores`` and ``disturbed`` are None).
"""

from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass

THRESHOLD = 0.10  # cores used by other processes, on average, above which a timing is disturbed
SLOW = 0.6  # a last window slower than this fraction of the first is reported while running
WINDOW_S = 60.0  # the "first minute" and "last minute" of steps/s
_EVERY_S = 5.0  # seconds between kept readings (for the last window's other_cores)


class Disturbed(RuntimeError):
    """A timing pair in which one side shared its cores with other work."""


@dataclass(frozen=True)
class Reading:
    """One look at the machine: wall time (s), busy and total ticks of the watched cores,
    CPU seconds of the job's process tree, and steps done."""

    wall: float
    busy: int | None
    total: int | None
    own: float
    step: int = 0


def allowed_cores() -> set[int]:
    """The cores this process may run on."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return set(range(os.cpu_count() or 1))


def default_threads() -> int:
    """Default worker/thread count: the cores this process may use, not the machine's count."""
    return max(1, len(allowed_cores()))


def cap_torch_threads() -> int:
    """Never more torch threads than allowed cores (unless OMP_NUM_THREADS says otherwise)."""
    import torch

    if "OMP_NUM_THREADS" not in os.environ and torch.get_num_threads() > default_threads():
        torch.set_num_threads(default_threads())
    return torch.get_num_threads()


def parse_stat(text: str, cores: set[int] | None) -> tuple[int, int] | None:
    """(busy, total) ticks of ``cores`` from the text of /proc/stat (all cores: the
    aggregate ``cpu`` line). Busy = user + nice + system + irq + softirq + steal (guest time
    is already in user); total adds idle and iowait. None if no watched core is listed."""
    busy = total = 0
    found = False
    for line in text.splitlines():
        name, *fields = line.split()
        if not name.startswith("cpu"):
            continue
        if cores is None:
            if name != "cpu":
                continue
        elif name == "cpu" or int(name[3:]) not in cores:
            continue
        v = [int(x) for x in fields] + [0] * 8
        user, nice, system, idle, iowait, irq, softirq, steal = v[:8]
        busy += user + nice + system + irq + softirq + steal
        total += user + nice + system + idle + iowait + irq + softirq + steal
        found = True
    return (busy, total) if found else None


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile
            kids.setdefault(ppid, []).append(int(entry))
    return kids


def _proc_cpu(pid: int, tick: float) -> float:
    """utime + stime + cutime + cstime of one process, in seconds (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(x) for x in fields[11:15]) / tick  # fields 14–17 of proc(5)


def tree_cpu(root: int) -> float:
    """CPU seconds of ``root`` and its descendants (reaped children included); for this
    process itself, ``os.times()`` (exact, and all there is without /proc)."""
    if root == os.getpid():
        t = os.times()
        total = t.user + t.system + t.children_user + t.children_system
        if not os.path.isdir("/proc"):
            return total
        kids = _children()
        todo = list(kids.get(root, ()))  # live children: their own stat lines
    else:
        total, kids, todo = 0.0, _children(), [root]
    tick = os.sysconf("SC_CLK_TCK")
    while todo:
        pid = todo.pop()
        total += _proc_cpu(pid, tick)
        todo.extend(kids.get(pid, ()))
    return total


def other_cores(a: Reading, b: Reading, tick: float) -> float | None:
    """Cores that processes outside the job used on average between readings a and b."""
    if a.busy is None or b.busy is None or b.wall <= a.wall:
        return None
    other = (b.busy - a.busy) / tick - (b.own - a.own)
    return max(0.0, other / (b.wall - a.wall))


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


class Monitor:
    """Watch the machine while a job runs: ``with Monitor() as m: … m.sample(step) …``, then
    ``m.summary()``. ``sample`` is cheap (it reads /proc at most every few seconds) and
    returns a one-line warning, once, when the last ``window_s`` ran at under :data:`SLOW`
    of the first window's steps/s."""

    def __init__(
        self,
        root: int | None = None,
        threshold: float = THRESHOLD,
        window_s: float = WINDOW_S,
        cores: set[int] | None = None,
    ):
        """``root``: the job's process (default this one; its descendants count as the job);
        ``cores``: the cores to watch (default those this process may use)."""
        self.root = os.getpid() if root is None else root
        self.threshold, self.window_s = threshold, window_s
        self.cores = allowed_cores() if cores is None else set(cores)
        self.tick = float(os.sysconf("SC_CLK_TCK")) if hasattr(os, "sysconf") else 100.0
        self.first: Reading | None = None
        self.readings: deque[Reading] = deque()
        self.steps: deque[tuple[float, int]] = deque()  # (wall, step), about one a second
        self.first_rate: float | None = None
        self.warned = False
        self.load_start = self.load_end = None
        self._end: Reading | None = None

    # -- readings ---------------------------------------------------------------------
    def read(self, step: int = 0) -> Reading:
        try:
            with open("/proc/stat") as f:
                ticks = parse_stat(f.read(), self.cores)
        except OSError:
            ticks = None
        busy, total = ticks if ticks else (None, None)
        return Reading(time.monotonic(), busy, total, tree_cpu(self.root), step)

    def start(self, step: int = 0) -> Monitor:
        """Begin watching; ``step``: the steps already done (a resumed run)."""
        self.first = self.read(step)
        self.readings = deque([self.first])
        self.steps = deque([(self.first.wall, step)])
        self.latest = self.steps[0]
        self.load_start, self._end = _load(), None
        return self

    def __enter__(self) -> Monitor:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        if self._end is None:
            self._end = self.read(self.latest[1])
            self.load_end = _load()

    def sample(self, step: int) -> str | None:
        """Record that ``step`` steps are done; a warning line (once) if throughput fell."""
        now = time.monotonic()
        self.latest = (now, step)
        if now - self.steps[-1][0] >= 1.0:  # a kept point at most every second
            self.steps.append(self.latest)
        if now - self.readings[-1].wall >= _EVERY_S:
            self.readings.append(self.read(step))
            while len(self.readings) > 1 and self.readings[0].wall < now - 2 * self.window_s:
                self.readings.popleft()
        t0 = self.first.wall
        if self.first_rate is None and now - t0 >= self.window_s:
            self.first_rate = self._rate(t0, t0 + self.window_s)
        while len(self.steps) > 2 and self.steps[1][0] < now - 2 * self.window_s:
            self.steps.popleft()  # the first window's rate is kept in first_rate
        if self.warned or self.first_rate is None or now - t0 < 2 * self.window_s:
            return None
        last = self._rate(now - self.window_s, now)
        if last is None or last >= SLOW * self.first_rate:
            return None
        self.warned = True
        recent = [r for r in self.readings if r.wall <= now - self.window_s]
        cores = other_cores(recent[-1], self.read(step), self.tick) if recent else None
        why = "" if cores is None else f"; other processes used {cores:.2f} cores since then"
        minutes = self.window_s / 60
        return (
            f"machine: throughput fell to {last:.2f} steps/s over the last {minutes:g} min, "
            f"{last / self.first_rate:.2f}x the first {minutes:g} min's {self.first_rate:.2f}{why}"
        )

    def _rate(self, lo: float, hi: float) -> float | None:
        """Steps/s between wall times lo and hi, from the step record (interpolated)."""
        pts = list(self.steps) + ([self.latest] if self.latest[0] > self.steps[-1][0] else [])
        if len(pts) < 2 or hi <= lo:
            return None

        def at(t: float) -> float:
            if t <= pts[0][0]:
                return float(pts[0][1])
            for (ta, sa), (tb, sb) in zip(pts, pts[1:]):
                if t <= tb:
                    return sa + (sb - sa) * (t - ta) / max(tb - ta, 1e-9)
            return float(pts[-1][1])

        hi = min(hi, pts[-1][0])
        lo = max(lo, pts[0][0])
        return (at(hi) - at(lo)) / (hi - lo) if hi > lo else None

    # -- the report -------------------------------------------------------------------
    def summary(self) -> dict:
        """JSON-able: other_cores (None: unknown), load_start/load_end (1-min load average),
        threads (torch's), cores_allowed, wall_s, cpu_s (the job's tree), steps,
        steps_per_s_first_min / steps_per_s_last_min (windows of ``window_s``; they overlap
        in a run shorter than two windows), disturbed (None: unknown), threshold."""
        self.stop()
        a, b = self.first, self._end
        cores = other_cores(a, b, self.tick)
        t0, t1 = a.wall, b.wall
        try:
            import torch

            threads = torch.get_num_threads()
        except ImportError:
            threads = None
        steps = self.latest[1] - a.step
        first = self.first_rate if self.first_rate is not None else self._rate(t0, t0 + self.window_s)
        return {
            "other_cores": None if cores is None else round(cores, 3),
            "load_start": self.load_start,
            "load_end": self.load_end,
            "threads": threads,
            "cores_allowed": len(self.cores),
            "wall_s": round(t1 - t0, 2),
            "cpu_s": round(b.own - a.own, 2),
            "steps": steps,
            "steps_per_s_first_min": None if first is None else round(first, 3),
            "steps_per_s_last_min": _round(self._rate(t1 - self.window_s, t1)) if steps else None,
            "window_s": self.window_s,
            "disturbed": None if cores is None else bool(cores > self.threshold),
            "threshold": self.threshold,
        }


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def describe(summary: dict | None) -> str:
    """One line: "machine busy: other processes used 0.9 cores during this run"."""
    if not summary or summary.get("other_cores") is None:
        return "machine load unknown (no /proc/stat): timings may include other processes' work"
    state = "busy" if summary["disturbed"] else "idle"
    n = summary["cores_allowed"]
    return (
        f"machine {state}: other processes used {summary['other_cores']:.2f} cores during this run "
        f"(of the {n} core{'s' if n != 1 else ''} it may use, {summary['threads']} thread(s); "
        f"threshold {summary['threshold']:g})"
    )


def disturbance(summary: dict | None, threshold: float | None = None) -> str | None:
    """Why a timing is not clean ("unknown: …" when it cannot be told), or None if it is.
    A resumed run's earlier sessions (``earlier``) count too."""
    if not summary:
        return "unknown: no machine record"
    parts = [summary, *summary.get("earlier", [])]
    for part in parts:
        cores = part.get("other_cores")
        if cores is None:
            return "unknown: no /proc/stat"
        limit = part.get("threshold", THRESHOLD) if threshold is None else threshold
        if cores > limit:
            return f"other processes used {cores:.2f} cores (threshold {limit:g})"
    return None


def check_pair(summary_a: dict | None, summary_b: dict | None, threshold: float | None = None,
               allow_busy: bool = False) -> str | None:  # fmt: skip
    """None if both timings are clean; else the reason, e.g. "a: other processes used 0.52
    cores (threshold 0.1)". Raises :class:`Disturbed` when a side was disturbed unless
    ``allow_busy`` (then the caller marks its row with the reason). An unknown side is
    returned as a reason, never raised: it cannot be told apart from a clean one."""
    reasons = []
    for side, s in (("a", summary_a), ("b", summary_b)):
        if (why := disturbance(s, threshold)) is not None:
            reasons.append((side, why))
    if not reasons:
        return None
    text = "; ".join(f"{side}: {why}" for side, why in reasons)
    if not allow_busy and any(not why.startswith("unknown") for _, why in reasons):
        raise Disturbed(f"disturbed timing pair ({text}); rerun on an idle machine or pass --allow-busy")
    return text
