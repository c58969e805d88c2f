"""Seeded 2D augmentation for radiographs (albumentations), multi-channel safe.

Training follows the medical_mae recipe (Xiao et al. 2022): ``RandomResizedCrop(scale=(0.5, 1.0))``, plus a
small rotation and brightness/contrast jitter. **No horizontal flip by default**: laterality carries
meaning on a chest radiograph (heart on the patient's left, right hemidiaphragm higher; situs inversus and
dextrocardia are findings), and a flip swaps the ``lung_right`` / ``lung_left`` labels. With
``hflip=True``, give ``flip_label_pairs`` (e.g. ``((1, 2),)`` for the synthetic lungs) so that mask labels
are swapped whenever an image is flipped.

Evaluation letterboxes: resize the longer side to ``input_size`` keeping the aspect ratio, then pad
centrally. The padding is ``valid = False`` and its geometry goes into ``meta["letterbox"]``
(``{"size": [H, W], "box": [top, left, h, w]}``) so results can be mapped back to the source grid
(:func:`unimae.domains.xray.output.to_source_grid`).

Albumentations works on float images in ``[0, 1]``: a model-space image is mapped back with its
``meta["normalization"]``, augmented, and normalised again. ``valid`` and ``mask`` move with the image
(nearest interpolation); pixels brought in by rotation or padding are invalid and background.
All randomness comes from ``seed`` (``Compose.set_random_seed``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from unimae.core.errors import InputError
from unimae.domains.base import Sample, size_pair
from unimae.domains.xray.intensity import normalize, to_unit

__all__ = ["XRayAugment", "input_hw"]


def input_hw(input_size: int | Sequence[int]) -> tuple[int, int]:
    """``input_size`` (int or ``(H, W)``) as a validated ``(H, W)``."""
    return size_pair(input_size, "x-ray input_size")


class XRayAugment:
    """``transform(sample, seed) -> sample`` with a fixed ``input_size`` output.

    Args:
        train: random crop / rotation / intensity jitter (True) or a deterministic letterbox (False).
        input_size: output ``H`` or ``(H, W)``.
        crop_scale: area fraction range of ``RandomResizedCrop`` (medical_mae: ``(0.5, 1.0)``).
        crop_ratio: aspect ratio range of the crop.
        rotate: maximum rotation in degrees (applied with probability 1/2; 0 disables).
        brightness: brightness jitter, as a fraction of the ``[0, 1]`` range (0 disables).
        contrast: contrast jitter fraction (0 disables).
        gamma: gamma jitter: with probability 1/2 the ``[0, 1]`` intensities are raised to a power drawn between
            ``1 / (1 + gamma)`` and ``1 + gamma`` (0 disables): another site's film processing and detector
            response change the grey-level curve, not just its offset and slope.
        hflip: random horizontal flips (off by default; see the module docstring).
        flip_label_pairs: mask labels to swap when an image is flipped, e.g. ``((1, 2),)``.
    """

    def __init__(
        self,
        *,
        train: bool,
        input_size: int | Sequence[int] = 224,
        crop_scale: tuple[float, float] = (0.5, 1.0),
        crop_ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
        rotate: float = 10.0,
        brightness: float = 0.1,
        contrast: float = 0.1,
        gamma: float = 0.0,
        hflip: bool = False,
        flip_label_pairs: Sequence[tuple[int, int]] = (),
    ) -> None:
        import albumentations as A
        import cv2

        self.train = bool(train)
        self.size = input_hw(input_size)
        if not 0.0 <= float(gamma) <= 4.0:
            raise InputError(f"gamma jitter must be between 0 and 4, got {gamma}")
        lo, hi = (float(v) for v in crop_scale)
        if not 0.0 < lo <= hi <= 1.0:
            raise InputError(f"crop_scale must satisfy 0 < low <= high <= 1, got {tuple(crop_scale)}")
        self.flip_label_pairs = tuple((int(a), int(b)) for a, b in flip_label_pairs)
        h, w = self.size
        exact = cv2.INTER_NEAREST_EXACT  # pixel-centre aligned, unlike INTER_NEAREST (half-pixel shift)
        if self.train:
            ops: list = [
                A.RandomResizedCrop(size=(h, w), scale=(lo, hi), ratio=tuple(crop_ratio), mask_interpolation=exact)
            ]
            if rotate:
                ops.append(A.Affine(rotate=(-float(rotate), float(rotate)), border_mode=cv2.BORDER_CONSTANT,
                                    fill=0, fill_mask=0, p=0.5))
            if brightness or contrast:
                ops.append(A.RandomBrightnessContrast(brightness_limit=float(brightness),
                                                      contrast_limit=float(contrast), p=0.5))
            if gamma:
                ops.append(A.RandomGamma(gamma_limit=(100.0 / (1.0 + float(gamma)), 100.0 * (1.0 + float(gamma))), p=0.5))
            if hflip:
                ops.append(A.HorizontalFlip(p=0.5))
        else:
            ops = [
                A.LongestMaxSize(max_size_hw=(h, w), mask_interpolation=exact),
                A.PadIfNeeded(min_height=h, min_width=w, position="center", border_mode=cv2.BORDER_CONSTANT,
                              fill=0, fill_mask=0),
            ]
        self.compose = A.Compose(ops, seed=0, save_applied_params=bool(hflip and self.train))

    def letterbox(self, shape: Sequence[int]) -> dict:
        """The eval letterbox of a ``(H0, W0)`` image: ``{"size": [H, W], "box": [top, left, h, w]}``."""
        h, w = self.size
        scale = min(h / shape[0], w / shape[1])
        nh, nw = max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale))
        return {"size": [h, w], "box": [(h - nh) // 2, (w - nw) // 2, nh, nw]}

    def __call__(self, sample: Sample, seed: int) -> Sample:
        if sample.image.ndim != 3:
            raise InputError(f"x-ray augmentation needs an image (C, H, W), got shape {tuple(sample.image.shape)}")
        spec = sample.meta.get("normalization")
        chw = sample.image.detach().cpu().float().numpy()
        unit = np.ascontiguousarray(to_unit(chw, spec).transpose(1, 2, 0), dtype=np.float32)
        masks = [sample.valid.detach().cpu().numpy().astype(np.uint8)]
        if sample.mask is not None:
            m = sample.mask.detach().cpu().numpy()
            if m.shape != sample.spatial_shape:
                raise InputError(f"mask shape {m.shape} differs from the image's {sample.spatial_shape}")
            if m.size and (m.min() < 0 or m.max() > 65535):
                raise InputError("mask labels must be in 0..65535")
            masks.append(m.astype(np.uint8 if m.max(initial=0) <= 255 else np.uint16))
        self.compose.set_random_seed(int(seed))
        out = self.compose(image=unit, masks=masks)
        hwc = out["image"] if out["image"].ndim == 3 else out["image"][..., None]
        if spec is not None:
            hwc = normalize(hwc, spec, channel_axis=2)
        image = torch.from_numpy(np.ascontiguousarray(hwc.transpose(2, 0, 1), dtype=np.float32))
        meta = dict(sample.meta)
        meta["valid"] = torch.from_numpy(out["masks"][0].astype(bool))
        meta.pop("letterbox", None)
        if not self.train:
            meta["letterbox"] = self.letterbox(sample.spatial_shape)
        mask = None
        if sample.mask is not None:
            mask = torch.from_numpy(out["masks"][1].astype(np.int64))
            if self.flip_label_pairs and self._flipped(out):
                swapped = mask.clone()
                for a, b in self.flip_label_pairs:
                    swapped[mask == a], swapped[mask == b] = b, a
                mask = swapped
        return sample.replace(image=image, meta=meta, mask=mask)

    @staticmethod
    def _flipped(out: dict) -> bool:
        return any(name == "HorizontalFlip" for name, _ in out.get("applied_transforms", []))
