"""Property-based checks (hypothesis) over small random units and dense nets."""

from __future__ import annotations

import errno
import json
import math
import signal
import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from resnet_dyn.dynamics import (
    dense_singular_values,
    extreme_singular_values,
    jacobian,
    map_spectrum,
    unit_map,
    unit_states,
)
from resnet_dyn.files import write_json_atomic
from resnet_dyn.models import CifarResNet, DenseResNet, ResidualNet, ResidualUnit

SETTINGS = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _warm(net: nn.Module, x: torch.Tensor) -> nn.Module:
    """Non-trivial BatchNorm running statistics, then eval mode."""
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(x)
    return net.eval()


@SETTINGS
@given(
    side=st.integers(4, 9),
    channels=st.sampled_from([1, 3]),
    shortcut=st.sampled_from(["A", "B"]),
    preact=st.booleans(),
    index=st.integers(0, 2),
    kind=st.sampled_from(["sum", "unit"]),
    seed=st.integers(0, 2**16),
)
def test_structured_jacobian_equals_dense(side, channels, shortcut, preact, index, kind, seed):
    torch.manual_seed(seed)
    net = CifarResNet(8, (channels, side, side), 10, shortcut=shortcut, preact=preact)
    x = torch.randn(4, channels, side, side)
    _warm(net, x)
    f = unit_map(net, index, unit_states(net, x[:1])[index][0], kind)
    colored = jacobian(f, "coloring").matrix
    dense = jacobian(f, "dense").matrix
    assert colored.shape == (f.dim_out, f.dim_in)
    assert torch.allclose(colored, dense, atol=1e-5, rtol=0)


@SETTINGS
@given(width=st.integers(2, 24), depth=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_matrix_free_extremes_agree_with_dense(width, depth, seed):
    torch.manual_seed(seed)
    net = DenseResNet(depth, (width,), 2, width=width, activation="tanh", tied=False).eval()
    net = net.double()
    k = seed % depth
    f = unit_map(net, k, unit_states(net, torch.randn(1, width, dtype=torch.float64))[k][0])
    exact, _ = dense_singular_values(jacobian(f, "dense").matrix)
    ext = extreme_singular_values(f, 1, "both")
    assert math.isclose(ext["largest"].values[0].item(), exact[0].item(), rel_tol=1e-4)
    assert abs(ext["smallest"].values[0].item() - exact[-1].item()) <= 1e-4 * exact[0].item()


class _OneUnit(ResidualNet):
    def __init__(self, unit: ResidualUnit) -> None:
        super().__init__()
        self.stem, self.units, self.head = nn.Identity(), nn.ModuleList([unit]), nn.Identity()


@SETTINGS
@given(n=st.integers(2, 40), seed=st.integers(0, 2**16))
def test_orthogonal_maps_have_all_one_spectra(n, seed):
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    branch = nn.Linear(n, n, bias=False).double()
    with torch.no_grad():
        branch.weight.copy_(q - torch.eye(n, dtype=torch.float64))  # x + (Q - I)x = Qx
    net = _OneUnit(ResidualUnit(branch, nn.Identity())).eval()
    f = unit_map(net, 0, torch.randn(n, dtype=torch.float64, generator=gen))
    stats = map_spectrum(f, method="dense").stats
    assert stats["frac_one"] == 1.0 and stats["frac_gt_one"] == stats["frac_zero"] == 0.0
    assert math.isclose(stats["cond"], 1.0, rel_tol=1e-9)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(status=st.sampled_from(["completed", "failed", "diverged"]), payload=JSON)
def test_summary_json_round_trips(tmp_path, status, payload):
    summary = {"status": status, "config": {"x": payload}, "metrics": {"test/acc": 0.5}}
    path = write_json_atomic(tmp_path / "summary.json", summary)
    assert json.loads(path.read_text()) == summary
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]  # no temporary file left


def _write_in_child(path, obj, max_file_bytes: int) -> subprocess.CompletedProcess:
    """``write_json_atomic(path, obj)`` in a process whose files may not grow beyond
    ``max_file_bytes``: the kernel kills it with SIGXFSZ in the middle of the write."""
    code = (
        "import json, resource, signal, sys\n"
        "from resnet_dyn.files import write_json_atomic\n"
        "obj = json.loads(sys.stdin.read())\n"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({max_file_bytes}, {max_file_bytes}))\n"
        # Python ignores SIGXFSZ (the write then fails with EFBIG); the default kills.
        "signal.signal(signal.SIGXFSZ, signal.SIG_DFL)\n"
        f"write_json_atomic({str(path)!r}, obj)\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code], input=json.dumps(obj), capture_output=True, text=True
    )


def test_a_write_killed_mid_way_leaves_the_previous_summary_whole(tmp_path):
    path = tmp_path / "summary.json"
    old = {"status": "completed", "metrics": {"test/acc": 0.9}}
    write_json_atomic(path, old)
    new = {"status": "completed", "config": {"blob": "x" * 1_000_000}}
    done = _write_in_child(path, new, max_file_bytes=64 * 1024)
    assert done.returncode == -signal.SIGXFSZ, done.stderr[-2000:]  # killed mid-write
    assert json.loads(path.read_text()) == old  # the finished file is untouched
    # What the killed write left is a hidden partial temporary file, never the summary.
    (partial,) = [p for p in tmp_path.iterdir() if p.name != "summary.json"]
    assert partial.name.startswith(".summary.json.") and partial.stat().st_size == 64 * 1024
    # Without a previous summary, there is no summary.json at all: whole or absent.
    (tmp_path / "fresh").mkdir()
    done = _write_in_child(tmp_path / "fresh" / "summary.json", new, max_file_bytes=64 * 1024)
    assert done.returncode == -signal.SIGXFSZ
    assert not (tmp_path / "fresh" / "summary.json").exists()


def test_a_write_that_fills_the_disk_leaves_the_previous_summary_and_no_temporary(tmpfs):
    full = tmpfs("small", size="256k")
    path = full / "summary.json"
    old = {"status": "completed", "metrics": {"test/acc": 0.9}}
    write_json_atomic(path, old)
    with pytest.raises(OSError) as err:
        write_json_atomic(path, {"blob": "x" * 1_000_000})
    assert err.value.errno == errno.ENOSPC
    assert json.loads(path.read_text()) == old
    assert [p.name for p in full.iterdir()] == ["summary.json"]
