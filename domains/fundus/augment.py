"""Seeded 2D augmentation for fundus samples (albumentations; any number of channels).

Both modes first crop to the bounding box of the field of view, so the black surround does not waste
the input. Training then takes a random resized crop, flips, a small rotation and a mild
brightness/contrast change; evaluation letterboxes the FOV box into ``input_size`` and records the
mapping in ``meta["letterbox"]`` so predictions can be written back on the source grid.

``valid`` and ``mask`` follow every geometric step with nearest interpolation; padding and rotated-in
corners are invalid (``valid`` False) and 0 in the image. All randomness comes from ``seed``: the
albumentations pipeline is re-seeded with ``Compose.set_random_seed(seed)`` before each call, and the
intensity jitter draws from ``numpy.random.default_rng(seed)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import albumentations as A
import cv2
import numpy as np
import torch

from unimae.core.errors import InputError, look_up
from unimae.domains.base import Sample
from unimae.domains.fundus.fov import fov_bbox

__all__ = ["FundusTransform", "as_hw"]


def as_hw(size: int | Sequence[int], what: str = "input_size") -> tuple[int, int]:
    """``224`` or ``(224, 224)`` -> ``(224, 224)``; raise :class:`InputError` on anything else."""
    if isinstance(size, (int, np.integer)):
        hw = (int(size), int(size))
    else:
        seq = [int(s) for s in size]
        if len(seq) == 1:
            seq = seq * 2
        if len(seq) != 2:
            raise InputError(f"{what} must be an int or (height, width), got {tuple(size)}")
        hw = (seq[0], seq[1])
    if min(hw) < 8:
        raise InputError(f"{what} must be at least 8 pixels, got {hw}")
    return hw


class FundusTransform:
    """A seeded ``(sample, seed) -> sample`` transform producing ``input_size`` images.

    Args:
        train: random augmentation if True, else the deterministic letterbox.
        input_size: output size, int or ``(height, width)``.
        crop_scale: area range of the random resized crop (fraction of the FOV box).
        crop_ratio: aspect-ratio range of the random resized crop.
        flip: random horizontal and vertical flips (each p = 0.5).
        rotate: maximum rotation in degrees (0 disables).
        brightness: maximum brightness shift, in units of the [0, 1] intensity range.
        contrast: maximum relative contrast change around the FOV mean.
        crop_to_fov: crop to the FOV bounding box before anything else.
        degrade: training only: the chance, for each of three camera degradations independently, that a crop
            gets it: a Gaussian blur (sigma 0.5-1.5 px, a softer lens or focus), a lower resolution (down by
            1.25-2x and back up: a smaller sensor) and Gaussian noise (0.05-0.3 of the image's standard
            deviation). 0 turns them off. They stand in for other cameras (nnU-Net trains with the same kinds of
            degradation); the README gives what they buy on degraded photographs.
        crop: ``"fov"`` (train: a random resized crop of the FOV box, so the model sees the whole
            fundus at ``input_size``; eval: the letterbox) or ``"native"`` (train: ``input_size`` crops at
            the image's own scale, within ``crop_scale`` as a zoom range, e.g. ``(0.8, 1.25)``; eval: the whole
            image unchanged, for sliding-window inference). Use ``"native"`` for thin structures
            (vessels), with ``fov_diameter`` in preprocessing to fix the scale across cameras.
    """

    def __init__(
        self,
        *,
        train: bool,
        input_size: int | Sequence[int] = 224,
        crop_scale: Sequence[float] = (0.6, 1.0),
        crop_ratio: Sequence[float] = (3 / 4, 4 / 3),
        flip: bool = True,
        rotate: float = 15.0,
        brightness: float = 0.1,
        contrast: float = 0.1,
        crop_to_fov: bool = True,
        crop: str = "fov",
        degrade: float = 0.0,
    ) -> None:
        self.train = bool(train)
        self.degrade = float(degrade)
        if not 0.0 <= self.degrade <= 1.0:
            raise InputError(f"degrade is a probability between 0 and 1, got {degrade}")
        self.size = as_hw(input_size)
        self.crop = look_up(str(crop), ("fov", "native"), what="fundus crop")
        lo, hi = (float(s) for s in crop_scale)
        if self.crop == "native":
            if not 0.0 < lo <= hi:
                raise InputError(f"native crop zoom range must satisfy 0 < low <= high, got {tuple(crop_scale)}")
        elif not 0.0 < lo <= hi <= 1.0:
            raise InputError(f"crop scale must satisfy 0 < low <= high <= 1, got {tuple(crop_scale)}")
        self.brightness = float(brightness)
        self.contrast = float(contrast)
        self.crop_to_fov = bool(crop_to_fov)
        h, w = self.size
        border = {"border_mode": cv2.BORDER_CONSTANT, "fill": 0, "fill_mask": 0}
        if self.train and self.crop == "native":
            steps = [
                A.RandomScale(scale_limit=(lo - 1.0, hi - 1.0), interpolation=cv2.INTER_LINEAR,
                              mask_interpolation=cv2.INTER_NEAREST_EXACT, p=1.0),
                A.PadIfNeeded(min_height=h, min_width=w, p=1.0, **border),
                A.RandomCrop(height=h, width=w, p=1.0),
            ]
            if flip:
                steps += [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)]
            if rotate > 0:
                steps.append(A.Affine(rotate=(-float(rotate), float(rotate)), interpolation=cv2.INTER_LINEAR,
                                      mask_interpolation=cv2.INTER_NEAREST, p=1.0, **border))
            self.compose = A.Compose(steps, seed=0)
        elif self.train:
            steps: list = [
                A.RandomResizedCrop(
                    size=(h, w),
                    scale=(lo, hi),
                    ratio=(float(crop_ratio[0]), float(crop_ratio[1])),
                    interpolation=cv2.INTER_LINEAR,
                    mask_interpolation=cv2.INTER_NEAREST_EXACT,
                    p=1.0,
                )
            ]
            if flip:
                steps += [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)]
            if rotate > 0:
                steps.append(
                    A.Affine(
                        rotate=(-float(rotate), float(rotate)),
                        interpolation=cv2.INTER_LINEAR,
                        mask_interpolation=cv2.INTER_NEAREST,
                        p=1.0,
                        **border,
                    )
                )
            self.compose = A.Compose(steps, seed=0)
        else:
            self._pad = A.PadIfNeeded(min_height=h, min_width=w, position="center", p=1.0, **border)

    def __repr__(self) -> str:
        mode = "train" if self.train else "eval"
        return f"FundusTransform({mode}, input_size={self.size})"

    def __call__(self, sample: Sample, seed: int) -> Sample:
        image = sample.image.float().permute(1, 2, 0).numpy()  # (H, W, C) view
        valid = sample.valid.numpy().astype(np.uint8)
        mask = None if sample.mask is None else sample.mask.numpy()
        if mask is not None and mask.shape != valid.shape:
            raise InputError(f"mask shape {mask.shape} does not match the image {valid.shape}", sample.meta.get("path"))
        use_box = self.crop_to_fov and (self.train or self.crop != "native")
        y0, x0, y1, x1 = fov_bbox(valid.astype(bool)) if use_box else (0, 0, *valid.shape)
        image = np.ascontiguousarray(image[y0:y1, x0:x1])
        valid = np.ascontiguousarray(valid[y0:y1, x0:x1])
        masks = [valid]
        if mask is not None:
            lo, hi = int(mask.min(initial=0)), int(mask.max(initial=0))
            mask_dtype = np.uint8 if lo >= 0 and hi < 256 else np.int16 if lo >= -32768 and hi < 32768 else np.int32
            masks.append(np.ascontiguousarray(mask[y0:y1, x0:x1]).astype(mask_dtype))
        meta = dict(sample.meta)
        if self.train:
            self.compose.set_random_seed(int(seed))
            out = self.compose(image=image, masks=masks)
            image, masks = out["image"], list(out["masks"])
            image = self._jitter(image, masks[0].astype(bool), sample.meta.get("normalization"), int(seed))
            if self.degrade > 0:
                image = degrade(image, masks[0].astype(bool), self.degrade, int(seed))
            meta["augmented"] = "train"
        elif self.crop == "native":  # the whole image at its own scale (sliding-window inference)
            meta["augmented"] = "eval"
        else:
            image, masks, letterbox = self._letterbox(image, masks)
            letterbox["bbox"] = [y0, x0, y1, x1]
            meta["letterbox"] = letterbox
            meta["augmented"] = "eval"
            s = letterbox["scale"]
            meta["spacing"] = tuple(float(v) / s for v in meta.get("spacing", (1.0, 1.0)))
        new_valid = masks[0].astype(bool)
        image = np.where(new_valid[..., None], image, 0.0).astype(np.float32)
        meta["valid"] = torch.from_numpy(new_valid)
        new_mask = None if mask is None else torch.from_numpy(masks[1].astype(np.int64))
        out_image = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        return sample.replace(image=out_image, meta=meta, mask=new_mask)

    def _letterbox(self, image: np.ndarray, masks: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray], dict]:
        """Resize the box to fit ``input_size`` keeping its aspect ratio, then centre-pad (invalid)."""
        h, w = self.size
        bh, bw = image.shape[:2]
        s = min(h / bh, w / bw)
        nh, nw = max(1, min(h, round(bh * s))), max(1, min(w, round(bw * s)))
        resize = A.Resize(nh, nw, interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST_EXACT, p=1.0)
        frame = np.ones((bh, bw), dtype=np.uint8)  # locates the padding exactly, whatever the rounding
        compose = A.Compose([resize, self._pad], seed=0)
        out = compose(image=image, masks=[*masks, frame])
        out_masks = list(out["masks"])
        frame = out_masks.pop()
        top, left, bottom, right = fov_bbox(frame.astype(bool))
        letterbox = {"size": [h, w], "inner": [top, left, bottom, right], "scale": float(s)}
        return out["image"], out_masks, letterbox

    def _jitter(self, image: np.ndarray, valid: np.ndarray, normalization: dict | None, seed: int) -> np.ndarray:
        """Brightness/contrast change inside ``valid``, applied in [0, 1] units whatever the normalisation.

        In model space ``x = (v - mean) / std``; ``v' = m + a (v - m) + b`` becomes
        ``x' = x_m + a (x - x_m) + b / std`` with ``x_m`` the FOV mean of ``x``.
        """
        if (self.brightness <= 0 and self.contrast <= 0) or not valid.any():
            return image
        rng = np.random.default_rng(seed)
        a = 1.0 + rng.uniform(-self.contrast, self.contrast)
        b = rng.uniform(-self.brightness, self.brightness)
        c = image.shape[-1]
        std = np.ones(c, dtype=np.float32)
        norm = normalization or {}
        if norm.get("kind") in ("meanstd", "image") and len(norm.get("std", ())) == c:
            std = np.asarray(norm["std"], dtype=np.float32)
        centre = image[valid].mean(axis=0)
        return (centre + a * (image - centre) + b / std).astype(np.float32)


def degrade(image: np.ndarray, valid: np.ndarray, p: float, seed: int) -> np.ndarray:
    """Blur, lower resolution and noise, each with chance ``p``, on an ``(H, W, C)`` model-space image.

    Blur and resampling are normalised by the field of view (the black surround does not darken its edge);
    noise is in units of the image's standard deviation inside ``valid``. Seeded by ``seed`` alone.
    """
    rng = np.random.default_rng([seed, 0x6465])
    use_blur, use_low, use_noise = rng.random(3) < p
    sigma, factor, noise = rng.uniform(0.5, 1.5), rng.uniform(1.25, 2.0), rng.uniform(0.05, 0.3)
    if not valid.any():
        return image
    out = image.astype(np.float32)
    if use_blur:
        out = fov_filtered(out, valid, lambda a: cv2.GaussianBlur(a, (0, 0), sigma))
    if use_low:
        h, w = out.shape[:2]
        small = (max(1, round(w / factor)), max(1, round(h / factor)))
        out = fov_filtered(out, valid, lambda a: cv2.resize(cv2.resize(a, small, interpolation=cv2.INTER_AREA), (w, h),
                                                            interpolation=cv2.INTER_LINEAR))
    if use_noise:
        scale = float(out[valid].std()) or 1.0
        out = out + rng.normal(0.0, noise * scale, out.shape).astype(np.float32)
    return out.astype(np.float32)


def fov_filtered(image: np.ndarray, valid: np.ndarray, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """A linear filter ``fn`` (one ``(H, W)`` float32 plane in, one out) of each channel, normalised by the same
    filter of the field of view: pixels near the FOV edge average only FOV pixels, not the black surround."""
    w = valid.astype(np.float32)
    den = fn(w)[..., None]
    num = np.stack([fn(np.ascontiguousarray(image[..., c] * w)) for c in range(image.shape[-1])], -1)
    return np.where(den > 1e-3, num / np.maximum(den, 1e-3), image).astype(np.float32)
