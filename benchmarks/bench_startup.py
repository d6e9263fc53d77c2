"""Cold start: `gpt2 generate -m <local small folder> -n 1` and `gpt2 --help` wall time, next to
`python -c "import torch"` measured in the same run.

    python benchmarks/bench_startup.py [--shape small] [--repeats 5]

Targets: generate <= import torch + 0.6 s; --help < 0.5 s. Median of the repeats; the page cache
is warm (the file was read once before), as on any second run.
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


def wall(cmd: list[str], repeats: int) -> float:
    env = dict(os.environ, NO_COLOR="1")
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run(
            cmd,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        times.append(time.perf_counter() - t)
    return median(times)


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
    wall(gen, 1)  # warm the page cache
    r = {
        "import_torch_s": wall([sys.executable, "-c", "import torch"], args.repeats),
        "generate_n1_s": wall(gen, args.repeats),
        "help_s": wall([gpt2, "--help"], args.repeats),
    }
    r["generate_minus_torch_s"] = r["generate_n1_s"] - r["import_torch_s"]
    r = {k: round(v, 3) for k, v in r.items()}
    if args.json:
        print(json.dumps(r))
        return
    print(f"median of {args.repeats}, {args.shape} shape")
    print(f"  python -c 'import torch':        {r['import_torch_s']:.3f} s")
    print(
        f"  gpt2 generate -m <folder> -n 1:  {r['generate_n1_s']:.3f} s"
        f"  (import torch + {r['generate_minus_torch_s']:.3f} s; target <= + 0.6 s)"
    )
    print(f"  gpt2 --help:                     {r['help_s']:.3f} s  (target < 0.5 s)")


if __name__ == "__main__":
    main()
