"""Offloading (wanport.offload, docs/plan.md "Offload"): the block-streaming schedule recorded on a
runtime with streams, failures surfacing as errors, the same video with and without offload on the
reference backend, the ascend runtime's stream methods on the CPU emulation, recipe checks."""

from __future__ import annotations

import pytest
import torch

from wanport.models.dit import DiTConfig, WanDiT
from wanport.models.dit.requirements import dit_requirements
from wanport.offload.blocks import BlockStreamer
from wanport.offload.transfers import OffloadError, Transfers
from wanport.offload.whole import HostResident
from wanport.precision import PRESETS
from wanport.registry import discover, resolve_ops

CFG = DiTConfig(dim=128, ffn_dim=128, num_heads=2, num_layers=5, text_dim=64, freq_dim=64)
POLICY = PRESETS["fp32"]


class Event:
    def __init__(self, kind: str, seq: int) -> None:
        self.kind, self.seq = kind, seq

    def __repr__(self) -> str:
        return "%s%d" % (self.kind, self.seq)


class RecordingRuntime:
    """A host runtime with every optional stream method, recording each call in order. The
    "device" is the host; copies are real (new tensors). ``fail_copy_at``: the n-th copy issued
    raises; ``fail_wait``: host_wait raises (an asynchronous copy error surfacing later)."""

    def __init__(self, fail_copy_at=None, fail_wait=False) -> None:
        self.calls = []
        self.side = object()
        self._current = None
        self._events = 0
        self._copies = 0
        self.fail_copy_at = fail_copy_at
        self.fail_wait = fail_wait

    def synchronize(self):
        self.calls.append(("synchronize",))

    def pin_memory(self, t):
        self.calls.append(("pin",))
        return t

    def pinned_buffer(self, nbytes):
        self.calls.append(("pinned_buffer", nbytes))
        return torch.empty(nbytes, dtype=torch.uint8)

    def copy_stream(self):
        self.calls.append(("copy_stream",))
        return self.side

    def stream_context(self, stream):
        rt = self

        class Ctx:
            def __enter__(self):
                if rt.fail_copy_at is not None and rt._copies == rt.fail_copy_at:
                    raise RuntimeError("emulated copy failure")
                rt._copies += 1
                rt._current = stream
                rt.calls.append(("enter_side",))

            def __exit__(self, *exc):
                rt._current = None
                return False

        return Ctx()

    def stream_event(self, stream=None):
        self._events += 1
        ev = Event("copy" if stream is self.side else "compute", self._events)
        self.calls.append(("record", ev))
        return ev

    def wait_event(self, event):
        self.calls.append(("wait", event))

    def host_wait(self, event):
        if self.fail_wait:
            raise RuntimeError("emulated device error")
        self.calls.append(("host_wait", event))

    def mark_used(self, t):
        self.calls.append(("mark_used",))


@pytest.fixture(scope="module")
def ops():
    reg = discover()
    return resolve_ops(reg, reg.backends["reference"], dit_requirements(CFG, POLICY, "cpu"))


def _inputs():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, CFG.out_dim, 2, 4, 4, generator=g)
    ctx = torch.randn(1, 8, CFG.text_dim, generator=g)
    return x, torch.tensor([500]), ctx


def _model(ops, seed=0):
    return WanDiT.random(CFG, POLICY, torch.device("cpu"), seed=seed).bind_ops(ops)


@pytest.fixture(scope="module")
def ref(ops):
    """The output of the model without offload."""
    x, t, ctx = _inputs()
    return _model(ops)(x, t, context=ctx)


