"""The codec as a library: :func:`compress` and :func:`decompress` a batch of images with a
trained model (docs/math.md §6, the container in docs/format.md). ``pcdm compress`` /
``pcdm decompress``, the tests and the benchmarks all call these.

The container policy: every image gets a classical record; with ``container="auto"`` the
file is the smaller of all records (no bits-back stream) and a bits-back stream seeded by
the first few records, so it is never larger than the classical file. ``jobs`` > 1 codes
contiguous parts in worker processes, one core each.
"""

from __future__ import annotations

import copy
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import codec
from ..checkpoint import fingerprint, load_run, load_weights, weight_files
from ..data import DataError

DEFAULT_STEPS = 100
DEFAULT_LANES = 64
CONTAINERS = ("auto", "bits-back", "classical")


def compress(
    model, images: np.ndarray, h: codec.Header, steps: int, lanes: int, progress, ramp=True, container="auto"
):
    """Encode and pack; returns (file bytes, stats dict).

    Every image gets a classical record (the smallest of JPEG-XL, WebP and PNG lossless). With
    ``container="auto"`` the file is the smaller of (a) all records, no bits-back stream, and
    (b) the first few records as the seed of a bits-back stream of the other images
    (``codec.seed_count``), so it is never larger than (a): Σ records + header + metadata.
    ``"bits-back"`` / ``"classical"`` force (b) / (a)."""
    if container not in CONTAINERS:
        raise ValueError(f"container must be one of {CONTAINERS}, got {container!r}")
    C, H, W = model.config.image_shape
    if images.shape[1:] != (H, W, C):
        raise DataError(
            f"images are {images.shape[2]}x{images.shape[1]} with {images.shape[3]} "
            f"channel(s) but the model expects {W}x{H} with {C}"
        )
    N = len(images)
    t0 = time.perf_counter()
    records = [codec.classical_record(x) for x in images]
    classical_s = time.perf_counter() - t0
    h.fingerprint = fingerprint(model)
    h.T, h.B, h.N, h.C, h.H, h.W, h.K = steps, lanes, N, C, H, W, model.config.K
    h.pixel_crc, h.ramp = codec.pixel_crc(images), ramp
    h.seed_images, h.n_init, h.kmin = N, 0, 0
    words = codec.seed_words(b"".join(records))
    h.seed_words = len(words)
    classical = codec.pack_classical(h, records)  # the compact header unless a part follows
    dims = N * model.dims
    stats = {
        "n_images": N,
        "dims": model.dims,
        "steps": steps,
        "lanes": lanes,
        "ramp": ramp,
        "classical_bytes": len(classical),
        "classical_codecs": {  # how many records each codec won
            name: sum(r[0] == codec.CODEC_IDS.index(name) for r in records)
            for name in codec.classical_codecs()
        },
    }
    m = codec.seed_count([len(r) for r in records], codec.seed_need_bits(model, steps))
    if container == "bits-back":
        m = min(m, N - 1)
    blob = classical
    if m < N and container != "classical":
        seed = codec.seed_words(b"".join(records[:m])) if m else None
        t0 = time.perf_counter()
        enc = codec.encode_images(model, images[m:], steps, lanes, progress=progress, ramp=ramp, seed=seed)
        bits_back_s = time.perf_counter() - t0
        h.seed_images, h.seed_words, h.n_init, h.kmin = m, enc.seed_words, enc.n_init, enc.kmin
        bits_back = codec.pack(h, enc.words)
        coded = (N - m) * model.dims
        stats.update(
            bits_back_bytes=len(bits_back),
            seed_images=m,
            seed_bits=32 * enc.seed_words,
            initial_bits=enc.initial_bits,
            # The stream's growth per coded pixel value: without header, seed and initial
            # bits (what a long stream approaches; compare with the −ELBO of those images).
            net_bpd=(32 * (enc.words.size - enc.seed_words) - enc.initial_bits) / coded,
            seconds=bits_back_s + classical_s,
            images_per_s=(N - m) / bits_back_s if bits_back_s > 0 else float("inf"),
        )
        if len(bits_back) < len(classical) or container == "bits-back":
            blob = bits_back
    stats["container"] = "classical" if blob is classical else "bits-back"
    stats["bytes"] = len(blob)
    stats["bpd"] = 8 * len(blob) / dims
    return blob, stats


# --- parallel parts (codec.split_parts) ---------------------------------------------


