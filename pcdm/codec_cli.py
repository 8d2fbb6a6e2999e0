"""``pcdm compress`` / ``pcdm decompress`` (SPEC §7, §8): files around :mod:`pcdm.codec`.

INPUT is a folder of images (relative names kept, sorted as :func:`data.read_image_folder`
reads them), one or more image files (their names kept), or a ``.npy``/``.npz`` integer
array ``(N, H, W)`` / ``(N, H, W, C)``. Decompression writes what ``-o`` names: ``X.npy`` an
array (the input's shape and dtype when it was one), ``X.png`` a single image, anything
else a folder of lossless PNGs (the input's relative names, a non-PNG suffix becoming
``.png``; numbered for arrays). Nothing is written unless the whole stream decodes and the
pixels match their CRC-32.
"""

from __future__ import annotations

import copy
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from tqdm.auto import tqdm

from . import codec
from .baselines import reference_bpd
from .checkpoint import atomic_write, current_umask, fingerprint, load_run, load_weights, weight_files
from .data import DataError, as_images, image_array, read_image_folder

DEFAULT_STEPS = 100
DEFAULT_LANES = 64
CONTAINERS = ("auto", "bits-back", "classical")


def add_compress_parser(sub) -> None:
    p = sub.add_parser(
        "compress",
        help="losslessly compress images with bits-back ANS",
        description="Bits-back ANS coding over the T-step model (Bit-Swap order).",
    )
    p.add_argument("run", help="run folder of a trained model, or one of its checkpoints RUN/ckpt/step_N")
    p.add_argument(
        "input", nargs="+", help="image file(s), a folder of images, or a .npy/.npz integer array (N,H,W[,C])"
    )
    p.add_argument("-o", "--output", required=True, help="output .pcdm file")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="T (default %(default)s)")
    p.add_argument(
        "--batch",
        type=int,
        default=DEFAULT_LANES,
        help="images coded side by side (lanes; default %(default)s); more lanes are faster "
        "but, without the ramp, need proportionally more one-off initial bits",
    )
    p.add_argument(
        "--no-ramp",
        dest="ramp",
        action="store_false",
        help="full batches from the first image (faster on few images, but every lane then "
        "needs its own initial bits); by default batches grow from one lane as the stream grows",
    )
    p.add_argument(
        "--container",
        choices=CONTAINERS,
        default="auto",
        help="auto (default): the smaller of the bits-back stream and the images stored classically "
        "(JPEG-XL/PNG lossless, the smaller per image), so the file is never larger than those plus "
        f"{codec.HEADER_SIZE} header bytes, the names and ≤ 3 bytes per image; or force one",
    )
    _add_jobs(
        p,
        "code the images in J parts at once, one process (core) each: J× faster; each part is its "
        "own bits-back stream with its own seed and header, so the file grows a little",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_compress)


def _add_jobs(p, text: str) -> None:
    help_text = f"{text} (0: all cores; default %(default)s)"
    p.add_argument("--jobs", type=int, default=1, metavar="J", help=help_text)


def add_decompress_parser(sub) -> None:
    p = sub.add_parser(
        "decompress",
        help="restore images from a .pcdm file",
        description="Decode a .pcdm file made by `pcdm compress` with the same model.",
    )
    p.add_argument(
        "run",
        help="run folder (or RUN/ckpt/step_N): the weights whose fingerprint the file carries are found",
    )
    p.add_argument("file", help=".pcdm file")
    p.add_argument("-o", "--output", required=True, help="output folder or .npy file")
    p.add_argument(
        "--preview-level",
        type=int,
        default=None,
        metavar="S",
        help="stop after level S (1 = coarsest) and write low-resolution previews "
        "(not checked against the pixel CRC)",
    )
    _add_jobs(p, "decode the parts of a file made with compress --jobs at once, one process (core) each")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_decompress)


# ---------------------------------------------------------------------------


