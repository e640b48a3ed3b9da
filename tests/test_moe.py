"""Wan2.2 A14B expert switching: the official switch step and guide scale for the default schedules,
one scheduler across the switch, and the host parking of the inactive expert."""

from __future__ import annotations

import os

import pytest
import torch

from wanport.config import load_recipe
from wanport.config.validate import plan_run
from wanport.pipeline.moe import HIGH, LOW, ExpertParking, ExpertSwitch, decide_parking, expert_bytes, expert_schedule
from wanport.pipeline.sampling import denoise_loop
from wanport.schedulers import make_scheduler

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))


class RecordingScheduler:
    """Wraps a real scheduler; records the model output of every step (the guided velocity)."""

    def __init__(self, inner):
        self.inner = inner
        self.outputs = []

    @property
    def timesteps(self):
        return self.inner.timesteps

    def step(self, v, sample):
        self.outputs.append(v.flatten()[0].item())
        return self.inner.step(v, sample)


def _const_model(log, name):
    def model(latent, t, context, **kw):
        log.append((name, int(t.reshape(-1)[0])))
        return torch.full_like(latent, float(context))  # cond context 1.0, uncond 0.0 -> v = g
    return model


@pytest.mark.parametrize("recipe,high,low,g_low,g_high", [
    ("wan2.2-t2v-a14b.yaml", 26, 14, 3.0, 4.0),
    ("wan2.2-i2v-a14b.yaml", 15, 25, 3.5, 3.5),
])
def test_switch_at_the_official_step(recipe, high, low, g_low, g_high):
    cfg, _ = load_recipe(os.path.join(REPO, "recipes", recipe))
    plan = plan_run(cfg, recipe)
    assert plan.num_steps == 40 and plan.guide_scales == (g_low, g_high)
    sched = RecordingScheduler(make_scheduler(plan.solver, steps=plan.steps, shift=plan.shift))
    ts = [int(t) for t in sched.timesteps]
    names = expert_schedule(ts, plan.boundary)
    assert names == [HIGH] * high + [LOW] * low
    assert ts[high - 1] >= plan.boundary * 1000 > ts[high]
    log = []
    switch = ExpertSwitch({HIGH: _const_model(log, HIGH), LOW: _const_model(log, LOW)}, plan.boundary,
                          plan.guide_scales)
    _, used = denoise_loop(switch, sched, torch.zeros(1, 1, 1, 1, 1), {"context": 1.0}, {"context": 0.0},
                           progress=False)
    assert used == names
    assert sched.inner.step_index == 40  # one scheduler across the switch, never reset
    assert [n for n, _ in log[::2]] == names and len(log) == 80  # cond + uncond per step, same expert
    assert sched.outputs == pytest.approx([g_high] * high + [g_low] * low)
    print("%s: %d high-noise steps (t %d..%d) + %d low-noise (t %d..%d), guide high %g / low %g"
          % (recipe, high, ts[0], ts[high - 1], low, ts[high], ts[-1], g_high, g_low))


def test_single_guide_number_applies_to_both():
    cfg, _ = load_recipe(os.path.join(REPO, "recipes", "wan2.2-t2v-a14b.yaml"), ["sample.guide_scale=2.5"])
    assert plan_run(cfg).guide_scales == (2.5, 2.5)
    cfg, _ = load_recipe(os.path.join(REPO, "recipes", "wan2.2-t2v-a14b.yaml"), ["sample.boundary=0.5"])
    plan = plan_run(cfg)
    names = expert_schedule([int(t) for t in make_scheduler("unipc", steps=40, shift=12.0).timesteps], plan.boundary)
    assert names.count(HIGH) > 26


class FakeRuntime:
    def __init__(self, free=None, total=None):
        self.info = None if free is None else (free, total)
        self.empty = self.syncs = 0

    def memory_info(self):
        return self.info

    def empty_cache(self):
        self.empty += 1

    def synchronize(self):
        self.syncs += 1


def test_decide_parking():
    gib = 2 ** 30
    one = 28 * gib
    dev = torch.device("meta")  # stands for an accelerator: not the host
    assert decide_parking("auto", FakeRuntime(79 * gib, 80 * gib), dev, one)[0] is False
    park, why = decide_parking("auto", FakeRuntime(60 * gib, 64 * gib), dev, one)
    assert park and "do not fit" in why
    assert decide_parking("auto", FakeRuntime(), dev, one)[0] is False  # unknown memory: load both
    assert decide_parking("auto", FakeRuntime(1, 1), torch.device("cpu"), one)[0] is False  # host = device
    assert decide_parking(True, FakeRuntime(), torch.device("cpu"), one)[0] is True
    assert decide_parking(False, FakeRuntime(1, 80 * gib), dev, one)[0] is False


def test_expert_bytes_of_a14b():
    from wanport.models.dit import DiTConfig
    from wanport.precision import PRESETS

    cfg = DiTConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40)
    gib = expert_bytes(cfg, PRESETS["official"]) / 2 ** 30
    assert 26 < gib < 28  # bf16 matmul weights, float32 modulation/norms: ~26.7 GiB per 14B expert


def test_parking_keeps_one_expert_active_and_host_copies():
    models = {HIGH: torch.nn.Linear(4, 4), LOW: torch.nn.Linear(4, 4)}
    host_high = models[HIGH].weight.data_ptr()
    runtime = FakeRuntime()
    parking = ExpertParking(models, torch.device("cpu"), runtime)
    switch = ExpertSwitch(models, 0.875, (3.0, 4.0), parking)
    for t in (999, 990, 880, 870, 500):
        switch.select(t)
    assert parking.active == LOW
    assert [(m["parked"], m["activated"], m["step"]) for m in switch.moves()] == [(None, HIGH, 0), (HIGH, LOW, 3)]
    assert models[HIGH].weight.data_ptr() == host_high  # parked: back on its host copy, nothing copied back
    assert runtime.empty == 1 and not parking.pinned
