"""Mixup for classification fine-tuning (``train.mixup``): drawn from the step's generator, blended targets,
and the loss it gives equals the mixture of the two cross-entropies it stands for."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from unimae.apps.finetune import FinetuneConfig, _mixup_draw
from unimae.core.errors import InputError


def test_draw_is_reproducible_from_the_step_generator_and_mixes_half_the_batches() -> None:
    draws = [_mixup_draw(8, 0.2, torch.Generator().manual_seed(s)) for s in range(200)]
    again = [_mixup_draw(8, 0.2, torch.Generator().manual_seed(s)) for s in range(200)]
    for a, b in zip(draws, again):
        assert (a is None) == (b is None)
        if a is not None:
            assert a[0] == b[0] and torch.equal(a[1], b[1])
    mixed = [d for d in draws if d is not None]
    assert 70 < len(mixed) < 130  # one batch in two, binomial(200, 0.5): 100 +- 7
    for lam, perm in mixed:
        assert 0.0 <= lam <= 1.0 and sorted(perm.tolist()) == list(range(8))
    # Beta(0.2, 0.2) puts most of its mass near 0 and 1
    lams = torch.tensor([lam for lam, _ in mixed])
    assert float(((lams < 0.1) | (lams > 0.9)).float().mean()) > 0.5
    assert _mixup_draw(1, 0.2, torch.Generator().manual_seed(0)) is None  # nothing to mix a single image with


def test_mixed_loss_is_the_lam_weighted_sum_of_the_two_cross_entropies() -> None:
    from unimae.apps.finetune import FinetuneTrainer

    trainer = FinetuneTrainer.__new__(FinetuneTrainer)  # only the loss is exercised
    trainer.weight, trainer.multi_label = None, False
    trainer.config = FinetuneConfig(label_smoothing=0.1, mixup=0.2)
    logits = torch.randn(6, 4)
    label = torch.tensor([0, 1, 2, 3, 1, 0])
    perm = torch.tensor([5, 4, 3, 2, 1, 0])
    lam = 0.3
    got = trainer._classify_loss(logits, label, (lam, perm))
    want = lam * F.cross_entropy(logits, label, label_smoothing=0.1) + (1 - lam) * F.cross_entropy(
        logits, label[perm], label_smoothing=0.1
    )
    torch.testing.assert_close(got, want)
    # without a draw: the plain smoothed cross-entropy
    torch.testing.assert_close(trainer._classify_loss(logits, label), F.cross_entropy(logits, label, label_smoothing=0.1))


def test_mixup_must_be_a_non_negative_number() -> None:
    assert FinetuneConfig(mixup=0.4).mixup == 0.4
    for bad in (-0.1, "a", float("nan")):
        try:
            FinetuneConfig(mixup=bad)
        except InputError as err:
            assert "mixup" in str(err)
        else:
            raise AssertionError(f"mixup={bad!r} was accepted")