def part_ranges(n: int, jobs: int) -> list[tuple[int, int]]:
    """min(jobs, n) contiguous parts of n images whose sizes differ by at most one."""
    j = max(1, min(jobs, n))
    return [(i * n // j, (i + 1) * n // j) for i in range(j)]


def _part_header(h: codec.Header, start: int, stop: int, last: bool) -> codec.Header:
    part = copy.deepcopy(h)
    if part.names is not None:
        part.names = part.names[start:stop]
    if part.shape is not None:
        part.shape = (stop - start, *part.shape[1:])
    part.continued = not last
    return part


def _worker_init() -> None:
    torch.set_num_threads(1)


def _pool(jobs: int) -> ProcessPoolExecutor:
    spawn = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(jobs, mp_context=spawn, initializer=_worker_init)


def _compress_part(run: str, images, h, steps, lanes, ramp, container):
    model, _ = load_run(run)
    return compress(model, images, h, steps, lanes, progress=False, ramp=ramp, container=container)


def compress_parts(
    run, model, images: np.ndarray, h: codec.Header, steps: int, lanes: int, jobs: int, progress=False,
    ramp=True, container="auto",
):  # fmt: skip
    """:func:`compress` in ``jobs`` parts at once, one process each (the model loaded from
    ``run`` in each); one part is :func:`compress` itself. ``auto`` keeps the single
    all-classical file when it is smaller than the parts together."""
    ranges = part_ranges(len(images), jobs)
    if len(ranges) == 1 or container == "classical":
        return compress(model, images, h, steps, lanes, progress, ramp=ramp, container=container)
    t0 = time.perf_counter()
    with _pool(len(ranges)) as pool:
        futures = [
            pool.submit(_compress_part, str(run), images[a:b], _part_header(h, a, b, i == len(ranges) - 1),
                        steps, lanes, ramp, container)
            for i, (a, b) in enumerate(ranges)
        ]  # fmt: skip
        bar = tqdm(futures, desc="compress parts", disable=not progress, leave=False)
        results = [f.result() for f in bar]
    wall = time.perf_counter() - t0
    blob = b"".join(r[0] for r in results)
    parts = [r[1] for r in results]
    streams = [p for p in parts if "net_bpd" in p]  # the parts that kept a bits-back stream
    stats = {
        "n_images": len(images), "dims": model.dims, "steps": steps, "lanes": lanes, "ramp": ramp,
        "parts": len(parts), "part_containers": [p["container"] for p in parts],
        "bits_back_bytes": len(blob), "seed_images": sum(p.get("seed_images", p["n_images"]) for p in parts),
        "initial_bits": sum(p.get("initial_bits", 0) for p in parts), "seconds": wall,
        "images_per_s": len(images) / wall,
    }  # fmt: skip
    if streams:
        coded = [(p["n_images"] - p["seed_images"]) * model.dims for p in streams]
        stats["net_bpd"] = sum(p["net_bpd"] * c for p, c in zip(streams, coded)) / sum(coded)
    single = None
    if container == "auto":
        h_all = copy.deepcopy(h)
        single, alone = compress(model, images, h_all, steps, lanes, False, ramp=ramp, container="classical")
        stats["classical_bytes"] = len(single)
        stats["classical_codecs"] = alone["classical_codecs"]
    if single is not None and len(single) <= len(blob):
        blob, stats["container"], stats["parts"] = single, "classical", 1
    else:
        stats["container"] = "bits-back" if "bits-back" in stats["part_containers"] else "classical"
    stats["bytes"] = len(blob)
    stats["bpd"] = 8 * len(blob) / (len(images) * model.dims)
    return blob, stats


def _decompress_in_worker(run: str, weights: str | None, blob: bytes, preview_level):
    model, _ = load_run(run)
    if weights is not None:
        load_weights(model, Path(weights))
    return _decompress_part(model, blob, preview_level)


def decompress(
    model, blob: bytes, preview_level: int | None = None, progress: bool = False, jobs: int = 1,
    run=None, weights=None,
):  # fmt: skip
    """Unpack and decode; returns (header, images or previews (N,h,w,C) uint8). A file of
    several parts (``compress --jobs``) is decoded part by part, ``jobs`` at once when the
    model's ``run`` (and ``weights`` file, None: the run's own) is given to load it again."""
    parts = codec.split_parts(blob)
    if len(parts) == 1:
        return _decompress_part(model, blob, preview_level, progress)
    jobs = min(jobs, len(parts)) if run is not None else 1
    if jobs > 1:
        with _pool(jobs) as pool:
            futures = [pool.submit(_decompress_in_worker, str(run), weights, p, preview_level) for p in parts]
            bar = tqdm(futures, desc="decompress parts", disable=not progress, leave=False)
            results = [f.result() for f in bar]
    else:
        bar = tqdm(parts, desc="decompress parts", disable=not progress, leave=False)
        results = [_decompress_part(model, p, preview_level) for p in bar]
    return _merge_headers([r[0] for r in results]), np.concatenate([r[1] for r in results])


def _merge_headers(heads: list[codec.Header]) -> codec.Header:
    """One header for the whole file: the parts must describe pieces of one input."""
    h = copy.deepcopy(heads[0])
    for part in heads[1:]:
        key = (part.kind, part.C, part.H, part.W, part.K, part.dtype)
        same = key == (h.kind, h.C, h.H, h.W, h.K, h.dtype)
        if not same or (h.shape is not None and len(part.shape) != len(h.shape)):
            raise codec.CodecError("corrupt .pcdm file: its parts describe different inputs")
    h.N = sum(p.N for p in heads)
    if h.names is not None:
        h.names = [n for p in heads for n in p.names]
        if len(set(h.names)) != len(h.names):
            raise codec.CodecError("corrupt .pcdm file: duplicate file names across parts")
    if h.shape is not None:
        h.shape = (h.N, *h.shape[1:])
    h.continued = False
    return h


def _decompress_part(model, blob: bytes, preview_level: int | None = None, progress: bool = False):
    """Unpack and decode one part; returns (header, images or previews (N,h,w,C) uint8)."""
    h, words = codec.unpack(blob)
    C, H, W = model.config.image_shape
    if (h.C, h.H, h.W, h.K) != (C, H, W, model.config.K):
        raise codec.CodecError("corrupt .pcdm header: image shape does not match the model")
    S = len(model.level_shapes)
    if preview_level is not None and not 1 <= preview_level <= S:
        raise codec.CodecError(f"--preview-level must be in 1..{S} for this model")
    level = None if preview_level is None or preview_level == S else preview_level - 1
    if h.classical:
        images = codec.decode_records(codec.seed_bytes(words), h.N, H, W, C)
    else:
        if h.fingerprint != fingerprint(model):
            raise codec.CodecError(
                "the file was compressed with a different model (fingerprint mismatch); use the "
                "same run folder and weights"
            )
        n_bb = h.N - h.seed_images
        bits = 32 * (len(words) - h.seed_words)
        # (The image count is checked first: it bounds the size of the batch layout.)
        if bits < n_bb or codec.WORK_PER_BIT * bits < h.T * S * len(codec.batch_layout(n_bb, h.B, h.ramp)):
            # Every image costs bits, and the decoder does at most WORK_PER_BIT chain steps
            # of a batch per payload bit (a valid stream pays more: ≥ 64 initial or seed
            # bits, and about a bit per pixel value): a payload this small is forged.
            raise codec.CodecError("corrupt .pcdm file: payload too small for its header")
        # Seeded files decode fully (the seed is at the bottom of the stack); their previews
        # are made from the decoded images.
        stop = None if h.seed_images else level
        images, preview, seed = codec.decode_stream(
            model, words, n_bb, h.T, h.B, h.n_init, h.kmin, preview_level=stop, progress=progress,
            ramp=h.ramp, seed_words=h.seed_words,
        )  # fmt: skip
        if images is None:
            return h, preview
        if h.seed_images:
            first = codec.decode_records(codec.seed_bytes(seed), h.seed_images, H, W, C)
            images = np.concatenate([first, images])
    if codec.pixel_crc(images) != h.pixel_crc:
        raise codec.CodecError(
            "decoded pixels fail the CRC check: corrupt file, or decoded on a different "
            "torch/CPU build than it was encoded with"
        )
    if level is not None:
        return h, codec.clean_previews(model, images, level)
    return h, images


def matching_model(run, wanted: bytes, log=None):
    """(model, weights) of RUN (a run folder or RUN/ckpt/step_N) whose fingerprint is
    ``wanted``: the given weights first (weights None), then every weights file of the run,
    newest first."""
    model, _ = load_run(run)
    if fingerprint(model) == wanted:
        return model, None
    tried = 1
    for path in weight_files(run):
        load_weights(model, path)
        tried += 1
        if fingerprint(model) == wanted:
            if log:
                log(f"using {path}: the weights this file was compressed with")
            return model, path
    raise codec.CodecError(
        f"no weights in {run} match the file (fingerprint {wanted.hex()[:16]}…; {tried} weight files "
        "checked): it was compressed with another run, or with a checkpoint since deleted (--keep)"
    )
