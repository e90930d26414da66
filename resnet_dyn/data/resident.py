"""Device-resident splits: one uint8 tensor per split, augmented and normalised in batches.

    loader = ResidentLoader(images, labels, batch_size=128, mean=mean, std=std, shuffle=True,
                            padding=4, flip=True, seed=0, device="cuda")
    loader.set_epoch(3)       # Lightning does this before every training epoch
    for x, y in loader:       # x: (B, C, H, W) float32 normalised, y: int64, both on the device
        ...

``images`` is a ``(N, C, H, W)`` uint8 tensor (pixel levels ``0..max_value``), moved to the
device once. Each batch is gathered there: no per-sample PIL work, no worker processes. The
augmentation has the distribution of torchvision's ``RandomCrop(size, padding=p)`` (fill 0)
then ``RandomHorizontalFlip()``: per image, independent crop offsets uniform over ``0..2p`` in
each axis and a flip with probability 1/2; padded pixels are a zero level, normalised like any
other. Normalisation is torchvision's ``ToDtype(float32, scale=True)`` then ``Normalize``, op for
op, so the values are bit-identical to its per-sample path.

The order and the augmentation of an epoch are a pure function of ``(seed, epoch)``: they are
drawn on the CPU from a generator seeded by both, so a resumed run, a run on another device
and an uninterrupted run see the same batches. The epoch is the one given to ``set_epoch``
(Lightning calls ``loader.sampler.set_epoch`` before each training epoch, as for a
``DistributedSampler``), else one more than the previous pass. The loader is stateful
(``state_dict``: the epoch and the batches served so far), so Lightning stores its position
in checkpoints and a run resumed mid-epoch goes on with the next batch of that epoch.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

# The splits go on a device only if they take at most this share of its free memory.
MEMORY_FRACTION = 0.5


def free_memory(device: torch.device | str) -> int | None:
    """Bytes free on ``device`` (CUDA: ``mem_get_info``; CPU: MemAvailable), None if unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def fits(nbytes: int, device: torch.device | str) -> bool:
    """Whether ``nbytes`` is at most :data:`MEMORY_FRACTION` of the free memory of ``device``."""
    free = free_memory(device)
    return free is None or nbytes <= MEMORY_FRACTION * free


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator that depends on ``(seed, epoch)`` only (and differs for each pair)."""
    state = np.random.SeedSequence([seed % 2**63, epoch]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state) % 2**63)


def normalise(images: Tensor, mean: Tensor, std: Tensor, max_value: int = 255) -> Tensor:
    """uint8 levels to float32 ``(x / max_value - mean) / std``, torchvision's order of ops.

    ``mean`` and ``std`` are float32 of shape ``(C, 1, 1)`` on the images' device.
    """
    return images.to(torch.float32).mul_(1.0 / max_value).sub_(mean).div_(std)


class CropFlip:
    """Random crop of zero-padded images and random horizontal flip, batched on one device.

    An outcome is a code ``(top * K + left) * F + flipped`` with ``K = 2 * padding + 1`` and
    ``F = 2`` if ``flip`` else 1: the crop of the padded image starting at row ``top`` and
    column ``left``, mirrored if ``flipped``. A table maps each code to the flat index of
    every output pixel in the padded image, so a batch is one pad and one gather.
    """

    def __init__(
        self,
        height: int,
        width: int,
        padding: int,
        flip: bool,
        device: torch.device | str = "cpu",
    ) -> None:
        if padding < 0:
            raise ValueError(f"padding must be >= 0, got {padding}")
        self.height, self.width, self.padding, self.flip = height, width, padding, flip
        self.k, self.f = 2 * padding + 1, 2 if flip else 1
        top, left, flipped = self.decode(torch.arange(self.k * self.k * self.f))
        rows = top[:, None] + torch.arange(height)  # (codes, H) rows of the padded image
        cols = torch.arange(width).expand(len(top), width)
        cols = torch.where(flipped[:, None], width - 1 - cols, cols) + left[:, None]
        padded_width = width + 2 * padding
        table = rows[:, :, None] * padded_width + cols[:, None, :]
        self.table = table.reshape(len(top), height * width).to(device)

    @property
    def outcomes(self) -> int:
        return self.k * self.k * self.f

    def draw(self, n: int, generator: torch.Generator) -> Tensor:
        """``n`` independent codes (CPU, int64): offsets uniform in ``0..2p``, flips with p=1/2."""
        top = torch.randint(0, self.k, (n,), generator=generator)
        left = torch.randint(0, self.k, (n,), generator=generator)
        flipped = torch.randint(0, self.f, (n,), generator=generator)
        return (top * self.k + left) * self.f + flipped

    def decode(self, codes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(top, left, flipped)`` of each code."""
        return codes // self.f // self.k, codes // self.f % self.k, codes % self.f == 1

    def __call__(self, images: Tensor, codes: Tensor) -> Tensor:
        """``images`` (B, C, H, W) cropped and flipped as ``codes`` (B,) say; same dtype."""
        b, c, h, w = images.shape
        p = self.padding
        padded = F.pad(images, (p, p, p, p)) if p else images
        index = self.table.index_select(0, codes).view(b, 1, h * w).expand(b, c, h * w)
        return padded.reshape(b, c, -1).gather(2, index).view(b, c, h, w)