@pytest.mark.parametrize("prefetch", [0, 1, 3])
def test_block_schedule(ops, ref, prefetch):
    """Copies issued ahead in block order, each block runs on its device copy and points back at
    its host tensors after, the copy of block j waits (host side) for block j-N-2 to finish, and
    at most N+2 blocks hold device copies; same output as the model without offload."""
    x, t, ctx = _inputs()
    rt = RecordingRuntime()
    model = _model(ops)
    streamer = BlockStreamer(model, Transfers(rt, torch.device("cpu")), prefetch=prefetch)
    streamer.log = []
    host_ptrs = [[h.data_ptr() for h in host] for host in streamer.host]
    seen = {}
    for i, block in enumerate(model.blocks):
        block.register_forward_pre_hook(
            lambda m, a, i=i: seen.__setitem__(i, [p.data_ptr() for p in m.parameters()]))
    n, N = CFG.num_layers, prefetch
    for _ in range(2 if prefetch == 1 else 1):  # a second forward starts from a clean state
        streamer.log.clear()
        rt.calls.clear()
        out = model(x, t, context=ctx)
        assert torch.equal(out, ref)
        for i in range(n):
            assert not set(seen[i]) & set(host_ptrs[i]), "block %d ran on its host tensors" % i
            assert [p.data_ptr() for p in model.blocks[i].parameters()] == host_ptrs[i]
        log = streamer.log
        assert [b for w, b in log if w == "attach"] == list(range(n))
        assert [b for w, b in log if w == "copy"] == list(range(n))
        for j in range(n):
            c = log.index(("copy", j))
            assert c < log.index(("attach", j))
            if j > N:  # issued when block j-N-1 ended, not earlier
                assert log[c - 1] == ("release", j - N - 1)
        alive = 0
        for what, _ in log:
            alive += {"copy": 1, "release": -1}.get(what, 0)
            assert alive <= N + 2
        # the runtime: copies on the side stream, each followed by its event; the compute stream
        # waits for block i's copy event before using it; block j's copy waits for block j-N-2
        copy_events = [c[1] for c in rt.calls if c[0] == "record" and c[1].kind == "copy"]
        assert len(copy_events) == n
        waits = [c[1] for c in rt.calls if c[0] == "wait"]
        assert waits == copy_events
        compute = [c[1] for c in rt.calls if c[0] == "record" and c[1].kind == "compute"]
        assert len(compute) == n
        host_waits = [c[1] for c in rt.calls if c[0] == "host_wait"]
        assert host_waits == [compute[j - N - 2] for j in range(N + 2, n)]
        assert sum(1 for c in rt.calls if c[0] == "mark_used") == sum(len(h) for h in streamer.host)


def test_failing_copy_is_an_error_and_the_next_forward_is_clean(ops, ref):
    x, t, ctx = _inputs()
    rt = RecordingRuntime(fail_copy_at=3)
    model = _model(ops)
    streamer = BlockStreamer(model, Transfers(rt, torch.device("cpu")), prefetch=1)
    with pytest.raises(OffloadError, match="block 3 of 5.*emulated copy failure"):
        model(x, t, context=ctx)
    for i, block in enumerate(model.blocks):  # nothing left half-attached
        assert [p.data_ptr() for p in block.parameters()] == [h.data_ptr() for h in streamer.host[i]]
    assert not streamer._pending
    rt.fail_copy_at = None
    assert torch.equal(model(x, t, context=ctx), ref)
    rt.fail_wait = True  # an asynchronous copy error surfacing at the host wait
    with pytest.raises(OffloadError, match="waiting for DiT block"):
        model(x, t, context=ctx)


def test_quantized_and_buffer_tensors_travel(ops):
    """Non-float tensors and buffers of a block (quantized weights, scales) move with it."""
    model = _model(ops)
    blk = model.blocks[0]
    blk.register_buffer("qweight", torch.randint(-128, 127, (16, 16), dtype=torch.int8))
    blk.register_buffer("scale", torch.rand(16))
    streamer = BlockStreamer(model, Transfers(RecordingRuntime(), torch.device("cpu")), prefetch=1)
    seen = {}  # a hook after the streamer's: sees what the block runs on
    blk.register_forward_pre_hook(lambda m, a: seen.update(q=m.qweight.data_ptr(), s=m.scale.data_ptr()))
    host = {n: b.data_ptr() for n, b in blk.named_buffers()}
    x, t, ctx = _inputs()
    model(x, t, context=ctx)
    assert seen["q"] != host["qweight"] and seen["s"] != host["scale"]
    assert blk.qweight.data_ptr() == host["qweight"] and blk.qweight.dtype == torch.int8
    assert streamer.block_bytes[0] == streamer.block_bytes[1] + 16 * 16 + 16 * 4


