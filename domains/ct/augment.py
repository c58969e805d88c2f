"""Seeded 3D augmentation for CT samples with MONAI: pad, random (or centre) crop, random flips.

``CTAugment(train=..., input_size=...)(sample, seed)`` returns a sample of exactly ``input_size``.
All randomness comes from ``seed`` (MONAI ``Compose.set_random_state``); the transforms are built
per call, so one ``CTAugment`` may be shared by threads and DataLoader workers.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import torch

from unimae.core.errors import InputError
from unimae.domains.base import Sample

__all__ = ["CTAugment", "resolve_size", "left_right_swaps"]


def resolve_size(size: int | Sequence[int], what: str = "input_size", minimum: int = 1) -> tuple[int, int, int]:
    """A 3D size from an int or a 3-sequence of positive ints."""
    if isinstance(size, (int, np.integer)):
        size = (int(size),) * 3
    try:
        out = tuple(int(s) for s in size)
    except (TypeError, ValueError) as err:
        raise InputError(f"{what} must be an int or 3 ints, got {size!r}") from err
    if len(out) != 3 or any(s < minimum for s in out) or any(float(a) != float(b) for a, b in zip(out, size)):
        raise InputError(f"{what} must be an int or 3 ints >= {minimum}, got {size!r}")
    return out  # type: ignore[return-value]


_SIDE = re.compile(r"(^|_)(left|right)(_|$)")


def left_right_swaps(class_names: Sequence[str]) -> dict[int, int]:
    """Label index pairs that exchange under a left-right mirror, from names like ``kidney_left``."""
    index = {n: i for i, n in enumerate(class_names)}
    swaps: dict[int, int] = {}
    for name, i in index.items():
        m = _SIDE.search(name)
        if not m:
            continue
        other = {"left": "right", "right": "left"}[m.group(2)]
        twin = name[: m.start(2)] + other + name[m.end(2) :]
        if twin in index:
            swaps[i] = index[twin]
    return swaps


def _lr_axis(affine: np.ndarray) -> int:
    """Index axis closest to world x (left-right)."""
    a = np.asarray(affine, dtype=np.float64)[:3, :3]
    return int(np.argmax(np.abs(a[0]) / np.linalg.norm(a, axis=0)))


class CTAugment:
    """A seeded ``(sample, seed) -> sample`` transform producing fixed-size 3D crops.

    Args:
        train: random crop position and random flips when True; a centre crop otherwise.
        input_size: output spatial size ``(I, J, K)`` (int for a cube), e.g. 96.
        flip_axes: spatial axes that may be flipped when training (each independently).
        flip_prob: probability of each flip.
        swap_sides: when the left-right axis is flipped, exchange ``*_left`` / ``*_right`` labels of
            the mask, using ``meta["seg_class_names"]`` (samples without names are left as they are).

    Smaller volumes are padded symmetrically, the image with its own minimum (air in model space),
    the mask with 0, and the padding is marked False in ``meta["valid"]``. ``meta["grid_affine"]``
    follows the pad and crop (a translation), so a crop can still be placed in the world. A flip
    mirrors the anatomy on the same grid (the affine is not flipped), which is why left/right labels
    are exchanged when the left-right axis is flipped.
    """

    def __init__(
        self,
        *,
        train: bool,
        input_size: int | Sequence[int],
        flip_axes: Sequence[int] = (0, 1, 2),
        flip_prob: float = 0.5,
        swap_sides: bool = True,
    ) -> None:
        self.train = bool(train)
        self.input_size = resolve_size(input_size)
        self.flip_axes = tuple(int(a) for a in flip_axes)
        if any(a not in (0, 1, 2) for a in self.flip_axes):
            raise InputError(f"flip_axes must be among 0, 1, 2, got {flip_axes!r}")
        if not 0.0 <= float(flip_prob) <= 1.0:
            raise InputError(f"flip_prob must be in [0, 1], got {flip_prob!r}")
        self.flip_prob = float(flip_prob)
        self.swap_sides = bool(swap_sides)

    @property
    def _may_flip(self) -> bool:
        return self.train and bool(self.flip_axes) and self.flip_prob > 0.0

    def _is_identity(self, sample: Sample) -> bool:
        """True when the sample already has ``input_size`` and no flip can happen."""
        return tuple(sample.spatial_shape) == tuple(self.input_size) and not self._may_flip

    def __call__(self, sample: Sample, seed: int) -> Sample:
        from monai.data import MetaTensor
        from monai.transforms import CenterSpatialCropd, Compose, RandFlipd, RandSpatialCropd, SpatialPad

        if sample.image.ndim != 4:
            raise InputError(f"CT augmentation needs a (C, I, J, K) image, got shape {tuple(sample.image.shape)}")
        meta = dict(sample.meta)
        affine = np.asarray(meta.get("grid_affine", meta.get("affine", np.eye(4))), dtype=np.float64)
        if self._is_identity(sample):
            # nothing to pad, crop or flip: the same sample, as the pipeline below would return it (MONAI's
            # per-call overhead is most of the cost of a small synthetic training volume)
            # (new tensors, as the pipeline's: what a caller changes never reaches the input sample)
            meta["valid"] = sample.valid.to(torch.bool, copy=True)
            meta["grid_affine"] = affine
            mask = None if sample.mask is None else sample.mask.reshape(sample.spatial_shape).round().to(torch.long, copy=True)
            return sample.replace(image=sample.image.to(torch.float32, copy=True).contiguous(), meta=meta, mask=mask)
        aff_t = torch.as_tensor(affine)
        image = sample.image.float()
        keys = ["image", "valid"] + (["mask"] if sample.mask is not None else [])
        data = {
            "image": MetaTensor(image, affine=aff_t),
            "valid": MetaTensor(sample.valid.float()[None], affine=aff_t),
        }
        if sample.mask is not None:
            data["mask"] = MetaTensor(sample.mask.reshape(sample.spatial_shape)[None].float(), affine=aff_t)

        pad_values = {"image": float(image.min()) if image.numel() else 0.0, "valid": 0.0, "mask": 0.0}
        for k in keys:
            data[k] = SpatialPad(self.input_size, method="symmetric", mode="constant", value=pad_values[k])(data[k])

        crop = RandSpatialCropd(keys, roi_size=self.input_size, random_size=False) if self.train else None
        crop = crop or CenterSpatialCropd(keys, roi_size=self.input_size)
        crop_pipeline = Compose([crop])
        crop_pipeline.set_random_state(seed=int(seed) % (2**32))
        out = crop_pipeline(data)
        new_affine = out["image"].affine.numpy().astype(np.float64)  # pad + crop: a translation

        flipped: list[int] = []
        if self._may_flip:
            flips = [RandFlipd(keys, prob=self.flip_prob, spatial_axis=a) for a in self.flip_axes]
            flip_pipeline = Compose(flips)
            flip_pipeline.set_random_state(seed=(int(seed) * 2654435761 + 1) % (2**32))
            out = flip_pipeline(out)
            # a flip mirrors the anatomy: the grid keeps its RAS directions (the affine is not flipped)
            flip_affine = out["image"].affine.numpy()
            flipped = [a for a in range(3) if float(flip_affine[:3, a] @ new_affine[:3, a]) < 0]

        mask = None
        if "mask" in out:
            mask = out["mask"].as_tensor()[0].round().long()
            names = meta.get("seg_class_names")
            if self.swap_sides and names and _lr_axis(new_affine) in flipped:
                mask = _swap(mask, left_right_swaps(names))
        meta["valid"] = out["valid"].as_tensor()[0] > 0.5
        meta["grid_affine"] = new_affine
        return sample.replace(image=out["image"].as_tensor().float().contiguous(), meta=meta, mask=mask)


def _swap(mask: torch.Tensor, swaps: dict[int, int]) -> torch.Tensor:
    if not swaps:
        return mask
    lut = torch.arange(int(max(int(mask.max()) if mask.numel() else 0, *swaps.keys(), *swaps.values())) + 1)
    for a, b in swaps.items():
        lut[a] = b
    return lut[mask]
