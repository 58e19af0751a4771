"""Cold start time of ``lql -e 'SHOW MODELS'`` (a fresh process each run).

    python benchmarks/bench_startup.py [RUNS]

Runs the installed ``lql`` script when it is on PATH, else ``python -m lql``,
in an empty temporary directory, and prints min / median / max wall time and
the median CPU time of the child (a steadier number on a busy machine).
The target is a median under 0.4 s. For what the time goes to, see
``python -X importtime -m lql -e 'SHOW MODELS'``.
"""

from __future__ import annotations

import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main(runs: int = 10) -> int:
    exe = shutil.which("lql")
    cmd = [exe] if exe else [sys.executable, "-m", "lql"]
    env = dict(os.environ)
    if not exe:
        env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"]
                                         if env.get("PYTHONPATH") else "")
    env.pop("LQL_PATH", None)
    times, cpu = [], []
    with tempfile.TemporaryDirectory() as cwd:
        subprocess.run(cmd + ["-e", "SHOW MODELS"], cwd=cwd, env=env, check=True,
                       capture_output=True)                       # warm the OS file cache
        for _ in range(runs):
            r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            subprocess.run(cmd + ["-e", "SHOW MODELS"], cwd=cwd, env=env, check=True,
                           capture_output=True)
            times.append(time.perf_counter() - t0)
            r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu.append(r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime)
    print(f"lql -e 'SHOW MODELS' cold start ({' '.join(cmd)}), {runs} runs: "
          f"min {min(times):.3f} s, median {statistics.median(times):.3f} s, "
          f"max {max(times):.3f} s; CPU (user+sys) median {statistics.median(cpu):.3f} s "
          f"(wall time rises when the machine is busy, CPU time much less; "
          f"load average now {os.getloadavg()[0]:.1f})")
    return 0


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(description="Cold start time of lql -e 'SHOW MODELS'.")
    ap.add_argument("runs", nargs="?", type=int, default=10)
    sys.exit(main(ap.parse_args().runs))
