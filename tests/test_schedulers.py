"""Flow-matching schedulers: official schedules, UniPC step math, Euler, argument checks.

The UniPC step math is checked against an independent float64 evaluation of the formulas written
below (docs/wan-model.md §6.1; no call into wanport's scheduler code), with variants showing that the check
would catch a skipped corrector, a wrong warm-up or a missing lower-order final step.
"""

from __future__ import annotations

import math
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import pytest
import torch

from wanport.errors import ConfigError, WanportError
from wanport.schedulers import (
    SCHEDULERS,
    FlowEulerScheduler,
    FlowUniPCScheduler,
    make_scheduler,
)

# ------------------------------------------------------------------------------------------
# official test vectors (docs/wan-model.md §6.1, computed with the official class)
# ------------------------------------------------------------------------------------------

OFFICIAL_TIMESTEPS = {
    (50, 5.0): "999 995 991 987 982 978 973 968 963 957 952 946 940 934 927 920 913 906 898 890 "
    "882 873 863 854 843 833 821 809 796 783 768 753 737 720 701 681 660 636 611 584 555 522 487 "
    "448 405 356 302 241 172 92",
    (40, 3.0): "999 991 982 973 963 954 944 933 922 911 899 887 874 861 847 832 817 801 785 767 "
    "749 730 710 688 666 642 617 590 562 531 499 465 428 388 345 299 249 195 136 71",
    (40, 5.0): "999 994 989 983 978 972 965 959 952 944 937 929 920 911 902 892 882 870 859 846 "
    "833 818 803 786 768 749 728 706 681 654 624 591 555 514 468 416 356 288 208 113",
    (40, 12.0): "999 997 995 993 990 988 985 982 979 976 972 969 965 961 956 952 947 941 936 929 "
    "922 915 907 898 888 877 865 852 837 819 799 776 749 717 678 631 571 492 386 235",
}


@pytest.mark.parametrize("steps,shift", sorted(OFFICIAL_TIMESTEPS))
def test_official_unipc_timesteps(steps, shift):
    expected = [int(v) for v in OFFICIAL_TIMESTEPS[(steps, shift)].split()]
    assert len(expected) == steps
    sch = make_scheduler("unipc", steps=steps, shift=shift)
    assert isinstance(sch, FlowUniPCScheduler)
    assert sch.num_steps == steps == len(sch)
    ts = sch.timesteps
    assert ts.dtype == torch.int64 and ts.device.type == "cpu" and ts.shape == (steps,)
    assert ts.tolist() == expected
    sig = sch.sigmas
    assert sig.dtype == torch.float32 and sig.device.type == "cpu" and sig.shape == (steps + 1,)
    assert sig[-1].item() == 0.0
    assert bool(torch.all(sig[1:] < sig[:-1]))


def test_official_unipc_sigmas_n50_shift5():
    sig = make_scheduler("unipc", steps=50, shift=5.0).sigmas
    # float64 + - * / (correctly rounded on every IEEE machine) rounded once to float32: reproducible bit
    # for bit; 1e-7 is the float32 half-ulp near 1 (3e-8) plus the 8-digit rounding of the official values
    assert abs(sig[0].item() - 0.99979985) < 1e-7
    assert abs(sig[49].item() - 0.09250686) < 1e-7
    # the schedule starts from the largest training sigma, float32(0.999), unshifted for shift 1
    assert make_scheduler("unipc", steps=10, shift=1.0).sigmas[0].item() == 0.9990000128746033


# ------------------------------------------------------------------------------------------
# independent float64 UniPC (bh2, data prediction) from the formulas
# ------------------------------------------------------------------------------------------


def ref_schedule(steps: int, shift: float) -> Tuple[List[int], List[float]]:
    """Official UniPC schedule: timesteps (truncated) and float32-rounded sigmas with final 0."""
    top = float(np.float32(0.999))
    raw = np.linspace(top, 0.0, steps + 1)[:-1]
    shifted = shift * raw / (1.0 + (shift - 1.0) * raw)
    timesteps = [int(math.trunc(v * 1000.0)) for v in shifted]
    sigmas = [float(np.float32(v)) for v in shifted] + [0.0]
    return timesteps, sigmas


def _log_snr(s: float) -> float:
    return math.log((1.0 - s) / s)


def _phi_rhs(h: float, n: int) -> List[float]:
    """b_k = k! * z * phi_{k+1}(z) / B(z), z = -h, B = expm1(z), via phi_{k+1} = (phi_k - 1/k!)/z."""
    z = -h
    big_b = math.expm1(z)
    phi = math.expm1(z) / z  # phi_1
    out = []
    for k in range(1, n + 1):
        phi = (phi - 1.0 / math.factorial(k)) / z  # phi_{k+1}
        out.append(math.factorial(k) * z * phi / big_b)
    return out


