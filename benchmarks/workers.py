"""What the framework-comparison benchmarks share: each framework runs in its own subprocess (two
OpenMP/oneDNN runtimes in one process distort both, and their peak memory could not be told apart),
with the same thread count and OpenMP wait policy, and reports JSON on its last stdout line."""

import json
import os
import resource
import subprocess
import sys


def peak_rss_mib() -> float:
    """This process's peak resident memory so far, MiB (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_worker(script: str, framework: str, argv: list, threads: int, omp_wait_policy: str) -> dict:
    """Run `script argv --framework FRAMEWORK` as a worker and return the JSON of its last stdout line."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
               GLOG_v=env.get("GLOG_v", "3"))
    if omp_wait_policy == "unset":
        env.pop("OMP_WAIT_POLICY", None)
    else:
        env["OMP_WAIT_POLICY"] = omp_wait_policy
    completed = subprocess.run([sys.executable, os.path.abspath(script), *argv, "--framework", framework],
                               env=env, capture_output=True, text=True)
    if completed.returncode != 0:
        sys.stderr.write(completed.stderr[-4000:])
        name = os.path.basename(script).removesuffix(".py")
        raise SystemExit(f"{name}: the {framework} worker failed with exit code {completed.returncode}")
    return json.loads(completed.stdout.strip().splitlines()[-1])
