"""Inference speed and memory: sliding windows, anomaly maps and streamed GeoTIFF scenes (issue 4, item 7).

Every figure is measured in its own subprocess, so each peak RSS (``ru_maxrss`` of that process) belongs
to that figure alone:

* ``ct3d``: sliding-window 3D segmentation (MONAI ``sliding_window_inference``, Gaussian blending,
  ROI 96³, overlap 0.25) of a synthetic model-space volume, 512 x 512 x 160 by default: seconds and peak
  RSS for UniMAE's ``MAESegmenter`` with a ViT-B encoder (768 wide, 12 blocks, 12 heads, 16³ patches,
  decoder stem width 16; 91 M parameters) **and** MONAI's ``UNETR`` at the same ROI and size (hidden 768,
  12 layers, 12 heads, 16³ patches, feature size 16; 93 M parameters), side by side, same windows.
* ``fundus``: 2D fundus vessel segmentation of a 565 x 584 photograph (a synthetic fundus written as PNG),
  end to end through ``Predictor.predict`` (read, FOV, preprocess, full-resolution sliding window with
  ROI 224, back to the source grid), ViT-B/16 ``MAESegmenter``: ms per image (median).
* ``tta``: the cost of test-time augmentation with the **shipped** DRIVE vessel model
  (``domains/fundus/demo/segment``): the same 565 x 584 photograph through ``Predictor.predict`` in one pass
  (``tta="none"``) and with the checkpoint's own TTA (4 mirrored copies), the two alternating run by run;
  reported as the ratio TTA / one pass per pair of runs (median, min, max).
* ``anomaly``: anomaly map with K = 4 complementary masks at 224² (``core.anomaly.anomaly_map``) with a
  ViT-B/16 MAE (decoder 512 x 8): ms per image (median); plus the end-to-end ``Predictor.predict``.
* ``geotiff``: streamed GeoTIFF segmentation of synthetic 13-band Sentinel-2 scenes (uint16, tiled,
  deflate) of 2048² and 8192² with ``Predictor.predict_geotiff`` (tiles of 512 with 64 px overlap,
  sliding windows inside, writing finished blocks as it goes): megapixels/s and peak RSS per scene, for
  each of ``--geotiff-models``: ``demo`` is the shipped multispectral segmentation demo model (its
  architecture and input size from ``apps/demo_models.py``; the trained weights from the demo cache when
  it is built, else a 1-step fine-tune of the same recipe, since speed and memory do not depend on the
  weights), ``micro`` (or any preset) a ``MAESegmenter`` of that encoder at patch 16, ROI 96. Memory is
  reported as the peak RSS and as the *growth above the import baseline* (``rss_imports_mb``: the RSS after
  torch, MONAI and UniMAE are imported, before the model is loaded), which is what streaming controls.
  The scenes themselves are written window by window (never whole in memory), also in subprocesses.
  Target: growth at 8192² <= 1.5 x growth at 2048² (and the same for the totals).

Each figure also carries the CPU time of its process (``cpu_s``, ``cpu_ms_per_image``, ``mpix_per_cpu_s``):
on a shared machine wall-clock figures move with the load, CPU time much less.

Every figure names the model it measured (preset, encoder depth x width, parameters).

``--json`` prints one JSON object (progress on stderr), including, per GeoTIFF model,
``{"geotiff": {"models": {"demo": {"rss_mb_2048", "rss_growth_mb_2048", ..., "rss_ratio", "growth_ratio"}}}}``.
``--quick`` shrinks everything for a smoke run (a 192 x 192 x 96 volume, a ViT-S model, 512² and 1024²
scenes, fewer repeats). Weights are random (speed and memory do not depend on them).

Examples::

    python benchmarks/inference.py --json > inference.json
    python benchmarks/inference.py --quick
    python benchmarks/inference.py --sections geotiff --geotiff-sizes 2048 8192 --json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SECTIONS = ("ct3d", "fundus", "tta", "anomaly", "geotiff")
_MARK = "@@BENCH@@"


def _rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (``ru_maxrss`` is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _cpu_s() -> float:
    """User + system CPU seconds of this process so far (all threads): the work, whatever the machine's load."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _encoder(preset: str) -> dict[str, Any]:
    from unimae.core.presets import model_preset

    return {k: v for k, v in model_preset(preset).items() if not k.startswith("decoder")}


