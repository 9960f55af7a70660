"""Where data comes from: the built-in sets (the running interpreter's standard library, scikit-learn's
handwritten digits, a synthetic Markov language, a k-th order Markov language and procedural images
whose floors are known) and user files (text files, folders, JSONL; image
folders with one subfolder per class).

Every source is deterministic: file lists are sorted, random choices are seeded.

Torch-free.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import sys
import sysconfig
from typing import Any, Iterator, Optional

import numpy as np

from scaling.data.build import ImageLoader
from scaling.data.config import DataConfig
from scaling.errors import DataError

# Standard-library folders that are not library source (tests carry odd encodings and huge data
# files; site-packages is whatever the user installed).
STDLIB_SKIP = {"site-packages", "dist-packages", "test", "tests", "__pycache__", "idle_test", "lib2to3"}
TEXT_SKIP_SUFFIXES = {".pyc", ".so", ".o", ".a", ".dll", ".exe", ".png", ".jpg", ".gif", ".zip", ".gz", ".tar", ".whl"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


# ---- built-in text: the standard library ----


def stdlib_documents(max_source_mb: float) -> tuple[list[str], dict[str, Any]]:
    """The .py files of the running interpreter's standard library, as documents.

    The sorted file list is reordered by a hash of each relative path, so a capped prefix spans the
    whole library rather than the alphabetically first packages. Reading stops at `max_source_mb`
    MB (the last file is cut), which keeps preparation to seconds."""
    root = sysconfig.get_paths()["stdlib"]
    rels = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in STDLIB_SKIP)
        for f in filenames:
            if f.endswith(".py"):
                rels.append(os.path.relpath(os.path.join(dirpath, f), root))
    rels.sort(key=lambda r: (hashlib.sha256(r.encode()).hexdigest(), r))
    if not rels:
        raise DataError(f"{root}: no standard-library .py files found; use data.name=synthetic or set data.path")
    budget = int(max_source_mb * 1e6)
    docs, used, total = [], [], 0
    for rel in rels:
        try:
            with open(os.path.join(root, rel), encoding="utf-8") as fh:
                text = fh.read()
        except (UnicodeDecodeError, OSError):
            continue
        if not text.strip():
            continue
        room = budget - total
        if len(text) > room:
            text = text[:room]
        docs.append(text)
        used.append(rel)
        total += len(text)
        if total >= budget:
            break
    source = {
        "type": "python-stdlib",
        "python": sys.version.split()[0],
        "files": len(used),
        "files_available": len(rels),
        "chars": total,
        "max_source_mb": max_source_mb,
    }
    return docs, source


# ---- built-in text: a synthetic Markov language ----


def synthetic_documents(vocab: int, total_tokens: int, seed: int, zipf_a: float = 1.2) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Documents from a first-order Markov chain whose next-token distributions are Zipfian over a
    random permutation of the vocabulary. Its entropy rate H (nats/token) is known exactly, so the
    best achievable loss is known: about H, plus a little for document ends.

        p(next = perm_i[k] | i) = (k + 1)^-a / sum_j (j + 1)^-a,   H = sum_i pi_i H(p(. | i))
    """
    rng = np.random.default_rng([seed, 4])
    ranks = (np.arange(vocab) + 1.0) ** -zipf_a
    ranks /= ranks.sum()
    trans = np.zeros((vocab, vocab))
    for i in range(vocab):
        trans[i, rng.permutation(vocab)] = ranks
    cum = np.cumsum(trans, axis=1)
    cum[:, -1] = 1.0
    pi = np.full(vocab, 1.0 / vocab)
    for _ in range(500):  # the stationary distribution, by power iteration
        pi = pi @ trans
    row_h = -(trans * np.log(np.where(trans > 0, trans, 1))).sum(1)
    entropy = float(pi @ row_h)

    doc_len = 256
    n_docs = max(2, -(-total_tokens // doc_len))
    lengths = rng.integers(doc_len // 2, doc_len * 3 // 2 + 1, size=n_docs)
    out = np.zeros((n_docs, int(lengths.max())), dtype=np.int64)
    out[:, 0] = rng.choice(vocab, size=n_docs, p=pi)
    u = rng.random((n_docs, out.shape[1]))
    for t in range(1, out.shape[1]):  # all documents advance together: one vectorised step per position
        prev = out[:, t - 1]
        out[:, t] = np.minimum((cum[prev] < u[:, t : t + 1]).sum(1), vocab - 1)
    docs = [out[d, : lengths[d]] for d in range(n_docs)]
    source = {
        "type": "synthetic-markov",
        "vocab": vocab,
        "zipf_exponent": zipf_a,
        "entropy_nats_per_token": entropy,
        "documents": n_docs,
        "seed": seed,
    }
    return docs, source


# ---- built-in sets whose floor is known: a k-th order Markov language, procedural images ----


def markov_documents(cfg: DataConfig) -> tuple[list[np.ndarray], dict[str, Any]]:
    """The `markov` set's documents and source record (scaling/data/markov.py). The record holds
    the entropy rate and the floor over the loader's windows, and, as a check of both, the true
    chain's mean loss over the validation windows as they will be written, with its standard error."""
    from scaling.data.build import pack, split_documents
    from scaling.data.markov import MarkovSpec, markov_documents as generate

    spec = MarkovSpec(cfg.markov_vocab, cfg.markov_order, cfg.markov_branching, cfg.markov_zipf, cfg.markov_smoothing,
                      cfg.markov_order_decay)
    docs, source, chain = generate(spec, cfg.markov_tokens, cfg.markov_doc_tokens, cfg.seq_len, cfg.split_seed)
    _, val_idx = split_documents([len(d) for d in docs], cfg.val_fraction, cfg.split_seed)
    rows = pack([docs[i] for i in val_idx], cfg.markov_vocab, cfg.seq_len + 1)
    if len(rows):
        per_window = chain.window_losses(rows, cfg.markov_vocab, cfg.markov_doc_tokens).mean(1)
        source["val_true_loss_nats"] = float(per_window.mean())
        source["val_true_loss_se"] = float(per_window.std() / np.sqrt(len(per_window)))
    return docs, source


def shapes_items(cfg: DataConfig) -> tuple[list[tuple[ImageLoader, int]], list[str], dict[str, Any]]:
    """The `shapes` set's images and labels (scaling/data/shapes.py); the record holds the floor."""
    from scaling.data.shapes import shapes_images

    pixels, labels, _, source = shapes_images(cfg.shapes_classes, cfg.shapes_image_size, cfg.shapes_distractors,
                                              cfg.shapes_label_noise, cfg.shapes_images, cfg.split_seed)
    items = [((lambda i=i: pixels[i]), int(labels[i])) for i in range(len(labels))]
    return items, [str(c) for c in range(cfg.shapes_classes)], source


# ---- built-in images: scikit-learn's digits ----


def digits_items() -> tuple[list[tuple[ImageLoader, int]], list[str], dict[str, Any]]:
    """scikit-learn's 1797 handwritten digits (8x8, values 0-16), scaled to 0-255 uint8."""
    from sklearn.datasets import load_digits

    d = load_digits()
    pixels = np.clip(np.round(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)  # (n, 8, 8)
    items = [((lambda p=p: p), int(t)) for p, t in zip(pixels, d.target)]
    import sklearn

    source = {"type": "sklearn-digits", "sklearn": sklearn.__version__, "images": len(items)}
    return items, [str(c) for c in range(10)], source


# ---- user text ----


def text_documents(paths: list[str], text_key: str = "text") -> tuple[list[str], dict[str, Any]]:
    """Documents from text files, folders of text files (recursive, sorted) and JSONL files
    (`.jsonl`, `.jsonl.gz`: one JSON object per line, its `text_key` field is a document)."""
    docs: list[str] = []
    files, skipped = 0, []
    for path in paths:
        if not os.path.exists(path):
            raise DataError(f"{path}: no such file or folder; pass existing text files, folders or JSONL files")
        for f in _walk(path):
            name = f.lower()
            if name.endswith((".jsonl", ".jsonl.gz")):
                docs += _jsonl_documents(f, text_key)
                files += 1
                continue
            if os.path.splitext(name)[1] in TEXT_SKIP_SUFFIXES:
                skipped.append(f)
                continue
            try:
                with open(f, encoding="utf-8") as fh:
                    text = fh.read()
            except UnicodeDecodeError:
                skipped.append(f)  # binary files in a folder of text are common (images, archives)
                continue
            files += 1
            if text.strip():
                docs.append(text)
    if not docs:
        raise DataError(
            f"{', '.join(paths)}: no text found ({files} readable files, {len(skipped)} skipped as binary); "
            f"pass UTF-8 text files, folders of them, or JSONL with a {text_key!r} field"
        )
    return docs, {"type": "files", "paths": [os.path.basename(os.path.normpath(p)) for p in paths], "files": files, "skipped": len(skipped)}


def _walk(path: str) -> Iterator[str]:
    if os.path.isfile(path):
        yield path
        return
    found = False
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            if not f.startswith("."):
                found = True
                yield os.path.join(dirpath, f)
    if not found:
        raise DataError(f"{path}: the folder is empty; put text files (or JSONL) in it, or point to another folder")


def _jsonl_documents(path: str, text_key: str) -> list[str]:
    opener = gzip.open if path.endswith(".gz") else open
    out = []
    with opener(path, "rt", encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exn:
                raise DataError(f"{path}:{n}: not valid JSON ({exn.msg}); fix the line or remove it") from exn
            if not isinstance(obj, dict) or text_key not in obj:
                raise DataError(f"{path}:{n}: no {text_key!r} field; pass --text-key with the field that holds the text")
            if str(obj[text_key]).strip():
                out.append(str(obj[text_key]))
    return out


# ---- user images ----


def image_folder_items(
    root: str, image_size: Optional[int] = None
) -> tuple[list[tuple[ImageLoader, int]], list[str], int, int, dict[str, Any]]:
    """A folder with one subfolder per class. Returns (items, classes, image_size, channels, source).

    Images are grayscale (1 channel) when every image is, else RGB. Without `image_size` all images
    must be square and of one size; with it they are resized to image_size x image_size."""
    from PIL import Image

    if not os.path.exists(root):
        raise DataError(f"{root}: no such folder; pass a folder with one subfolder of images per class")
    if not os.path.isdir(root):
        raise DataError(f"{root}: not a folder; pass a folder with one subfolder of images per class")
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))
    if not classes:
        raise DataError(f"{root}: no class subfolders; put the images of each class in its own subfolder, e.g. {root}/cat/1.png")
    paths: list[tuple[str, int]] = []
    for c, cls in enumerate(classes):
        folder = os.path.join(root, cls)
        files = sorted(f for f in os.listdir(folder) if os.path.splitext(f)[1].lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"{folder}: the class folder holds no images ({sorted(IMAGE_SUFFIXES)}); add images or remove it")
        paths += [(os.path.join(folder, f), c) for f in files]
    sizes, gray = set(), True
    for p, _ in paths:
        try:
            with Image.open(p) as im:  # reads the header only
                sizes.add(im.size)
                gray = gray and im.mode in ("L", "1", "I;16")
        except OSError as exn:
            raise DataError(f"{p}: not a readable image ({exn}); remove or replace it") from exn
    channels = 1 if gray else 3
    if image_size is None:
        (w, h), *rest = sorted(sizes)
        if rest or w != h:
            raise DataError(
                f"{root}: images have sizes {sorted(sizes)[:5]}; the model needs one square size, so pass "
                f"--image-size N to resize them"
            )
        image_size = w
    mode = "L" if channels == 1 else "RGB"

    def loader(p: str) -> ImageLoader:
        def load() -> np.ndarray:
            with Image.open(p) as im:
                im = im.convert(mode)
                if im.size != (image_size, image_size):
                    im = im.resize((image_size, image_size), Image.BILINEAR)
                return np.asarray(im, dtype=np.uint8)

        return load

    items = [(loader(p), c) for p, c in paths]
    source = {"type": "image-folder", "path": os.path.basename(os.path.normpath(root)), "images": len(items)}
    return items, classes, image_size, channels, source
