"""Local datasets, domain guessing and ``unimae info`` descriptions: one import path for all of them.

The code lives by concern; this module re-exports it so that ``from unimae.domains.datasets import ...``
keeps working:

* :mod:`unimae.domains.layouts` -- :func:`local_dataset` (which layout a source has) and the splits;
* :mod:`unimae.domains.localdata` -- :class:`LocalDataset` and the names the layouts recognise;
* :mod:`unimae.domains.folders` -- folder layouts, an image's field-of-view mask, masks among files;
* :mod:`unimae.domains.manifests` -- CSV manifests, the normal class, class checks before training;
* :mod:`unimae.domains.registry` -- guessing a file's domain from the plugins' ``sniff`` scores;
* :mod:`unimae.domains.describe` -- what ``unimae info`` shows.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from unimae.domains import layouts as _layouts
from unimae.domains import localdata
from unimae.domains.base import DomainPlugin
from unimae.domains.describe import describe, format_description
from unimae.domains.folders import check_sizes, fov_for_image, image_folder_of, mask_files_among
from unimae.domains.localdata import (
    COLUMNS,
    DEFAULT_VAL_FRACTION,
    LAYOUT_HELP,
    LAYOUTS,
    NORMAL_NAMES,
    SPLITS,
    LocalDataset,
    cache_budget_bytes,
)
from unimae.domains.manifests import check_classes, normal_class_index
from unimae.domains.registry import get_domain, guess_domain_name

__all__ = [
    "LocalDataset",
    "local_dataset",
    "guess_domain_name",
    "describe",
    "format_description",
    "normal_class_index",
    "check_classes",
    "check_sizes",
    "mask_files_among",
    "fov_for_image",
    "image_folder_of",
    *(name for name in localdata.__all__ if name != "LocalDataset"),
]


@functools.wraps(_layouts.local_dataset)
def local_dataset(plugin: DomainPlugin | str, source: str | Path, **kwargs: Any) -> LocalDataset:
    return _layouts.local_dataset(get_domain(plugin) if isinstance(plugin, str) else plugin, source, **kwargs)
