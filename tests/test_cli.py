"""The ``unimae`` command line: pretrain per domain, resume, info, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from unimae.apps.cli import bundled_configs, main
from unimae.core.checkpoint import load_checkpoint
from unimae.core.config import STABLE_KEYS, load_config, parse_override
from unimae.core.engine import read_metrics
from unimae.core.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
DOMAINS = ("ct", "fundus", "multispectral", "xray")
SMALL = {"ct": ["data.input_size=32"], "fundus": ["data.input_size=64"], "xray": ["data.input_size=64"],
         "multispectral": ["data.input_size=32"]}  # fmt: skip
QUIET = ["train.progress=false", "train.tensorboard=false"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def config_path(domain: str) -> str:
    return str(ROOT / "configs" / domain / "pretrain.yaml")


def run_cli(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("unimae: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize("domain", DOMAINS)
def test_pretrain_each_domain_writes_a_loadable_model(domain: str, tmp_path: Path, capsys) -> None:
    out = tmp_path / domain
    code, stdout, err = run_cli(
        ["pretrain", "--config", config_path(domain), "model.preset=micro", "train.max_steps=2", "train.batch_size=2",
         "data.num_samples=8", *SMALL[domain], *QUIET, f"out_dir={out}"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    assert "pretrained 2 steps" in stdout
    model, meta = load_checkpoint(out / "model")
    yaml_cfg = yaml.safe_load(Path(config_path(domain)).read_text())
    assert meta["contract"]["domain"] == domain
    assert meta["model_config"]["mask_ratio"] == yaml_cfg["model"]["mask_ratio"]
    assert meta["encoder"]["embed_dim"] == 64  # the micro preset
    assert meta["config"]["train"]["max_steps"] == 2
    written = yaml.safe_load((out / "config.yaml").read_text())
    assert written["model"]["preset"] == "micro" and written["domain"] == domain
    assert [r["step"] for r in read_metrics(out / "metrics.csv")] == [2]
    assert (out / "previews" / "step_0000002.png").is_file()
    n_chans = 13 if domain == "multispectral" else (3 if domain == "fundus" else 1)
    size = int(SMALL[domain][0].split("=")[1])
    x = torch.zeros(1, n_chans, *([size] * (3 if domain == "ct" else 2)))
    with torch.no_grad():
        assert model(x)["pred"].shape[2] == n_chans


def test_pretrain_on_a_folder_of_user_images_with_validation(tmp_path: Path, capsys) -> None:
    from PIL import Image

    folder = tmp_path / "cxr"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):  # grey PNGs of another size than the model input
        Image.fromarray((rng.random((80, 72)) * 255).astype(np.uint8), mode="L").save(folder / f"img{i}.png")
    out = tmp_path / "run"
    code, _, err = run_cli(
        ["pretrain", "--config", config_path("xray"), "model.preset=micro", f"data.train={folder}",
         "data.val_fraction=0.25", "data.input_size=32", "train.batch_size=2", "train.max_steps=2",
         "train.val_every=1", "train.log_every=1", *QUIET, f"out_dir={out}"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    rows = read_metrics(out / "metrics.csv")
    assert [r["step"] for r in rows] == [1, 2] and all(r["val_loss"] is not None for r in rows)
    meta = json.loads((out / "model.json").read_text())
    assert meta["config"]["data"]["train"] == str(folder)
    assert meta["contract"]["normalization"]["kind"] and meta["contract"]["input_size"] == [32, 32]


def test_configs_follow_the_domain_recipes() -> None:
    from unimae.domains import get_domain

    assert set(bundled_configs()) >= set(DOMAINS)
    for domain in DOMAINS:
        cfg = load_config(config_path(domain))
        recipe = get_domain(domain).recipes["pretrain"]
        assert cfg["domain"] == domain and cfg["model"]["preset"] == "base"
        assert cfg["model"]["patch_size"] == recipe["patch_size"]
        assert cfg["data"]["input_size"] == recipe["input_size"]
        assert cfg["model"]["mask_ratio"] == recipe["mask_ratio"]
        if "crop_scale" in recipe:
            assert tuple(cfg["data"]["crop_scale"]) == tuple(recipe["crop_scale"])
        if "masking" in recipe:
            assert cfg["model"]["masking"] == recipe["masking"]
        assert cfg["train"]["blr"] == pytest.approx(1.5e-4)
    assert load_config(config_path("xray"))["model"]["mask_ratio"] == 0.9
    assert load_config(config_path("multispectral"))["model"]["channel_mode"] == "spectral"


def test_resume_true_continues_the_run(tmp_path: Path, capsys) -> None:
    base = ["pretrain", "--config", config_path("xray"), "model.preset=micro", "train.batch_size=2",
            "data.num_samples=8", "data.input_size=32", "train.log_every=1", *QUIET, f"out_dir={tmp_path}"]  # fmt: skip
    assert run_cli([*base, "train.max_steps=2"], capsys)[0] == 0
    code, _, err = run_cli([*base, "train.max_steps=2"], capsys)
    assert_one_line_error(code, err, "resume=true")
    code, stdout, err = run_cli([*base, "train.max_steps=3", "resume=true"], capsys)
    assert code == 0, err and "pretrained 3 steps" in stdout
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.csv")] == [1, 2, 3]
    assert load_checkpoint(tmp_path / "model")[1]["step"] == 3


def test_overrides_parse_as_yaml_scalars() -> None:
    assert parse_override("train.max_steps=20") == (("train", "max_steps"), 20)
    assert parse_override("train.lr=1e-4") == (("train", "lr"), 1e-4)
    assert parse_override("data.input_size=[96,96,96]") == (("data", "input_size"), [96, 96, 96])
    assert parse_override("train.clip_grad=null") == (("train", "clip_grad"), None)
    assert parse_override("resume=true") == (("resume",), True)
    assert parse_override("data.train=runs/a:b") == (("data", "train"), "runs/a:b")
    with pytest.raises(InputError, match="key=value"):
        parse_override("train.max_steps")
    with pytest.raises(InputError, match="Did you mean 'train'"):
        parse_override("trian.max_steps=3")
    with pytest.raises(InputError, match="out_dir"):
        parse_override("outdir=x")
    assert set(STABLE_KEYS) == {"out_dir", "model.preset", "train.max_steps", "train.batch_size", "train.lr",
                                "train.precision", "data.train", "data.val", "resume"}  # fmt: skip


def test_print_config_applies_overrides(capsys) -> None:
    args = ["pretrain", "--config", "ct", "--print-config", "model.preset=tiny", "train.lr=3e-4"]
    code, out, _ = run_cli(args, capsys)
    assert code == 0
    cfg = yaml.safe_load(out)
    assert cfg["model"]["preset"] == "tiny" and cfg["train"]["lr"] == pytest.approx(3e-4)
    assert cfg["data"]["window"] == "soft_tissue" and cfg["model"]["patch_size"] == 16


# ------------------------------------------------------------------------------------------------
# user errors: one line, exit 2
# ------------------------------------------------------------------------------------------------
def test_bad_override_key_lists_the_known_keys(tmp_path: Path, capsys) -> None:
    def pretrain(domain: str, override: str) -> tuple[int, str, str]:
        return run_cli(["pretrain", "--config", config_path(domain), override, f"out_dir={tmp_path}"], capsys)

    code, _, err = pretrain("fundus", "train.max_step=2")
    assert_one_line_error(code, err, "unknown train key 'max_step'", "Did you mean 'max_steps'", "batch_size")
    code, _, err = pretrain("fundus", "model.patch=8")
    assert_one_line_error(code, err, "unknown model key 'patch'", "patch_size")
    code, _, err = pretrain("ct", "data.windw=lung")
    assert_one_line_error(code, err, "unknown data key 'windw'", "'window'")
    code, _, err = pretrain("ct", "train.precision=fp16")
    assert_one_line_error(code, err, "fp16", "bf16")
    code, _, err = run_cli(["pretrain", "--config", config_path("ct"), "max_steps"], capsys)
    assert_one_line_error(code, err, "key=value")
    assert not tmp_path.joinpath("checkpoints").exists()


def test_missing_config_lists_the_available_ones(tmp_path: Path, capsys) -> None:
    code, _, err = run_cli(["pretrain", "--config", str(tmp_path / "nope.yaml")], capsys)
    assert_one_line_error(code, err, "nope.yaml not found", "configs/ct/pretrain.yaml")
    code, _, err = run_cli(["pretrain"], capsys)
    assert_one_line_error(code, err, "--config", "configs/fundus/pretrain.yaml", "configs/multispectral/pretrain.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [1, 2\n")
    code, _, err = run_cli(["pretrain", "--config", str(broken)], capsys)
    assert_one_line_error(code, err, "broken.yaml", "invalid YAML")


def test_bad_data_path_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    code, _, err = run_cli(
        ["pretrain", "--config", config_path("xray"), "model.preset=micro", f"data.train={tmp_path / 'missing'}",
         *QUIET, f"out_dir={tmp_path / 'run'}"],
        capsys,
    )  # fmt: skip
    assert_one_line_error(code, err, "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run_cli(
        ["pretrain", "--config", config_path("xray"), "model.preset=micro", f"data.train={empty}", *QUIET,
         f"out_dir={tmp_path / 'run'}"],
        capsys,
    )  # fmt: skip
    assert_one_line_error(code, err, "empty")


def test_wrong_channel_count_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    code, _, err = run_cli(
        ["pretrain", "--config", config_path("xray"), "model.preset=micro", "model.in_chans=3", *QUIET,
         f"out_dir={tmp_path}"],
        capsys,
    )  # fmt: skip
    assert_one_line_error(code, err, "in_chans is 3", "1 channel")


def test_info_describes_a_file(tmp_path: Path, capsys) -> None:
    from PIL import Image

    path = tmp_path / "chest.png"
    yy, xx = np.mgrid[0:64, 0:80]
    Image.fromarray(((yy + xx) % 256).astype(np.uint8), mode="L").save(path)
    code, out, err = run_cli(["info", str(path), "--json", "--domain", "xray"], capsys)
    assert code == 0, err
    d = json.loads(out)
    assert d["domain"] == "xray" and d["shape"] == [1, 64, 80]
    code, out, _ = run_cli(["info", str(path), "--domain", "xray"], capsys)
    assert code == 0 and "64 x 80" in out
    code, _, err = run_cli(["info", str(tmp_path / "absent.png")], capsys)
    assert_one_line_error(code, err, "absent.png")
    code, _, err = run_cli(["info", str(path), "--domain", "xrya"], capsys)
    assert_one_line_error(code, err, "unknown domain", "xray")


def test_unknown_command_and_module_entry_point(tmp_path: Path, capsys) -> None:
    code, _, err = run_cli(["frobnicate", "--config", "x"], capsys)
    assert_one_line_error(code, err, "invalid choice: 'frobnicate'", "pretrain")
    code, _, err = run_cli(["pretrain", "--confg", "x"], capsys)
    assert_one_line_error(code, err, "--confg")
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    helptext = capsys.readouterr().out
    assert "pretrain" in helptext and "info" in helptext
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "-m", "unimae.apps.cli", "pretrain", "--config", str(tmp_path / "none.yaml")],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert_one_line_error(proc.returncode, proc.stderr, "none.yaml not found")


def test_help_and_argument_errors_do_not_import_torch():
    """``unimae --help`` and argument errors answer at once: no torch / MONAI import until a command runs."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from unimae.apps.cli import main\n"
        "for argv in (['--help'], ['predict', '--help'], ['evaluate'], ['app', '--help']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = [m for m in ('torch', 'monai', 'gradio') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "HEAVY []" in out.stdout, (out.stdout[-500:], out.stderr[-500:])
