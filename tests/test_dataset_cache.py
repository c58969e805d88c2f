"""Local datasets keep preprocessed samples in memory: the same content every time, never changed by a caller."""

from __future__ import annotations

import numpy as np
import pytest
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
    assert ds._cache.nbytes > 0 and 1 in ds._cache
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
    assert not ds._cache and ds._cache.nbytes == 0


def test_cached_synthetic_samples_match_the_generator_and_are_made_once(monkeypatch):
    """``data.cache_synthetic``: a small synthetic pool is generated once and revisited; what training sees is
    exactly what the uncached dataset gives, and a caller's changes never reach the memo."""
    from unimae.domains.localdata import CachedSamples

    plugin = get_domain("ct")
    kw = {"input_size": 24, "num_samples": 3, "seed": 5, "task": "anomaly", "lesion_prob": 0.0, "flip_prob": 0.0}
    plain = plugin.train_dataset(None, **kw)
    cached = plugin.train_dataset(None, cache_synthetic=True, **kw)
    pool = cached.samples
    assert isinstance(pool, CachedSamples) and not isinstance(plain.samples, CachedSamples)
    assert pool.size == plain.samples.size and pool.tasks == plain.samples.tasks  # the generator's attributes
    made = []
    generate = type(pool.samples).__getitem__

    def counted(self, i):
        if self is pool.samples:
            made.append(i)
        return generate(self, i)

    monkeypatch.setattr(type(pool.samples), "__getitem__", counted)
    for _ in range(2):  # two epochs
        for i in range(len(plain)):
            a, b = plain[i], cached[i]
            assert torch.equal(a["image"], b["image"]) and torch.equal(a["valid"], b["valid"])
    assert made == [0, 1, 2]  # made once, then revisited
    first = pool[1]
    first.image.zero_()
    assert float(pool[1].image.abs().sum()) > 0
    with pytest.raises(IndexError):
        pool[3]