def test_host_tensors_packed_into_power_of_two_buffers(ops):
    """Host copies share page-locked buffers (a host caching allocator rounds each allocation up to
    a power of two): few buffers, each tensor equal to its original, at a 512-byte boundary."""
    from wanport.offload.transfers import Transfers

    rt = RecordingRuntime()
    g = torch.Generator().manual_seed(0)
    src = [torch.randn(n, generator=g) for n in (1000, 3, 70000)] + [torch.randint(0, 9, (5, 7), dtype=torch.int8),
                                                                    torch.randn(4, 6, generator=g).to(torch.bfloat16)]
    host = Transfers(rt, torch.device("cpu")).to_host_all(src)
    buffers = [c[1] for c in rt.calls if c[0] == "pinned_buffer"]
    assert len(buffers) == 1 and buffers[0] == 1 << (sum(-(-t.numel() * t.element_size() // 512) * 512
                                                          for t in src) - 1).bit_length()
    for a, b in zip(src, host):
        assert torch.equal(a, b) and a.dtype == b.dtype and b.data_ptr() % 512 == host[0].data_ptr() % 512
        assert b.data_ptr() != a.data_ptr()


def test_host_resident_moves_and_drops(ops, ref):
    model = _model(ops)
    rt = RecordingRuntime()
    held = HostResident(model, Transfers(rt, torch.device("cpu")), "the DiT")
    host = [p.data_ptr() for p in model.parameters()]
    x, t, ctx = _inputs()
    with held.in_use():
        assert not set(p.data_ptr() for p in model.parameters()) & set(host)
        assert torch.equal(model(x, t, context=ctx), ref)
    assert [p.data_ptr() for p in model.parameters()] == host
    assert [m["to"] for m in held.moves] == ["device", "host"]


def test_ascend_runtime_streams_on_the_emulation(ops, ref):
    """The ascend runtime's stream/event/pin methods drive the same schedule on the emulated torch.npu."""
    from npu_emulation.module import installed

    with installed("v7") as npu:
        from wanport_ascend.runtime import start_runtime

        rt = start_runtime()
        tr = Transfers(rt, rt.device())
        assert tr.asynchronous
        model = _model(ops)
        BlockStreamer(model, tr, prefetch=1)
        x, t, ctx = _inputs()
        out = model(x, t, context=ctx)
        assert len(npu.npu.calls("Stream")) == 1
        waits = [a for n, a, k in npu.npu.log if n == "Stream.wait_event"]
        assert len(waits) == CFG.num_layers
    assert torch.equal(out, ref)


# ----------------------------------------------------------------------------- whole pipeline


def test_offloaded_pipeline_gives_the_same_video(tiny_ckpt, tmp_path):
    """Reference backend: block streaming (prefetch 2), the VAE kept on the host until the decode
    and the T5 on the host give the video of the run without offload, bit for bit (the whole DiT
    kept on the host: test_host_resident_moves_and_drops)."""
    from wanport.pipeline.api import Pipeline

    def video(*over):
        with Pipeline.from_recipe(None, checkpoint_dir=tiny_ckpt, progress=False, size="32*32", frames=5, steps=2,
                                  overrides=["output.dir=%s" % tmp_path] + list(over)) as pipe:
            res = pipe.generate(video_tensor=True)
        return res.video, res.report

    base, rep = video()
    assert "offload" not in rep
    block, rep = video("offload.dit=block", "offload.prefetch=2", "offload.vae=host_until_decode",
                       "offload.text_encoder=host")
    assert torch.equal(block, base)
    off = rep["offload"]
    assert off["dit"][0]["mode"] == "block" and off["dit"][0]["prefetch"] == 2
    assert off["vae"]["moves"] == 2 and off["text_encoder_device"] == "cpu"


def test_offload_settings_checked_together(tiny_ckpt, tmp_path):
    from wanport.config import build_config
    from wanport.config.validate import plan_run
    from wanport.errors import ConfigError

    raw = {"model": "wan2.2-t2v-a14b", "checkpoint_dir": tiny_ckpt, "prompt": "p", "output": {"dir": str(tmp_path)},
           "offload": {"dit": "block", "park_inactive_expert": True, "prefetch": 9},
           "parallel": {"cfg": 2, "dit_fsdp": True}}
    with pytest.raises(ConfigError) as err:
        plan_run(build_config(raw))
    text = str(err.value)
    assert "drop offload.park_inactive_expert" in text and "parallel.dit_fsdp" in text
    assert "offload.prefetch" in text
    raw = dict(raw, offload={"dit": "blocks"}, parallel={})
    with pytest.raises(ConfigError, match="offload.dit.*blocks"):
        build_config(raw)
