"""Test-time augmentation: a model's output averaged over symmetries of the image.

A vessel tree mirrored is still a vessel tree, and a satellite tile seen from nadir has no "up": for such
images the average of a model's outputs over the mirrored (or rotated) copies of its input, each mapped back,
is a better estimate than one pass (nnU-Net mirrors every axis at inference by default). Where a symmetry is
not one of the images' (a chest film's heart is on the left), averaging over it teaches the model nothing
and blurs what it knows, so each domain names its own set (``DomainPlugin.symmetries``) and a checkpoint
records the one it predicts with (``contract["tta"]``).

Modes:

* ``none``: one pass;
* ``mirror``: every combination of flips of the spatial axes (4 passes in 2D, 8 in 3D);
* ``dihedral``: the 8 symmetries of the square (2D only): the rotations by 0, 90, 180 and 270 degrees and
  their mirror images.

Per-image outputs (class probabilities) are averaged as they are; per-pixel outputs (class probability maps)
are mapped back to the input's orientation first. Averaging happens on probabilities, never on logits.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from unimae.core.errors import InputError

if TYPE_CHECKING:
    import torch

__all__ = ["TTA_MODES", "check_tta", "task_tta", "views", "averaged"]

TTA_MODES = ("none", "mirror", "dihedral")

#: a view of the image and the map that undoes it: ``(forward, inverse)``, each ``(tensor, spatial_dims) -> tensor``
View = tuple[Callable[["torch.Tensor", int], "torch.Tensor"], Callable[["torch.Tensor", int], "torch.Tensor"]]


def check_tta(mode: object, spatial_dims: int, where: str = "tta") -> str:
    """``mode`` as one of :data:`TTA_MODES` for images of ``spatial_dims``, or an :class:`InputError` saying why not."""
    name = "none" if mode is None or mode is False else str(mode).strip().lower()
    if name not in TTA_MODES:
        raise InputError(f"{where} is {mode!r}; expected one of {', '.join(TTA_MODES)}")
    if name == "dihedral" and int(spatial_dims) != 2:
        raise InputError(f"{where} 'dihedral' (the symmetries of the square) needs 2D images; use 'mirror' in 3D")
    return name


def task_tta(mode: object, task: Any, spatial_dims: int, where: str = "tta") -> str:
    """:func:`check_tta` for a task (:class:`~unimae.core.tasks.base.Task`): only a ``symmetric`` task
    (classification, segmentation) takes a mode other than ``none``."""
    name = check_tta(mode, spatial_dims, where)
    if name != "none" and not task.symmetric:
        raise InputError(f"{where}={name}: test-time augmentation applies to classification and segmentation, "
                         f"not to {task.name}")  # fmt: skip
    return name


def _axes(nd: int, which: tuple[int, ...]) -> list[int]:
    return [-nd + a for a in which]


def _flip(which: tuple[int, ...]) -> Callable[[torch.Tensor, int], torch.Tensor]:
    def f(x: torch.Tensor, nd: int) -> torch.Tensor:
        return x.flip(_axes(nd, which)) if which else x

    return f


def _rot(k: int, mirrored: bool) -> View:
    """Rotation by ``k`` quarter turns of the last two axes, after a mirror of the last axis when ``mirrored``."""

    def fwd(x: torch.Tensor, nd: int) -> torch.Tensor:
        x = x.flip(-1) if mirrored else x
        return x.rot90(k, (-2, -1))

    def inv(x: torch.Tensor, nd: int) -> torch.Tensor:
        x = x.rot90(-k, (-2, -1))
        return x.flip(-1) if mirrored else x

    return fwd, inv


def views(mode: str, spatial_dims: int) -> list[View]:
    """The views a mode averages over, the identity first."""
    mode = check_tta(mode, spatial_dims)
    nd = int(spatial_dims)
    if mode == "none":
        return [(_flip(()), _flip(()))]
    if mode == "mirror":
        out = []
        for r in range(nd + 1):
            for which in itertools.combinations(range(nd), r):
                out.append((_flip(which), _flip(which)))  # a flip is its own inverse
        return out
    return [_rot(k, m) for m in (False, True) for k in range(4)]


def averaged(
    run: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    valid: torch.Tensor,
    mode: str,
    *,
    spatial_dims: int,
    per_pixel: bool,
) -> torch.Tensor:
    """The mean of ``run(image', valid')`` over the views of ``mode``.

    Args:
        run: the model on one sample: ``image`` ``(C, *S)`` and ``valid`` ``(*S)`` to probabilities, ``(K,)`` per
            image or ``(K, *S)`` per pixel.
        image, valid: the sample.
        mode: one of :data:`TTA_MODES`.
        spatial_dims: the number of trailing spatial axes of ``image`` (and of a per-pixel output).
        per_pixel: the output lies on the image grid and is mapped back before averaging.
    """
    total = None
    vs = views(mode, spatial_dims)
    for fwd, inv in vs:
        out = run(fwd(image, spatial_dims).contiguous(), fwd(valid, spatial_dims).contiguous())
        if per_pixel:
            out = inv(out, spatial_dims)
        total = out.float() if total is None else total + out.float()
    assert total is not None
    return total / len(vs)