def _describe(model: Any, preset: str) -> dict[str, Any]:
    """What was measured: the preset and the model's encoder depth, width, heads, patch and parameter count."""
    cfg = dict(getattr(model, "config", None) or {})
    enc = getattr(model, "encoder", None)
    depth = cfg.get("depth", len(getattr(enc, "blocks", []) or []) or None)
    return {"preset": preset, "model_class": type(model).__name__, "depth": depth,
            "width": cfg.get("embed_dim"), "heads": cfg.get("num_heads"), "patch_size": cfg.get("patch_size"),
            "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 3)}  # fmt: skip


def _caption(d: dict[str, Any]) -> str:
    if d.get("depth") is None:  # a foreign model (MONAI UNETR)
        return f"{d['model_class']}, {d['params_m']:.1f} M params"
    return (f"{d['model_class']} {d['preset']} ({d['depth']} x {d['width']}, {d['heads']} heads, "
            f"patch {d['patch_size']}), {d['params_m']:.2f} M params")  # fmt: skip


# ------------------------------------------------------------------------------------------------
# children: one measurement each
# ------------------------------------------------------------------------------------------------
def child_ct3d(a: dict[str, Any]) -> dict[str, Any]:
    import torch

    from unimae.core.inference import sliding_window
    from unimae.core.models import MAESegmenter

    torch.manual_seed(0)
    size = tuple(a["size"])
    if a["model"] == "unetr":
        from monai.networks.nets import UNETR

        enc = _encoder(a["preset"])
        model = UNETR(1, 7, (96, 96, 96), feature_size=16, hidden_size=enc["embed_dim"], mlp_dim=4 * enc["embed_dim"],
                      num_heads=enc["num_heads"], proj_type="conv", norm_name="instance")  # fmt: skip
    else:
        model = MAESegmenter(7, spatial_dims=3, in_chans=1, patch_size=16, feature_size=16, **_encoder(a["preset"]))
    model.eval()
    params = sum(p.numel() for p in model.parameters()) / 1e6
    desc = _describe(model, a["preset"])
    if a["model"] == "unetr":
        desc.update(depth=12, width=enc["embed_dim"], heads=enc["num_heads"], patch_size=16)
    # a smooth random "volume" in model space ([-1, 1]), made at low resolution and upsampled
    g = torch.Generator().manual_seed(1)
    coarse = torch.rand((1, 1, *(max(2, s // 16) for s in size)), generator=g) * 2 - 1
    vol = torch.nn.functional.interpolate(coarse, size=size, mode="trilinear", align_corners=False)
    base = _rss_mb()

    def fn(x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(model(x).float(), dim=1)

    with torch.inference_mode():
        fn(torch.zeros(1, 1, 96, 96, 96))  # warm-up
        t0, c0 = time.perf_counter(), _cpu_s()
        out = sliding_window(fn, vol, 96, overlap=0.25, mode="gaussian", sw_batch_size=int(a["batch"]))
        seconds, cpu = time.perf_counter() - t0, _cpu_s() - c0
    return {"seconds": seconds, "cpu_s": cpu, "peak_rss_mb": _rss_mb(), "rss_before_mb": base, "params_m": params,
            "output_shape": list(out.shape), "model": desc}  # fmt: skip


def _save_task(path: Path, model: Any, *, domain: str, task: str, classes: list[str], input_size: int,
               channels: list[dict], anomaly: dict | None = None) -> Path:  # fmt: skip
    from unimae.core.checkpoint import save_checkpoint
    from unimae.core.inference import make_contract, task_metadata

    contract = make_contract(domain=domain, spatial_dims=2, channels=channels, patch_size=model.config["patch_size"],
                             input_size=input_size, normalization=None, preprocess={})  # fmt: skip
    return save_checkpoint(path, model, **task_metadata(task=task, domain=domain, class_names=classes,
                                                       contract=contract, anomaly=anomaly))  # fmt: skip


def _fundus_png(path: Path, size: tuple[int, int]) -> Path:
    import numpy as np
    from PIL import Image

    from unimae.domains.fundus import SyntheticFundus

    rgb = SyntheticFundus(1, seed=0, size=size).scene(0).rgb
    Image.fromarray((np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)).save(path)
    return path


def child_fundus(a: dict[str, Any]) -> dict[str, Any]:
    import torch

    from unimae.apps.predict import load_predictor
    from unimae.core.models import MAESegmenter

    torch.manual_seed(0)
    tmp = Path(a["tmp"])
    rgb = [{"name": n, "wavelength": w} for n, w in (("R", 0.61), ("G", 0.55), ("B", 0.465))]
    model = MAESegmenter(2, in_chans=3, patch_size=16, feature_size=16, **_encoder(a["preset"]))
    ckpt = _save_task(tmp / "fundus_seg", model, domain="fundus", task="segment", classes=["background", "vessel"],
                      input_size=224, channels=rgb)  # fmt: skip
    png = _fundus_png(tmp / "fundus_584x565.png", (584, 565))
    pred = load_predictor(ckpt, device=a["device"])
    out = pred.predict(png)  # warm-up
    times, c0 = [], _cpu_s()
    for _ in range(int(a["repeats"])):
        t0 = time.perf_counter()
        out = pred.predict(png)
        times.append(time.perf_counter() - t0)
    return {"ms_per_image": 1000 * statistics.median(times), "cpu_ms_per_image": 1000 * (_cpu_s() - c0) / len(times),
            "runs": len(times), "shape": list(out.label_map.shape), "precision": pred.precision,
            "peak_rss_mb": _rss_mb(), "model": _describe(pred.model, a["preset"])}  # fmt: skip


def child_tta(a: dict[str, Any]) -> dict[str, Any]:
    from unimae.apps.demo_models import shipped_models
    from unimae.apps.predict import load_predictor

    found, _ = shipped_models()
    ckpt = found.get("fundus_segment")
    if ckpt is None:
        return {"error": "no shipped fundus/segment demo model"}
    png = _fundus_png(Path(a["tmp"]) / "fundus_584x565_tta.png", (584, 565))
    preds = {"none": load_predictor(ckpt, device=a["device"], tta="none"),
             "checkpoint": load_predictor(ckpt, device=a["device"])}  # the checkpoint's own mode
    mode = preds["checkpoint"].tta
    times: dict[str, list[float]] = {"none": [], "checkpoint": []}
    for p in preds.values():
        p.predict(png)  # warm-up
    for _ in range(int(a["repeats"])):
        for key, p in preds.items():
            t0 = time.perf_counter()
            p.predict(png)
            times[key].append(time.perf_counter() - t0)
    ratios = [t / n for t, n in zip(times["checkpoint"], times["none"])]
    return {"tta": mode, "ms_one_pass": 1000 * statistics.median(times["none"]),
            "ms_tta": 1000 * statistics.median(times["checkpoint"]), "ratio_median": statistics.median(ratios),
            "ratio_min": min(ratios), "ratio_max": max(ratios), "runs": len(ratios), "precision": preds["none"].precision,
            "model": _describe(preds["none"].model, "demo")}  # fmt: skip


def child_anomaly(a: dict[str, Any]) -> dict[str, Any]:
    import torch

    from unimae.apps.predict import load_predictor
    from unimae.core.anomaly import anomaly_map
    from unimae.core.mae import build_mae
    from unimae.core.precision import autocast

    torch.manual_seed(0)
    tmp = Path(a["tmp"])
    model = build_mae(a["preset"], in_chans=3, patch_size=16)
    rgb = [{"name": n, "wavelength": w} for n, w in (("R", 0.61), ("G", 0.55), ("B", 0.465))]
    ckpt = _save_task(tmp / "fundus_anomaly", model, domain="fundus", task="anomaly", classes=["normal", "anomaly"],
                      input_size=224, channels=rgb, anomaly={"image_threshold": 1.0, "pixel_threshold": 1.0})  # fmt: skip
    pred = load_predictor(ckpt, device=a["device"])
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(2)).to(pred.device)
    times = []
    with torch.inference_mode(), autocast(pred.precision, pred.device):
        anomaly_map(pred.model, x, k=4)
        c0 = _cpu_s()
        for _ in range(int(a["repeats"])):
            t0 = time.perf_counter()
            anomaly_map(pred.model, x, k=4, generator=torch.Generator(device=x.device).manual_seed(0))
            times.append(time.perf_counter() - t0)
    cpu_ms = 1000 * (_cpu_s() - c0) / len(times)
    png = _fundus_png(tmp / "fundus_224.png", (224, 224))
    pred.predict(png)
    e2e = []
    for _ in range(int(a["repeats"])):
        t0 = time.perf_counter()
        pred.predict(png)
        e2e.append(time.perf_counter() - t0)
    return {"ms_per_image": 1000 * statistics.median(times), "cpu_ms_per_image": cpu_ms,
            "predict_ms_per_image": 1000 * statistics.median(e2e), "k": 4, "runs": len(times), "precision": pred.precision,
            "peak_rss_mb": _rss_mb(), "model": _describe(pred.model, a["preset"])}  # fmt: skip


def child_geotiff_make(a: dict[str, Any]) -> dict[str, Any]:
    """Write a synthetic 13-band uint16 scene window by window (512² windows of independent scenes)."""
    import numpy as np
    from rasterio.transform import from_origin

    from unimae.domains.multispectral import GeoTiffWriter, SyntheticScenes, iter_windows, preset_channels

    size, path = int(a["size"]), Path(a["path"])
    tile = 512
    names = [c["name"] for c in preset_channels("sentinel2_l1c")]
    t0 = time.perf_counter()
    windows = list(iter_windows(size, size, tile=tile, edge="clip"))
    gen = SyntheticScenes(len(windows), seed=7, size=tile)
    mean = np.asarray(gen.normalization["mean"], np.float32)[:, None, None]
    std = np.asarray(gen.normalization["std"], np.float32)[:, None, None]
    with GeoTiffWriter(path, height=size, width=size, count=13, dtype="uint16", crs="EPSG:32633",
                       transform=from_origin(500_000.0, 4_200_000.0, 10.0, 10.0), nodata=0, descriptions=names,
                       tile=512, compress="deflate") as wr:  # fmt: skip
        for i, w in enumerate(windows):
            h, wd = int(w.height), int(w.width)
            refl = gen[i].image.numpy()[:, :h, :wd] * std + mean
            dn = np.clip(refl * 10000.0, 1, 65535).astype(np.uint16)
            if i == 0:
                dn[:, :64, :64] = 0  # a nodata corner
            wr.write(dn, w)
    return {"seconds": time.perf_counter() - t0, "peak_rss_mb": _rss_mb(), "bytes": path.stat().st_size}


def _demo_ms_segment(tmp: Path) -> tuple[Path, str]:
    """The shipped multispectral segmentation demo model: the demo cache's checkpoint when it is built, else the
    same recipe (``apps/demo_models.py``) fine-tuned for 1 step into ``tmp`` (same architecture and contract)."""
    import contextlib
    import io

    from unimae.apps.demo_models import PROFILES, demo_cache_dir, load_demo

    bundle = load_demo(demo_cache_dir("default"))
    if bundle is not None and "multispectral_segment" in bundle.models:
        return bundle.models["multispectral_segment"], "demo cache (trained weights)"
    out = tmp / "demo_ms_segment"
    if not (out / "model.json").is_file():
        from unimae.apps.finetune import finetune

        spec = next(sp for sp in PROFILES["default"].specs if (sp.domain, sp.task) == ("multispectral", "segment"))
        cfg = spec.config(out, seed=0)
        cfg["train"] = {**cfg["train"], "max_steps": 1, "val_every": 1, "save_every": 1, "log_every": 1,
                        "warmup_steps": 1}  # fmt: skip
        with contextlib.redirect_stdout(io.StringIO()):
            finetune(cfg)
    return out / "model.json", "demo recipe, 1-step fine-tune (weights do not change speed or memory)"


def child_geotiff_run(a: dict[str, Any]) -> dict[str, Any]:
    import torch

    from unimae.apps.predict import load_predictor
    from unimae.core.models import MAESegmenter
    from unimae.domains.multispectral import preset_channels

    rss_imports = _rss_mb()  # torch, MONAI, rasterio and UniMAE imported; no model yet
    torch.manual_seed(0)
    tmp = Path(a["tmp"])
    source = "random weights"
    if a["model"] == "demo":
        ckpt, source = _demo_ms_segment(tmp)
    else:
        ckpt = tmp / f"ms_seg_{a['model']}_fs{a['feature_size']}.json"
        if not ckpt.is_file():
            model = MAESegmenter(5, in_chans=13, patch_size=16, feature_size=a["feature_size"], **_encoder(a["model"]))
            _save_task(ckpt.with_suffix(""), model, domain="multispectral", task="segment",
                       classes=["water", "forest", "crop", "bare_soil", "urban"], input_size=96,
                       channels=preset_channels("sentinel2_l1c"))  # fmt: skip
    pred = load_predictor(ckpt, device=a["device"])
    pred.tile, pred.tile_overlap, pred.sw_batch_size = int(a["tile"]), int(a["tile_overlap"]), int(a["batch"])
    pred.overlap = float(a["sw_overlap"])
    base = _rss_mb()
    t0, c0 = time.perf_counter(), _cpu_s()
    files = pred.predict_geotiff(a["path"], tmp / f"out_{a['model']}_{a['size']}", progress=False)
    seconds, cpu = time.perf_counter() - t0, _cpu_s() - c0
    size = int(a["size"])
    peak = _rss_mb()
    desc = _describe(pred.model, "demo (micro)" if a["model"] == "demo" else a["model"])
    desc["weights"] = source
    return {"seconds": seconds, "cpu_s": cpu, "mpix_s": size * size / 1e6 / seconds, "mpix_per_cpu_s": size * size / 1e6 / cpu,
            "peak_rss_mb": peak, "rss_imports_mb": rss_imports, "rss_before_mb": base, "rss_growth_mb": peak - rss_imports,
            "precision": pred.precision, "outputs": sorted(p.name for p in files.values()), "model": desc}  # fmt: skip


def child_demo_make(a: dict[str, Any]) -> dict[str, Any]:
    """Resolve (and, without a demo cache, fine-tune) the demo segmenter once, in its own process, so that no
    GeoTIFF measurement carries the fine-tune's memory."""
    ckpt, source = _demo_ms_segment(Path(a["tmp"]))
    return {"checkpoint": str(ckpt), "weights": source}


CHILDREN = {
    "demo_make": child_demo_make,
    "ct3d": child_ct3d,
    "fundus": child_fundus,
    "tta": child_tta,
    "anomaly": child_anomaly,
    "geotiff_make": child_geotiff_make,
    "geotiff_run": child_geotiff_run,
}


def _run_child(name: str, args: dict[str, Any], threads: int | None) -> dict[str, Any]:
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--child-args", json.dumps(args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith(_MARK):
            return json.loads(line[len(_MARK) :])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"error": f"{name} failed (exit {proc.returncode}): {' | '.join(tail)}"}


# ------------------------------------------------------------------------------------------------
# the parent
# ------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {', '.join(SECTIONS)}")
    p.add_argument("--ct-size", type=int, nargs=3, default=None, metavar=("X", "Y", "Z"), help="volume size (512 512 160)")
    p.add_argument("--ct-preset", default=None, help="encoder size of the 3D models (base; quick: small)")
    p.add_argument("--no-unetr", action="store_true", help="skip MONAI's UNETR reference")
    p.add_argument("--preset-2d", default=None, help="encoder size for fundus/anomaly (base; quick: small)")
    p.add_argument("--geotiff-sizes", type=int, nargs="+", default=None, help="scene sizes (2048 8192; quick: 512 1024)")
    p.add_argument("--geotiff-models", default="demo,micro",
                   help="GeoTIFF segmenters: demo (the shipped demo model) and/or presets (default demo,micro)")
    p.add_argument("--tile", type=int, default=512, help="streamed tile size (512)")
    p.add_argument("--tile-overlap", type=int, default=64, help="streamed tile overlap (64)")
    p.add_argument("--sw-overlap", type=float, default=0.25, help="sliding-window overlap inside GeoTIFF tiles (0.25)")
    p.add_argument("--geotiff-feature-size", type=int, default=8, help="decoder stem width of the GeoTIFF segmenter (8)")
    p.add_argument("--batch", type=int, default=4, help="sliding windows per forward pass (4)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs for ms/image (5; quick: 2)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the measurements")
    p.add_argument("--keep", default=None, help="keep the generated scenes and outputs in this folder")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-args", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.child:
        result = CHILDREN[args.child](json.loads(args.child_args))
        print(_MARK + json.dumps(result), flush=True)
        return 0

    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        p.error(f"unknown sections {unknown}; known: {', '.join(SECTIONS)}")
    q = args.quick
    ct_size = args.ct_size or ([192, 192, 96] if q else [512, 512, 160])
    ct_preset = args.ct_preset or ("small" if q else "base")
    preset_2d = args.preset_2d or ("small" if q else "base")
    sizes = args.geotiff_sizes or ([512, 1024] if q else [2048, 8192])
    repeats = args.repeats or (2 if q else 5)
    import torch

    device = "cuda" if (args.device == "auto" and torch.cuda.is_available()) else ("cpu" if args.device == "auto" else args.device)
    results: dict[str, Any] = {
        "device": device,
        "torch_threads": args.threads or torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "quick": q,
    }
    tmp_ctx = tempfile.TemporaryDirectory(prefix="unimae_bench_") if args.keep is None else None
    tmp = Path(args.keep) if args.keep else Path(tmp_ctx.name)
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        if "ct3d" in sections:
            ct: dict[str, Any] = {"volume": ct_size, "roi": [96, 96, 96], "overlap": 0.25, "encoder": ct_preset,
                                  "sw_batch_size": args.batch}  # fmt: skip
            models = ["unimae"] + ([] if args.no_unetr else ["unetr"])
            for m in models:
                _log(f"ct3d: {m} ({ct_preset}) on {'x'.join(map(str, ct_size))} ...")
                r = _run_child("ct3d", {"model": m, "preset": ct_preset, "size": ct_size, "batch": args.batch}, args.threads)
                ct[m] = r
                _log(f"  {r}")
            if "unetr" in ct and "seconds" in ct.get("unetr", {}) and "seconds" in ct["unimae"]:
                ct["speed_ratio_unimae_vs_unetr"] = ct["unetr"]["seconds"] / ct["unimae"]["seconds"]
            results["ct3d"] = ct
        common = {"tmp": str(tmp), "device": device, "repeats": repeats, "preset": preset_2d}
        if "fundus" in sections:
            _log(f"fundus: 565x584 segmentation ({preset_2d}) ...")
            results["fundus"] = {"encoder": preset_2d, "roi": 224, **_run_child("fundus", common, args.threads)}
            _log(f"  {results['fundus']}")
        if "tta" in sections:
            _log("tta: the shipped DRIVE vessel model, one pass against its test-time augmentation ...")
            results["tta"] = _run_child("tta", common, args.threads)
            _log(f"  {results['tta']}")
        if "anomaly" in sections:
            _log(f"anomaly: K=4 at 224^2 ({preset_2d}) ...")
            results["anomaly"] = {"encoder": preset_2d, **_run_child("anomaly", common, args.threads)}
            _log(f"  {results['anomaly']}")
        if "geotiff" in sections:
            models = [m.strip() for m in args.geotiff_models.split(",") if m.strip()]
            geo: dict[str, Any] = {"bands": 13, "tile": args.tile, "tile_overlap": args.tile_overlap,
                                   "sw_overlap": args.sw_overlap, "decoder_feature_size": args.geotiff_feature_size,
                                   "sizes": sizes, "models": {m: {"scenes": {}} for m in models}}  # fmt: skip
            if "demo" in models:
                _log("geotiff: the demo segmenter ...")
                geo["demo_model"] = _run_child("demo_make", {"tmp": str(tmp)}, args.threads)
                _log(f"  {geo['demo_model']}")
            for s in sizes:
                path = tmp / f"scene_{s}.tif"
                _log(f"geotiff: writing a {s}x{s}x13 scene (streamed) ...")
                made = _run_child("geotiff_make", {"size": s, "path": str(path)}, args.threads)
                _log(f"  {made}")
                for m in models:
                    _log(f"geotiff: streamed segmentation of {s}x{s} with {m} ...")
                    run = _run_child("geotiff_run", {"size": s, "path": str(path), "tmp": str(tmp), "device": device,
                                                     "model": m, "feature_size": args.geotiff_feature_size,
                                                     "sw_overlap": args.sw_overlap, "tile": args.tile,
                                                     "tile_overlap": args.tile_overlap, "batch": max(args.batch, 8)},
                                     args.threads)  # fmt: skip
                    _log(f"  {run}")
                    g = geo["models"][m]
                    g["scenes"][str(s)] = {"make": made, "predict": run}
                    if "peak_rss_mb" in run:
                        g["model"] = run["model"]
                        g[f"rss_mb_{s}"] = round(run["peak_rss_mb"], 1)
                        g[f"rss_imports_mb_{s}"] = round(run["rss_imports_mb"], 1)
                        g[f"rss_growth_mb_{s}"] = round(run["rss_growth_mb"], 1)  # above the import baseline
                        g[f"mpix_s_{s}"] = round(run["mpix_s"], 4)
                if args.keep is None:
                    path.unlink(missing_ok=True)
            lo, hi = min(sizes), max(sizes)
            for g in geo["models"].values():
                if f"rss_mb_{lo}" in g and f"rss_mb_{hi}" in g:
                    g["rss_ratio"] = round(g[f"rss_mb_{hi}"] / g[f"rss_mb_{lo}"], 4)
                    g["growth_ratio"] = round(g[f"rss_growth_mb_{hi}"] / g[f"rss_growth_mb_{lo}"], 4)
                    g["target"] = f"rss_growth_mb_{hi} <= 1.5 x rss_growth_mb_{lo}"
                    g["target_met"] = g["growth_ratio"] <= 1.5
            results["geotiff"] = geo
    finally:
        if tmp_ctx is not None:
            tmp_ctx.cleanup()
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        _print_table(results)
    return 0


def _print_table(r: dict[str, Any]) -> None:
    print(f"device: {r['device']}  threads: {r['torch_threads']}  quick: {r['quick']}")
    ct = r.get("ct3d")
    if ct:
        vol = "x".join(map(str, ct["volume"]))
        for m in ("unimae", "unetr"):
            if m in ct:
                x = ct[m]
                if "error" in x:
                    print(f"3D {m:7s} {vol}: {x['error']}")
                else:
                    print(f"3D {m:7s} {vol} ROI 96^3, {_caption(x['model'])}: {x['seconds']:.1f} s wall, "
                          f"{x['cpu_s']:.1f} s CPU, peak RSS {x['peak_rss_mb']:.0f} MB")  # fmt: skip
    for key, label in (("fundus", "fundus 565x584 segmentation"), ("anomaly", "anomaly map K=4 at 224^2")):
        x = r.get(key)
        if x:
            print(f"{label}: " + (x["error"] if "error" in x else
                  f"{_caption(x['model'])}: {x['ms_per_image']:.0f} ms/image ({x['precision']})"))  # fmt: skip
    t = r.get("tta")
    if t:
        print("shipped DRIVE vessel model, 565x584: " + (t["error"] if "error" in t else
              f"one pass {t['ms_one_pass']:.0f} ms, TTA ({t['tta']}) {t['ms_tta']:.0f} ms: x{t['ratio_median']:.2f} "
              f"(min {t['ratio_min']:.2f}, max {t['ratio_max']:.2f}, {t['runs']} pairs)"))  # fmt: skip
    g = r.get("geotiff")
    if g:
        for m, gm in g["models"].items():
            for s, v in gm["scenes"].items():
                pr = v["predict"]
                print(f"GeoTIFF {s}^2 x 13, {m}: " + (pr["error"] if "error" in pr else
                      f"{_caption(pr['model'])}: {pr['mpix_s']:.3f} Mpix/s, peak RSS {pr['peak_rss_mb']:.0f} MB = "
                      f"{pr['rss_imports_mb']:.0f} MB imports + {pr['rss_growth_mb']:.0f} MB growth"))  # fmt: skip
            if "growth_ratio" in gm:
                print(f"GeoTIFF {m}: growth ratio {gm['growth_ratio']:.3f} (target <= 1.5: "
                      f"{'met' if gm['target_met'] else 'NOT met'}), total ratio {gm['rss_ratio']:.3f}")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
