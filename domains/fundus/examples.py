"""Fundus example files for the app: synthetic photographs as 8-bit RGB PNG or JPEG, written atomically."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from unimae.core.fileio import atomic_path

__all__ = ["write_fundus_image", "write_examples"]


def write_fundus_image(
    path: str | Path, *, seed: int, index: int, size: int | Sequence[int], lesion_prob: float, quality: int = 92
) -> Path:
    """A synthetic fundus photograph as 8-bit RGB PNG or JPEG (by the suffix of ``path``)."""
    from PIL import Image

    from unimae.domains.fundus.synthetic import SyntheticFundus

    scene = SyntheticFundus(int(index) + 1, seed=seed, size=size, lesion_prob=lesion_prob).scene(int(index))
    rgb = (np.clip(scene.rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    path = Path(path)
    fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    with atomic_path(path) as tmp:
        Image.fromarray(rgb).save(tmp, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return path


def write_examples(dest: Path, *, seed: int, size: int | Sequence[int]) -> list[Path]:
    """The app's fundus examples: a photograph with lesions, a healthy one (PNG), and one as JPEG."""
    dest.mkdir(parents=True, exist_ok=True)
    return [
        write_fundus_image(dest / "fundus_lesions.png", seed=seed, index=0, size=size, lesion_prob=1.0),
        write_fundus_image(dest / "fundus_healthy.png", seed=seed, index=1, size=size, lesion_prob=0.0),
        write_fundus_image(dest / "fundus_photo.jpg", seed=seed, index=2, size=size, lesion_prob=1.0),
    ]