@contextlib.contextmanager
def intra_op_threads(threads: int | None) -> Iterator[None]:
    """Run the block with at most ``threads`` torch intra-op threads (None: as set)."""
    before = torch.get_num_threads()
    if threads is None or threads >= before:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _EpochSetter:
    """What Lightning looks for on a loader: ``loader.sampler.set_epoch(epoch)``."""

    def __init__(self, loader: ResidentLoader) -> None:
        self.loader = loader

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)


class ResidentLoader:
    """Batches ``(x float32 normalised, y int64)`` of a split held on ``device`` as uint8.

    ``shuffle`` draws a new order every epoch; ``padding`` > 0 or ``flip`` augment (use them
    for training only). The last batch is dropped only when shuffling and it would hold a
    single example (BatchNorm cannot train on one), as :class:`BaseDataModule` does. With
    ``world_size`` > 1 every rank takes every ``world_size``-th example of the epoch's order,
    wrapped around to equal shares, like ``DistributedSampler``.

    ``threads``: torch intra-op threads while a batch is built on the CPU (None: torch's
    setting). A batch is a few small ops; one thread is ~2x slower than two on an idle
    2-core machine, but two stall badly (10x and more) as soon as another process takes a
    core, since every op waits for both threads.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        *,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        max_value: int = 255,
        shuffle: bool = False,
        padding: int = 0,
        flip: bool = False,
        seed: int = 0,
        device: torch.device | str | None = None,
        rank: int = 0,
        world_size: int = 1,
        threads: int | None = 1,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(
                f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}"
            )
        if labels.shape != images.shape[:1]:
            raise ValueError(f"labels must have shape ({len(images)},), got {tuple(labels.shape)}")
        if batch_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad batch_size {batch_size} or rank {rank} of {world_size}")
        self.device = torch.device(device) if device is not None else images.device
        self.images = images.to(self.device).contiguous()
        self.labels = labels.to(self.device, torch.int64)
        channels = images.shape[1]
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(-1, 1, 1)
        if len(self.mean) != channels or len(self.std) != channels:
            raise ValueError(f"mean and std need {channels} values each")
        self.max_value = max_value
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.threads = threads if self.device.type == "cpu" else None
        h, w = images.shape[2:]
        self.crop_flip = CropFlip(h, w, padding, flip, self.device) if padding or flip else None
        n = len(self.labels)
        self.per_rank = n if world_size == 1 else math.ceil(n / world_size)
        self.drop_last = shuffle and self.per_rank % batch_size == 1
        self.epoch = 0
        self._served = (0, 0)  # (epoch, batches) of the pass in progress
        self._resume_at: tuple[int, int] | None = None
        self.sampler = _EpochSetter(self)
        self.batch_sampler = None  # Lightning reads it next to ``sampler``

    def set_epoch(self, epoch: int) -> None:
        """The epoch of the next pass (its order and augmentation)."""
        self.epoch = epoch

    def state_dict(self) -> dict[str, int]:
        """Where the pass in progress is: its epoch and how many batches it has served."""
        epoch, served = self._served
        return {"epoch": epoch, "batches": served}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue at ``state``: the next pass of epoch ``state["epoch"]`` skips the batches
        already served (a pass of any other epoch starts from its first batch)."""
        self.epoch = int(state["epoch"])
        self._resume_at = (self.epoch, int(state["batches"]))

    def __len__(self) -> int:
        if self.drop_last:
            return self.per_rank // self.batch_size
        return math.ceil(self.per_rank / self.batch_size)

    def plan(self, epoch: int) -> tuple[Tensor | None, Tensor | None]:
        """This rank's ``(order, codes)`` of ``epoch`` on the device (None: in order, as is)."""
        n = len(self.labels)
        generator = epoch_generator(self.seed, epoch)
        order = torch.randperm(n, generator=generator) if self.shuffle else None
        codes = self.crop_flip.draw(n, generator) if self.crop_flip is not None else None
        if self.world_size > 1:
            order = torch.arange(n) if order is None else order
            extra = self.per_rank * self.world_size - n
            order = torch.cat([order, order[:extra]])[self.rank :: self.world_size]
            if codes is not None:
                codes = torch.cat([codes, codes[:extra]])[self.rank :: self.world_size]
        move = {"device": self.device, "non_blocking": True}
        return (
            None if order is None else order.to(**move),
            None if codes is None else codes.to(**move),
        )

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        # A generator: nothing is drawn until the first batch is asked for, so that a
        # ``set_epoch`` between ``iter()`` and the first batch (as Lightning does) counts.
        epoch = self.epoch
        self.epoch += 1
        skip = self._resume_at[1] if self._resume_at and self._resume_at[0] == epoch else 0
        self._resume_at = None
        self._served = (epoch, skip)
        order, codes = self.plan(epoch)
        stop = len(self) * self.batch_size if self.drop_last else self.per_rank
        for number, start in enumerate(range(0, stop, self.batch_size)):
            if number < skip:
                continue
            with intra_op_threads(self.threads):
                batch = self._batch(start, min(start + self.batch_size, stop), order, codes)
            self._served = (epoch, number + 1)
            yield batch

    def _batch(
        self, start: int, end: int, order: Tensor | None, codes: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        if order is None:
            x, y = self.images[start:end], self.labels[start:end]
        else:
            index = order[start:end]
            x, y = self.images.index_select(0, index), self.labels.index_select(0, index)
        if codes is not None:
            x = self.crop_flip(x, codes[start:end])  # type: ignore[misc]
        return normalise(x, self.mean, self.std, self.max_value), y
