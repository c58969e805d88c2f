"""One typed encoder config for the MAE, the classifier and the segmenter; checkpoint schema 2 and schema-1 files.

``tests/fixtures/checkpoint_v1/`` holds three tiny checkpoints written by the code before the encoder had
its own config (commit 1729c3d: ``model_config`` was the constructor's ``locals()``, no ``schema`` key;
fp16 weights like the shipped demo models) and ``expected.safetensors``, the outputs that code computed
from them. They must load, unchanged, into the same outputs: equal up to float rounding (another CPU's kernels
round the last bits differently: on an AMD EPYC the largest difference is 3e-6 on outputs of size 5; the check
allows 1e-5 of each output's scale, and scaling one weight matrix by 0.99 already fails it).
"""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from unimae.core.checkpoint import SCHEMA, build_model, load_checkpoint, save_checkpoint
from unimae.core.checkpoint_io import encoder_config, model_arguments, read_checkpoint_meta
from unimae.core.encoder import ViTEncoder
from unimae.core.encoder_config import ARCHITECTURE_KEYS, ENCODER_KEYS, FINETUNE_DEFAULTS, EncoderConfig
from unimae.core.errors import InputError
from unimae.core.mae import MaskedAutoencoder
from unimae.core.model_config import init_architecture, model_keys
from unimae.core.models import MAEClassifier, MAESegmenter
from unimae.core.presets import MODEL_PRESETS

FIXTURES = Path(__file__).parent / "fixtures" / "checkpoint_v1"
SMALL = dict(embed_dim=16, depth=2, num_heads=2, patch_size=8)


def _assert_same_outputs(value: torch.Tensor, expected: torch.Tensor, key: str) -> None:
    assert value.shape == expected.shape and value.dtype == expected.dtype, key
    scale = float(expected.abs().max()) if expected.numel() else 0.0  # the classifier's logits are ~1e-4
    torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-5 * scale, msg=key)


