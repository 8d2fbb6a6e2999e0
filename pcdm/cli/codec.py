"""``pcdm compress`` / ``pcdm decompress``: the command-line face of :mod:`pcdm.codec.api`
(docs/math.md §6, the file format in docs/format.md). Nothing is written unless the whole
stream decodes and the pixels match their CRC-32."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .. import codec
from ..checkpoint import atomic_write, load_run
from ..classical import reference_bpd
from ..codec.api import CONTAINERS, DEFAULT_LANES, DEFAULT_STEPS, compress_parts, decompress, matching_model
from ..codec.files import read_input, write_output
from ..data import DataError
from ..machine import Monitor, default_threads


def add_parser(sub) -> None:
    add_compress_parser(sub)
    add_decompress_parser(sub)


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
        "(the smallest of JPEG-XL, lossless WebP and PNG per image), so the file is never larger than "
        "those files plus a compact header: 28 bytes for one 28x28 image, ≤ 128 bytes for 40 "
        "(docs/format.md, Guarantees), plus the file names of a folder; or force one",
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


def run_compress(args) -> int:
    model, _ = load_run(args.run)
    images, h = read_input(args.input, model.config.K)
    monitor = Monitor().start()  # what else used the cores while it coded (docs/math.md §10)
    blob, stats = compress_parts(
        args.run, model, images, h, args.steps, args.batch, _jobs(args.jobs),
        progress=not (args.quiet or args.json), ramp=args.ramp, container=args.container,
    )  # fmt: skip
    stats["machine"] = monitor.summary()
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
    return jobs or default_threads()  # the cores this process may use


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
