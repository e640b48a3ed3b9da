"""CommClock: exposed communication time from the runtime's events, without host synchronisation
on the hot path; the head chunks of the overlapped Ulysses attention."""

from __future__ import annotations

import pytest

from wanport.parallel.mesh import CommClock
from wanport.parallel.sequence import head_chunks


class _Event:
    def __init__(self, log, clock):
        self.log, self.clock, self.t = log, clock, None

    def record(self):
        self.log.append("record")
        self.t = self.clock[0]

    def elapsed_ms(self, end):
        self.log.append("elapsed")
        return (end.t - self.t) * 1000.0


class _Runtime:
    """Records what the clock asks of the device: events and synchronisations."""

    def __init__(self):
        self.log, self.now = [], [0.0]

    def event(self):
        return _Event(self.log, self.now)

    def synchronize(self):
        self.log.append("synchronize")


class _Work:
    def __init__(self, runtime, seconds):
        self.runtime, self.seconds = runtime, seconds

    def wait(self):
        self.runtime.log.append("wait")
        self.runtime.now[0] += self.seconds


def test_blocking_and_async_collectives_are_timed_by_events_read_late():
    rt = _Runtime()
    clock = CommClock(rt)
    with clock:  # a blocking collective of 0.25 s
        rt.now[0] += 0.25
    clock.sent(100)
    clock.issued(1000)  # an asynchronous one: only its wait counts
    rt.now[0] += 5.0  # compute that overlapped it
    clock.wait(_Work(rt, 0.5))
    assert "synchronize" not in rt.log and "elapsed" not in rt.log  # nothing read while running
    assert rt.log == ["record", "record", "record", "wait", "record"]
    assert clock.seconds == pytest.approx(0.75) and clock.calls == 2 and clock.bytes == 1100
    assert clock.snapshot() == {"seconds": pytest.approx(0.75), "calls": 2, "bytes": 1100}


def test_timing_off_records_no_events():
    rt = _Runtime()
    clock = CommClock(rt, timing=False)
    with clock:
        pass
    clock.issued(8)
    clock.wait(_Work(rt, 1.0))
    assert rt.log == ["wait"] and clock.seconds == 0.0 and clock.calls == 2 and clock.bytes == 8


def test_pending_events_are_folded_in_bounded_batches(monkeypatch):
    rt = _Runtime()
    monkeypatch.setattr(CommClock, "FLUSH", 3)
    clock = CommClock(rt)
    for _ in range(7):
        with clock:
            rt.now[0] += 0.5
    assert len(clock._pairs) == 1 and clock.seconds == pytest.approx(3.5)


@pytest.mark.parametrize("heads,ring,chunks", [(20, 1, 4), (10, 1, 2), (6, 1, 3), (5, 1, 1), (1, 1, 1), (20, 2, 1)])
def test_head_chunks_divide_the_heads_of_a_rank(heads, ring, chunks):
    assert head_chunks(heads, ring) == chunks


def test_the_ulysses_overlap_switch_reaches_the_attention_wrapper():
    """parallel.ulysses_overlap: a validated bool (default true) that the pipeline hands to the
    sequence-parallel wrapper; only Ulysses (not ring alone) has something to overlap."""
    from wanport.config import load_recipe
    from wanport.config.validate import plan_run
    from wanport.errors import ConfigError
    from wanport.parallel.mesh import Mesh
    from wanport.parallel.sequence import SequenceParallelAttention
    from wanport.pipeline.common import ulysses_overlap

    on, _ = load_recipe(None, [])
    off, _ = load_recipe(None, ["parallel.ulysses_overlap=false"])
    assert ulysses_overlap(plan_run(on)) is True and ulysses_overlap(plan_run(off)) is False
    with pytest.raises(ConfigError, match="parallel.ulysses_overlap: expected true or false"):
        load_recipe(None, ["parallel.ulysses_overlap=maybe"])

    def mesh(u, r):
        return Mesh(0, u * r, 0, 1, u, r, 0, 0, 0, None, None, None, None, list(range(r)), 60.0)

    clock = CommClock()
    assert SequenceParallelAttention(None, mesh(2, 1), clock).overlaps is True
    assert SequenceParallelAttention(None, mesh(2, 1), clock, overlap=False).overlaps is False
    assert SequenceParallelAttention(None, mesh(1, 2), clock).overlaps is False
