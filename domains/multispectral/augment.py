"""Seeded, multi-channel-safe 2D augmentation (albumentations) for multispectral samples."""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import cv2
import numpy as np
import torch

from unimae.domains.base import Sample, size_pair

__all__ = ["SceneAugment"]


class SceneAugment:
    """``transform(sample, seed) -> sample`` producing ``input_size`` crops of any number of bands.

    Training: a random crop (padded first when the image is smaller; padding goes anywhere around
    the image), random horizontal/vertical flips and, for square crops, the rotations by 90° (the eight
    symmetries of the square, uniformly). Evaluation: a centre crop, or a centred pad. ``mask`` and
    ``valid`` follow the image with nearest-neighbour semantics; padded pixels are invalid, 0 in the
    image and ``mask_fill`` in the mask (0 by default, which for land cover is a real class: use
    ``valid`` or set ``mask_fill`` to your loss's ignore index).

    All randomness comes from ``seed``: the albumentations pipeline is built once with ``seed=0`` and
    re-seeded with :meth:`albumentations.Compose.set_random_seed` before each call. Evaluation crops keep
    the geometry (``meta['transform']`` is moved to the crop, ``meta['crop']`` records
    ``(row_off, col_off, height, width)`` in source pixels); training crops drop it
    (``meta['transform'] = None``, ``meta['augmented'] = True``).
    """

    def __init__(self, *, train: bool, input_size: int | Sequence[int] = 96, mask_fill: int = 0) -> None:
        self.train = bool(train)
        self.size = size_pair(input_size)
        self.mask_fill = int(mask_fill)
        h, w = self.size
        pad = dict(pad_if_needed=True, border_mode=cv2.BORDER_CONSTANT, fill=0.0, fill_mask=0)
        if self.train:
            ops: list = [A.RandomCrop(h, w, pad_position="random", p=1.0, **pad)]
            if h == w:
                ops.append(A.SquareSymmetry(p=1.0))
            else:
                ops += [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)]
        else:
            ops = [A.CenterCrop(h, w, p=1.0, **pad)]
        self.compose = A.Compose(ops, additional_targets={"valid": "mask"}, seed=0)

    def __call__(self, sample: Sample, seed: int) -> Sample:
        image = sample.image
        if image.ndim != 3:
            raise ValueError(f"expected a (C, H, W) image, got shape {tuple(image.shape)}")
        img = np.ascontiguousarray(image.detach().cpu().float().numpy().transpose(1, 2, 0))
        targets: dict[str, np.ndarray] = {
            "image": img,
            "valid": np.ascontiguousarray(sample.valid.detach().cpu().numpy().astype(np.uint8)),
        }
        if sample.mask is not None:
            m = sample.mask.detach().cpu().numpy().astype(np.int64) - self.mask_fill
            targets["mask"] = np.ascontiguousarray(m.astype(np.int32))
        self.compose.set_random_seed(int(seed))
        out = self.compose(**targets)
        out_img = out["image"]
        if out_img.ndim == 2:  # a single band may come back without its channel axis
            out_img = out_img[..., None]
        meta = dict(sample.meta)
        meta["valid"] = torch.from_numpy(np.ascontiguousarray(out["valid"]).astype(bool))
        H, W = sample.spatial_shape
        h, w = self.size
        if self.train:
            meta["transform"] = None
            meta["augmented"] = True
        else:
            r0 = (H - h) // 2 if H >= h else -((h - H) // 2)
            c0 = (W - w) // 2 if W >= w else -((w - W) // 2)
            t = meta.get("transform")
            if t is not None:
                a, b, c, d, e, f = t
                meta["transform"] = (a, b, c + a * c0 + b * r0, d, e, f + d * c0 + e * r0)
            meta["crop"] = (r0, c0, h, w)
        mask = None
        if sample.mask is not None:
            mask = torch.from_numpy(np.ascontiguousarray(out["mask"]).astype(np.int64) + self.mask_fill)
        return sample.replace(
            image=torch.from_numpy(np.ascontiguousarray(out_img.transpose(2, 0, 1))),
            meta=meta,
            mask=mask,
        )
