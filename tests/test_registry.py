"""The explicit domain registry and the protocol every built-in plugin honours."""

from __future__ import annotations

import json

import pytest
import torch

from unimae.core.errors import InputError
from unimae.domains import DomainPlugin, domain_names, get_domain

DOMAINS = ["ct", "fundus", "xray", "multispectral"]
SMALL = {"ct": 32, "fundus": 64, "xray": 64, "multispectral": 32}


def test_builtin_domains_registered_in_order():
    assert domain_names() == DOMAINS


def test_unknown_domain_lists_known_ones():
    with pytest.raises(InputError, match=r"unknown domain 'fundsu'; known: ct, fundus, xray, multispectral.*'fundus'"):
        get_domain("fundsu")


@pytest.mark.parametrize("name", DOMAINS)
def test_plugin_protocol(name):
    plugin = get_domain(name)
    assert isinstance(plugin, DomainPlugin) and plugin.name == name
    assert plugin.spatial_dims in (2, 3) and plugin.extensions
    assert set(plugin.tasks) <= {"classify", "segment", "anomaly"}
    assert {"pretrain", "finetune"} <= set(plugin.recipes)
    assert plugin.recipes["pretrain"]["patch_size"] in (8, 16)


@pytest.mark.parametrize("name", DOMAINS)
@pytest.mark.parametrize("task", ["segment", "anomaly", "classify"])
def test_synthetic_training_items_follow_the_contract(name, task):
    plugin = get_domain(name)
    if task not in plugin.tasks:
        pytest.skip(f"{name} has no {task} task")
    size = SMALL[name]
    ds = plugin.synthetic(3, seed=1, size=size, task=task)
    sample = ds[0]
    assert sample.image.dtype == torch.float32
    assert sample.image.ndim == plugin.spatial_dims + 1
    assert tuple(sample.valid.shape) == tuple(sample.image.shape[1:])
    meta = sample.meta
    assert meta["spatial_dims"] == plugin.spatial_dims
    assert len(meta["channels"]) == sample.image.shape[0]
    json.dumps(meta["normalization"])  # the contract checkpoints carry must be JSON
    assert torch.isfinite(sample.image).all()
    if task == "segment":
        assert sample.mask is not None and int(sample.mask.max()) < len(plugin.seg_class_names)
    if task == "classify":
        assert sample.label is not None
    if task == "anomaly":
        assert sample.mask is not None and sample.label is not None
        assert int(sample.label) == int(bool(sample.mask.any()))
    # the training view: fixed-size, collatable, seeded
    view = plugin.train_dataset(None, input_size=size, num_samples=3, seed=1, task=task)
    a, b = view[0], view[0]
    assert tuple(a["image"].shape[1:]) == (size,) * plugin.spatial_dims
    assert torch.equal(a["image"], b["image"])
    batch = torch.utils.data.default_collate([view[0], view[1]])
    assert batch["image"].shape[0] == 2


@pytest.mark.parametrize("name", DOMAINS)
def test_normal_only_synthetic_data_has_no_lesions(name):
    plugin = get_domain(name)
    ds = plugin.synthetic(4, seed=0, size=SMALL[name], task="anomaly", lesion_prob=0.0)
    assert all(not bool(ds[i].mask.any()) for i in range(4))
