"""Adversarial and random input perturbations and how they grow through the units (paper 1).

    images, labels = dm.probe_batch(64)                     # normalised, as the net sees them
    pixels = to_pixels(images, dm.mean, dm.std)             # back to [0, 1]
    out = perturbation_analysis(net.eval(), pixels, labels, dm.mean, dm.std, attack="pgd_linf")
    out["adversarial_rel"][-1], out["random_rel"][-1]      # at the output of the last unit

Attacks work in pixel space [0, 1]: :class:`Normalized` puts the datamodule's
normalisation inside the model, and every adversarial image is clamped to [0, 1].
A random perturbation is compared with an adversarial one of the same per-image
L2 norm, measured on the actual (clamped) differences.

Propagation: for states x_0 .. x_K (the input of every unit and the output of the
last, :meth:`ResidualNet.unit_inputs`), ``abs[k] = ||x_k(x + d) - x_k(x)||`` and
``rel[k] = abs[k] / ||x_k(x)||``, norms over the whole per-image tensor.
:func:`propagate_jvp` is the infinitesimal version, ``||J_k d||`` with J_k the
Jacobian of the stem and the first k units, from one forward-mode pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import jvp

from resnet_dyn.dynamics.maps import check_eval
from resnet_dyn.models.base import ResidualNet

ATTACKS = ("fgsm", "pgd_linf", "pgd_l2")
RANDOM_KINDS = ("gaussian", "sign")
# Default radii in pixel units: the customary CIFAR budgets for each norm.
DEFAULT_EPS = {"linf": 8 / 255, "l2": 0.5}
PIXEL_RANGE = (0.0, 1.0)


def _channel_view(values: Sequence[float] | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-channel constants shaped (1, C, 1, ..., 1) to broadcast against a batch ``like``."""
    t = torch.as_tensor(values, dtype=like.dtype, device=like.device)
    return t.view(1, -1, *([1] * (like.ndim - 2)))


def to_pixels(
    x: torch.Tensor, mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor
) -> torch.Tensor:
    """Undo a datamodule's normalisation: ``x * std + mean`` per channel (dim 1)."""
    return x * _channel_view(std, x) + _channel_view(mean, x)


def to_normalized(
    x: torch.Tensor, mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor
) -> torch.Tensor:
    """A datamodule's normalisation: ``(x - mean) / std`` per channel (dim 1)."""
    return (x - _channel_view(mean, x)) / _channel_view(std, x)


class Normalized(nn.Module):
    """``x_pixel -> net((x_pixel - mean) / std)``: a classifier of pixel-space images.

    ``mean`` and ``std`` are buffers, so ``.to(dtype)`` and ``.to(device)`` carry them along.
    """

    def __init__(
        self,
        net: nn.Module,
        mean: Sequence[float] | torch.Tensor,
        std: Sequence[float] | torch.Tensor,
    ) -> None:
        super().__init__()
        self.net = net
        dev = next(net.parameters()).device  # the buffers start where the classifier is
        self.register_buffer(
            "mean", torch.as_tensor(mean, dtype=torch.float32, device=dev).flatten()
        )
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32, device=dev).flatten())

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return to_normalized(x, self.mean, self.std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))


def _norms(t: torch.Tensor) -> torch.Tensor:
    """Per-sample L2 norms over everything but the batch dimension."""
    return t.flatten(1).norm(dim=1)


def _per_sample(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.ndim - 1)))


def _clip(x: torch.Tensor, clip: tuple[float, float] | None) -> torch.Tensor:
    return x if clip is None else x.clamp(*clip)


def _check_attack(eps: float, steps: int, step_size: float | None) -> None:
    # Library errors: the config layer (config.checks.check_perturbation) names the keys.
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or eps < 0:
        raise ValueError(f"eps: expected a non-negative number (pixel units), got {eps!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps: expected a positive integer, got {steps!r}")
    if step_size is not None and (
        isinstance(step_size, bool) or not isinstance(step_size, (int, float)) or step_size <= 0
    ):
        raise ValueError(
            f"step_size: expected a positive number or None (2.5 eps / steps), got {step_size!r}"
        )


def _input_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Gradient of the summed cross-entropy w.r.t. the images (the sum keeps each image's own
    gradient whatever the batch size)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        loss = F.cross_entropy(model(x), y, reduction="sum")
        (g,) = torch.autograd.grad(loss, x)
    return g


