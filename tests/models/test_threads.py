"""The thread governor: torch gets the cores that other processes leave free."""

from __future__ import annotations

import os

import pytest
import torch

from ppl.models.hf import threads
from ppl.models.hf.threads import DWELL, INTERVAL, ThreadGovernor, free_cores


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


class Machine:
    """A fake clock and core counters: `run(seconds, others, own)` advances both."""

    def __init__(self) -> None:
        self.now, self.busy, self.own = 100.0, 0.0, 0.0

    def run(self, seconds: float, others: float, own: float) -> None:
        self.now += seconds
        self.busy += (others + own) * seconds
        self.own += own * seconds

    def sample(self):
        return self.now, self.busy, self.own


def test_free_cores_rounds_a_partly_used_core_down():
    assert free_cores(2, 0.0) == 2
    SLACK = threads.SLACK
    assert free_cores(2, SLACK) == 2
    assert free_cores(2, SLACK + 0.01) == 1
    assert free_cores(2, 1.0) == 1
    assert free_cores(2, 1.3) == 0  # the governor keeps at least one thread
    assert free_cores(8, 2.2) == 6 and free_cores(8, 2.3) == 5


def test_a_busy_neighbour_takes_a_thread_and_gives_it_back(restore_threads):
    torch.set_num_threads(2)
    m = Machine()
    g = ThreadGovernor(2, m.sample, clock=lambda: m.now)
    assert g.ceiling == 2
    # quiet: both threads, read every INTERVAL, never changed
    for _ in range(20):
        m.run(INTERVAL, others=0.05, own=1.9)
        g.tick()
    assert torch.get_num_threads() == 2 and g.changes == []
    # a neighbour takes a core: one thread, once the reading has held for DWELL
    m.run(INTERVAL, others=0.9, own=1.1)
    g.tick()
    assert g.others == pytest.approx(0.9) and torch.get_num_threads() == 2  # not yet
    readings = 1
    while not g.changes and readings < 20:
        m.run(INTERVAL, others=0.95, own=1.0)
        g.tick()
        readings += 1
    assert torch.get_num_threads() == 1 and [n for _, n in g.changes] == [1]
    assert readings * INTERVAL > DWELL  # it waited for the reading to hold
    # the neighbour leaves: both threads again
    for _ in range(int(DWELL / INTERVAL) + 2):
        m.run(INTERVAL, others=0.0, own=1.0)
        g.tick()
    assert torch.get_num_threads() == 2 and [n for _, n in g.changes] == [1, 2]


def test_a_short_burst_elsewhere_changes_nothing(restore_threads):
    torch.set_num_threads(2)
    m = Machine()
    g = ThreadGovernor(2, m.sample, clock=lambda: m.now)
    for others in (0.0, 1.0, 0.0, 1.0, 0.0, 0.0):  # never busy for DWELL in a row
        m.run(INTERVAL, others=others, own=1.5)
        g.tick()
    assert g.changes == [] and torch.get_num_threads() == 2


def test_readings_come_no_more_often_than_the_interval(restore_threads):
    m = Machine()
    reads = []
    g = ThreadGovernor(2, lambda: reads.append(m.now) or m.sample(), clock=lambda: m.now)
    for _ in range(50):
        m.run(INTERVAL / 5, others=0.0, own=2.0)
        g.tick()
    # the first in the constructor, then at most one per INTERVAL of the 10 s that passed
    gaps = [b - a for a, b in zip(reads, reads[1:])]
    assert 8 <= len(gaps) <= 10 and min(gaps) >= INTERVAL - 1e-9


def test_the_programs_own_setting_becomes_the_ceiling(restore_threads):
    torch.set_num_threads(2)
    m = Machine()
    g = ThreadGovernor(2, m.sample, clock=lambda: m.now)
    torch.set_num_threads(1)  # the program (a Ray worker, say) asks for one thread
    for _ in range(10):
        m.run(INTERVAL, others=0.0, own=1.0)
        g.tick()
    assert g.ceiling == 1 and torch.get_num_threads() == 1 and g.changes == []


def test_an_unreadable_machine_is_left_alone(restore_threads):
    g = ThreadGovernor(2, lambda: None)
    g.tick()
    assert g.changes == []


def test_ppl_threads_fixes_or_turns_off_or_is_refused(monkeypatch, restore_threads):
    monkeypatch.setattr(threads, "_decided", False)
    monkeypatch.setattr(threads, "_governor", None)
    monkeypatch.setenv("PPL_THREADS", "1")
    assert threads.governor() is None and torch.get_num_threads() == 1
    monkeypatch.setattr(threads, "_decided", False)
    monkeypatch.setenv("PPL_THREADS", "off")
    torch.set_num_threads(2)
    assert threads.governor() is None and torch.get_num_threads() == 2
    for bad, message in (("many", "use a number of threads"), ("0", "at least 1")):
        monkeypatch.setattr(threads, "_decided", False)
        monkeypatch.setenv("PPL_THREADS", bad)
        with pytest.raises(ValueError, match=message):
            threads.governor()


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="reads Linux's /proc")
def test_the_real_readings_are_sane():
    cpus = frozenset(os.sched_getaffinity(0))
    tick = float(os.sysconf("SC_CLK_TCK"))
    first = threads._read_sample(cpus, tick)
    sum(i * i for i in range(2_000_000))  # some CPU time of our own
    second = threads._read_sample(cpus, tick)
    assert first is not None and second is not None
    seconds, busy, own = (b - a for a, b in zip(first, second))
    assert seconds > 0 and own > 0
    # our own time was spent on our cores: they were at least that busy (ticks are coarse)
    assert busy >= own - 0.05
    assert busy <= len(cpus) * seconds + 0.05


def test_a_cpu_model_consults_the_governor_before_each_forward_pass(monkeypatch):
    from ppl.models.hf import model as hf_model
    from ppl.models.hf.model import HFModel
    from ppl.models.hf.tiny import tiny_llama, tiny_tokenizer

    calls = []
    monkeypatch.setattr(hf_model, "before_cpu_pass", lambda: calls.append(1))
    tokenizer = tiny_tokenizer(["a b c d e f g"])
    lm = HFModel(tiny_llama(tokenizer, layers=1, hidden=16, heads=2), tokenizer)
    ctx = lm.context("a b")
    ctx.logprobs()  # one forward pass
    (ctx + lm.encode(" c", add_special_tokens=False)[0]).logprobs()  # and another
    assert len(calls) == 2
