"""Model cards for the demo models ``benchmarks/real_data.py --save-demo`` ships: what the model was trained on, under
which licence, how well it did in the same run against the reference, and what it is not for.

``--save-demo`` ships the first fold's model with a held-out card (the fold's figures and files); ``--save-demo all``
a model of every image, its card giving the same run's cross-validation.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from real_shifts import UNSHIFTED

if TYPE_CHECKING:
    from real_data import RealSet


def folds_used(spec: RealSet, k: int, fold: int, n_test: int) -> str:
    """The model card's account of the data a demo model was trained on."""
    grouped = "; split by patient" if spec.grouped else ""
    return f"{k - 1} of {k} cross-validation folds (fold {fold} held out, {n_test} images{grouped})"


def card_summary(spec: RealSet, ours: float, ref: float, n_test: int, tta: dict[str, Any] | None = None) -> str:
    """The model card's one-paragraph verdict: both scores on the held-out fold, the margin and its size; with
    ``tta`` (``{"mode", "unimae_without", "baseline_with"}``) also both models the other way round."""
    verdict = (f"it beats the baseline there, by {ours - ref:.3f}" if ours > ref
               else "it does NOT beat the baseline there")  # fmt: skip
    how = f" with test-time augmentation ({tta['mode']})" if tta else ""
    other = (f" Without the test-time augmentation this model scores {tta['unimae_without']:.3f}; the baseline with "
             f"the same averaging scores {tta['baseline_with']:.3f}.") if tta else ""  # fmt: skip
    return (f"On the held-out fold ({n_test} images) this model scores {spec.metric} {ours:.3f}{how}; the baseline "
            f"({spec.reference}) scores {ref:.3f} on the same images: {verdict}.{other} One fold of {n_test} images: "
            "a margin of a few hundredths may not hold on other images (other folds: the README's results on real data).")


def cv_scope(cv: dict[str, Any]) -> list[int] | None:
    """The folds a cross-validation summary ran, or None when it ran every fold."""
    run = list(cv.get("folds_run", range(cv["folds"])))
    return None if len(run) == cv["folds"] else run


def card_summary_all(spec: RealSet, cv: dict[str, Any], n_images: int) -> str:
    """The model card's verdict for a model trained on every image: its expected performance is the same recipe's
    cross-validation (``cv``: :func:`run_set`'s summary of the same run), beside the baseline's on the same folds."""
    u, r = cv["unimae"]["metric"], cv["reference"]["metric"]
    runs = len(u["folds"])
    wins = sum(a > b for a, b in zip(u["folds"], r["folds"]))
    verdict = (f"ahead on average by {u['mean'] - r['mean']:.3f}" if u["mean"] > r["mean"]
               else f"it does NOT beat the baseline on average ({u['mean'] - r['mean']:+.3f})")  # fmt: skip
    some = cv_scope(cv)
    which = (f"{runs} runs" if some is None
             else f"folds {', '.join(map(str, some))} only, {runs} run{'s' if runs > 1 else ''}")  # fmt: skip
    return (f"Trained on all {n_images} images. Its expected performance is the same recipe's {cv['folds']}-fold "
            f"cross-validation in the same run ({which}; seeds {', '.join(map(str, cv['seeds']))}): {spec.metric} "
            f"{u['mean']:.3f} +- {u['std']:.3f}; the baseline ({spec.reference}) scores {r['mean']:.3f} +- "
            f"{r['std']:.3f} on the same folds: {verdict}, better in {wins} of {runs} runs. No image of this set is "
            "held out from this model: judge it by those figures, or on images of your own.")


def acquisition_shifts(conditions: dict[str, float]) -> dict[str, float]:
    """A card's figures under the acquisition shifts (the unshifted one is the card's headline figure)."""
    return {c: round(float(v), 4) for c, v in conditions.items() if c != UNSHIFTED}


