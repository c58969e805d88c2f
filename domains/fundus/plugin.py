"""The fundus domain plugin: colour fundus photographs (JPEG, PNG, TIFF, BMP).

``read`` gives RGB in [0, 1] with the field of view in ``meta["valid"]`` (from a mask file, or found
from intensity); ``preprocess`` applies optional CLAHE / green emphasis and ImageNet mean/std
(RETFound-compatible); ``write`` puts label and heat maps back on the source pixel grid as PNG.

Channel metadata: ``R, G, B`` with nominal wavelengths 0.61 / 0.55 / 0.465 µm (see
:data:`~unimae.domains.fundus.preprocess.NOMINAL_WAVELENGTHS`). Spacing is ``(1.0, 1.0)`` *pixels*
(``meta["spacing_unit"] = "pixel"``): image files carry no retinal scale.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from unimae.core.errors import InputError, look_up
from unimae.core.tasks import TASKS, get_task
from unimae.domains.base import DomainPlugin, ResultFile, Sample, Transform, channel_list, result_kind
from unimae.domains.folders import fov_for_image
from unimae.domains.fundus.examples import write_examples as _write_examples
from unimae.domains.fundus.augment import FundusTransform
from unimae.domains.fundus.fov import detect_fov
from unimae.domains.fundus.preprocess import CHANNEL_NAMES, NOMINAL_WAVELENGTHS, preprocess_fundus
from unimae.domains.fundus.reader import decode_mask, decode_rgb
from unimae.domains.fundus.synthetic import SyntheticFundus
from unimae.domains.fundus.writer import to_source_grid, write_prediction
from unimae.domains.sniff import picture_is_grey, suffix, tiff_info

__all__ = ["FundusPlugin"]

MaskLike = str | Path | np.ndarray | torch.Tensor


class FundusPlugin(DomainPlugin):
    """Colour fundus photographs: vessel segmentation, DR-like grading and lesion anomaly maps."""

    name: ClassVar[str] = "fundus"
    spatial_dims: ClassVar[int] = 2
    modality: ClassVar[str] = "fundus"
    extensions: ClassVar[tuple[str, ...]] = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".ppm")
    mask_extensions: ClassVar[tuple[str, ...]] = (".png", ".gif", ".tif", ".tiff", ".bmp", ".jpg", ".jpeg", ".ppm", ".pgm")
    tasks: ClassVar[tuple[str, ...]] = ("classify", "segment", "anomaly")
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "default": {"clahe": False, "green": False, "normalize": "imagenet"},
        "clahe": {"clahe": True, "green": False, "normalize": "imagenet"},
        "green": {"clahe": False, "green": True, "normalize": "imagenet"},
        "clahe_green": {"clahe": True, "green": True, "normalize": "imagenet"},
    }
    # a vessel tree mirrored is a vessel tree: segmentation averages the 4 mirrored copies (DRIVE, measured in the README)
    symmetries: ClassVar[dict[str, str]] = {"segment": "mirror"}
    recipes: ClassVar[dict[str, dict[str, Any]]] = {
        # RETFound / MAE: 224 px, 16 px patches, 75 % masking; fine-tuning with layer decay 0.65
        "pretrain": {"patch_size": 16, "input_size": 224, "mask_ratio": 0.75, "crop_scale": (0.6, 1.0),
                     "preset": "default"},
        # segment_mode "resize": training resizes the field-of-view box to input_size, so prediction works at that scale
        "finetune": {"patch_size": 16, "input_size": 224, "crop_scale": (0.6, 1.0), "layer_decay": 0.65,
                     "preset": "default",
                     "segment_mode": "resize"},
    }
    class_names: ClassVar[tuple[str, ...]] = SyntheticFundus.class_names
    seg_class_names: ClassVar[tuple[str, ...]] = SyntheticFundus.seg_class_names
    #: synthetic photographs in model space (224 px), preprocessed with ``clahe`` / ``green`` as ``preprocess``
    synthetic_data: ClassVar[type[SyntheticFundus]] = SyntheticFundus
    synthetic_options: ClassVar[tuple[str, ...]] = ("clahe", "green")
    augment_class: ClassVar[type[FundusTransform]] = FundusTransform
    multi_label: ClassVar[bool] = False
    all_band_names: ClassVar[tuple[str, ...]] = CHANNEL_NAMES
    rgb_bands: ClassVar[tuple[str, ...]] = CHANNEL_NAMES
    title: ClassVar[str] = "Fundus"
    description: ClassVar[str] = (
        "Colour fundus photographs: **PNG**, **JPEG**, **TIFF** or BMP. Results come back on the photograph's "
        "pixel grid."
    )
    demo_models: ClassVar[dict[str, dict[str, Any]]] = {
        "classify": {"model": {"patch_size": 8},
                     "data": {"input_size": 96, "num_val_samples": 32, "crop_scale": [0.85, 1.0], "rotate": 10.0},
                     "train": {"max_steps": 80, "batch_size": 16, "lr": 2e-3}},
        "segment": {"model": {"patch_size": 16, "feature_size": 8}, "data": {"input_size": 128, "num_val_samples": 4},
                    "train": {"max_steps": 60, "batch_size": 4, "lr": 3e-3}},
        "anomaly": {"model": {"patch_size": 8},
                    "data": {"input_size": 128, "num_val_samples": 32, "val_lesion_prob": 0.5},
                    "train": {"max_steps": 60, "batch_size": 8}},
    }  # fmt: skip
    demo_examples: ClassVar[dict[str, dict[str, Any]]] = {"default": {"size": 128}, "test": {"size": 64}}

    # -- files -----------------------------------------------------------------------------------
    def sniff(self, path: str | Path) -> float:
        """Colour pictures (0.8); grey pictures (0.4: a radiograph is likelier, but a grey fundus photo is read);
        TIFFs with at most 4 bands and no CRS (0.6; a georeferenced or many-band TIFF is not a photograph: 0)."""
        p = Path(path)
        if not p.is_file() or not self.accepts(p):
            return 0.0
        if suffix(p) in (".tif", ".tiff"):
            count, crs = tiff_info(p)
            return 0.0 if count > 4 or crs else 0.6
        return 0.4 if picture_is_grey(p) else 0.8

    def read_options(self, path: str | Path) -> dict[str, Any]:
        """The field-of-view mask published beside a photograph (DRIVE's ``../mask/``, ``<stem>_fov.png``)."""
        fov = fov_for_image(path) if Path(path).is_file() else None
        return {} if fov is None else {"fov_mask": fov}

    def read(self, path: str | Path, *, fov_mask: MaskLike | None = None, auto_fov: bool = True) -> Sample:
        """Read a fundus photograph as RGB ``(3, H, W)`` float32 in [0, 1].

        Args:
            path: JPEG, PNG (8/16-bit, grey, RGB, RGBA, palette), TIFF or BMP file.
            fov_mask: field-of-view mask: a file (e.g. DRIVE's ``*_mask.gif``; non-zero = inside) or an
                ``(H, W)`` array. Its shape must match the image.
            auto_fov: without ``fov_mask``, find the field of view from intensity
                (:func:`~unimae.domains.fundus.fov.detect_fov`); False marks the whole image valid.

        Returns:
            A :class:`Sample` whose ``meta`` follows the data contract, plus ``fov_source``
            (``"file"``, ``"array"``, ``"auto"`` or ``"none"``), ``source_dtype``, ``source_format``
            and ``spacing_unit``.
        """
        rgb, info = decode_rgb(path)
        h, w = rgb.shape[:2]
        if fov_mask is not None:
            valid = self._fov_from(fov_mask, (h, w), path)
            fov_source = "file" if isinstance(fov_mask, (str, Path)) else "array"
        elif auto_fov:
            valid = detect_fov(rgb)
            fov_source = "auto"
        else:
            valid = np.ones((h, w), dtype=bool)
            fov_source = "none"
        meta = {
            "spatial_dims": 2,
            "channels": channel_list(CHANNEL_NAMES, NOMINAL_WAVELENGTHS),
            "spacing": (1.0, 1.0),
            "spacing_unit": "pixel",
            "affine": None,
            "crs": None,
            "transform": None,
            "nodata": None,
            "valid": torch.from_numpy(valid),
            "modality": self.modality,
            "path": str(path),
            "source_shape": (h, w),
            "normalization": {"kind": "scale", "divisor": info["source_max"], "input_range": [0.0, 1.0]},
            "fov_source": fov_source,
            **{k: info[k] for k in ("source_format", "source_mode", "source_dtype", "grey", "alpha_dropped")},
        }
        image = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))
        return Sample(image=image, meta=meta)

    def _fov_from(self, fov_mask: MaskLike, shape: tuple[int, int], path: str | Path) -> np.ndarray:
        if isinstance(fov_mask, (str, Path)):
            arr = decode_mask(fov_mask) > 0
            where = fov_mask
        else:
            arr = (fov_mask.detach().cpu().numpy() if isinstance(fov_mask, torch.Tensor) else np.asarray(fov_mask)) > 0
            where = path
        if arr.shape != tuple(shape):
            raise InputError(
                f"FOV mask is {arr.shape[-1]}x{arr.shape[0]} (WxH) "
                f"but the image {Path(path).name} is {shape[1]}x{shape[0]}",
                where,
            )
        if not arr.any():
            raise InputError("FOV mask is empty (no pixel inside the field of view)", where)
        return arr

    def read_mask(self, path: str | Path, *, like: Sample | None = None) -> torch.Tensor:
        """Read a vessel/lesion mask (PNG/GIF/TIFF/BMP; 0/255, 0/1 or small class indices).

        Returns:
            ``(H, W)`` int64 tensor (0/1 for binary masks). ``like``'s spatial shape must match.
        """
        arr = decode_mask(path)
        if like is not None:
            expect = tuple(like.meta.get("source_shape") or like.spatial_shape)  # masks are stored at source size
            if arr.shape != expect:
                raise InputError(
                    f"mask is {arr.shape[1]}x{arr.shape[0]} (WxH) but its image is {expect[1]}x{expect[0]}", path
                )
        return torch.from_numpy(np.ascontiguousarray(arr))

    def preprocess(
        self,
        sample: Sample,
        *,
        clahe: bool | None = None,
        green: float | bool | None = None,
        normalize: str | Mapping[str, Any] = "imagenet",
        preset: str | None = None,
        fov_diameter: int | None = None,
    ) -> Sample:
        """Into model space: optional CLAHE and green emphasis, then mean/std; 0 outside the FOV.

        ``preset`` names an entry of :attr:`presets`; explicit ``clahe``/``green`` override it. See
        :func:`~unimae.domains.fundus.preprocess.preprocess_fundus`.
        """
        if preset is not None:
            chosen = dict(self.presets[look_up(preset, self.presets, what="fundus preset")])
            clahe = chosen["clahe"] if clahe is None else clahe
            green = chosen["green"] if green is None else green
            if normalize == "imagenet":
                normalize = chosen["normalize"]
        return preprocess_fundus(sample, clahe=clahe, green=green, normalize=normalize, fov_diameter=fov_diameter)

    def to_source_grid(self, array: np.ndarray, meta: Mapping[str, Any], *, kind: str) -> np.ndarray:
        """Undo the evaluation letterbox (``meta["letterbox"]``) and resize to the photograph's size."""
        labels = result_kind(kind, array) == "labels"
        return to_source_grid(np.asarray(array).astype(np.int64) if labels else array, meta, label=labels)

    def _write(
        self, array: Any, meta: dict[str, Any], out: ResultFile, *, bits: int = 8, mask_outside_fov: bool = True
    ) -> Path:
        """Write a label map (0/255 or class indices) or heat map PNG at the source resolution, atomically.

        ``nodata`` and ``class_names`` are not stored (PNG; outside the field of view the result is 0). See
        :func:`~unimae.domains.fundus.writer.write_prediction` for ``bits`` and ``mask_outside_fov``.
        """
        kind = {"labels": "label"}.get(out.kind, out.kind)
        return write_prediction(array, meta, out.path, kind=kind, bits=bits, mask_outside_fov=mask_outside_fov)

    def write_examples(self, dest: Path, *, seed: int, **settings: Any) -> list[Path]:
        """Synthetic photographs as PNG (with lesions, healthy) and JPEG (see :mod:`.examples`)."""
        return _write_examples(dest, seed=seed, **settings)

    def plot(
        self,
        sample: Sample,
        prediction: torch.Tensor | None = None,
        *,
        mask_names: Sequence[str] | None = None,
        alpha: float = 0.5,
        title: str | None = None,
    ):
        """A matplotlib Figure: de-normalised image, FOV outline, mask and/or prediction, legend."""
        from unimae.domains.fundus.plot import plot_fundus

        if mask_names is None:
            task = sample.meta.get("task")
            normal_only = task in TASKS and get_task(task).trains_on_normal  # lesion masks of anomaly data
            mask_names = SyntheticFundus.anomaly_class_names if normal_only else self.seg_class_names
        return plot_fundus(
            sample, prediction, mask_names=mask_names, class_names=self.class_names, alpha=alpha, title=title
        )
