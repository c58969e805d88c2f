"""The chest X-ray domain plugin: DICOM / PNG / JPEG radiographs in, PNG label and heat maps out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from unimae.core.errors import InputError, look_up
from unimae.domains.base import DomainPlugin, ResultFile, Sample, channel_list, result_kind
from unimae.domains.sniff import dicom_modality, looks_dicom, picture_is_grey, suffix
from unimae.domains.xray.augment import XRayAugment
from unimae.domains.xray.dicom_io import read_dicom
from unimae.domains.xray.image_io import read_image, read_label_image
from unimae.domains.xray.intensity import apply_clahe, normalization_spec, to_unit
from unimae.domains.xray.intensity import normalize as normalize_unit
from unimae.domains.xray.examples import write_examples as _write_examples
from unimae.domains.xray.output import to_source_grid, write_png
from unimae.domains.xray.plotting import plot_sample
from unimae.domains.xray.sniff import check_file, sniff_format
from unimae.domains.xray.synthetic import FINDINGS, SEG_CLASSES, SyntheticChestXRay

__all__ = ["XRayPlugin"]

_DICOM_EXT = (".dcm", ".dicom")
_IMAGE_EXT = (".png", ".jpg", ".jpeg")


class XRayPlugin(DomainPlugin):
    """Chest radiographs (CR / DX): frontal views, one grey channel.

    - :meth:`read`: DICOM (pydicom: MONOCHROME1 inverted, rescale, VOI LUT / window, pixel padding,
      PixelSpacing / ImagerPixelSpacing) and PNG / JPEG (8 and 16 bit; grey, RGB, RGBA, palette -> one
      luminance channel). Image ``(1, H, W)`` float32 in ``[0, 1]``, 1 = white (dense).
    - :meth:`preprocess`: ``[0, 1]`` -> model space (``normalize``: ``"default"`` = ``(x - 0.5) / 0.25``,
      ``"imagenet"``, ``"none"`` or ``(mean, std)``), optional CLAHE; recorded in ``meta["normalization"]``.
    - :meth:`augment`: medical_mae crops for training, letterbox for evaluation; no flips by default.
    - :meth:`synthetic`: a thorax phantom with lung masks and nodule / consolidation / cardiomegaly findings.
    - :meth:`write`: PNG label / heat maps on the source pixel grid.

    ``presets`` are :meth:`preprocess` keyword sets; ``recipes`` hold the matching training settings
    (patch size, input size, crop scale, mask ratio, layer decay) from the medical_mae recipe.
    """

    name: ClassVar[str] = "xray"
    spatial_dims: ClassVar[int] = 2
    modality: ClassVar[str] = "CR"
    extensions: ClassVar[tuple[str, ...]] = _DICOM_EXT + _IMAGE_EXT
    tasks: ClassVar[tuple[str, ...]] = ("classify", "segment", "anomaly")
    class_names: ClassVar[tuple[str, ...]] = FINDINGS
    seg_class_names: ClassVar[tuple[str, ...]] = SEG_CLASSES
    #: synthetic chest radiographs in model space (224 px, lesion_prob 0.5), normalised like ``preprocess``
    synthetic_data: ClassVar[type[SyntheticChestXRay]] = SyntheticChestXRay
    synthetic_options: ClassVar[tuple[str, ...]] = ("normalize",)
    augment_class: ClassVar[type[XRayAugment]] = XRayAugment
    multi_label: ClassVar[bool] = True
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "default": {"normalize": "default"},
        "imagenet": {"normalize": "imagenet"},
        "clahe": {"normalize": "default", "clahe": 2.0},
    }
    recipes: ClassVar[dict[str, dict[str, Any]]] = {
        # Xiao et al. 2022 (medical_mae): 90 % masking, crop scale 0.5-1.0, layer-wise lr decay 0.55
        "pretrain": {"patch_size": 16, "input_size": 224, "mask_ratio": 0.9, "crop_scale": (0.5, 1.0),
                     "normalize": "default"},
        # segment_mode "resize": training resizes random crops to input_size, so prediction works at that scale
        "finetune": {"patch_size": 16, "input_size": 224, "crop_scale": (0.5, 1.0), "layer_decay": 0.55,
                     "normalize": "default",
                     "segment_mode": "resize"},
    }
    title: ClassVar[str] = "X-ray"
    description: ClassVar[str] = (
        "Chest radiographs: **DICOM** (MONOCHROME1/2, VOI LUT) or 8/16-bit **PNG** / **JPEG**. Results come back "
        "on the radiograph's pixel grid. Patient fields are never read into the app."
    )
    spacing_unit: ClassVar[str] = "mm"  # DICOM PixelSpacing / ImagerPixelSpacing (pictures say "pixel")
    demo_models: ClassVar[dict[str, dict[str, Any]]] = {
        "classify": {"model": {"patch_size": 8},
                     "data": {"input_size": 64, "num_val_samples": 32, "crop_scale": [0.85, 1.0], "rotate": 5.0},
                     "train": {"max_steps": 70, "batch_size": 32, "lr": 2e-3}},
        "segment": {"model": {"patch_size": 16, "feature_size": 8}, "data": {"input_size": 96, "num_val_samples": 4},
                    "train": {"max_steps": 50, "batch_size": 4, "lr": 3e-3}},
        "anomaly": {"model": {"patch_size": 4, "mask_ratio": 0.75},  # a nodule spans a patch
                    "data": {"input_size": 64, "num_val_samples": 32, "val_lesion_prob": 0.5},
                    "train": {"max_steps": 80, "batch_size": 16, "lr": 1e-3}},
    }  # fmt: skip
    demo_examples: ClassVar[dict[str, dict[str, Any]]] = {"default": {"size": 96}, "test": {"size": 64}}

    # -- files -----------------------------------------------------------------------------------
    def sniff(self, path: str | Path) -> float:
        """DICOM files whose header is not CT (0.9), grey PNG / JPEG pictures (0.9); colour pictures and the rest 0."""
        p = Path(path)
        if not p.is_file():
            return 0.0
        if looks_dicom(p):
            return 0.0 if dicom_modality(p) == "CT" else 0.9
        if suffix(p) in _IMAGE_EXT:
            return 0.9 if picture_is_grey(p) else 0.0
        return 0.0

    def read(self, path: str | Path, *, window: bool = True, bits: int | None = None) -> Sample:
        """Read a radiograph into a :class:`Sample` (image ``(1, H, W)`` float32 in ``[0, 1]``).

        Args:
            path: ``.dcm`` / ``.dicom`` / ``.png`` / ``.jpg`` / ``.jpeg`` (other names are recognised by content).
            window: DICOM only: apply the VOI LUT / window when present (else stretch min..max).
            bits: 16-bit PNG only: significant bits (None: the ``sBIT`` chunk, else min..max).
        """
        p = check_file(path)
        lower = p.name.lower()
        if lower.endswith(_DICOM_EXT):
            kind = "dicom"
        elif lower.endswith(_IMAGE_EXT):
            kind = "image"
        else:
            fmt = sniff_format(p)
            if fmt == "dicom":
                kind = "dicom"
            elif fmt in ("png", "jpeg"):
                kind = "image"
            else:
                raise InputError(f"not an x-ray file; accepted: {', '.join(self.extensions)}", path)
        if kind == "dicom":
            image, valid, info = read_dicom(p, window=window)
            modality = info.pop("modality")
            spacing = info.pop("spacing")
        else:
            image, info = read_image(p, bits=bits)
            valid = np.ones(image.shape, dtype=bool)
            modality, spacing = self.modality, (1.0, 1.0)
            info["spacing_source"], info["spacing_unit"] = "none", "pixel"
            info["photometric"] = "MONOCHROME2"
        meta: dict[str, Any] = {
            "spatial_dims": 2,
            "channels": channel_list(["grey"]),
            "spacing": tuple(float(s) for s in spacing),
            "affine": None,
            "crs": None,
            "transform": None,
            "nodata": None,
            "valid": torch.from_numpy(valid),
            "modality": modality,
            "path": str(path),
            "source_shape": tuple(int(s) for s in image.shape),
            **info,
        }
        return Sample(image=torch.from_numpy(image)[None].contiguous(), meta=meta)

    def read_mask(self, path: str | Path, *, like: Sample | None = None) -> torch.Tensor:
        """Read a lung / lesion mask PNG (0/255 binary or small label indices) as int64 ``(H, W)``.

        ``like``: the image the mask belongs to; its source (or current) shape must match.
        """
        mask = torch.from_numpy(read_label_image(path))
        if like is not None:
            shapes = {tuple(like.spatial_shape), tuple(like.meta.get("source_shape") or like.spatial_shape)}
            if tuple(mask.shape) not in shapes:
                want = " or ".join("x".join(map(str, s)) for s in sorted(shapes))
                raise InputError(f"mask is {mask.shape[0]}x{mask.shape[1]} but its image is {want}", path)
        return mask

    def preprocess(
        self,
        sample: Sample,
        *,
        normalize: str | Sequence[float] = "default",
        clahe: float | None = None,
        preset: str | None = None,
    ) -> Sample:
        """Normalise a read sample into model space; ``meta["normalization"]`` records how.

        Args:
            sample: from :meth:`read` (``[0, 1]``) or already preprocessed (re-normalised, not doubled).
            normalize: ``"default"`` (``(x - 0.5) / 0.25``), ``"imagenet"`` (``(x - 0.449) / 0.226``),
                ``"none"`` or a ``(mean, std)`` pair.
            clahe: CLAHE clip limit (e.g. 2.0) applied in ``[0, 1]`` before normalising; None = off.
            preset: a name in :attr:`presets`; overrides ``normalize`` and ``clahe``.

        ``valid`` is kept (False on DICOM pixel padding).
        """
        if preset is not None:
            chosen = self.presets[look_up(preset, self.presets, what="x-ray preset")]
            normalize = chosen.get("normalize", "default")
            clahe = chosen.get("clahe")
        image = sample.image.detach().cpu().float().numpy()
        if image.ndim != 3:
            raise InputError(f"x-ray image must be (C, H, W), got shape {tuple(image.shape)}")
        previous = sample.meta.get("normalization")
        unit = to_unit(image, previous)  # undo an earlier normalisation, so it is never applied twice
        done_clahe = previous.get("clahe") if previous else None
        clahe_spec = done_clahe
        if clahe is not None and done_clahe is None:
            unit = apply_clahe(unit, clip_limit=float(clahe))
            clahe_spec = {"clip_limit": float(clahe), "tiles": 8}
        spec = normalization_spec(normalize, channels=image.shape[0], clahe=clahe_spec)
        meta = dict(sample.meta)
        meta["normalization"] = spec
        if meta.get("valid") is None:
            meta["valid"] = torch.from_numpy(np.ones(sample.spatial_shape, dtype=bool))
        image = np.ascontiguousarray(normalize_unit(unit, spec), dtype=np.float32)
        return sample.replace(image=torch.from_numpy(image), meta=meta)

    # -- results ---------------------------------------------------------------------------------
    def to_source_grid(self, array: np.ndarray, meta: Mapping[str, Any], *, kind: str) -> np.ndarray:
        """Undo the evaluation letterbox (``meta["letterbox"]``) and resize to the radiograph's size."""
        return to_source_grid(array, meta, kind=result_kind(kind, array))

    def _write(self, array: Any, meta: dict[str, Any], out: ResultFile) -> Path:
        """Write a label map (integers) or heat map (floats) as a PNG at the source resolution, atomically.

        ``array`` may be on the model grid: the letterbox in ``meta`` is undone and the result resized to
        ``meta["source_shape"]`` (see :func:`~unimae.domains.xray.output.write_png`); ``class_names`` go into the
        PNG's text chunk; ``nodata`` is not stored (PNG).
        """
        return write_png(array, meta, out.path, kind=out.kind, class_names=out.class_names)

    def write_examples(self, dest: Path, *, seed: int, **settings: Any) -> list[Path]:
        """Synthetic radiographs as 8/16-bit PNG and MONOCHROME1 DICOM (see :mod:`.examples`)."""
        return _write_examples(dest, seed=seed, **settings)

    def plot(
        self,
        sample: Sample,
        prediction: torch.Tensor | None = None,
        *,
        alpha: float = 0.5,
        class_names: Sequence[str] | None = None,
        title: str | None = None,
    ):
        """A matplotlib Figure of the radiograph with ``prediction`` (or ``sample.mask``) overlaid, with a legend.

        ``class_names`` name the label values (default: ``meta["mask_classes"]``, set by the synthetic data).
        """
        return plot_sample(
            sample,
            prediction,
            class_names=sample.meta.get("mask_classes") if class_names is None else class_names,
            finding_names=self.class_names,
            alpha=alpha,
            title=title,
        )