def fgsm(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    *,
    clip: tuple[float, float] | None = PIXEL_RANGE,
) -> torch.Tensor:
    """``clip(x + eps * sign(grad_x loss))``: one L-inf step of the untargeted attack.

    ``model`` maps pixel images to logits (e.g. :class:`Normalized`) and must be in eval mode.
    """
    _check_attack(eps, 1, None)
    check_eval(model)
    return _clip(x + eps * _input_grad(model, x, y).sign(), clip).detach()


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    *,
    norm: str = "linf",
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = True,
    seed: int = 0,
    clip: tuple[float, float] | None = PIXEL_RANGE,
) -> torch.Tensor:
    """Projected gradient ascent of the loss in the ``norm`` ball ("linf" or "l2") of radius eps.

    Each step moves by ``step_size`` along sign(grad) (linf) or grad / ||grad|| (l2), projects
    back onto the ball, then clamps to ``clip``. Clamping a point of the ball into the box
    [0, 1] around an x inside it only shrinks every coordinate of the difference, so the result
    stays in both. ``step_size`` defaults to 2.5 eps / steps (enough to cross the ball from
    any random start); ``random_start`` draws uniformly from the ball with ``seed``.
    """
    _check_attack(eps, steps, step_size)
    if norm not in DEFAULT_EPS:
        raise ValueError(f"norm: expected linf or l2, got {norm!r}")
    check_eval(model)
    step = 2.5 * eps / steps if step_size is None else step_size
    gen = torch.Generator(device=x.device).manual_seed(seed)

    def project(delta: torch.Tensor) -> torch.Tensor:
        if norm == "linf":
            return delta.clamp(-eps, eps)
        scale = (eps / _norms(delta).clamp_min(1e-12)).clamp(max=1.0)
        return delta * _per_sample(scale, delta)

    delta = torch.zeros_like(x)
    if random_start and eps > 0:
        if norm == "linf":
            delta = (
                2 * torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype) - 1
            ) * eps
        else:
            # Uniform in the L2 ball: Gaussian direction, radius eps * U^(1/dim).
            u = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
            r = torch.rand(x.shape[0], generator=gen, device=x.device, dtype=x.dtype)
            radius = eps * r ** (1 / x[0].numel()) / _norms(u).clamp_min(1e-12)
            delta = u * _per_sample(radius, u)
    x_adv = _clip(x + delta, clip)
    for _ in range(steps):
        g = _input_grad(model, x_adv, y)
        move = g.sign() if norm == "linf" else g / _per_sample(_norms(g).clamp_min(1e-12), g)
        x_adv = _clip(x + project(x_adv + step * move - x), clip)
    return x_adv.detach()


def matched_random(
    x: torch.Tensor,
    delta: torch.Tensor,
    kind: str = "gaussian",
    *,
    seed: int = 0,
    clip: tuple[float, float] | None = PIXEL_RANGE,
) -> torch.Tensor:
    """A random perturbation ``r`` with ``||r|| = ||delta||`` per image and ``x + r`` in ``clip``.

    ``kind``: "gaussian" (i.i.d. normal direction) or "sign" (i.i.d. +-1 direction). Without
    ``clip`` the direction is scaled to the norm of ``delta``. With it, clamping shortens the
    perturbation, so the scale c of the direction u is found per image by bisection on the
    non-decreasing ``c -> ||clip(x + c u) - x||``; the norms then agree to float precision.
    """
    if kind not in RANDOM_KINDS:
        raise ValueError(f"kind: expected one of {list(RANDOM_KINDS)}, got {kind!r}")
    gen = torch.Generator(device=x.device).manual_seed(seed)
    u = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
    if kind == "sign":
        u = u.sign()
    u = u / _per_sample(_norms(u), u)
    target = _norms(delta)
    if clip is None:
        return u * _per_sample(target, u)

    def length(c: torch.Tensor) -> torch.Tensor:
        return _norms(_clip(x + u * _per_sample(c, u), clip) - x)

    lo, hi = torch.zeros_like(target), target.clone()
    for _ in range(60):
        short = length(hi) < target
        if not short.any():
            break
        hi = torch.where(short, 2 * hi, hi)
    if (length(hi) < target).any():
        raise ValueError("matched_random: the perturbation norm cannot be reached inside clip")
    for _ in range(60):
        mid = (lo + hi) / 2
        short = length(mid) < target
        lo, hi = torch.where(short, mid, lo), torch.where(short, hi, mid)
    return _clip(x + u * _per_sample(hi, u), clip) - x


