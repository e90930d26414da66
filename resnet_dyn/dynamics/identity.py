"""How far each residual block is from the identity (paper 3).

    m = identity_magnitudes(net.eval(), dm.test_dataloader())
    m["abs"][l], m["scaled"][l]          # block l, averaged over the data
    m["scaled_mean"]                     # averaged over the blocks too

    >>> stopping_depth([6, 12, 24, 48], [0.4, 0.2, 0.09, 0.05], epsilon=0.1)
    24

Normalisation (open in the paper): for block l with input x_l and residual branch F,
per sample ``abs = ||F(x_l)||`` and ``scaled = ||F(x_l)|| / ||x_l||``, both Euclidean norms
over the whole per-sample tensor (all channels and pixels). Each is averaged over the
samples (the mean of the per-sample ratios, not a ratio of means), then over the blocks.
The skip scale alpha does not enter: F is what a block adds to its (scaled) input.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

from resnet_dyn.dynamics.maps import check_eval
from resnet_dyn.models.base import ResidualNet


def _inputs(batches: torch.Tensor | Iterable) -> Iterable[torch.Tensor]:
    """Accept one tensor, or an iterable of tensors or of (inputs, labels, ...) tuples."""
    if isinstance(batches, torch.Tensor):
        yield batches
        return
    for b in batches:
        yield b[0] if isinstance(b, (tuple, list)) else b


def identity_magnitudes(net: ResidualNet, batches: torch.Tensor | Iterable) -> dict:
    """Per-block ``abs`` and ``scaled`` perturbation magnitudes averaged over the data, and
    their means over the blocks: ``{"abs": [...], "scaled": [...], "abs_mean", "scaled_mean"}``.

    ``batches``: a tensor of inputs or an iterable of batches (a DataLoader works), in the
    net's input space, moved to the model's device batch by batch. The model must be in
    eval mode and have skip connections (an MLP's units have no identity to be a
    perturbation of).
    """
    if any(u.shortcut is None for u in net.units):
        raise ValueError(f"net: expected a model with skip connections, got {type(net).__name__}")
    check_eval(net)
    n_blocks = len(net.units)
    # Sums stay on the model's device: one transfer at the end, not one per block and batch.
    dev = next(net.parameters()).device
    abs_sum = torch.zeros(n_blocks, dtype=torch.float64, device=dev)
    scaled_sum = torch.zeros(n_blocks, dtype=torch.float64, device=dev)
    count = 0
    with torch.no_grad():
        for x in _inputs(batches):
            x = x.to(dev)
            h = net.stem(x)
            for k, unit in enumerate(net.units):
                f = unit.branch(h).flatten(1).norm(dim=1).double()
                abs_sum[k] += f.sum()
                scaled_sum[k] += (f / h.flatten(1).norm(dim=1).double()).sum()
                h = unit(h)
            count += x.shape[0]
    if count == 0:
        raise ValueError("identity_magnitudes: no samples in batches")
    abs_mag, scaled = (abs_sum / count).tolist(), (scaled_sum / count).tolist()
    return {
        "abs": abs_mag,
        "scaled": scaled,
        "abs_mean": float(np.mean(abs_mag)),
        "scaled_mean": float(np.mean(scaled)),
    }


def _check_pairs(depths: Sequence[int], magnitudes: Sequence[float]) -> None:
    if len(depths) != len(magnitudes) or not depths:
        raise ValueError(
            f"expected as many depths as magnitudes (at least one), got {len(depths)} "
            f"and {len(magnitudes)}"
        )


def stopping_depth(
    depths: Sequence[int], magnitudes: Sequence[float], epsilon: float
) -> int | None:
    """The smallest depth whose average perturbation magnitude is below ``epsilon``, or None.

    ``magnitudes[i]`` belongs to ``depths[i]`` (e.g. ``scaled_mean`` of a model of that depth);
    the depths need not be sorted.
    """
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or epsilon <= 0:
        raise ValueError(f"epsilon: expected a positive number, got {epsilon!r}")
    _check_pairs(depths, magnitudes)
    below = [d for d, m in zip(depths, magnitudes, strict=True) if m < epsilon]
    return min(below) if below else None


def loglog_slope(depths: Sequence[int], magnitudes: Sequence[float]) -> float:
    """Least-squares slope of log(magnitude) against log(depth); about -1 in paper 3."""
    _check_pairs(depths, magnitudes)
    if len(set(depths)) < 2:
        raise ValueError("loglog_slope: needs at least two different depths")
    slope, _ = np.polyfit(np.log(depths), np.log(magnitudes), 1)
    return float(slope)
