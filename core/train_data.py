"""How the engine reads a dataset: by ``(epoch, index)``, so that a run resumes in the middle of an epoch.

:class:`EpochSampler` walks this rank's shard of one epoch (a seeded
:class:`~torch.utils.data.DistributedSampler`), skipping what a resumed run already consumed;
:class:`EpochView` applies the epoch to the dataset (its augmentation) before reading an item.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from itertools import islice

import torch
from torch.utils.data import Dataset, DistributedSampler, Sampler

__all__ = ["EpochSampler", "EpochView"]


class EpochSampler(Sampler):
    """Yields ``(epoch, index)`` over this rank's shard of one epoch, after skipping ``skip`` indices.

    Carrying the epoch in each index lets persistent DataLoader workers apply ``set_epoch`` themselves.
    """

    def __init__(self, base: DistributedSampler) -> None:
        self.base = base
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.base.set_epoch(epoch)
        self.epoch, self.skip = int(epoch), int(skip)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for index in islice(iter(self.base), self.skip, None):
            yield self.epoch, int(index)

    def __len__(self) -> int:
        return max(0, len(self.base) - self.skip)


class EpochView(Dataset):
    """Index with ``(epoch, index)``: sets the dataset's epoch, returns ``image``, ``valid``, ``index`` and ``keys``.

    ``keys`` are further item keys to pass through when present (e.g. ``label``, ``mask`` for fine-tuning).
    """

    def __init__(self, dataset: Dataset, keys: Sequence[str] = ()) -> None:
        self.dataset = dataset
        self.keys = tuple(keys)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        epoch, index = key
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        item = self.dataset[index]
        if not isinstance(item, Mapping) or "image" not in item:
            raise TypeError(f"training datasets must return dicts with an 'image' tensor, got {type(item).__name__}")
        out = {"image": item["image"], "index": torch.tensor(index)}
        for key in ("valid", *self.keys):
            if item.get(key) is not None:
                out[key] = item[key]
        return out
