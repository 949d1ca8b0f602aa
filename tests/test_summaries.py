"""Statistics of recorded tensors: the one-pass kernel (engine/run/_moments.c) against torch's own reductions."""

import math
import sys

import pytest
import torch

import models as M
from engine import Session
from engine.run import moments
from engine.run import values
from engine.run.values import Dropped

needs_kernel = pytest.mark.skipif(not moments.BUILT, reason="engine.run._moments was not built (no C compiler)")


def torch_stats(t: torch.Tensor, monkeypatch) -> tuple:
    with monkeypatch.context() as m:
        m.setattr(moments, "AVAILABLE", False)
        return values._tensor_stats(t)


def assert_same_stats(got: tuple, want: tuple) -> None:
    lo, hi, mean, std, nan, inf = got
    assert (lo, hi, nan, inf) == (want[0], want[1], want[4], want[5])
    if want[2] is None:
        assert mean is None and std is None
    else:
        assert math.isclose(mean, want[2], rel_tol=1e-5, abs_tol=1e-6)
        assert math.isclose(std, want[3], rel_tol=1e-4, abs_tol=1e-6)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1, 15, 17, 4097, 65535, 65537, 1_000_003])
def test_one_pass_matches_torch(dtype, n):
    # sizes around the lane width, the block, and the size above which torch's threads share the pass
    x = torch.randn(n, dtype=dtype) * 3 + 1
    lo, hi, total, squares = moments.one_pass(x)
    assert lo == x.min().item() and hi == x.max().item()
    exact = x.double()
    assert math.isclose(total, exact.sum().item(), rel_tol=1e-5, abs_tol=1e-3)
    assert math.isclose(squares, exact.dot(exact).item(), rel_tol=1e-5)


@needs_kernel
def test_team_split_sees_every_chunk():
    # the extremes in the last and the first chunk of each thread's share
    x = torch.zeros(300_001)
    x[-1], x[0], x[150_000] = 7.0, -5.0, 6.0
    assert moments.one_pass(x) == (-5.0, 7.0, 8.0, 110.0)


@needs_kernel
@pytest.mark.skipif(not sys.platform.startswith("linux") or not torch.backends.openmp.is_available(),
                    reason="torch's OpenMP team is found through /proc/self/maps")
def test_pass_runs_in_torchs_openmp_library():
    assert moments.OPENMP_LIBRARY is not None and "omp" in moments.OPENMP_LIBRARY
    assert moments.OPENMP_LIBRARY in open("/proc/self/maps").read()


@pytest.mark.parametrize("make", [
    lambda: torch.randn(200_000),
    lambda: torch.randn(300, 400).t(),  # not contiguous
    lambda: torch.randn(100_000)[::3],  # a strided view
    lambda: torch.tensor([1.0, float("nan"), -2.0, float("inf"), float("-inf"), 3.0] * 20_000),
    lambda: torch.full((70_000,), float("nan")),
    lambda: torch.tensor([3e38, 3e38, -1.0] * 30_000),  # the sums overflow float32
    lambda: torch.randn(100_000) + 1e4,  # the mean dwarfs the spread
    lambda: torch.randint(-50, 50, (100_000,)),
    lambda: torch.randn(100_000).half(),
    lambda: torch.randn(100_000, dtype=torch.float64),
    lambda: torch.full((5,), 2.5),
])
def test_stats_equal_torchs(make, monkeypatch):
    t = make()
    want = torch_stats(t, monkeypatch)
    assert_same_stats(values._tensor_stats(t), want)
    with torch.no_grad():  # as in a run: the summary's own fast path
        s = values.summarize_tensor(t)
    assert_same_stats((s.min, s.max, s.mean, s.std, s.nan, s.inf), want)


def test_summaries_only_run_of_a_real_net_has_torchs_statistics(archive):
    # outputs big enough (8x96x96) for the pass to be shared by torch's threads
    path = archive(M.randomize_bn(M.ConvNet()), "trace", example=(torch.randn(1, 3, 96, 96),))
    m = Session(path, budget=0).start()
    m.run()
    kept = Session(path).start()
    kept.run()
    compared = 0
    for ra, rb in zip(m.timeline, kept.timeline):
        for dropped, tensor in zip(ra.outputs, rb.outputs):
            if isinstance(dropped, Dropped) and isinstance(tensor, torch.Tensor):
                s = dropped.summary
                exact = tensor.double()
                assert s.min == float(tensor.min()) and s.max == float(tensor.max())
                assert math.isclose(s.mean, float(exact.mean()), rel_tol=1e-5, abs_tol=1e-6)
                assert math.isclose(s.std, float(exact.std()), rel_tol=1e-4, abs_tol=1e-6)
                compared += 1
    assert compared >= 10
    assert any(r.outputs and isinstance(r.outputs[0], Dropped) and r.outputs[0].summary.numel >= 2 * 32768
               for r in m.timeline)
