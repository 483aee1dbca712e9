"""Write a small labelled image folder from the photos scikit-image ships (no download).

    python examples/make_image_folder.py [OUT]     # default: examples/data/images

Each bundled colour photo becomes one label (a sub-folder) holding random square crops of it,
resized to 64 x 64 PNGs: the input of examples/images_open_clip.yaml.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "retina", "hubble_deep_field",
          "immunohistochemistry", "camera")


def make_image_folder(out: str | Path, crops: int = 6, size: int = 64, seed: int = 0) -> Path:
    import skimage.data
    from PIL import Image

    out = Path(out)
    rng = np.random.default_rng(seed)
    for name in PHOTOS:
        photo = np.asarray(getattr(skimage.data, name)())
        if photo.ndim == 2:
            photo = np.stack([photo] * 3, axis=-1)
        h, w = photo.shape[:2]
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(crops):
            side = int(rng.integers(min(h, w) // 3, min(h, w) + 1))
            top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
            crop = Image.fromarray(photo[top:top + side, left:left + side, :3].astype(np.uint8))
            crop.resize((size, size), Image.BICUBIC).save(folder / f"{i:02d}.png")
    return out


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "data" / "images"
    print(make_image_folder(target))