def _state_pair(
    net: ResidualNet, x: torch.Tensor, d: torch.Tensor
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    check_eval(net)
    with torch.no_grad():
        clean = net.unit_inputs(x)
        perturbed = net.unit_inputs(x + d)
    return clean, [p - c for p, c in zip(perturbed, clean, strict=True)]


def _norm_table(
    states: Sequence[torch.Tensor], diffs: Sequence[torch.Tensor]
) -> dict[str, torch.Tensor]:
    absolute = torch.stack([_norms(t) for t in diffs], dim=1)
    base = torch.stack([_norms(t) for t in states], dim=1)
    return {"abs": absolute, "rel": absolute / base}


def propagate(net: ResidualNet, x: torch.Tensor, d: torch.Tensor) -> dict[str, torch.Tensor]:
    """Finite propagation of ``d`` from the input: ``{"abs", "rel"}``, each (B, K+1) per image.

    ``abs[:, k] = ||x_k(x + d) - x_k(x)||`` and ``rel[:, k] = abs[:, k] / ||x_k(x)||``;
    average over dim 0 for the mean over images.
    """
    return _norm_table(*_state_pair(net, x, d))


def propagate_jvp(net: ResidualNet, x: torch.Tensor, d: torch.Tensor) -> dict[str, torch.Tensor]:
    """Infinitesimal propagation: as :func:`propagate` with ``J_k d`` in place of the difference,
    J_k the Jacobian of x -> x_k, all k from one ``torch.func.jvp`` of the stem+units map."""
    check_eval(net)
    states, tangents = jvp(lambda z: tuple(net.unit_inputs(z)), (x,), (d,))
    return {k: v.detach() for k, v in _norm_table(states, tangents).items()}


def project_perturbation(
    diff: torch.Tensor, V: torch.Tensor, s: torch.Tensor, tol: float = 1e-3
) -> dict[str, torch.Tensor | float]:
    """Split a perturbation difference at a unit's input over that unit's right singular vectors.

    ``diff``: one sample's difference (any shape, flattened to n). ``V``: (n, r) orthonormal
    columns with singular values ``s`` (r,) of the unit's linearization, e.g.
    ``s, vh = dense_singular_values(J, vectors=True)``, ``V = vh.T``. Returns
    ``{"coefficients": V^T diff, "expanding", "neutral", "contracting", "outside"}``: the shares
    of ``||diff||^2`` on directions with sigma > 1 + tol, |sigma - 1| <= tol, sigma < 1 - tol,
    and outside span(V) (0 up to rounding when V is complete). The shares sum to 1; they are
    NaN for a zero difference, which has no energy to share.
    """
    d = diff.reshape(-1)
    if V.ndim != 2 or V.shape[0] != d.numel() or s.shape != (V.shape[1],):
        raise ValueError(
            f"project_perturbation: expected V (n={d.numel()}, r) and s (r,), "
            f"got V {tuple(V.shape)} and s {tuple(s.shape)}"
        )
    c = V.to(d.dtype).T @ d
    energy = d.square().sum()
    e = c.square()
    s = s.to(d.device)
    shares = {
        "expanding": e[s > 1 + tol].sum(),
        "neutral": e[(s - 1).abs() <= tol].sum(),
        "contracting": e[s < 1 - tol].sum(),
    }
    shares["outside"] = (energy - e.sum()).clamp_min(0)
    out: dict[str, torch.Tensor | float] = {k: float(v / energy) for k, v in shares.items()}
    out["coefficients"] = c
    return out


SHARES = ("expanding", "neutral", "contracting", "outside")


def projection_shares(
    net: ResidualNet,
    x: torch.Tensor,
    d: torch.Tensor,
    units: Sequence[int],
    tol: float = 1e-3,
    kind: str = "unit",
) -> dict[str, list[float]]:
    """Where a perturbation sits at each unit's input, in that unit's own terms: per unit of
    ``units``, the mean over images of :func:`project_perturbation` of ``x_k(x + d) - x_k(x)``
    on the singular vectors of the linearization of its ``kind`` map at the clean state x_k.

    ``x``, ``d``: (B, ...) inputs and perturbations in the net's input space. Returns the
    shares ``{"expanding": [...], "neutral": [...], "contracting": [...], "outside": [...]}``,
    one number per unit (``outside``: the null space of a unit that maps to fewer dimensions,
    i.e. sigma = 0). Each image costs one dense Jacobian and SVD per unit (float64).
    """
    from resnet_dyn.dynamics.jacobian import jacobian
    from resnet_dyn.dynamics.maps import unit_map

    clean, diffs = _state_pair(net, x, d)
    out: dict[str, list[float]] = {key: [] for key in SHARES}
    for k in units:
        per_image = []
        for i in range(x.shape[0]):
            J = jacobian(unit_map(net, k, clean[k][i], kind)).matrix.double()
            # LAPACK's SVD, not the Gram route: directions with sigma ~ 0 must stay exact.
            _, s, vh = torch.linalg.svd(J, full_matrices=False)
            per_image.append(project_perturbation(diffs[k][i].double(), vh.T, s, tol))
        for key in SHARES:
            values = torch.tensor([p[key] for p in per_image], dtype=torch.float64, device=x.device)
            out[key].append(float(values.nanmean()))
    return out


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return int((logits.argmax(dim=1) == labels).sum()) / len(labels)


def perturbation_analysis(
    net: ResidualNet,
    images_pixel: torch.Tensor,
    labels: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    attack: str = "fgsm",
    eps: float | None = None,
    steps: int = 10,
    step_size: float | None = None,
    random_kind: str = "gaussian",
    seed: int = 0,
    project_units: Sequence[int] = (),
    tol: float = 1e-3,
) -> dict:
    """Adversarial vs random perturbations of the same per-image L2 norm, propagated unit by unit.

    ``attack``: "fgsm" (L-inf, one step), "pgd_linf" or "pgd_l2" (``steps`` steps of
    ``step_size``, default 2.5 eps / steps, random start). ``eps`` in pixel units, default
    8/255 (L-inf) or 0.5 (L2). Returns a JSON-serialisable dict: the settings, ``clean_accuracy``,
    ``attacked_accuracy``, ``random_accuracy``, ``perturbation_l2`` (mean per-image norm in
    pixels), ``unit_stage`` (stage of each state), and K+1 means over images of the relative
    and absolute state differences: ``adversarial_rel``, ``random_rel``, ``adversarial_abs``,
    ``random_abs``. With ``project_units``, also ``projection``: the shares of both
    perturbations on each of those units' expanding (sigma > 1 + ``tol``), neutral and
    contracting directions (:func:`projection_shares`, unit maps).
    """
    if attack not in ATTACKS:
        raise ValueError(f"attack: expected one of {list(ATTACKS)}, got {attack!r}")
    # Checked before the attack runs, not only when matched_random draws after it.
    if random_kind not in RANDOM_KINDS:
        raise ValueError(f"random_kind: expected one of {list(RANDOM_KINDS)}, got {random_kind!r}")
    norm = "l2" if attack == "pgd_l2" else "linf"
    eps = DEFAULT_EPS[norm] if eps is None else eps
    _check_attack(eps, steps, step_size)  # fgsm would not check the steps it ignores
    steps = 1 if attack == "fgsm" else steps
    check_eval(net)
    model = Normalized(net, mean, std)

    if attack == "fgsm":
        x_adv = fgsm(model, images_pixel, labels, eps)
    else:
        x_adv = pgd(model, images_pixel, labels, eps, norm=norm, steps=steps,
                    step_size=step_size, seed=seed)  # fmt: skip
    delta = x_adv - images_pixel
    # A different seed from the random start keeps the two draws independent.
    rand = matched_random(images_pixel, delta, random_kind, seed=seed + 1)

    x = model.normalize(images_pixel)
    std_view = _channel_view(model.std, x)
    adv, rnd = propagate(net, x, delta / std_view), propagate(net, x, rand / std_view)
    with torch.no_grad():
        accuracies = [
            _accuracy(model(z), labels) for z in (images_pixel, x_adv, images_pixel + rand)
        ]

    def means(t: torch.Tensor) -> list[float]:
        return [float(v) for v in t.mean(dim=0)]

    result = {
        "attack": attack,
        "eps": float(eps),
        "steps": steps,
        "step_size": None if attack == "fgsm" else float(step_size or 2.5 * eps / steps),
        "random_kind": random_kind,
        "seed": seed,
        "adversarial_rel": means(adv["rel"]),
        "random_rel": means(rnd["rel"]),
        "adversarial_abs": means(adv["abs"]),
        "random_abs": means(rnd["abs"]),
        "clean_accuracy": accuracies[0],
        "attacked_accuracy": accuracies[1],
        "random_accuracy": accuracies[2],
        "perturbation_l2": float(_norms(delta).mean()),
        "unit_stage": [u.stage for u in net.units] + [net.units[-1].stage],
    }
    if project_units:
        units = list(project_units)
        result["projection"] = {
            "map": "unit",
            "tol": tol,
            "units": units,
            "adversarial": projection_shares(net, x, delta / std_view, units, tol),
            "random": projection_shares(net, x, rand / std_view, units, tol),
        }
    return result
