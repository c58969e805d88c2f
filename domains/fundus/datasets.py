"""Local fundus datasets in the DRIVE layout (images, expert vessel masks, field-of-view masks)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch.utils.data import Dataset

from unimae.core.errors import InputError
from unimae.domains.base import Sample
from unimae.domains.fundus.preprocess import CHANNEL_NAMES

__all__ = ["DRIVE"]


class DRIVE(Dataset):
    """The DRIVE retinal-vessel layout (Staal et al. 2004), or any folder laid out the same way::

        root/images/21_training.tif         colour photographs (any readable image suffix)
        root/1st_manual/21_manual1.gif      expert vessel masks (optional: absent for the test split)
        root/mask/21_training_mask.gif      field-of-view masks (optional: found from intensity if absent)

    Masks are matched by the number before the first ``_`` of the image stem.

    Args:
        root: the split folder (e.g. ``DRIVE/training``).
        preprocess: keyword arguments for :meth:`FundusPlugin.preprocess`, or ``None`` to return the
            read sample ([0, 1] RGB) without preprocessing.
        manual: name of the vessel-mask folder (``"1st_manual"`` or ``"2nd_manual"``).

    Each item is a :class:`Sample` with ``mask`` = vessels (int64 0/1) where a manual mask exists.
    """

    all_band_names: ClassVar[tuple[str, ...]] = CHANNEL_NAMES
    rgb_bands: ClassVar[tuple[str, ...]] = CHANNEL_NAMES
    seg_class_names: ClassVar[tuple[str, ...]] = ("background", "vessel")
    image_suffixes: ClassVar[tuple[str, ...]] = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")

    def __init__(
        self,
        root: str | Path,
        *,
        preprocess: Mapping[str, Any] | None = None,
        manual: str = "1st_manual",
    ) -> None:
        from unimae.domains.fundus.plugin import FundusPlugin

        self.root = Path(root)
        self.plugin = FundusPlugin()
        self.preprocess_kw = None if preprocess is None else dict(preprocess)
        image_dir = self.root / "images"
        if not image_dir.is_dir():
            raise InputError("not a DRIVE-style folder: expected an images/ subfolder", self.root)
        self.images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in self.image_suffixes)
        if not self.images:
            raise InputError("no images found in images/", self.root)
        self.manuals = [self._find(self.root / manual, p) for p in self.images]
        self.fov_masks = [self._find(self.root / "mask", p) for p in self.images]

    @staticmethod
    def _find(folder: Path, image: Path) -> Path | None:
        if not folder.is_dir():
            return None
        key = image.stem.split("_")[0]
        hits = sorted(p for p in folder.iterdir() if p.stem.split("_")[0] == key)
        return hits[0] if hits else None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Sample:
        sample = self.plugin.read(self.images[index], fov_mask=self.fov_masks[index])
        mask = None
        if self.manuals[index] is not None:
            mask = self.plugin.read_mask(self.manuals[index], like=sample)
        if self.preprocess_kw is not None:
            sample = self.plugin.preprocess(sample, **self.preprocess_kw)
        return sample.replace(mask=mask)

    def plot(self, sample: Sample, prediction: torch.Tensor | None = None, **kwargs: Any):
        """A matplotlib Figure of ``sample`` with its vessel mask and/or ``prediction``."""
        return self.plugin.plot(sample, prediction, **kwargs)
