"""Benchmark data: Fashion-MNIST (with a visible fallback) and a synthetic induction task.

Nothing here touches the network.

Contracts
---------
``load_fashion_mnist(root=None, n_train=None, n_test=None) -> ImageData``
    Reads the four IDX files that the Debian package ``dataset-fashion-mnist`` installs in
    ``/usr/share/datasets/fashion-mnist/`` (``train-images-idx3-ubyte.gz``,
    ``train-labels-idx1-ubyte.gz``, ``t10k-images-idx3-ubyte.gz``,
    ``t10k-labels-idx1-ubyte.gz``; plain or gzip-compressed). Images come back as float32
    tensors of shape (n, 1, 28, 28), scaled to [0, 1] and then standardised with the
    Fashion-MNIST training mean/std; labels are int64 of shape (n,) in 0..9. The official
    split is used (60,000 train / 10,000 test); ``n_train`` / ``n_test`` take the first rows.
    When the files are absent, it falls back to scikit-learn's 8x8 digits, upsampled
    bilinearly to 28x28 and split 80/20 with a fixed seed. The fallback prints one line and
    is visible in the result: ``name == "sklearn-digits"`` and ``is_fallback is True``.

``make_induction_data(n, vocab_size=64, seq_len=48, seed=0, ...) -> SequenceData``
    Random-token sequences in which a block of tokens is repeated: ``[noise | A | A]``, where
    A has a per-sequence random length in [min_repeat, max_repeat] and the noise fills the
    rest (empty when the block is seq_len // 2 long: "second half repeats the first half").
    Because the offset of the repeat varies, predicting the second copy needs an induction
    mechanism rather than a fixed positional copy. ``labels`` follows the Hugging Face causal
    LM convention: ``labels[i, j] = input_ids[i, j]`` when token j is determined by the prefix
    (every token of the second copy except its first), else -100; a model's logits at
    position j - 1 are scored against it. Same (n, arguments, seed) -> same tensors.

``make_recall_data(n, n_keys=16, n_values=16, min_pairs=4, max_pairs=6, seed=0) -> RecallData``
    Associative recall: ``k1 v1 k2 v2 ... kp vp q`` with ``p`` distinct keys (a per-sequence
    random count in [min_pairs, max_pairs]), distinct values, and a query key ``q`` drawn
    from the sequence's keys; the answer is the value paired with ``q`` (read it by finding
    the earlier copy of ``q`` and copying the token after it: an induction-style mechanism).
    Token ids: 0 = padding, keys ``1..n_keys``, values ``n_keys + 1 .. n_keys + n_values``.
    Rows are LEFT-padded to ``2 * max_pairs + 1`` tokens with an ``attention_mask`` (1 =
    real), as a tokenizer with ``padding_side="left"`` gives. ``distractor`` is the value of
    another pair of the same sequence (for logit-difference outputs).
"""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np
import torch

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# Mean/std of the Fashion-MNIST training pixels after scaling to [0, 1].
FASHION_MNIST_MEAN = 0.2860
FASHION_MNIST_STD = 0.3530
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

PathLike = Union[str, "os.PathLike[str]"]


@dataclass
class ImageData:
    """A train/test split of images (n, 1, 28, 28) float32 and labels (n,) int64."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    name: str
    is_fallback: bool
    classes: Tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass
class SequenceData:
    """Token sequences (n, seq_len) int64 with HF-style labels (-100 = not scored)."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    repeat_len: torch.Tensor  # (n,) length of the repeated block A
    vocab_size: int
    seq_len: int

    @property
    def scored(self) -> torch.Tensor:
        """(n, seq_len) bool: True where ``labels`` is a real target."""
        return self.labels != -100


# ----------------------------------------------------------------------------- IDX files


def _find_idx(root: Path, stem: str) -> Optional[Path]:
    for name in (stem + ".gz", stem):
        p = root / name
        if p.is_file():
            return p
    return None


