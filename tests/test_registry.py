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


def test_write_checks_the_kind_and_hands_the_plugins_write_hook_its_options(tmp_path):
    from unimae.domains.base import ResultFile

    class Hooked(DomainPlugin):
        name, spatial_dims, modality, extensions = "hooked", 2, "toy", (".toy",)
        read = read_mask = preprocess = augment = synthetic = plot = lambda self, *a, **k: None

        def _write(self, array, meta, out, *, level=0):
            self.seen = (out, level)
            return out.path

    plugin, path = Hooked(), tmp_path / "a.toy"
    assert plugin.write([1], {}, path, kind="map", nodata=0, class_names=("x",), level=3) == path
    assert plugin.seen == (ResultFile(path, "heat", 0, ("x",)), 3)
    plugin.write([1], {}, path)
    assert plugin.seen == (ResultFile(path, "auto", None, None), 0)
    with pytest.raises(InputError, match="result kind"):
        plugin.write([1], {}, path, kind="mask")
    with pytest.raises(TypeError):
        plugin.write([1], {}, path, bits=8)  # an option the plugin does not take


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


# ------------------------------------------------------------------------------------------------
# where domains come from: the built-ins, the entry-point group, explicit registration
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def fresh_registry(monkeypatch):
    """The registry as on a fresh start (restored afterwards), with ``entry_points`` under the test's control."""
    import unimae.domains.registry as registry

    for name in ("_LOADED", "_PENDING", "_ORDER", "_INSTANCES"):
        monkeypatch.setattr(registry, name, {})
    monkeypatch.setattr(registry, "_DISCOVERED", False)
    found: list = []

    def entry_points(group=None):
        assert group == registry.ENTRY_POINT_GROUP
        return list(found)

    monkeypatch.setattr(registry.metadata, "entry_points", entry_points)
    return registry, found


def _entry_point(name: str, value: str):
    from importlib.metadata import EntryPoint

    return EntryPoint(name=name, value=value, group="unimae.domains")


def _toy_module(tmp_path, monkeypatch, body: str) -> str:
    """An importable module ``toy_domains_<n>`` holding ``body`` (a plugin class ``Toy`` and friends)."""
    name = f"toy_domains_{abs(hash(body)) % 10**8}"
    (tmp_path / f"{name}.py").write_text(
        "from unimae.domains.base import DomainPlugin\n"
        "class Toy(DomainPlugin):\n"
        "    name = 'toy'\n    spatial_dims = 2\n    modality = 'toy'\n    extensions = ('.toy',)\n"
        "    read = read_mask = preprocess = augment = synthetic = write = plot = lambda self, *a, **k: None\n"
        + body
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_builtin_domains_need_no_installation_metadata(fresh_registry):
    registry, found = fresh_registry  # no entry points at all (a source checkout, an old editable install)
    assert registry.domain_names() == DOMAINS and registry.get_domain("ct").name == "ct"


def test_pyproject_declares_the_builtin_entry_points():
    import tomllib
    from pathlib import Path

    import unimae.domains.registry as registry

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    declared = project["project"]["entry-points"][registry.ENTRY_POINT_GROUP]
    assert declared == dict(registry.BUILTIN)


def test_a_third_party_domain_comes_from_its_entry_point(fresh_registry, tmp_path, monkeypatch):
    registry, found = fresh_registry
    module = _toy_module(tmp_path, monkeypatch, "")
    found += [_entry_point(n, v) for n, v in registry.BUILTIN]  # the built-ins' own declarations: no duplicates
    found.append(_entry_point("toy", f"{module}:Toy"))
    assert registry.domain_names() == [*DOMAINS, "toy"]
    assert registry.get_domain("toy").extensions == (".toy",)
    (tmp_path / "a.toy").write_bytes(b"x")
    assert registry.guess_domain_name(tmp_path / "a.toy") == "toy"  # the default sniff: by extension


def test_a_broken_entry_point_is_a_warning_naming_it(fresh_registry, tmp_path, monkeypatch):
    registry, found = fresh_registry
    module = _toy_module(tmp_path, monkeypatch, "NOT_A_PLUGIN = 42\n")
    found += [_entry_point("gone", "no_such_package.sar:SARPlugin"), _entry_point("odd", f"{module}:NOT_A_PLUGIN"),
              _entry_point("misnamed", f"{module}:Toy"), _entry_point("ct", f"{module}:Toy")]  # fmt: skip
    with pytest.warns(UserWarning) as record:
        assert registry.domain_names() == DOMAINS
    text = " ".join(str(w.message) for w in record)
    assert "'gone' (entry point gone = no_such_package.sar:SARPlugin)" in text and "ModuleNotFoundError" in text
    assert "'odd'" in text and "not a DomainPlugin" in text
    assert "'misnamed'" in text and "named 'toy', not 'misnamed'" in text
    assert "'ct'" in text and "already registered" in text
    with pytest.raises(InputError, match="unknown domain 'gone'"):
        registry.get_domain("gone")


def test_unreadable_entry_point_metadata_leaves_the_builtins(fresh_registry, monkeypatch):
    registry, _ = fresh_registry

    def broken(group=None):
        raise RuntimeError("corrupt METADATA")

    monkeypatch.setattr(registry.metadata, "entry_points", broken)
    with pytest.warns(UserWarning, match="corrupt METADATA"):
        assert registry.domain_names() == DOMAINS


def test_explicit_registration(fresh_registry, tmp_path, monkeypatch):
    registry, _ = fresh_registry
    import importlib

    Toy = importlib.import_module(_toy_module(tmp_path, monkeypatch, "")).Toy
    assert registry.register_domain(Toy) is Toy and registry.register_domain(Toy) is Toy  # again: no change
    assert registry.domain_names() == [*DOMAINS, "toy"] and isinstance(registry.get_domain("toy"), Toy)

    class Other(Toy):
        pass

    with pytest.raises(ValueError, match="domain 'toy' is already registered by toy_domains_"):
        registry.register_domain(Other)
    with pytest.raises(ValueError, match="domain 'ct' is already registered by unimae.domains.ct.plugin.CTPlugin"):
        registry.register_domain(type("CT2", (Toy,), {"name": "ct"}))
    with pytest.raises(TypeError, match="not a DomainPlugin"):
        registry.register_domain(object)
    registry.unregister_domain("toy")
    instance = Other()
    assert registry.register_domain(instance) is instance and registry.get_domain("toy") is instance
