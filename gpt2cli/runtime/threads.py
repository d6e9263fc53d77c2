"""How many CPU threads decoding uses, chosen when a model is loaded.

torch's CPU wheel runs its parallel regions on GNU OpenMP (libgomp), one thread per core by
default. Decoding one token runs ~100 short parallel regions, and each waits for its slowest
thread: when another process holds one of the cores, the thread scheduled there makes every
region wait for the kernel to give it a turn. Measured on a 2-core AMD EPYC (Zen 3) with one
`yes > /dev/null` running, float32 decode of GPT-2 small fell from 25 tok/s to ~6 with 2 threads,
where 1 thread ran at ~16. So the default counts the cores that are actually idle, over a sample
of /proc/stat, and uses that many threads (at least 1, at most the cores this process may run
on). `--threads`, or OMP_NUM_THREADS in the environment, overrides it. The command line starts
the sample when it starts (`start_sample`) and the CPU time this process spends meanwhile (a
core busy parsing the command) is counted as idle, so no time is spent waiting for it; without
a recent start, the sample is 50 ms of sleep.

libgomp's idle threads also spin before they sleep, which costs a busy machine's other
processes (and our own threads) CPU time: `configure_openmp`, called before torch is imported,
makes them sleep at once when fewer threads than cores will run.
"""

from __future__ import annotations

import functools
import os
import sys
import time

SAMPLE_S = 0.05
STALE_S = 5.0  # a started sample older than this says little about the machine now

_started: tuple[float, float, float] | None = None  # (time, idle, total) at start_sample


def _cpu_times() -> tuple[float, float]:
    """(idle + iowait, total) jiffies of the whole machine, from /proc/stat, with the jiffies
    this process has run so far counted as idle rather than busy."""
    with open("/proc/stat", encoding="ascii") as f:
        values = [int(v) for v in f.readline().split()[1:9]]
    own = os.times()
    mine = (own.user + own.system) * os.sysconf("SC_CLK_TCK")
    return values[3] + values[4] + mine, sum(values)


def start_sample() -> None:
    """Start the idle-CPU sample now (the command line calls this first thing), so that
    `default_threads` can read it later without sleeping."""
    global _started
    try:
        _started = (time.monotonic(), *_cpu_times())
    except (OSError, ValueError, IndexError):
        _started = None


def idle_cpus(window: float = SAMPLE_S) -> float:
    """How many CPUs were idle since `start_sample` (at least `window` seconds ago, and not
    stale), or else over `window` seconds of sleep; this process's own CPU time counts as
    idle."""
    if _started is not None and window <= time.monotonic() - _started[0] <= STALE_S:
        idle0, total0 = _started[1:]
    else:
        idle0, total0 = _cpu_times()
        time.sleep(window)
    idle1, total1 = _cpu_times()
    cpus = os.cpu_count() or 1
    return min(cpus, cpus * (idle1 - idle0) / max(total1 - total0, 1))


def usable_cpus() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


@functools.cache
def default_threads() -> int | None:
    """The thread count for a machine as busy as it is now: the idle CPUs, rounded, at least 1
    and at most the usable ones (sampled once per process). None when OMP_NUM_THREADS is set
    (the user chose) or the load cannot be read (not Linux: torch's own default stands)."""
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    try:
        idle = idle_cpus()
    except (OSError, ValueError, IndexError):
        return None
    return max(1, min(usable_cpus(), int(idle + 0.5)))


def configure_openmp(threads: int | None = None) -> None:
    """Before torch is imported (libgomp reads its environment once): on a busy machine, where
    fewer threads than cores will run, idle OpenMP threads sleep at once instead of spinning
    (OMP_WAIT_POLICY=PASSIVE), unless the user chose a policy. Not on an idle machine: measured
    on the 2-core EPYC, int8 decode at 2 threads ran 71 tok/s spinning and 65 passive.
    `threads` is the user's --threads (None: the default_threads choice)."""
    if "torch" in sys.modules or "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        return
    chosen = threads if threads is not None else default_threads()
    if chosen is not None and chosen < usable_cpus():
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
