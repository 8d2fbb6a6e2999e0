"""Lossless compression with bits-back ANS over the T-step model (docs/math.md §6).

Coding order (Bit-Swap recursion), for one batch of B images coded side by side in B
*lanes* that share one ANS stack (``constriction.stream.stack.AnsCoder``):

  encoder, volume-preserving maps (identity, haar, lp)
    1. pop z₀ of every level from q(z₀ | x) = N(α₀ c, σ₀²);  push x with p(x | z₀);
    2. for each level, finest first: for i = 1..T pop z_{tᵢ} from
       q(z_{tᵢ} | z_{tᵢ₋₁}) = N(α_{tᵢ|tᵢ₋₁} z, σ²_{tᵢ|tᵢ₋₁}) and push z_{tᵢ₋₁} with the
       model's p(z_{tᵢ₋₁} | z_{tᵢ}, z₀^{<s}); finally push z₁ with N(0, I).
  encoder, discrete maps (C-VDM's cascade, the integer lifting): every level is a discrete
    image x_s with its own decoder over its own value range, so steps 1–2 run once per
    level, finest first, conditioned on the clean coarser levels. The code length is
    Σₛ −ELBOₛ (for C-VDM the redundant coarse pixels are paid for; lifting has none).

The decoder runs the exact mirror image, so the coarsest level of a batch comes out
first; batches are chained in one stream (batch 0 is encoded first and therefore decoded
last), so the initial random bits that the very first pops consume are needed only once.

Every op is one ``constriction`` call over all lanes of the batch; the symbol arrays are
laid out lane-major (lane 0's coordinates, then lane 1's, …), levels concatenated in
order for the z₀ pop. Each level is coded in an orthonormal basis of its subspace: the
level tensor itself for identity / haar / cascade, and the octave's Haar detail
coordinates for the lp detail levels (so exactly d continuous numbers per image).

Grid: latent variable z_{tᵢ} (shared by all levels) lives on the lattice δᵢ ℤ with
δᵢ = 2^⌊log₂(2^−GRID_BITS · min(std it is popped with, std it is pushed with))⌋; a
power of two so j·δ is exact. Each op codes the integer j − round(μ/δ) with a quantised
Gaussian of mean offset (rounded to 2^−12 bin, for robustness) and std
√((σ/δ)² − 1/12) (Sheppard's correction: a bin's mass is the density integrated over the
bin, which adds δ²/12 of variance). Pops from q use the support ±⌈5 σ/δ⌉; pushes under the
model ±⌈7 σ/δ⌉, doubled w times where a latent lies further out, with w = 0 coded at
probability 1 − 2^−16 (≈ 2·10⁻⁵ bits), so a poor model costs bits but never fails.

Per-step overhead (``benchmarks/codec_overhead.py``: an exact model, where the ideal net
code length is known): version 2 spent ≈ 1.1·10⁻⁴ bits per latent and step with 64-lane
batches and ≈ 5·10⁻³ with one-lane ramp batches — mostly a uniformly coded 4-bit support
exponent per push (4 bits / latents in the batch), then the unexpected δ²/12 variance
(≈ (δ/σ)²/24 nats per latent and step) and the 2^−24 probability floor of every bin of a
±10σ support (24-bit probabilities). Now: ≈ 5·10⁻⁶ bits per latent and step. All chain
inputs are the quantised values, so the decoder sees exactly what the encoder saw; network
calls run single-threaded (torch thread count restored after) so their outputs do not
depend on the caller's thread count.

Clean bits: ANS hands a pop the quantiles of the symbols pushed last; where the model
fits the pushed data imperfectly those are not uniform, the popped latents are then not
samples of q and the code exceeds the ELBO (measured: +7 % at T = 16 for a briefly trained
model). Before every pop from q the top 16-bit chunks of the stack (1.25 × the pop's
expected bits + 64) are replaced by (u + r) mod 2¹⁶ with r from a PRNG seeded by
(batch, level, step): a bijection done with uniform pops/pushes, free in bits and undone
exactly by the decoder. With it the same case is within 0.2 % of the ELBO.

Initial bits and the seed: the first pops of a stream need bits that nothing pushed yet.
The container stores the first m images classically (JPEG-XL or PNG lossless, the smaller:
:func:`classical_record`) anyway, so their bytes (:func:`seed_words`) are the bottom of the
stack and the first pops draw on them; the decoder gets them back intact once the chain is
undone, and decodes those images from them. m is the fewest images whose records hold what
the first one-lane batch draws (:func:`seed_need_bits`, ≈ 11 kbit for Fashion-MNIST, about
4 images). Below the seed lies a deterministic pseudo-random reservoir of words (fixed seed)
for whatever the seed does not cover; the encoder records the lowest stack position ever
reached (``kmin``), the reservoir words below it were never touched and are dropped from
the file, and the decoder checks that its stack ends in exactly the reservoir's top part and
the seed. ``initial_bits`` = 32 (n_init − kmin) reservoir bits consumed (with no seed, 32
(n_init − 2 − kmin) + 64: the ANS head then comes from the reservoir). Each lane's first z₀
pop costs more bits than an image's net code length, so full batches from the start would
need one pop's worth of initial bits per lane; the default *lane ramp* (``batch_layout``)
grows the batches from one lane as the stream grows and needs about one lane's worth in all
(measured: 600 kbit → 9.5 kbit for 300 Fashion-MNIST images at 64 lanes, same speed).

Container: ``codec.api.compress`` builds both the all-classical file (m = N: no stream, no
model needed to decode) and the seeded bits-back file, and keeps the smaller (FLAG_CLASSICAL
says which), so a file is never larger than the images' best JPEG-XL/PNG files + ≤ 3 bytes
each (codec id, LEB128 length, below 16 KiB per file) + 104 header bytes + ≤ 8 padding bytes
+ the names or array shape.

Parallel parts (``pcdm compress --jobs J``): the images are cut into J contiguous parts, each
coded as its own file (own seed, own stream) in its own process, and the file is the parts
back to back, every part but the last flagged FLAG_CONTINUED (``split_parts``); the parts
decode independently, so ``decompress --jobs J`` uses J cores too. Each part costs its own
header and seed; ``auto`` keeps the single all-classical file when that is smaller.

File format (all integers little-endian)::

    offset size  field
    0      4     magic b"PCDM"
    4      1     version (3)
    5      1     input kind: 0 = .npy array, 1 = image folder
    6      1     GRID_BITS (grid fraction 2^−g of the smallest std)
    7      1     flags: bit 0 = lane ramp (see ``batch_layout``), bit 1 = classical (every
                 image in the seed, no stream), bit 2 = another part follows; other bits 0
    8      32    model fingerprint (checkpoint.fingerprint, SHA-256)
    40     4×15  T, B (lanes), N (images), C, H, W, K, n_init (reservoir words),
                 kmin (pruned reservoir words), meta_len, payload_words,
                 CRC-32 of the pixels (uint8, N×H×W×C), CRC-32 of the payload,
                 m (seed images: the first m, stored classically), seed_words
    100    4     CRC-32 of bytes 0..99 and the meta block
    104    meta  kind 0: ndim (u8), ndim × u32 shape, dtype length (u8) + dtype string
                 kind 1: N × (u16 length + UTF-8 relative name), in coding order
    …      4·payload_words  ANS words (uint32 LE), as ``AnsCoder.get_compressed()``: the
                 reservoir words kmin … n_init − 1, then the seed (m classical records:
                 codec id u8 = index into ``classical.CODECS``, LEB128 length, file; zero
                 padding and a last byte p = padding bytes, 1..8), then the stream

Every header field is bounds-checked before anything is allocated; the file length must
match exactly. Any mismatch (model, size, checksum, stream) is a :class:`CodecError`
(a ``ValueError``) with a one-line message.
"""

