"""Transient dynamics of residual networks: residual trajectories, fixed points, noise (paper 2).

    tr = trajectory(net, x)                        # x(0..T) and y(1..T), lists over layers
    stats = class_statistics(tr.residuals, labels) # per class mean/std of y(t)
    c = convergence(tr.residuals)                  # (B, T-1): c(t) = mean_i |y_i(t) - y_i(t-1)|
    long = trajectory(net, x, depth=1000)          # a tied model unrolled without retraining
    fp = fixed_points(net.double(), x.double())    # y*, Jacobian eigenvalues, saddles
    yc = continuous_trajectory(net, x)             # dy/dt = y(1-y)(W y), at t = 1..T

Residuals. A unit maps x(t) to x(t+1) = act(alpha * shortcut(x(t)) + F(x(t))); its residual is
y(t+1) = x(t+1) - alpha * shortcut(x(t)), which for Lagzi's dense ResNet is f(W x(t) + b).
A unit without shortcut (the MLP) has no skip, so there y(t+1) = x(t+1).

Fixed points of a tied dense ResNet. With the pre-activation a(t) = W x(t-1) + b, so that
y(t) = f(a(t)), and x(t) = alpha x(t-1) + y(t):

    a(t+1) = W x(t) + b = alpha W x(t-1) + W y(t) + b = alpha a(t) + (1 - alpha) b + W f(a(t)).

So the layer map is g(a) = alpha a + (1 - alpha) b + W f(a), a map of a alone: x(t), which
grows without bound when alpha = 1 and y* != 0, drops out. A fixed point a* of g is a fixed
point y* = f(a*) of the residuals (f is injective for sigmoid and tanh), and

    J = dg/da (a*) = alpha I + W diag(f'(a*)).

In the y variables y -> f(g(f^-1(y))) has Jacobian diag(f'(a*)) J diag(f'(a*))^-1 at the fixed
point, similar to J, so the eigenvalues are the same; a-variables also avoid f^-1 and the
rounding of the ever larger x(t). Stability: discrete time (the network) is unstable along
eigenvalues with |lambda| > 1. The continuous-time counterpart is da/dt = g(a) - a (for
alpha = 1, da/dt = W y, i.e. dy/dt = f'(a) (W y) = y(1 - y)(W y) for the sigmoid), with
Jacobian J - I: unstable along mu = lambda - 1 with Re mu > 0, the "small positive
eigenvalue" of a saddle in paper 2.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.integrate import solve_ivp
from torch.func import jacfwd, vmap

from resnet_dyn.dynamics.maps import check_eval
from resnet_dyn.dynamics.perturbation import propagate
from resnet_dyn.models.base import ResidualNet

# f' as a function of y = f(a): what the continuous-time residual equation needs.
_DERIVATIVE_OF_OUTPUT: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "sigmoid": lambda y: y * (1 - y),
    "tanh": lambda y: 1 - y**2,
}


@dataclass
class Trajectory:
    """``states`` x(0) .. x(T) and ``residuals`` y(1) .. y(T), each (B, *shape of that layer)."""

    states: list[torch.Tensor]
    residuals: list[torch.Tensor]


def trajectory(net: ResidualNet, x: torch.Tensor, depth: int | None = None) -> Trajectory:
    """States and residuals of every layer for the inputs ``x`` (the net's input space).

    ``depth``: unroll a tied dense ResNet to that many layers first (``net.unrolled``).
    """
    if depth is not None:
        net = _tied_dense(net).unrolled(depth)
    check_eval(net)
    with torch.no_grad():
        states = net.unit_inputs(x)
        residuals = []
        for unit, before, after in zip(net.units, states[:-1], states[1:], strict=True):
            skip = 0 if unit.shortcut is None else unit.skip_scale * unit.shortcut(before)
            residuals.append(after - skip)
    return Trajectory(states, residuals)


def class_statistics(layers: Sequence[torch.Tensor], labels: torch.Tensor) -> dict:
    """Per class mean and std over samples, layer by layer.

    ``layers``: e.g. ``Trajectory.residuals``, each (B, *shape). Returns ``{"classes": [...],
    "mean": [...], "std": [...]}`` with one (n_classes, *shape) tensor per layer; the std is
    the population one (correction 0), so a class with one sample has std 0.
    """
    classes = torch.unique(labels)
    mean = [torch.stack([t[labels == c].mean(0) for c in classes]) for t in layers]
    std = [torch.stack([t[labels == c].std(0, correction=0) for c in classes]) for t in layers]
    return {"classes": classes.tolist(), "mean": mean, "std": std}


def convergence(residuals: Sequence[torch.Tensor]) -> torch.Tensor:
    """c(t) = mean over neurons i of |y_i(t) - y_i(t-1)|, per sample: (B, T-1) for t = 2..T.

    NaN where two consecutive residuals differ in shape (a downsampling unit of a conv ResNet).
    """
    cols = []
    for prev, cur in zip(residuals[:-1], residuals[1:], strict=True):
        if prev.shape != cur.shape:
            nan = torch.full((cur.shape[0],), float("nan"), dtype=cur.dtype, device=cur.device)
            cols.append(nan)
        else:
            cols.append((cur - prev).abs().flatten(1).mean(1))
    if not cols:
        like = residuals[0] if residuals else None
        n = like.shape[0] if like is not None else 0
        return torch.zeros(n, 0, device=None if like is None else like.device)
    return torch.stack(cols, dim=1)


def _tied_dense(net: ResidualNet) -> ResidualNet:
    if not net.tied or any(u.shortcut is None for u in net.units):
        raise ValueError(f"net: expected a tied dense ResNet with skips, got {type(net).__name__}")
    return net


def layer_map(net: ResidualNet) -> Callable[[torch.Tensor], torch.Tensor]:
    """g(a) = alpha a + (1 - alpha) b + W f(a) of a tied dense ResNet (see the module docstring).

    Acts on one sample's pre-activation a (width,) or a batch (B, width).
    """
    _tied_dense(net)
    alphas = {u.skip_scale for u in net.units}
    if len(alphas) != 1:
        raise ValueError(f"net: expected the same alpha on every layer, got {sorted(alphas)}")
    alpha = alphas.pop()
    linear, f = net.units[0].branch[0], net.units[0].branch[1]
    # linear(f(a)) = W f(a) + b, so subtracting alpha b leaves (1 - alpha) b.
    return lambda a: alpha * (a - linear.bias) + linear(f(a))


@dataclass
class FixedPoints:
    """Where the residuals of each sample settle and how the layer map behaves there.

    ``residual`` y* and ``preactivation`` a* (B, width); ``converged`` (B,) whether c(t) < tol
    was reached, at layer ``layers`` (B,; -1 if not); ``eigenvalues`` (B, width) complex, of
    J = dg/da at a*; ``unstable_discrete``: count of |lambda| > 1; ``unstable_continuous``:
    count of Re(lambda - 1) > 0; ``saddle``: continuous-time saddle (eigenvalues with Re mu
    on both sides of 0). Counts use the margin ``eig_tol``. Where f saturates (f'(a*) -> 0, a*
    drifting off) the residuals still settle but the eigenvalues tend to alpha, so the counts
    there hinge on ``eig_tol``.
    """

    residual: torch.Tensor
    preactivation: torch.Tensor
    converged: torch.Tensor
    layers: torch.Tensor
    eigenvalues: torch.Tensor
    unstable_discrete: torch.Tensor
    unstable_continuous: torch.Tensor
    saddle: torch.Tensor


def fixed_points(
    net: ResidualNet,
    x: torch.Tensor,
    tol: float = 1e-6,
    max_layers: int = 10_000,
    eig_tol: float = 1e-9,
) -> FixedPoints:
    """Run the tied layer map from each input until c(t) < ``tol`` (at most ``max_layers``
    layers), then the Jacobian eigenvalues of the layer map there (``torch.func.jacfwd``).

    Equivalent to unrolling the model to that many layers; use a float64 model for tolerances
    much below 1e-6.
    """
    if tol <= 0:
        raise ValueError(f"tol: expected a positive number, got {tol!r}")
    if not isinstance(max_layers, int) or max_layers < 2:
        raise ValueError(f"max_layers: expected an integer >= 2, got {max_layers!r}")
    g = layer_map(net)
    f = net.units[0].branch[1]
    with torch.no_grad():
        a = net.units[0].branch[0](net.stem(x))
        layers = torch.full((a.shape[0],), -1, dtype=torch.int64, device=a.device)
        done = torch.zeros(a.shape[0], dtype=torch.bool, device=a.device)
        for t in range(2, max_layers + 1):
            a_next = g(a)
            c = (f(a_next) - f(a)).abs().mean(1)
            a = torch.where(done[:, None], a, a_next)
            newly = ~done & (c < tol)
            layers[newly], done = t, done | newly
            if done.all():
                break
        jac = vmap(jacfwd(g))(a)
    lam = torch.linalg.eigvals(jac)
    mu = lam.real - 1
    return FixedPoints(
        residual=f(a),
        preactivation=a,
        converged=done,
        layers=layers,
        eigenvalues=lam,
        unstable_discrete=(lam.abs() > 1 + eig_tol).sum(1),
        unstable_continuous=(mu > eig_tol).sum(1),
        saddle=(mu > eig_tol).any(1) & (mu < -eig_tol).any(1),
    )


def integrate_residuals(
    W: torch.Tensor,
    y0: torch.Tensor,
    times: Sequence[float],
    activation: str = "sigmoid",
    rtol: float = 1e-9,
    atol: float = 1e-12,
) -> torch.Tensor:
    """Solve dy/dt = f'(y) * (W y) (sigmoid: y(1 - y) * (W y)) from y(times[0]) = y0.

    ``y0``: (B, N) or (N,); returns y at ``times``, shape (B, len(times), N) or (len(times), N),
    float64, on y0's device. scipy's adaptive RK45 (on the CPU) with tolerances ``rtol``,
    ``atol``.
    """
    if activation not in _DERIVATIVE_OF_OUTPUT:
        raise ValueError(f"activation: expected sigmoid or tanh, got {activation!r}")
    fprime = _DERIVATIVE_OF_OUTPUT[activation]
    w = W.detach().double().cpu().numpy()
    start = y0.detach().double().cpu().numpy()
    shape = start.shape

    def rhs(_: float, flat: np.ndarray) -> np.ndarray:
        y = flat.reshape(-1, w.shape[0])
        return (fprime(y) * (y @ w.T)).ravel()

    t = np.asarray(times, dtype=np.float64)
    sol = solve_ivp(rhs, (t[0], t[-1]), start.ravel(), t_eval=t, rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"integrate_residuals: {sol.message}")
    # SciPy integrates on the CPU; the result goes back to y0's device.
    ys = torch.from_numpy(sol.y.T.reshape(len(t), *shape)).to(y0.device)  # (times, [B,] N)
    return ys.movedim(0, -2)


def continuous_trajectory(
    net: ResidualNet, x: torch.Tensor, depth: int | None = None
) -> torch.Tensor:
    """The continuous-time residuals at t = 1..T (T = ``depth`` or the model's), started from
    the network's own y(1), for comparison with ``trajectory(...).residuals``: (B, T, width).

    Needs alpha = 1 (only then is da/dt = W y) and a sigmoid or tanh activation.
    """
    _tied_dense(net)
    if any(u.skip_scale != 1.0 for u in net.units):
        raise ValueError(
            f"net: expected alpha 1.0 for the continuous-time residuals, got {net.skip_scale!r}"
        )
    T = len(net.units) if depth is None else depth
    if not isinstance(T, int) or T < 1:
        raise ValueError(f"depth: expected a positive integer, got {T!r}")
    y1 = trajectory(net, x, depth=1).residuals[0]
    W = net.units[0].branch[0].weight
    return integrate_residuals(W, y1, np.arange(1, T + 1), net.activation)


def noise_evolution(
    net: ResidualNet,
    x: torch.Tensor,
    labels: torch.Tensor,
    sigmas: Sequence[float],
    seed: int = 0,
) -> dict:
    """How Gaussian input noise of std sigma spreads through the layers, and what it costs.

    Noise is added in the net's input space; one standard-normal draw (``seed``) is scaled by
    every sigma, so the curves differ only in sigma. Works for any ResidualNet, e.g. a ResNet
    and its MLP counterpart. Returns ``{"sigmas", "distance", "relative", "accuracy"}``:
    per sigma, K+1 means over samples of ||x_noisy(t) - x_clean(t)|| (and divided by
    ||x_clean(t)||), and the accuracy on the noisy inputs.
    """
    # A library error: config.checks names analysis.noise.sigmas before training.
    if any(isinstance(s, bool) or not isinstance(s, (int, float)) or s < 0 for s in sigmas):
        raise ValueError(f"sigmas: expected non-negative numbers, got {list(sigmas)!r}")
    gen = torch.Generator(device=x.device).manual_seed(seed)
    noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
    out: dict = {
        "sigmas": [float(s) for s in sigmas],
        "distance": [],
        "relative": [],
        "accuracy": [],
    }
    for s in sigmas:
        table = propagate(net, x, s * noise)
        with torch.no_grad():
            correct = net(x + s * noise).argmax(1) == labels
        out["distance"].append(table["abs"].mean(0).tolist())
        out["relative"].append(table["rel"].mean(0).tolist())
        out["accuracy"].append(int(correct.sum()) / len(correct))
    return out


def last_layer_converged(
    net: ResidualNet, x: torch.Tensor, threshold: float = 0.01
) -> tuple[bool, float]:
    """Lagzi's pruning test: value = mean over neurons and samples of |y(T) - y(T-1)|.

    Returns ``(value < threshold, value)``. A net with a single layer has no two residuals to
    compare: ``(False, nan)``, so a caller never prunes it to nothing.
    """
    if len(net.units) < 2:
        return False, float("nan")
    value = float(convergence(trajectory(net, x).residuals[-2:]).mean())
    return value < threshold, value