def read_idx(path: PathLike) -> np.ndarray:
    """Parse one IDX file (optionally gzip-compressed) into a numpy array.

    Supports the unsigned-byte type (0x08) used by (Fashion-)MNIST. Header: two zero bytes,
    a type byte, a byte with the number of dimensions, then one big-endian uint32 per
    dimension, then the data in C order.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(
            f"{path}: not an unsigned-byte IDX file (header {raw[:4].hex()}); "
            "expected 0000 08 <ndim>"
        )
    shape = struct.unpack(">" + "I" * ndim, raw[4: 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says shape {shape} but holds {data.size} bytes")
    return data.reshape(shape)


def _normalise(images_u8: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images_u8.astype(np.float32) / 255.0)
    x = (x - FASHION_MNIST_MEAN) / FASHION_MNIST_STD
    return x.reshape(-1, 1, 28, 28).contiguous()


def _digits_fallback(n_train: Optional[int], n_test: Optional[int]) -> ImageData:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)  # (n,1,8,8)
    x = torch.nn.functional.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False)
    mean, std = x.mean(), x.std()
    x = ((x - mean) / std).contiguous()
    y = torch.from_numpy(digits.target.astype(np.int64))
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    n_tr = int(0.8 * len(y))
    tr, te = perm[:n_tr], perm[n_tr:]
    x_train, y_train, x_test, y_test = x[tr], y[tr], x[te], y[te]
    if n_train is not None:
        x_train, y_train = x_train[:n_train], y_train[:n_train]
    if n_test is not None:
        x_test, y_test = x_test[:n_test], y_test[:n_test]
    return ImageData(x_train, y_train, x_test, y_test, "sklearn-digits", True,
                     tuple(str(i) for i in range(10)))


def load_fashion_mnist(
    root: Optional[PathLike] = None,
    n_train: Optional[int] = None,
    n_test: Optional[int] = None,
    allow_fallback: bool = True,
) -> ImageData:
    """Fashion-MNIST from local IDX files, or scikit-learn digits when they are absent.

    ``root`` defaults to ``$FASHION_MNIST_DIR`` or ``/usr/share/datasets/fashion-mnist``.
    With ``allow_fallback=False`` missing files raise FileNotFoundError instead.
    """
    root = Path(root or os.environ.get("FASHION_MNIST_DIR", FASHION_MNIST_DIR))
    paths = {k: _find_idx(root, v) for k, v in FASHION_MNIST_FILES.items()}
    missing = [FASHION_MNIST_FILES[k] for k, p in paths.items() if p is None]
    if missing:
        msg = (f"Fashion-MNIST files {missing} not found in {root} "
               "(apt-get install dataset-fashion-mnist)")
        if not allow_fallback:
            raise FileNotFoundError(msg)
        print(f"[benchmarks.data] {msg}; FALLING BACK to scikit-learn digits upsampled to 28x28")
        return _digits_fallback(n_train, n_test)
    arrays = {k: read_idx(p) for k, p in paths.items()}  # type: ignore[arg-type]
    sl_tr, sl_te = slice(None, n_train), slice(None, n_test)
    return ImageData(
        x_train=_normalise(arrays["train_images"][sl_tr]),
        y_train=torch.from_numpy(arrays["train_labels"][sl_tr].astype(np.int64)),
        x_test=_normalise(arrays["test_images"][sl_te]),
        y_test=torch.from_numpy(arrays["test_labels"][sl_te].astype(np.int64)),
        name="fashion-mnist",
        is_fallback=False,
        classes=FASHION_MNIST_CLASSES,
    )


# ----------------------------------------------------------------------------- induction


def make_induction_data(
    n: int,
    vocab_size: int = 64,
    seq_len: int = 48,
    seed: int = 0,
    min_repeat: Optional[int] = None,
    max_repeat: Optional[int] = None,
) -> SequenceData:
    """Sequences ``[noise | A | A]`` with a random block A; see the module docstring.

    ``min_repeat`` defaults to ``seq_len // 4`` and ``max_repeat`` to ``seq_len // 2`` (the
    largest block that fits twice). ``min_repeat == max_repeat == seq_len // 2`` gives the
    fixed "second half repeats the first half" layout. Tokens are uniform over
    ``range(vocab_size)``; A is drawn fresh per sequence, so a repeated token inside A can
    make a prediction ambiguous only by chance (about 1/vocab_size per position).
    """
    max_repeat = seq_len // 2 if max_repeat is None else max_repeat
    min_repeat = seq_len // 4 if min_repeat is None else min_repeat
    if not 2 <= min_repeat <= max_repeat <= seq_len // 2:
        raise ValueError(
            f"need 2 <= min_repeat <= max_repeat <= seq_len // 2; got min_repeat={min_repeat}, "
            f"max_repeat={max_repeat}, seq_len={seq_len}"
        )
    if vocab_size < 2 or n < 0:
        raise ValueError(f"need vocab_size >= 2 and n >= 0; got {vocab_size}, {n}")
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (n, seq_len), generator=g)
    rep = torch.randint(min_repeat, max_repeat + 1, (n,), generator=g)
    pos = torch.arange(seq_len).expand(n, seq_len)
    start2 = (seq_len - rep).unsqueeze(1)  # first index of the second copy
    in_copy2 = pos >= start2
    src = (pos - rep.unsqueeze(1)).clamp(min=0)
    ids = torch.where(in_copy2, ids.gather(1, src), ids)
    labels = torch.where(pos > start2, ids, torch.full_like(ids, -100))
    return SequenceData(ids, labels, rep, vocab_size, seq_len)


@dataclass
class RecallData:
    """Left-padded associative-recall prompts with their answers (see the module docstring)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    answer: torch.Tensor
    distractor: torch.Tensor
    vocab_size: int
    labels: Optional[torch.Tensor] = None