def _outputs(name: str, model: torch.nn.Module, expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    x = expected[f"input.{name}"]
    with torch.no_grad():
        if name == "mae":
            out = model(x, mask=expected["input.mae_mask"].bool())
            return {"mae.pred": out["pred"], "mae.logvar": out["logvar"]}
        return {f"{name}.logits": model(x)}


# -- schema-1 checkpoints written by the previous code ---------------------------------------------
@pytest.mark.parametrize("name", ["mae", "classifier", "segmenter"])
def test_schema1_fixture_loads_with_the_same_outputs(name):
    meta = read_checkpoint_meta(FIXTURES / name)
    assert "schema" not in meta and "encoder" not in meta  # really the old layout
    model, _ = load_checkpoint(FIXTURES / name)
    expected = load_file(str(FIXTURES / "expected.safetensors"))
    for key, value in _outputs(name, model, expected).items():
        _assert_same_outputs(value, expected[key], key)
    # the flat config the old code recorded is what the model reports (an MAE now also names its class token)
    flat = dict(meta["model_config"])
    if name == "mae":
        flat["class_token"] = True
    assert model.config == flat
    assert model.encoder_config == encoder_config(meta)


@pytest.mark.parametrize("name", ["mae", "classifier", "segmenter"])
def test_schema1_resaved_as_schema2_round_trips(tmp_path, name):
    model, old = load_checkpoint(FIXTURES / name)
    save_checkpoint(tmp_path / name, model, contract=old["contract"], task=old["task"])
    meta = read_checkpoint_meta(tmp_path / name)
    assert meta["schema"] == SCHEMA == 2
    assert set(meta["encoder"]) == set(ENCODER_KEYS)
    assert not set(meta["model_config"]) & set(ENCODER_KEYS)  # each argument is stored once
    assert model_arguments(meta) == model.config
    again, _ = load_checkpoint(tmp_path / name)
    assert again.encoder_config == model.encoder_config and again.config == model.config
    expected = load_file(str(FIXTURES / "expected.safetensors"))
    for key, value in _outputs(name, again, expected).items():
        _assert_same_outputs(value, expected[key], key)


def test_schema_newer_than_this_code_is_refused(tmp_path):
    shutil.copy(FIXTURES / "classifier.safetensors", tmp_path / "m.safetensors")
    meta = json.loads((FIXTURES / "classifier.json").read_text())
    meta["schema"] = SCHEMA + 1
    (tmp_path / "m.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="schema 3 is newer"):
        load_checkpoint(tmp_path / "m")


def test_init_architecture_reads_both_schemas(tmp_path):
    model, old = load_checkpoint(FIXTURES / "classifier")
    save_checkpoint(tmp_path / "new", model)
    new = read_checkpoint_meta(tmp_path / "new")
    arch_old, arch_new = init_architecture(old), init_architecture(new)
    assert arch_old == arch_new and set(arch_new) == set(ARCHITECTURE_KEYS)
    assert "drop_path_rate" not in arch_new  # a training choice stays the fine-tuning config's
    mae, old_mae = load_checkpoint(FIXTURES / "mae")
    whole = init_architecture(old_mae, whole=True)
    assert whole["decoder_dim"] == 8 and not {"mask_ratio", "predict_variance", "drop_path_rate"} & set(whole)


SHIPPED = sorted((Path(__file__).resolve().parents[1] / "domains").glob("*/demo/*.json"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: f"{p.parent.parent.name}_{p.stem}")
def test_shipped_demo_models_load_and_survive_a_schema2_round_trip(tmp_path, path):
    """Whatever schema the shipped files have, they load strictly, and rewritten as schema 2 they compute the same."""
    model, meta = load_checkpoint(path)
    enc = model.encoder_config
    x = torch.rand(1, enc.in_chans if enc.channel_mode == "fixed" else len(enc.channels), *([32] * enc.spatial_dims),
                   generator=torch.Generator().manual_seed(0))  # fmt: skip
    save_checkpoint(tmp_path / "m", model, contract=meta.get("contract"))
    again, _ = load_checkpoint(tmp_path / "m")
    with torch.no_grad():
        if isinstance(model, MaskedAutoencoder):
            a, b = (m(x, generator=torch.Generator().manual_seed(1))["pred"] for m in (model, again))
        else:
            a, b = model(x), again(x)
    assert torch.equal(a, b)


# -- one config for three models ----------------------------------------------------------------------
def test_three_models_share_one_encoder_config():
    cfg = EncoderConfig(in_chans=1, stem="conv", stem_width=8, **SMALL)
    mae = MaskedAutoencoder(encoder=cfg, decoder_dim=16, decoder_depth=1, decoder_heads=2)
    clf = MAEClassifier(3, encoder=cfg)
    seg = MAESegmenter(2, feature_size=4, num_features=2, encoder=cfg)
    for model in (mae, clf, seg):
        assert model.encoder_config is cfg
    # keyword arguments build the same encoder (the old calling convention, still what configs use)
    assert MAEClassifier(3, in_chans=1, stem="conv", stem_width=8, drop_path_rate=0.0, **SMALL).encoder_config == cfg
    torch.manual_seed(0)
    a = ViTEncoder(cfg)
    torch.manual_seed(0)
    b = ViTEncoder(**cfg.to_dict())
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())


def test_defaults_are_stated_once():
    # pretraining: no stochastic depth; the fine-tuning models: FINETUNE_DEFAULTS (as before the refactor)
    assert MaskedAutoencoder(**SMALL).encoder_config == EncoderConfig(**SMALL)
    for model in (MAEClassifier(2, **SMALL), MAESegmenter(2, **SMALL)):
        assert model.encoder_config == EncoderConfig(**SMALL, **FINETUNE_DEFAULTS)
    # an explicit value wins over the fine-tuning default, and a full config is taken as it is
    assert MAEClassifier(2, drop_path_rate=0.0, **SMALL).encoder_config.drop_path_rate == 0.0
    assert MAEClassifier(2, encoder=EncoderConfig(**SMALL)).encoder_config.drop_path_rate == 0.0
    # the MAE honours class_token like the other two (it used to build a class token regardless)
    assert MaskedAutoencoder(class_token=False, **SMALL).encoder.cls_token is None


def test_presets_expand_in_one_place():
    for name, values in MODEL_PRESETS.items():
        cfg = EncoderConfig.from_preset(name, patch_size=8)
        assert (cfg.embed_dim, cfg.depth, cfg.num_heads) == (values["embed_dim"], values["depth"], values["num_heads"])
        assert cfg.patch_size == 8
    assert EncoderConfig.from_preset("micro", depth=2).depth == 2  # explicit keys win
    with pytest.raises(InputError, match="unknown model preset 'mciro'"):
        EncoderConfig.from_preset("mciro")


def test_config_normalises_and_round_trips():
    cfg = EncoderConfig(spatial_dims=3, in_chans=1, patch_size=[4, 8, 8], mlp_ratio=4, embed_dim=32.0,
                        channels=[{"name": "CT", "wavelength": None}])  # fmt: skip
    assert cfg.patch_size == (4, 8, 8) and cfg.embed_dim == 32 and isinstance(cfg.embed_dim, int)
    assert cfg.mlp_ratio == 4.0 and isinstance(cfg.mlp_ratio, float)
    d = cfg.to_dict()
    assert list(d) == list(ENCODER_KEYS) and d["patch_size"] == [4, 8, 8]
    assert json.loads(json.dumps(d)) == d and EncoderConfig.from_dict(d) == cfg
    assert cfg.replace(depth=2).depth == 2 and cfg.depth == 12


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"spatial_dims": 4}, ValueError, "spatial_dims must be 2 or 3"),
        ({"channel_mode": "spectrum"}, InputError, "unknown channel_mode 'spectrum'"),
        ({"stem": "convolution"}, InputError, "unknown stem 'convolution'"),
        ({"patch_size": [16, 16, 16]}, ValueError, "must have 2 entries"),
        ({"channel_mode": "spectral"}, ValueError, "needs the known `channels`"),
        ({"in_chans": 2, "channels": [{"name": "a"}]}, ValueError, "1 channel descriptions for in_chans=2"),
        ({"depth": 2.5}, ValueError, "depth must be an integer"),
        ({"embed_dim": True}, ValueError, "embed_dim must be an integer"),
        ({"drop_path_rate": "0.1"}, ValueError, "drop_path_rate must be a number"),
    ],
)
def test_bad_values_are_rejected(kwargs, error, message):
    with pytest.raises(error, match=message):
        EncoderConfig(**kwargs)


