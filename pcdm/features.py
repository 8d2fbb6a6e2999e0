"""Feature spaces for FID / KID (docs/math.md §11): Inception-v3 pool features from a local
weights file, and a small "domain" classifier trained once per labelled dataset.

**Inception-v3 (FID's network).** The 2015-12-05 TensorFlow graph that FID is defined with,
as the PyTorch ports store it (``pt_inception-2015-12-05-6726825d.pth``, or the
``weights-inception-2015-12-05-6726825d.pth`` of torch-fidelity: the same parameter names).
It differs from torchvision's ImageNet Inception-v3 in three places, all kept here: the
average pools of the A, C and first E blocks do not count padding, the last E block pools
by max, and the classifier has 1008 outputs. Images are scaled to 0…255, grayscale repeated
to 3 channels, resized to 299×299 bilinearly (half-pixel centres, no antialiasing) and
mapped to (v − 128)/128; the features are the 2048 averages after the last block. Weights
are never downloaded: a missing file is one line saying which file to put where. Files load
without unpickling code (safetensors, or ``torch.load(weights_only=True)``).

**Domain features.** ImageNet features say little about 28×28 clothing, and CPU-sized models
cannot be judged with them offline, so the MNIST literature's alternative is offered too:
the penultimate activations of a small CNN trained on the dataset's own labelled training
split. Its Fréchet distance is a *Fréchet classifier distance*, called "domain FID" here and
never just "FID". The classifier is trained once per dataset (seeded, a few epochs) and
cached with its test accuracy.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

INCEPTION_FILES = ("pt_inception-2015-12-05-6726825d.pth", "weights-inception-2015-12-05-6726825d.pth")
DOMAIN_METRIC = "domain FID (Fréchet classifier distance)"
INCEPTION_METRIC = "FID (Inception-v3 pool features)"


def cache_root() -> Path:
    """Where trained classifiers and reference statistics live: ``$PCDM_CACHE`` or ~/.cache/pcdm."""
    env = os.environ.get("PCDM_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "pcdm"


def to_255(x: Tensor, K: int) -> Tensor:
    """uint8 values 0…K−1 → float 0…255 (the range Inception was trained on)."""
    return x.float() * (255.0 / (K - 1))


# --- Inception-v3, FID variant ---------------------------------------------------------


class ConvBN(nn.Module):
    """Convolution without bias, batch norm (ε = 0.001), ReLU."""

    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _avg3(x):  # 3×3 average over the valid pixels only (TF's padding convention)
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class BlockA(nn.Module):
    def __init__(self, cin: int, pool: int):
        super().__init__()
        self.branch1x1 = ConvBN(cin, 64, 1)
        self.branch5x5_1, self.branch5x5_2 = ConvBN(cin, 48, 1), ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, padding=1)
        self.branch_pool = ConvBN(cin, pool, 1)

    def forward(self, x):
        a = self.branch1x1(x)
        b = self.branch5x5_2(self.branch5x5_1(x))
        c = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([a, b, c, self.branch_pool(_avg3(x))], 1)


class BlockB(nn.Module):  # grid reduction 35 → 17
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = ConvBN(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, stride=2)

    def forward(self, x):
        c = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), c, F.max_pool2d(x, 3, stride=2)], 1)


class BlockC(nn.Module):  # factorised 7×7
    def __init__(self, cin: int, c7: int):
        super().__init__()
        row, col = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
        self.branch1x1 = ConvBN(cin, 192, 1)
        self.branch7x7_1 = ConvBN(cin, c7, 1)
        self.branch7x7_2 = ConvBN(c7, c7, **row)
        self.branch7x7_3 = ConvBN(c7, 192, **col)
        self.branch7x7dbl_1 = ConvBN(cin, c7, 1)
        self.branch7x7dbl_2 = ConvBN(c7, c7, **col)
        self.branch7x7dbl_3 = ConvBN(c7, c7, **row)
        self.branch7x7dbl_4 = ConvBN(c7, c7, **col)
        self.branch7x7dbl_5 = ConvBN(c7, 192, **row)
        self.branch_pool = ConvBN(cin, 192, 1)

    def forward(self, x):
        b = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        c = x
        for i in range(1, 6):
            c = getattr(self, f"branch7x7dbl_{i}")(c)
        return torch.cat([self.branch1x1(x), b, c, self.branch_pool(_avg3(x))], 1)


class BlockD(nn.Module):  # grid reduction 17 → 8
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1, self.branch3x3_2 = ConvBN(cin, 192, 1), ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = ConvBN(cin, 192, 1)
        self.branch7x7x3_2 = ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = ConvBN(192, 192, 3, stride=2)

    def forward(self, x):
        a = self.branch3x3_2(self.branch3x3_1(x))
        b = x
        for i in range(1, 5):
            b = getattr(self, f"branch7x7x3_{i}")(b)
        return torch.cat([a, b, F.max_pool2d(x, 3, stride=2)], 1)


class BlockE(nn.Module):  # expanded 3×3 splits; the last one pools by max
    def __init__(self, cin: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        row, col = dict(kernel=(1, 3), padding=(0, 1)), dict(kernel=(3, 1), padding=(1, 0))
        self.branch1x1 = ConvBN(cin, 320, 1)
        self.branch3x3_1 = ConvBN(cin, 384, 1)
        self.branch3x3_2a, self.branch3x3_2b = ConvBN(384, 384, **row), ConvBN(384, 384, **col)
        self.branch3x3dbl_1 = ConvBN(cin, 448, 1)
        self.branch3x3dbl_2 = ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a, self.branch3x3dbl_3b = ConvBN(384, 384, **row), ConvBN(384, 384, **col)
        self.branch_pool = ConvBN(cin, 192, 1)

    def forward(self, x):
        b = self.branch3x3_1(x)
        b = torch.cat([self.branch3x3_2a(b), self.branch3x3_2b(b)], 1)
        c = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        c = torch.cat([self.branch3x3dbl_3a(c), self.branch3x3dbl_3b(c)], 1)
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg3(x)
        return torch.cat([self.branch1x1(x), b, c, self.branch_pool(pooled)], 1)


class InceptionV3(nn.Module):
    """FID's Inception-v3 up to the 2048-d pool features (and the 1008-way classifier, kept
    so that a weights file is checked whole)."""

    SIZE = 299

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = ConvBN(80, 192, 3)
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = BlockA(192, 32), BlockA(256, 64), BlockA(288, 64)
        self.Mixed_6a = BlockB(288)
        self.Mixed_6b, self.Mixed_6c = BlockC(768, 128), BlockC(768, 160)
        self.Mixed_6d, self.Mixed_6e = BlockC(768, 160), BlockC(768, 192)
        self.Mixed_7a = BlockD(768)
        self.Mixed_7b, self.Mixed_7c = BlockE(1280, max_pool=False), BlockE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)

    @staticmethod
    def preprocess(x: Tensor, K: int = 256) -> Tensor:
        """uint8 (N, C, H, W), C ∈ {1, 3}, values 0…K−1 → the network's (N, 3, 299, 299) input."""
        v = to_255(x, K)
        if v.shape[1] == 1:
            v = v.expand(-1, 3, -1, -1)
        v = F.interpolate(v, size=(InceptionV3.SIZE,) * 2, mode="bilinear", align_corners=False)
        return (v - 128) / 128

    def forward(self, x: Tensor) -> Tensor:
        """Pool features (N, 2048) of a preprocessed batch."""
        for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3"):
            x = getattr(self, name)(x)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(F.max_pool2d(x, 3, stride=2)))
        x = F.max_pool2d(x, 3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return x.mean((2, 3))


def _expected_keys(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


def default_inception_paths() -> list[Path]:
    """Where the weights are looked for without --inception-weights: the torch hub cache."""
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    return [hub / name for name in INCEPTION_FILES]


def find_inception_weights(path: str | Path | None) -> Path:
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise ValueError(f"--inception-weights {p}: no such file")
        return p
    for p in default_inception_paths():
        if p.is_file():
            return p
    raise ValueError(
        f"Inception-v3 FID weights not found (offline; nothing is downloaded): put {INCEPTION_FILES[0]} "
        f"in {default_inception_paths()[0].parent}/ or pass --inception-weights PATH "
        "(or use --features domain)"
    )


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """A state dict from safetensors or a plain ``torch.save`` file, never unpickling code."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as err:
        first = (str(err).strip().splitlines() or ["unreadable"])[0]
        raise ValueError(f"{path}: not a weights file that loads without running code ({first})") from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path}: not a state dict of tensors")
    return state


def load_inception(path: str | Path | None = None, device="cpu") -> tuple[InceptionV3, str]:
    """The network with the weights of ``path`` (or the hub cache), and a digest of them."""
    path = find_inception_weights(path)
    state = read_state_dict(path)
    model = InceptionV3()
    want = _expected_keys(model)
    have = {k: tuple(v.shape) for k, v in state.items() if not k.endswith("num_batches_tracked")}
    missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    wrong = sorted(k for k in set(want) & set(have) if want[k] != have[k])
    if missing or extra or wrong:
        detail = (f"{len(missing)} missing (e.g. {missing[:2]})" if missing else "") or (
            f"{len(extra)} unexpected (e.g. {extra[:2]})" if extra else f"shapes differ at {wrong[:2]}"
        )
        raise ValueError(f"{path}: not an Inception-v3 FID (2015-12-05) state dict: {detail}")
    model.load_state_dict({k: state[k] for k in want}, strict=False)
    digest = hashlib.sha256()
    for k in sorted(want):
        digest.update(k.encode())
        digest.update(state[k].float().contiguous().numpy().tobytes())
    return model.to(device).eval().requires_grad_(False), digest.hexdigest()[:12]


# --- the domain classifier -----------------------------------------------------------


class DomainClassifier(nn.Module):
    """A small CNN on a dataset's own images; its 128 penultimate activations are the
    domain feature space."""

    def __init__(self, channels: int, n_classes: int, K: int, dim: int = 128):
        super().__init__()
        self.K = K
        self.body = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
            nn.Flatten(), nn.Linear(64 * 16, dim), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Linear(dim, n_classes)

    def features(self, x: Tensor) -> Tensor:
        """uint8 (N, C, H, W) → (N, 128), pixels encoded as the models see them."""
        return self.body(2 * (x.float() + 0.5) / self.K - 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def _nchw(images: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)


def train_domain_classifier(spec: str, epochs: int = 3, seed: int = 0, progress: bool = True):
    """Train the classifier on ``spec``'s labelled training split; returns (model, test accuracy)."""
    from .data import load
    from .data.labels import load_labels

    train, labels = load(spec, "train"), load_labels(spec, "train")
    test, test_labels = load(spec, "test"), load_labels(spec, "test")
    x, y = _nchw(train.images), torch.from_numpy(labels)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = DomainClassifier(train.shape_chw[0], int(labels.max()) + 1, train.K)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    batch = 128
    steps = max(epochs * (len(x) // batch), 300)  # small sets (digits) get more passes
    epochs = -(-steps // (len(x) // batch))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    bar = tqdm(total=steps, desc=f"domain classifier ({spec})", unit="step", disable=not progress)
    for epoch in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(min(len(x) // batch, steps - epoch * (len(x) // batch))):
            idx = perm[i * batch : (i + 1) * batch]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
    bar.close()
    model.eval()
    with torch.no_grad():
        xt = _nchw(test.images)
        pred = torch.cat([model(xt[i : i + 1000]).argmax(1) for i in range(0, len(xt), 1000)])
    return model, float((pred.numpy() == test_labels).mean())


def load_domain_classifier(spec: str, progress: bool = True, log=print) -> tuple[DomainClassifier, dict]:
    """The dataset's classifier from the cache, trained (and cached) on first use."""
    from safetensors.torch import load_file, save_file

    from .data import load

    name = str(spec).partition(":")[0]
    path = cache_root() / "features" / f"domain-{name}.safetensors"
    meta_path = path.with_suffix(".json")
    if path.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        model = DomainClassifier(meta["channels"], meta["n_classes"], meta["K"])
        model.load_state_dict(load_file(str(path)))
        log(f"domain classifier for {name}: {path} (test accuracy {meta['accuracy']:.4f})")
        return model.eval().requires_grad_(False), meta
    start = time.time()
    model, acc = train_domain_classifier(spec, progress=progress)
    data = load(spec, "train", limit=1)
    meta = {
        "dataset": name,
        "accuracy": acc,
        "channels": data.shape_chw[0],
        "K": data.K,
        "n_classes": model.head.out_features,
        "epochs": 3,
        "seconds": round(time.time() - start, 1),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    os.replace(tmp, path)
    meta_path.write_text(json.dumps(meta, indent=2))
    log(f"domain classifier for {name}: trained in {meta['seconds']} s, accuracy {acc:.4f}; cached in {path}")
    return model.requires_grad_(False), meta


# --- feature spaces ------------------------------------------------------------------


class FeatureSpace:
    """A named map uint8 images → feature vectors, with what every reported number needs:
    ``metric`` (the FID's name), ``id`` (for caches: changes with the weights)."""

    def __init__(self, name: str, metric: str, ident: str, fn, batch: int, device="cpu"):
        self.name, self.metric, self.id = name, metric, ident
        self.fn, self.batch, self.device = fn, batch, device

    @torch.no_grad()
    def extract(self, x: Tensor, K: int, progress: bool = True, desc: str = "features") -> np.ndarray:
        """(N, C, H, W) uint8 → (N, D) float64 features, in batches with a progress bar."""
        out = []
        bar = tqdm(total=len(x), desc=f"{desc} ({self.name})", unit="img", disable=not progress)
        for i in range(0, len(x), self.batch):
            out.append(self.fn(x[i : i + self.batch].to(self.device), K).double().cpu())
            bar.update(min(self.batch, len(x) - i))
        bar.close()
        return torch.cat(out).numpy() if out else np.zeros((0, 0))


def inception_space(weights: str | Path | None = None, device="cpu", batch: int = 50) -> FeatureSpace:
    net, digest = load_inception(weights, device)
    return FeatureSpace("inception-v3", INCEPTION_METRIC, f"inception-{digest}",
                        lambda x, K: net(InceptionV3.preprocess(x, K)), batch, device)  # fmt: skip


def domain_space(spec: str, device="cpu", batch: int = 500, progress: bool = True, log=print) -> FeatureSpace:
    net, meta = load_domain_classifier(spec, progress=progress, log=log)
    net = net.to(device)
    digest = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:8]

    def fn(x, K):
        if K != net.K:
            raise ValueError(f"images have K = {K}; the {meta['dataset']} classifier expects K = {net.K}")
        return net.features(x)

    name = meta["dataset"]
    space = FeatureSpace(f"domain:{name}", DOMAIN_METRIC, f"domain-{name}-{digest}", fn, batch, device)
    space.accuracy = meta["accuracy"]
    return space
