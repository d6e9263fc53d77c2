"""The default thread count's idle-CPU sample: started when the command line starts, with this
process's own CPU time counted as idle, so that no time is spent sleeping for it."""

from __future__ import annotations

import pytest

from gpt2cli.runtime import threads


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch) -> dict[str, float]:
    """A scripted 4-CPU machine: /proc/stat's idle and total jiffies and a clock."""
    state = {"idle": 0.0, "total": 0.0, "now": 100.0}
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 4)
    monkeypatch.setattr(threads, "_cpu_times", lambda: (state["idle"], state["total"]))
    monkeypatch.setattr(threads.time, "monotonic", lambda: state["now"])
    monkeypatch.setattr(threads, "_started", None)
    return state


def test_started_sample_is_read_without_sleeping(
    machine: dict[str, float], monkeypatch: pytest.MonkeyPatch
) -> None:
    threads.start_sample()
    machine.update(idle=300, total=400, now=100.3)  # 0.3 s: 3 of 4 CPUs idle
    monkeypatch.setattr(threads.time, "sleep", lambda s: pytest.fail("slept"))
    assert threads.idle_cpus() == pytest.approx(3.0)


def test_stale_or_short_samples_sleep_instead(
    machine: dict[str, float], monkeypatch: pytest.MonkeyPatch
) -> None:
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        machine.update(idle=machine["idle"] + 10, total=machine["total"] + 20)

    monkeypatch.setattr(threads.time, "sleep", sleep)
    threads.start_sample()
    machine.update(now=100.0 + threads.STALE_S + 1)
    assert threads.idle_cpus() == pytest.approx(2.0)  # the last 50 ms: half idle
    threads.start_sample()
    machine.update(now=machine["now"] + threads.SAMPLE_S / 2)
    assert threads.idle_cpus() == pytest.approx(2.0)
    assert slept == [threads.SAMPLE_S] * 2


def test_own_cpu_time_counts_as_idle(monkeypatch: pytest.MonkeyPatch) -> None:
    """Jiffies this process ran are moved from busy to idle: a core busy parsing our own
    command line is not a core someone else holds."""
    import io
    import os

    stat = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 ...\n"  # user nice system idle iowait ...
    monkeypatch.setattr(threads, "open", lambda *a, **k: io.StringIO(stat), raising=False)
    hz = os.sysconf("SC_CLK_TCK")
    for user, system in ((0.0, 0.0), (1.0, 0.5)):
        ran = os.times_result((user, system, 0.0, 0.0, 0.0))
        monkeypatch.setattr(threads.os, "times", lambda ran=ran: ran)
        assert threads._cpu_times() == (850 + (user + system) * hz, 1000)