def test_unknown_argument_names_the_model():
    with pytest.raises(TypeError, match=r"MAEClassifier\(\) got an unexpected keyword argument 'embed_dims'"):
        MAEClassifier(2, embed_dims=64)
    with pytest.raises(TypeError, match="unexpected encoder field 'depht'"):
        EncoderConfig.from_dict({"depht": 2})


def test_model_keys_are_own_arguments_plus_encoder_fields():
    keys = model_keys(MAEClassifier)
    assert keys[0] == "preset" and {"num_classes", "multi_label", "pool", "head_dropout"} <= set(keys)
    assert set(ENCODER_KEYS) <= set(keys) and "encoder" not in keys
    assert {"decoder_dim", "mask_ratio", "class_token"} <= set(model_keys(MaskedAutoencoder))


def test_build_model_passes_the_encoder_section(tmp_path):
    model = MAESegmenter(3, feature_size=4, num_features=2, in_chans=1, **SMALL)
    save_checkpoint(tmp_path / "s", model)
    meta = read_checkpoint_meta(tmp_path / "s")
    meta["encoder"]["depth"] = 1  # the encoder section decides the encoder, not a stale flat copy
    assert build_model(meta).encoder.depth == 1


# -- the import graph ---------------------------------------------------------------------------------
def _imported_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_models_do_not_import_the_checkpoint_layer():
    """The old cycle (models -> checkpoint -> models, broken by a lazy import) is gone: the models never
    import the checkpoint modules, which import them."""
    mods = _imported_after("import unimae.core.models, unimae.core.mae")
    assert not {"unimae.core.checkpoint", "unimae.core.checkpoint_io"} & mods


def test_reading_checkpoint_metadata_stays_light():
    """Listing models (the app at start) reads JSON through checkpoint_io without importing timm or MONAI."""
    mods = _imported_after("import unimae.core.checkpoint_io, unimae.core.encoder_config, unimae.core.model_config")
    assert "unimae.core.checkpoint_io" in mods
    assert not {"timm", "monai", "unimae.core.models", "unimae.core.encoder"} & mods


def test_core_has_no_import_cycles():
    """Counting imports inside functions too: a cycle hidden behind a lazy import is still a cycle."""
    core = Path(__file__).resolve().parents[1] / "core"
    names = {p.stem for p in core.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in core.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("unimae.core"):
                parts = node.module.split(".")
                if len(parts) > 2:
                    deps.add(parts[2])
                else:  # from unimae.core import x
                    deps.update(a.name for a in node.names if a.name in names)
        graph[path.stem] = deps - {path.stem}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(d == goal or (d not in seen and not seen.add(d) and reaches(d, goal, seen)) for d in graph.get(start, ()))

    cycles = sorted(m for m in graph if reaches(m, m, set()))
    assert not cycles, f"modules on an import cycle: {cycles}"