# The codec in three modules: ans (primitives), bitswap (the coder), container (the file).
# What the CLI, the benchmarks and the tests use is re-exported here; the rest stays in its module.
from .ans import (
    GRID_BITS,
    HEADER,
    HEADER_SIZE,
    KIND_FOLDER,
    KIND_NPY,
    MAX_IMAGES,
    POP_STDS,
    PUSH_STDS,
    WORK_PER_BIT,
    CodecError,
    Grid,
    make_grid,
    pop_p,
    pop_q,
    push_p,
    push_q,
    reservoir,
)
from .bitswap import RAMP, BatchLayout, Encoded, batch_layout, decode_stream, encode_images
from .container import (
    CODEC_IDS,
    FLAG_CLASSICAL,
    FLAG_CONTINUED,
    FLAG_RAMP,
    Header,
    check_name,
    classical_codecs,
    classical_record,
    clean_previews,
    compact_overhead,
    decode_records,
    pack,
    pack_classical,
    pixel_crc,
    seed_bytes,
    seed_count,
    seed_need_bits,
    seed_words,
    split_parts,
    unpack,
)

__all__ = [
    "CODEC_IDS", "FLAG_CLASSICAL", "FLAG_CONTINUED", "FLAG_RAMP", "GRID_BITS", "HEADER", "HEADER_SIZE",
    "KIND_FOLDER", "KIND_NPY", "MAX_IMAGES", "POP_STDS", "PUSH_STDS", "RAMP", "WORK_PER_BIT", "BatchLayout",
    "CodecError", "Encoded", "Grid", "Header", "batch_layout", "check_name", "classical_codecs",
    "classical_record", "compact_overhead", "pack_classical", "clean_previews", "decode_records",
    "decode_stream", "encode_images",
    "make_grid", "pack", "pixel_crc", "pop_p", "pop_q", "push_p", "push_q", "reservoir",
    "seed_bytes", "seed_count", "seed_need_bits", "seed_words", "split_parts", "unpack",
    "CONTAINERS", "DEFAULT_LANES", "DEFAULT_STEPS", "compress", "compress_parts", "decompress",
    "read_input", "write_output",
]  # fmt: skip

# The library API over files and processes (imported last: it uses the names above).
from .api import CONTAINERS, DEFAULT_LANES, DEFAULT_STEPS, compress, compress_parts, decompress  # noqa: E402
from .files import read_input, write_output  # noqa: E402