def make_recall_data(n: int, n_keys: int = 16, n_values: int = 16, min_pairs: int = 4,
                     max_pairs: int = 6, seed: int = 0, n_queries: int = 1) -> RecallData:
    """Associative-recall prompts ``k1 v1 ... kp vp q``; see the module docstring.

    With ``n_queries > 1`` (training), each row holds ``n_queries - 1`` answered queries
    ``q a`` before the final query, and ``labels`` marks every answer position (HF style,
    -100 elsewhere), so one sequence gives several training signals.
    """
    if not 2 <= min_pairs <= max_pairs <= min(n_keys, n_values) or n_queries < 1:
        raise ValueError(f"need 2 <= min_pairs <= max_pairs <= min(n_keys, n_values) and"
                         f" n_queries >= 1; got {min_pairs}, {max_pairs}, {n_keys}, {n_values},"
                         f" {n_queries}")
    g = torch.Generator().manual_seed(seed)
    length = 2 * max_pairs + 2 * n_queries - 1
    ids = torch.zeros(n, length, dtype=torch.long)
    mask = torch.zeros(n, length, dtype=torch.long)
    labels = torch.full((n, length), -100, dtype=torch.long)
    answer = torch.zeros(n, dtype=torch.long)
    distractor = torch.zeros(n, dtype=torch.long)
    for i in range(n):
        p = int(torch.randint(min_pairs, max_pairs + 1, (1,), generator=g))
        keys = torch.randperm(n_keys, generator=g)[:p] + 1
        values = torch.randperm(n_values, generator=g)[:p] + 1 + n_keys
        asked = torch.randint(0, p, (n_queries,), generator=g)
        other = (asked[-1] + torch.randint(1, p, (1,), generator=g)) % p
        parts = [torch.stack([keys, values], dim=1).reshape(-1)]
        for q in asked[:-1]:
            parts.append(torch.stack([keys[q], values[q]]))
        parts.append(keys[asked[-1]].reshape(1))
        row = torch.cat(parts)
        start = length - len(row)
        ids[i, start:] = row
        mask[i, start:] = 1
        for j, q in enumerate(asked[:-1]):
            answer_pos = start + 2 * p + 2 * j + 1
            labels[i, answer_pos] = values[q]
        answer[i], distractor[i] = values[asked[-1]], values[other[0]]
    return RecallData(ids, mask, answer, distractor, 1 + n_keys + n_values, labels)


if __name__ == "__main__":  # quick look
    d = load_fashion_mnist()
    print(d.name, d.x_train.shape, d.x_test.shape, float(d.x_train.mean()), float(d.x_train.std()),
          torch.bincount(d.y_train).tolist())
    s = make_induction_data(2, vocab_size=16, seq_len=16, seed=0)
    print(s.input_ids, s.labels, s.repeat_len, sep="\n")
