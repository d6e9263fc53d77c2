"""Cold start: `gpt2 generate -m <local small folder> -n 1` and `gpt2 --help` wall time, next to
`python -c "import torch"` measured in the same run.

    python benchmarks/bench_startup.py [--shape small] [--repeats 5]

Targets: generate <= import torch + 0.6 s; --help < 0.5 s. The commands take turns, round by
round; medians of the rounds, and for generate the median of each round's difference from
import torch. The page cache is warm (the file was read once before), as on any second run.
`python -c "import torch"` includes the interpreter's teardown of torch's modules (~0.5 s here),
which gpt2 skips once a command is done (cli.py `_skip_teardown`); the same import ended with
`os._exit(0)` is shown beside it, so that the overhead can be read either way.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import checkpoint, median  # noqa: E402


def run_once(cmd: list[str]) -> float:
    env = dict(os.environ, NO_COLOR="1")
    t = time.perf_counter()
    subprocess.run(
        cmd,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    return time.perf_counter() - t


def walls(cmds: dict[str, list[str]], repeats: int) -> dict[str, list[float]]:
    """Each command's wall times, the commands taking turns (round by round), so that a
    machine whose speed drifts over the run affects them alike."""
    times: dict[str, list[float]] = {name: [] for name in cmds}
    for _ in range(repeats):
        for name, cmd in cmds.items():
            times[name].append(run_once(cmd))
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="small")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    gpt2 = shutil.which("gpt2")
    if gpt2 is None:
        sys.exit("the gpt2 command is not installed (pip install -e .)")
    folder = str(checkpoint(args.shape))
    gen = [gpt2, "generate", "-m", folder, "-n", "1", "--seed", "1", "hello"]
    run_once(gen)  # warm the page cache
    times = walls(
        {
            "import_torch_s": [sys.executable, "-c", "import torch"],
            # the same without the interpreter's teardown, which gpt2 skips (cli.py)
            "import_torch_no_teardown_s": [sys.executable, "-c", "import os, torch; os._exit(0)"],
            "generate_n1_s": gen,
            "help_s": [gpt2, "--help"],
        },
        args.repeats,
    )
    r = {name: median(t) for name, t in times.items()}
    # the median of the per-round differences: each round's two runs saw the same machine
    diffs = [g - t for g, t in zip(times["generate_n1_s"], times["import_torch_s"], strict=True)]
    r["generate_minus_torch_s"] = median(diffs)
    strict = zip(times["generate_n1_s"], times["import_torch_no_teardown_s"], strict=True)
    r["generate_minus_torch_no_teardown_s"] = median([g - t for g, t in strict])
    r = {k: round(v, 3) for k, v in r.items()}
    if args.json:
        print(json.dumps(r))
        return
    print(f"median of {args.repeats} rounds (the commands take turns), {args.shape} shape")
    print(f"  python -c 'import torch':        {r['import_torch_s']:.3f} s")
    print(
        f"  gpt2 generate -m <folder> -n 1:  {r['generate_n1_s']:.3f} s"
        f"  (import torch + {r['generate_minus_torch_s']:.3f} s; target <= + 0.6 s)"
    )
    print(
        f"  python -c 'import os, torch; os._exit(0)': {r['import_torch_no_teardown_s']:.3f} s"
        f"  (generate = this + {r['generate_minus_torch_no_teardown_s']:.3f} s: both skip the"
        " interpreter's teardown)"
    )
    print(f"  gpt2 --help:                     {r['help_s']:.3f} s  (target < 0.5 s)")


if __name__ == "__main__":
    main()
