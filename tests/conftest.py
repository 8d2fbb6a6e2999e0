"""Shared test helpers."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def one_thread():
    """Small tensors: one thread is ~10× faster than two on a shared, loaded CPU (modules of
    small-model tests use it with ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def load_benchmark(name: str):
    """A script of ``benchmarks/`` imported as a module (the folder is not a package)."""
    spec = importlib.util.spec_from_file_location(f"benchmarks.{name}", ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses resolve their module's annotations through it
    spec.loader.exec_module(mod)
    return mod


def train_one_and_two_processes(one: Path, two: Path, args: list[str], port: int):
    """``pcdm train ARGS`` in one process (batch 16) into ``one`` and under torchrun on two
    processes (batch 8 each, the same global batch) into ``two``; returns the torchrun result
    (its stderr checked for success)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cli = [sys.executable, "-m", "pcdm.cli", "train"]
    subprocess.run(
        [*cli, "--out", str(one), "--batch", "16", *args], env=env, check=True, capture_output=True
    )
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(port),
    ]
    res = subprocess.run(
        [*torchrun, *cli[1:], "--out", str(two), "--batch", "8", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    return res