def ref_update(
    x_s: torch.Tensor,
    s: float,
    t: float,
    m0: torch.Tensor,
    older: Sequence[Tuple[float, torch.Tensor]],
    m_new: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """One UniP (m_new None) or UniC (m_new = data prediction at t) update from sigma s to t."""
    h = _log_snr(t) - _log_snr(s)
    alpha_t = 1.0 - t
    out = (t / s) * x_s - alpha_t * math.expm1(-h) * m0
    rs = [(_log_snr(si) - _log_snr(s)) / h for si, _ in older]
    ds = [(mi - m0) / r for (_, mi), r in zip(older, rs)]
    if m_new is not None:  # corrector: the new point sits at r = 1
        rs.append(1.0)
        ds.append(m_new - m0)
        rhos = [0.5] if len(rs) == 1 else None
    else:
        rhos = [] if not rs else ([0.5] if len(rs) == 1 else None)
    if rhos is None:
        mat = np.array([[r**k for r in rs] for k in range(len(rs))], dtype=np.float64)
        rhos = list(np.linalg.solve(mat, np.array(_phi_rhs(h, len(rs)))))
    if ds:
        out = out - alpha_t * math.expm1(-h) * sum(float(r) * d for r, d in zip(rhos, ds))
    return out


def ref_unipc(
    steps: int,
    shift: float,
    x_init: torch.Tensor,
    model: Callable[[torch.Tensor, int], torch.Tensor],
    order: int = 2,
    corrector: bool = True,
    warmup_offset: int = 1,
    lower_order_final: bool = True,
) -> List[torch.Tensor]:
    """float64 sampling loop; returns the sample after every step.

    Variants for the sensitivity checks: ``corrector=False`` skips UniC, ``warmup_offset=0`` keeps
    order 1 one step too long, ``lower_order_final=False`` drops the end-of-schedule order cap
    (the final sigma-0 step always returns the data prediction).
    """
    timesteps, sig = ref_schedule(steps, shift)
    x = x_init.to(torch.float64)
    x0s: List[torch.Tensor] = []
    prev: Optional[Tuple[torch.Tensor, int]] = None
    traj = []
    for k in range(steps):
        x0 = x - sig[k] * model(x, timesteps[k])
        if corrector and k > 0:
            x_prev, p_prev = prev
            older = [(sig[k - 1 - i], x0s[-1 - i]) for i in range(1, p_prev)]
            x = ref_update(x_prev, sig[k - 1], sig[k], x0s[-1], older, m_new=x0)
        x0s.append(x0)
        p = min(order, max(1, k + warmup_offset))
        if lower_order_final:
            p = min(p, steps - k)
        if sig[k + 1] == 0.0:
            x_next = x0
        else:
            older = [(sig[k - i], x0s[-1 - i]) for i in range(1, p)]
            x_next = ref_update(x, sig[k], sig[k + 1], x0, older)
        prev = (x, p)
        x = x_next
        traj.append(x)
    return traj


def toy_model(x: torch.Tensor, t: int) -> torch.Tensor:
    """Deterministic nonlinear stand-in for the DiT (any dtype)."""
    tau = t / 1000.0
    return 0.7 * x - 0.4 * torch.tanh(1.5 * x) + torch.sin(2.0 * x + 20.0 * tau)


def _x_init(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 4, 3, 6, 6, generator=g, dtype=torch.float32)


def _run(sch, x: torch.Tensor, model=toy_model) -> List[torch.Tensor]:
    traj = []
    for t in sch.timesteps.tolist():
        x = sch.step(model(x, t), x)
        traj.append(x)
    return traj


def _max_rel(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    assert len(a) == len(b)
    worst = 0.0
    for u, v in zip(a, b):
        u64, v64 = u.to(torch.float64), v.to(torch.float64)
        worst = max(worst, ((u64 - v64).abs().max() / v64.abs().max()).item())
    return worst


@pytest.mark.parametrize("steps", [1, 2, 6, 10])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_unipc_matches_float64_reference(steps, order):
    shift = 5.0
    x = _x_init()
    ours = _run(FlowUniPCScheduler(steps, shift, solver_order=order), x)
    ref = ref_unipc(steps, shift, x, toy_model, order=order)
    assert all(o.dtype == torch.float32 for o in ours)
    err = _max_rel(ours, ref)
    assert err <= 1e-5, f"max relative error {err:.3e}"


@pytest.mark.parametrize("steps", [6, 10])
def test_reference_detects_wrong_variants(steps):
    """The 1e-5 comparison above is sensitive: each plausible mistake moves the result by far more.

    Measured (N=6 / N=10): ours vs reference ~4e-7; no corrector ~6e-2 / 5e-2; warm-up off by
    one ~4e-3 / 4e-4 (the second step of a shifted schedule is short, so this one is smallest);
    first order only ~2e-1; order 3 without the lower-order cap ~5e-1 / 4e-1.
    """
    shift = 5.0
    x = _x_init()
    ours = _run(make_scheduler("unipc", steps=steps, shift=shift), x)
    good = ref_unipc(steps, shift, x, toy_model)
    assert _max_rel(ours, good) <= 1e-5
    variants = {
        "no corrector": (ref_unipc(steps, shift, x, toy_model, corrector=False), 1e-2),
        "warm-up off by one": (ref_unipc(steps, shift, x, toy_model, warmup_offset=0), 1e-4),
        "first-order only": (ref_unipc(steps, shift, x, toy_model, order=1), 1e-2),
    }
    for what, (traj, gap) in variants.items():
        assert _max_rel(ours, traj) > gap, what
    # with order 2 the cap only touches the final sigma-0 step (which returns x0 regardless);
    # order 3 shows the cap at step N-2 matters and is implemented
    ours3 = _run(FlowUniPCScheduler(steps, shift, solver_order=3), x)
    assert _max_rel(ours3, ref_unipc(steps, shift, x, toy_model, order=3)) <= 1e-5
    no_cap = ref_unipc(steps, shift, x, toy_model, order=3, lower_order_final=False)
    assert _max_rel(ours3, no_cap) > 1e-2


def test_unipc_orders_n5():
    sch = make_scheduler("unipc", steps=5, shift=5.0)
    assert sch.predictor_orders == (1, 2, 2, 2, 1)
    assert sch.corrector_orders == (None, 1, 2, 2, 2)
    # behaviour, not only bookkeeping: the corrector runs on every step from step 1 on
    calls = []
    original = sch._correct

    def spy(c, x0_new):
        calls.append((sch.step_index, c.order))
        return original(c, x0_new)

    sch._correct = spy
    _run(sch, _x_init())
    assert calls == [(1, 1), (2, 2), (3, 2), (4, 2)]
    assert FlowUniPCScheduler(1, 5.0).predictor_orders == (1,)
    assert FlowUniPCScheduler(2, 5.0).predictor_orders == (1, 1)
    assert FlowUniPCScheduler(6, 5.0, solver_order=3).predictor_orders == (1, 2, 3, 3, 2, 1)


@pytest.mark.parametrize("steps", [1, 2, 5])
def test_unipc_last_step_is_x0(steps):
    sch = make_scheduler("unipc", steps=steps, shift=5.0)
    x = _x_init(1)
    for k, t in enumerate(sch.timesteps.tolist()):
        v = toy_model(x, t)
        out = sch.step(v, x)
        if k == steps - 1:
            sigma = sch.sigmas[k].item()
            assert torch.equal(out, x - sigma * v)
        x = out


def test_straight_flow_is_integrated_exactly():
    """For a single data point the flow is a straight line; both samplers must land on it."""
    g = torch.Generator().manual_seed(3)
    data = torch.randn(3, 5, 5, generator=g)
    noise = torch.randn(3, 5, 5, generator=g)
    for sch in (
        make_scheduler("unipc", steps=7, shift=5.0),
        make_scheduler("euler", steps=7, shift=3.0),
        make_scheduler("euler", timesteps=[1000, 800, 400], shift=2.0),
    ):
        sigma0 = sch.sigmas[0].item()
        x = (1 - sigma0) * data + sigma0 * noise
        for _ in range(sch.num_steps):
            x = sch.step(noise - data, x)
        # element-wise float32 arithmetic only (no reductions), so the same on every machine; |x| <= ~4 and
        # ~4 roundings per step over 7 steps: √28·4·eps32 ≈ 1.3e-6 typical
        torch.testing.assert_close(x, data, rtol=0, atol=2e-6)


def test_step_counting_reset_and_inputs_untouched():
    sch = make_scheduler("unipc", steps=4, shift=3.0)
    x = _x_init(2)
    first = _run(sch, x)
    assert sch.step_index == 4
    with pytest.raises(RuntimeError, match="only 4 steps"):
        sch.step(x, x)
    sch.reset()
    assert sch.step_index == 0
    ts_before, sig_before = sch.timesteps, sch.sigmas
    # inputs are neither moved nor modified; outputs keep dtype/device
    x_copy = x.clone()
    v = toy_model(x, int(sch.timesteps[0]))
    v_copy = v.clone()
    out = sch.step(v, x)
    assert torch.equal(x, x_copy) and torch.equal(v, v_copy)
    assert out.dtype == x.dtype and out.device == x.device
    assert sch.step_index == 1
    # a reset run reproduces the first one bit for bit
    sch.reset()
    again = _run(sch, x)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert torch.equal(sch.timesteps, ts_before) and torch.equal(sch.sigmas, sig_before)
    with pytest.raises(ValueError, match="shape"):
        make_scheduler("euler", steps=2).step(torch.zeros(2, 3), torch.zeros(3, 2))


def test_device_agnostic_on_meta_tensors():
    """Nothing leaves the caller's device: a full loop runs on data-less 'meta' tensors."""
    for sch in (make_scheduler("unipc", steps=5, shift=5.0), make_scheduler("euler", steps=3)):
        x = torch.empty(2, 3, device="meta")
        for _ in range(sch.num_steps):
            x = sch.step(torch.empty(2, 3, device="meta"), x)
        assert x.device.type == "meta" and x.dtype == torch.float32


def test_float64_samples_keep_dtype():
    sch = make_scheduler("unipc", steps=3, shift=5.0)
    x = _x_init().double()
    out = _run(sch, x)
    assert all(o.dtype == torch.float64 for o in out)


# ------------------------------------------------------------------------------------------
# optional: diffusers' UniPC on the same sigmas (its own schedule differs, docs/wan-model.md §7.3)
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("steps", [3, 10, 50])
def test_unipc_matches_diffusers_on_same_sigmas(steps, order):
    diffusers = pytest.importorskip("diffusers")
    from wanport.schedulers.sigmas import unipc_sigmas

    shift = 5.0
    ours = FlowUniPCScheduler(steps, shift, solver_order=order)
    theirs = diffusers.UniPCMultistepScheduler(
        num_train_timesteps=1000,
        solver_order=order,
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        flow_shift=1.0,  # the sigmas handed over are already shifted
        predict_x0=True,
        solver_type="bh2",
        lower_order_final=True,
        final_sigmas_type="zero",
    )
    theirs.set_timesteps(sigmas=unipc_sigmas(steps, shift))
    theirs.set_begin_index(0)
    assert torch.equal(theirs.timesteps.cpu(), ours.timesteps)
    assert torch.equal(theirs.sigmas, ours.sigmas)
    x = _x_init(4)
    worst = 0.0
    for t in ours.timesteps.tolist():
        v = toy_model(x, t)
        a = ours.step(v, x)
        b = theirs.step(v, t, x, return_dict=False)[0]
        worst = max(worst, ((a - b).abs().max() / b.abs().max()).item())
        x = a
    # orders 1 and 2 agree bit for bit: the same element-wise float32 ops in the same order (diffusers'
    # einsum over one difference is one product), and element-wise IEEE ops are correctly rounded, so
    # this holds on every machine; order 3 sums its two differences in another order (einsum): a
    # two-term reorder, a few eps32 of the largest term relative to max|x| (1e-6 ≈ 17 eps32)
    assert worst <= (0.0 if order < 3 else 1e-6), worst


# ------------------------------------------------------------------------------------------
# Euler
# ------------------------------------------------------------------------------------------


def test_euler_dpm_schedule():
    sch = make_scheduler("euler", steps=4, shift=5.0)
    assert isinstance(sch, FlowEulerScheduler) and sch.num_steps == 4
    # official get_sampling_sigmas: shifted linspace(1, 0, N+1)[:N], first timestep 1000
    raw = np.linspace(1, 0, 5)[:4]
    expect = 5.0 * raw / (1 + 4.0 * raw)
    assert sch.timesteps.tolist() == [1000, 937, 833, 625]
    assert sch.timesteps.dtype == torch.int64
    # bit-exact: the same float64 expression, rounded once to float32
    torch.testing.assert_close(
        sch.sigmas, torch.tensor(list(expect) + [0.0], dtype=torch.float32), rtol=0, atol=0
    )
    assert make_scheduler("euler", steps=50, shift=5.0).timesteps[0].item() == 1000


def test_euler_explicit_timesteps():
    sch = make_scheduler("euler", timesteps=[1000, 750, 500, 250], shift=1.0)
    assert sch.num_steps == 4
    assert sch.timesteps.tolist() == [1000, 750, 500, 250]
    assert sch.sigmas.tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]
    # steps may be given when it agrees
    assert make_scheduler("euler", steps=4, timesteps=[1000, 750, 500, 250]).num_steps == 4
    # a shift applies to t/1000; the model receives the truncated shifted timestep
    shifted = make_scheduler("euler", timesteps=[1000, 750, 500, 250], shift=5.0)
    s = np.array([1.0, 0.75, 0.5, 0.25])
    expect = 5.0 * s / (1 + 4.0 * s)
    assert shifted.timesteps.tolist() == [int(v * 1000) for v in expect]
    torch.testing.assert_close(
        shifted.sigmas, torch.tensor(list(expect) + [0.0], dtype=torch.float32), rtol=0, atol=0
    )
    # tensors and numpy arrays are accepted as the list
    assert make_scheduler("euler", timesteps=torch.tensor([999, 500])).timesteps.tolist() == [
        999,
        500,
    ]


def test_euler_step():
    sch = make_scheduler("euler", timesteps=[1000, 750, 500, 250], shift=3.0)
    sig = sch.sigmas
    x = _x_init(5)
    for k, t in enumerate(sch.timesteps.tolist()):
        v = toy_model(x, t)
        out = sch.step(v, x)
        dt = (sig[k + 1] - sig[k]).item()
        assert torch.equal(out, x + dt * v)
        if k == sch.num_steps - 1:
            assert torch.equal(out, x - sig[k].item() * v)
        x = out
    with pytest.raises(RuntimeError):
        sch.step(x, x)


# ------------------------------------------------------------------------------------------
# argument checks
# ------------------------------------------------------------------------------------------


def test_scheduler_names():
    assert SCHEDULERS == ("unipc", "euler", "distill")
    assert isinstance(make_scheduler("UniPC", steps=3, shift=5.0), FlowUniPCScheduler)
    with pytest.raises(ConfigError, match="did you mean 'unipc'"):
        make_scheduler("unpic", steps=10)
    with pytest.raises(ConfigError, match="did you mean 'euler'"):
        make_scheduler("eular", steps=10)
    with pytest.raises(ConfigError, match="choose one of: unipc, euler, distill"):
        make_scheduler("ddim", steps=10)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(steps=0), "steps must be a positive integer"),
        (dict(steps=-3), "steps must be a positive integer"),
        (dict(steps=2.5), "steps must be a positive integer"),
        (dict(steps=True), "steps must be a positive integer"),
        (dict(), "pass steps=N"),
        (dict(steps=10, shift=0.0), "shift must be a positive"),
        (dict(steps=10, shift=-2.0), "shift must be a positive"),
        (dict(steps=10, shift=float("nan")), "shift must be a positive"),
        (dict(steps=10, shift=float("inf")), "shift must be a positive"),
        (dict(steps=10, shift="5"), "shift must be a positive"),
        (dict(timesteps=[1000, 500]), "supported by the 'euler' scheduler only"),
    ],
)
def test_unipc_argument_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message) as info:
        make_scheduler("unipc", **kwargs)
    assert isinstance(info.value, WanportError) and info.value.exit_code == 2


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(timesteps=[]), "timesteps is empty"),
        (dict(timesteps=[1000, 1000, 500]), "strictly decreasing"),
        (dict(timesteps=[250, 500, 750]), "strictly decreasing"),
        (dict(timesteps=[1001, 500]), r"outside \(0, 1000\]"),
        (dict(timesteps=[1000, 0]), r"outside \(0, 1000\]"),
        (dict(timesteps=[-5]), r"outside \(0, 1000\]"),
        (dict(timesteps=[1000, float("nan")]), r"outside \(0, 1000\]"),
        (dict(timesteps=[1000, "x"]), "not a number"),
        (dict(timesteps="1000"), "list of numbers"),
        (dict(timesteps=[1000, 750, 500, 250], steps=5), "steps=5 but timesteps has 4 entries"),
        (dict(timesteps=[1000, 500], shift=0.0), "shift must be a positive"),
        (dict(), "needs the number of steps"),
        (dict(steps=0), "steps must be a positive integer"),
    ],
)
def test_euler_argument_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        make_scheduler("euler", **kwargs)
    # the classes check their arguments too
    if "timesteps" in kwargs or "steps" in kwargs:
        with pytest.raises(ConfigError):
            FlowEulerScheduler(**kwargs)


def test_unipc_class_argument_errors():
    with pytest.raises(ConfigError, match="solver_order"):
        FlowUniPCScheduler(10, 5.0, solver_order=4)
    with pytest.raises(ConfigError, match="steps must be"):
        FlowUniPCScheduler(0, 5.0)
