"""Local datasets keep preprocessed samples in memory: the same content every time, never changed by a caller."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from unimae.domains import get_domain
from unimae.domains.datasets import LocalDataset


def _films(tmp_path, n=3):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        p = tmp_path / f"film_{i}.png"
        Image.fromarray(rng.integers(0, 255, (40, 48), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def test_cached_items_are_equal_and_independent(tmp_path, monkeypatch):
    plugin = get_domain("xray")
    ds = LocalDataset(plugin, _films(tmp_path), labels=[0, 1, 0], class_names=["normal", "pneumonia"])
    first = ds[1]
    assert ds._cache_bytes > 0 and 1 in ds._cache
    first.image.zero_()  # a caller scribbling on its copy
    first.meta["valid"] = None
    again = ds[1]
    assert float(again.image.abs().sum()) > 0 and again.meta["valid"] is not None
    fresh = LocalDataset(plugin, ds.files, labels=[0, 1, 0], class_names=["normal", "pneumonia"])
    monkeypatch.setenv("UNIMAE_DATA_CACHE_MB", "0")  # no cache: read from disk
    assert torch.equal(fresh[1].image, again.image)
    assert int(again.label) == 1
    ds.labels = [1, 0, 1]  # labels changed after building: the cached item follows
    assert int(ds[1].label) == 0
    ds.subset([2, 0])  # indices change: nothing stale is served
    assert not ds._cache and torch.equal(ds[1].image, fresh[0].image)


def test_cache_budget_zero_keeps_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("UNIMAE_DATA_CACHE_MB", "0")
    ds = LocalDataset(get_domain("xray"), _films(tmp_path, 2))
    ds[0]
    ds[1]
    assert not ds._cache and ds._cache_bytes == 0
