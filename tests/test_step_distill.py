"""The step-distilled sampler against an independent float64 evaluation, and its recipe checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wanport.errors import ConfigError
from wanport.schedulers import make_scheduler
from wanport.schedulers.step_distill import FlowStepDistillScheduler

LIST = [1000, 750, 500, 250]


def sigma64(t: int, shift: float) -> float:
    """The shifted training sigma at training timestep t, in float64 (s = t / 1000)."""
    s = t / 1000.0
    return shift * s / (1.0 + (shift - 1.0) * s)


@pytest.mark.parametrize("shift", [5.0, 3.0, 1.0, 8.0])
@pytest.mark.parametrize("steps", [LIST, [1000, 500], [999, 800, 601, 400, 1]])
def test_schedule_matches_float64(shift, steps):
    sched = make_scheduler("distill", shift=shift, denoising_step_list=steps)
    want = np.array([sigma64(t, shift) for t in steps] + [0.0])
    got = sched.sigmas.double().numpy()
    assert sched.num_steps == len(steps) and sched.sigmas.dtype == torch.float32
    # float32 evaluation of the same formula: a few float32 ulps
    assert np.abs(got - want).max() <= 4 * np.finfo(np.float32).eps
    # the model receives the float timestep sigma * 1000 (not an integer)
    assert np.abs(sched.timesteps.double().numpy() - 1000 * want[:-1]).max() <= 4e-3
    assert sched.timesteps.dtype == torch.float32


def test_published_schedule_values():
    sched = FlowStepDistillScheduler(LIST, 5.0)
    assert sched.timesteps.tolist() == pytest.approx([1000.0, 937.5, 833.3333, 625.0], abs=1e-3)
    assert sched.sigmas.tolist() == pytest.approx([1.0, 0.9375, 0.8333333, 0.625, 0.0], abs=1e-6)


def test_steps_match_float64_and_add_no_noise():
    """x0 = x - sigma v; next = x0 + sigma_next * v; the last step returns x0 -- no fresh noise."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 2, 8, 8, generator=g)
    vs = [torch.randn(x.shape, generator=g) for _ in LIST]
    sched = FlowStepDistillScheduler(LIST, 5.0)
    x64 = x.double()
    sig = [sigma64(t, 5.0) for t in LIST] + [0.0]
    cur = x
    for i, v in enumerate(vs):
        cur = sched.step(v, cur)
        x0 = x64 - sig[i] * v.double()
        x64 = x0 + sig[i + 1] * v.double() if i < len(LIST) - 1 else x0
        assert cur.dtype == torch.float32
        assert (cur.double() - x64).abs().max().item() <= 1e-5 * max(1.0, x64.abs().max().item()), i
    # deterministic: the same inputs give the same result (nothing random between steps)
    again = FlowStepDistillScheduler(LIST, 5.0)
    cur2 = x
    for v in vs:
        cur2 = again.step(v, cur2)
    assert torch.equal(cur, cur2)
    with pytest.raises(RuntimeError):
        sched.step(vs[0], cur)


def test_bad_lists_and_arguments():
    with pytest.raises(ConfigError, match="strictly decreasing"):
        make_scheduler("distill", denoising_step_list=[1000, 1000, 250])
    with pytest.raises(ConfigError, match="strictly decreasing"):
        make_scheduler("distill", denoising_step_list=[1001, 500])
    with pytest.raises(ConfigError, match="integers"):
        make_scheduler("distill", denoising_step_list=[1000, 500.5])
    with pytest.raises(ConfigError, match="needs denoising_step_list"):
        make_scheduler("distill")
    with pytest.raises(ConfigError, match="not 'euler'"):
        make_scheduler("euler", steps=4, denoising_step_list=LIST)
    with pytest.raises(ConfigError, match="drop steps"):
        make_scheduler("distill", steps=3, denoising_step_list=LIST)


def _plan(extra):
    from wanport.config import load_recipe
    from wanport.config.validate import plan_run

    cfg, _ = load_recipe(None, ["sample.size=32*32", "sample.frame_num=5", "sample.steps=null"] + list(extra))
    return plan_run(cfg)


def test_recipe_checks_before_load():
    plan = _plan(["sample.solver=distill", "sample.denoising_step_list=[1000, 750, 500, 250]",
                  "sample.guide_scale=1.0"])
    assert plan.num_steps == 4 and plan.denoising_step_list == (1000, 750, 500, 250) and not plan.needs_uncond
    with pytest.raises(ConfigError, match="denoising_step_list"):
        _plan(["sample.solver=distill"])
    with pytest.raises(ConfigError, match="only for sample.solver: distill"):
        _plan(["sample.denoising_step_list=[1000, 500]"])
    with pytest.raises(ConfigError, match="strictly decreasing"):
        _plan(["sample.solver=distill", "sample.denoising_step_list=[250, 500]"])
    with pytest.raises(ConfigError, match="disagrees"):
        _plan(["sample.solver=distill", "sample.denoising_step_list=[1000, 500]", "sample.steps=4"])


def test_wan22_boundary_splits_the_four_steps_two_and_two():
    """The published A14B distill configs switch experts after step 2 (boundary_step_index 2); the
    boundary (0.875 t2v, 0.9 i2v) gives the same split on the float timesteps."""
    from wanport.pipeline.moe import expert_schedule

    ts = FlowStepDistillScheduler(LIST, 5.0).timesteps
    assert expert_schedule(ts, 0.875) == ["high_noise", "high_noise", "low_noise", "low_noise"]
    assert expert_schedule(ts, 0.900) == ["high_noise", "high_noise", "low_noise", "low_noise"]