def read_input(paths, K: int) -> tuple[np.ndarray, codec.Header]:
    """Images (N,H,W,C) uint8 and a partial header describing the input's form."""
    paths = [paths] if isinstance(paths, str | Path) else list(paths)
    src = Path(paths[0])
    if len(paths) == 1 and src.is_dir():
        names, images = read_image_folder(src)
        return _named(names, images, K, str(src))
    if len(paths) == 1 and src.suffix.lower() in (".npy", ".npz"):
        return _array_input(src, K)
    files = [Path(p) for p in paths]
    for f in files:
        if f.is_dir() or f.suffix.lower() in (".npy", ".npz"):
            raise DataError(f"{f}: give one folder, one .npy/.npz array, or image files (not a mix)")
        if not f.is_file():
            raise DataError(f"{f}: file not found")
    names = [f.name for f in files]
    if len({n.lower() for n in names}) != len(names):
        raise DataError("two input files have the same name; put them in a folder instead")
    arrays = [image_array(f) for f in files]
    for f, a in zip(files[1:], arrays[1:]):
        if a.shape != arrays[0].shape:
            raise DataError(f"{files[0].name} is {arrays[0].shape} but {f.name} is {a.shape} (H, W, C)")
    return _named(names, np.stack(arrays), K, str(files[0].parent))


def _named(names, images, K, where):
    for name in names:
        codec.check_name(name)
    images = as_images(images, K, where)
    return images, codec.Header(codec.KIND_FOLDER, b"", 0, 0, 0, 0, 0, 0, K, 0, 0, 0, names=list(names))


def _array_input(src: Path, K: int):
    if not src.is_file():
        raise DataError(f"{src}: file not found")
    try:
        if src.suffix.lower() == ".npy":
            array = np.load(src, allow_pickle=False)
        else:
            with np.load(src, allow_pickle=False) as npz:
                keys = ["images"] if "images" in npz.files else npz.files
                if len(keys) != 1:
                    raise DataError(f"{src}: holds {npz.files}; give one array (or one named 'images')")
                array = npz[keys[0]]
    except (OSError, ValueError, EOFError) as err:
        raise DataError(f"{src}: cannot read as a {src.suffix} array ({err})") from None
    if array.ndim not in (3, 4) or array.dtype.kind not in "uib" or array.dtype.itemsize > 8:
        raise DataError(
            f"{src}: expected an integer array (N,H,W) or (N,H,W,C), got {array.dtype} {array.shape}"
        )
    images = as_images(array, K, str(src))
    h = codec.Header(codec.KIND_NPY, b"", 0, 0, 0, 0, 0, 0, K, 0, 0, 0)
    h.shape, h.dtype = tuple(int(v) for v in array.shape), array.dtype.str
    return images, h