def write_demo(spec: RealSet, name: str, checkpoint: Path, result: dict[str, Any], k: int, dest_root: Path,
               cv: dict[str, Any] | None = None, n_images: int = 0) -> Path:
    """Ship a UniMAE model as the domain's demo model: fp16 safetensors + JSON with a model card. ``result`` is
    the fold's (the model trained on the other folds); with ``cv`` (:func:`run_set`'s summary) the model was
    trained on all ``n_images`` images and the card gives the cross-validation instead."""
    import torch
    from safetensors.torch import load_file, save_file

    domain, task, data_card = spec.domain, spec.task, spec.card
    dest = dest_root / domain / "demo"
    dest.mkdir(parents=True, exist_ok=True)
    tensors = {key: (v.half() if v.is_floating_point() else v).contiguous() for key, v in load_file(str(checkpoint) + ".safetensors").items()}
    meta = json.loads(Path(str(checkpoint) + ".json").read_text())
    meta.pop("run_config", None)
    if isinstance(meta.get("config"), dict):  # no paths of this machine in a shipped file
        meta["config"].setdefault("data", {})["train"] = (f"../shared/real/{spec.folder}/manifest.csv "
                                                          + ("(all of it)" if cv is not None else
                                                             "(the training folds of benchmarks/real_data.py)"))
        meta["config"]["out_dir"] = f"domains/{domain}/demo"
    for key in ("data_source", "val_source", "out_dir"):
        meta.pop(key, None)
    # one figure per arm: the fold's, or the cross-validation's mean (a model trained on every image)
    arms = cv if cv is not None else result
    figure = (lambda arm: float(cv[arm]["metric"]["mean"])) if cv is not None else (lambda arm: float(result[arm]["metric"]))
    tta = ({"mode": meta.get("contract", {}).get("tta", "none"), "unimae_without": round(figure("unimae_plain"), 4),
            "baseline_with": round(figure("reference_tta"), 4)}
           if "unimae_plain" in arms and "reference_tta" in arms else None)  # fmt: skip

    def conditions(arm: str) -> dict[str, float]:  # the arm's figures under the shifts: the fold's, or the CV means
        found = (arms.get(arm) or {}).get("conditions") or {}
        return acquisition_shifts({c: v["mean"] if cv is not None else v for c, v in found.items()})

    found = {key: conditions(arm) for key, arm in (("acquisition_shifts", "unimae"), ("baseline_acquisition_shifts", "reference"))}
    shifts = {key: figures for key, figures in found.items() if figures}
    if cv is not None:  # trained on every image: the card gives the same run's cross-validation
        uc, rc = cv["unimae"]["metric"], cv["reference"]["metric"]
        used = (f"all {n_images} images; the figures are the same recipe's {k}-fold cross-validation in the same "
                "run (each fold's model trained on the other folds)")  # fmt: skip
        some = cv_scope(cv)
        runs = "every fold" if some is None else f"folds {some}"
        metrics = {"metric": spec.metric, "estimate": f"{k}-fold cross-validation ({runs}), seeds {cv['seeds']}",
                   "unimae": round(uc["mean"], 4), "unimae_std": round(uc["std"], 4), "unimae_folds": uc["folds"],
                   "baseline": spec.reference + spec.baseline_note, "baseline_value": round(rc["mean"], 4),
                   "baseline_std": round(rc["std"], 4), "baseline_folds": rc["folds"],
                   "beats_baseline": bool(uc["mean"] > rc["mean"]),
                   **({"channel_statistics": round(cv["channel_stats"]["metric"]["mean"], 4)}
                      if "channel_stats" in cv else {}),
                   **shifts,
                   **({"test_time_augmentation": tta} if tta else {})}  # fmt: skip
        verdict = card_summary_all(spec, cv, n_images)
    else:
        u, ref = figure("unimae"), figure("reference")
        used = folds_used(spec, k, int(result["fold"]), int(result["n_test"]))
        metrics = {"metric": spec.metric, "held_out_fold": result["fold"], "unimae": round(float(u), 4),
                   "baseline": spec.reference + spec.baseline_note,
                   "baseline_value": round(float(ref), 4),
                   "beats_baseline": bool(u > ref),
                   **shifts,
                   **({"test_time_augmentation": tta} if tta else {})}  # fmt: skip
        verdict = card_summary(spec, float(u), float(ref), int(result["n_test"]), tta)
    meta["model_card"] = {
        "trained_on": "real",
        "data": {**data_card, "used": used},
        "metrics": metrics,
        "summary": verdict,
        "intended_use": "demonstration of UniMAE on real images, not for diagnosis or any operational decision",
        "not_for": "clinical use, images unlike the training data (other modalities, views, sensors, processing "
                   "levels), or any decision about a patient or a place",
        **({"caveats": spec.caveat} if spec.caveat else {}),
        **({} if spec.reliable else {"reliable": False}),
        "retrain": (f"python benchmarks/real_data.py --real PATH/TO/real --sets {name} --save-demo all"
                    if cv is not None else
                    f"python benchmarks/real_data.py --real PATH/TO/real --sets {name} --run-folds {result['fold']} "
                    "--save-demo") + "   # PATH/TO/real laid out like ../shared/real",
        "held_out": [] if cv is not None else list(result.get("held_out", [])),  # files it never saw (the app's real-file tests use them)
    }
    tmp_t, tmp_j = dest / f".{task}.safetensors.tmp", dest / f".{task}.json.tmp"
    save_file(tensors, str(tmp_t), metadata={"format": "pt"})
    tmp_j.write_text(json.dumps(meta, indent=1))
    os.replace(tmp_t, dest / f"{task}.safetensors")
    os.replace(tmp_j, dest / f"{task}.json")
    return dest / f"{task}.json"