def compress(
    model, images: np.ndarray, h: codec.Header, steps: int, lanes: int, progress, ramp=True, container="auto"
):
    """Encode and pack; returns (file bytes, stats dict).

    Every image gets a classical record (JPEG-XL or PNG lossless, the smaller). With
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
    classical = codec.pack(h, words)
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


def output_names(names: list[str]) -> list[str]:
    """Same relative names; non-PNG files get a .png suffix (the output is lossless PNG)."""
    out = [n if n.lower().endswith(".png") else str(PurePosixPath(n).with_suffix(".png")) for n in names]
    if len({n.lower() for n in out}) != len(out):
        out = [n if n.lower().endswith(".png") else n + ".png" for n in names]
    if len({n.lower() for n in out}) != len(out):
        raise codec.CodecError("cannot write PNG outputs: file names collide after renaming")
    return out


def write_output(h: codec.Header, images: np.ndarray, output: str) -> list[str]:
    """Write images in the form ``output`` names (``.npy`` array, ``.png`` single image,
    else a folder of PNGs); atomic (nothing is left behind on failure)."""
    out = Path(output)
    suffix = out.suffix.lower()
    if suffix == ".npy":
        if out.is_dir():
            raise codec.CodecError(f"{out} is a folder; -o X.npy writes an array file")
        n, hh, ww, c = images.shape
        if h.kind == codec.KIND_NPY:  # the input's own shape and dtype
            shape = (n, hh, ww) if len(h.shape) == 3 else (n, hh, ww, c)
            array = images.reshape(shape).astype(np.dtype(h.dtype))
        else:
            array = images[..., 0] if c == 1 else images

        def write(tmp):
            with open(tmp, "wb") as fh:
                np.save(fh, array, allow_pickle=False)

        atomic_write(out, write)
        return [str(out)]
    if suffix == ".png":
        if len(images) != 1:
            raise codec.CodecError(
                f"the file holds {len(images)} images; -o X.png is for one (give a folder)"
            )
        atomic_write(out, lambda tmp: _png(images[0]).save(tmp, format="PNG"))
        return [str(out)]
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise codec.CodecError(f"{out} already exists; give a new or empty folder")
    names = h.names if h.kind == codec.KIND_FOLDER else [f"{i:05d}.png" for i in range(len(images))]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes 0700; keep the user's umask
    try:
        written = []
        for name, img in zip(output_names(names), images):
            path = tmp / name
            path.parent.mkdir(parents=True, exist_ok=True)
            _png(img).save(path, format="PNG")
            written.append(str(out / name))
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return written


def _png(img: np.ndarray):
    from PIL import Image

    return Image.fromarray(img[..., 0], "L") if img.shape[-1] == 1 else Image.fromarray(img, "RGB")


def run_compress(args) -> int:
    model, _ = load_run(args.run)
    images, h = read_input(args.input, model.config.K)
    blob, stats = compress_parts(
        args.run, model, images, h, args.steps, args.batch, _jobs(args.jobs),
        progress=not (args.quiet or args.json), ramp=args.ramp, container=args.container,
    )  # fmt: skip
    atomic_write(Path(args.output), lambda tmp: Path(tmp).write_bytes(blob))
    if reference := reference_bpd(images):  # classical lossless files of the same images
        stats["classical_bpd"] = reference
    if args.json:
        print(json.dumps(stats))
    else:
        n = stats["n_images"]
        print(
            f"{n} image{'' if n == 1 else 's'} -> {args.output}: {stats['bytes']} bytes, "
            f"{stats['bpd']:.4f} bits per pixel value (lower is better), {stats['container']} container"
        )
        if stats.get("parts", 1) > 1:
            print(
                f"  {stats['parts']} parts coded at once ({', '.join(stats['part_containers'])}), "
                f"{stats['seed_images']} image(s) stored classically as seeds, {stats['initial_bits']} "
                f"initial bits, {stats['net_bpd']:.4f} bpd net; classical {stats['classical_bytes']} bytes"
                if "net_bpd" in stats
                else f"  {stats['parts']} parts, every one stored classically"
            )
        elif "bits_back_bytes" in stats:
            print(
                f"  bits-back {stats['bits_back_bytes']} bytes ({stats['seed_images']} image(s) stored "
                f"classically as its seed, {stats['initial_bits']} initial bits, "
                f"{stats['net_bpd']:.4f} bpd net on the others); classical {stats['classical_bytes']} bytes"
            )
        else:
            print(f"  too few images for bits-back to pay: all {n} stored classically")
        if "classical_bpd" in stats:
            cells = ", ".join(f"{k} {v:.4f}" for k, v in stats["classical_bpd"].items())
            print(f"  for reference, lossless codecs on the same images (each its own file): {cells} bpd")
    return 0


def _jobs(jobs: int) -> int:
    if jobs < 0:
        raise DataError(f"--jobs must be ≥ 0 (0: all cores), got {jobs}")
    return jobs or os.cpu_count() or 1


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


def run_decompress(args) -> int:
    path = Path(args.file)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    blob = path.read_bytes()
    heads = [codec.unpack(part)[0] for part in codec.split_parts(blob)]
    streams = [h for h in heads if not h.classical]
    weights = None
    if not streams:  # no bits-back stream: the run only supplies the image shape
        model, _ = load_run(args.run)
    else:
        log = lambda msg: print(msg, file=sys.stderr)  # noqa: E731
        model, weights = matching_model(args.run, streams[0].fingerprint, log=log)
    h, images = decompress(
        model, blob, args.preview_level, progress=not args.quiet, jobs=_jobs(args.jobs), run=args.run,
        weights=None if weights is None else str(weights),
    )  # fmt: skip
    write_output(h, images, args.output)
    what = "preview" if images.shape[1:3] != (h.H, h.W) else "image"
    print(f"{len(images)} {what}{'' if len(images) == 1 else 's'} -> {args.output}")
    return 0
