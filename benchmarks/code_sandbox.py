"""Throughput of the code sandbox vs its peers, side by side: HumanEval's canonical solutions.

    .venv/bin/python benchmarks/code_sandbox.py --concurrency 2 --rounds 3

Three ways to run each of the 164 canonical programs plus its tests, at the same concurrency:
  ours        `rewards.sandbox.Sandbox` (warm worker pool: fork, fresh pid/net/mount/ipc/uts
              namespaces, cgroup pids+memory, uid drop, rlimits, judge process), all isolation on;
  subprocess  `subprocess.run([python, file], timeout=...)`, one file per program (no isolation),
              with the interpreter the caller runs (the project's venv), as a plain harness would;
  bwrap       one bubblewrap call per program: read-only /usr and interpreter, tmpfs /tmp,
              `--unshare-pid/net/ipc/uts --die-with-parent --new-session --clearenv`, then `setpriv` to an
              unprivileged uid with no_new_privs and `prlimit` (no cgroup: bwrap has none), running
              the base interpreter on the file; `bwrap -I -S` is the same with `python -I -S`.
Methods run in interleaved rounds (the machine is shared), each round over all programs; the
table gives the median round's programs/s, latency percentiles of single executions over all
rounds (ours: the worker's wall time from fork to verdict; peers: each `subprocess.run` call), and
the ratios of ours to each peer. Every execution must pass (exit 0 / score 1.0).
Needs root and bubblewrap (`make install` installs it as root). Numbers are for this machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from answerkey.envs.humaneval import load_rows
from answerkey.rewards.sandbox import Job, Sandbox

TIMEOUT_S = 10.0


def programs(rows: list[dict], folder: Path) -> list[Path]:
    paths = []
    for row in rows:
        path = folder / f"{row['task_id'].replace('/', '_')}.py"
        path.write_text(f"{row['prompt']}{row['canonical_solution']}\n{row['test']}\ncheck({row['entry_point']})\n")
        paths.append(path)
    return paths


def bwrap_command(path: Path, fast: bool) -> list[str]:
    prefix = sys.base_prefix
    python = os.path.join(prefix, "bin", f"python{sys.version_info.major}.{sys.version_info.minor}")
    parents = [str(p) for p in reversed(Path(prefix).parents) if str(p) != "/"]
    cmd = ["bwrap", *[a for d in parents for a in ("--perms", "0755", "--dir", d)],
           "--ro-bind", "/usr", "/usr", "--ro-bind", prefix, prefix, "--ro-bind", str(path), "/prog.py",
           "--dev", "/dev", "--tmpfs", "/tmp", "--chdir", "/tmp",
           "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--die-with-parent",
           "--new-session", "--clearenv"]
    for link in ("bin", "lib", "lib64", "sbin"):
        if os.path.islink(f"/{link}"):
            cmd += ["--symlink", os.readlink(f"/{link}"), f"/{link}"]
    cmd += ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--no-new-privs",
            "prlimit", "--nofile=64", "--fsize=16777216", "--core=0", f"--cpu={int(TIMEOUT_S) + 2}", "--",
            python, *(["-I", "-S"] if fast else []), "/prog.py"]
    return cmd


def run_commands(commands: list[list[str]], concurrency: int) -> tuple[float, list[float]]:
    """(wall seconds for all, latency of each) running `commands` `concurrency` at a time."""
    def one(cmd: list[str]) -> float:
        started = time.perf_counter()
        out = subprocess.run(cmd, timeout=TIMEOUT_S, capture_output=True)
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[-2:])} failed ({out.returncode}): {out.stderr[-300:]!r}")
        return time.perf_counter() - started

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        latencies = list(pool.map(one, commands))
    return time.perf_counter() - started, latencies


def run_ours(box: Sandbox, jobs: list[Job]) -> tuple[float, list[float]]:
    started = time.perf_counter()
    outcomes = box.run(jobs)
    wall = time.perf_counter() - started
    bad = [(j.entry_point, o) for j, o in zip(jobs, outcomes, strict=True)
           if o.load != "ok" or not all(o.units)]
    if bad:
        raise RuntimeError(f"ours: {len(bad)} canonical solutions did not pass, e.g. {bad[0]}")
    return wall, [o.wall_s for o in outcomes]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", type=int, default=2,
                        help="programs in flight, the same for every method")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per method")
    parser.add_argument("--limit", type=int, default=164, help="programs per round (HumanEval has 164)")
    args = parser.parse_args()
    if shutil.which("bwrap") is None:
        sys.exit("bubblewrap is not installed (apt-get install bubblewrap)")
    rows = load_rows()[: args.limit]
    jobs = [Job(r["prompt"] + r["canonical_solution"], r["test"], r["entry_point"], TIMEOUT_S,
                prelude=r["prompt"]) for r in rows]
    folder = Path(tempfile.mkdtemp(prefix="answerkey-bench-"))
    folder.chmod(0o755)
    paths = programs(rows, folder)
    for p in paths:
        p.chmod(0o644)
    methods = {
        "ours": None,
        "subprocess": [[sys.executable, str(p)] for p in paths],
        "bwrap": [bwrap_command(p, fast=False) for p in paths],
        "bwrap -I -S": [bwrap_command(p, fast=True) for p in paths],
    }
    rates: dict[str, list[float]] = {m: [] for m in methods}
    latencies: dict[str, list[float]] = {m: [] for m in methods}
    with Sandbox(workers=args.concurrency) as box:
        box.run(jobs[: args.concurrency * 4])  # warm-up, as the RL loop's first step would
        for _ in range(args.rounds):
            for name, commands in methods.items():
                if commands is None:
                    wall, lat = run_ours(box, jobs)
                else:
                    wall, lat = run_commands(commands, args.concurrency)
                rates[name].append(len(rows) / wall)
                latencies[name] += lat
    shutil.rmtree(folder)
    report(args, len(rows), rates, latencies)


def report(args, n: int, rates: dict[str, list[float]], latencies: dict[str, list[float]]) -> None:
    ours = statistics.median(rates["ours"])
    print(f"HumanEval canonical solutions, {n} programs x {args.rounds} rounds, "
          f"concurrency {args.concurrency}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(f"{'method':<14}{'programs/s':>11}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'ours is':>10}")
    for name in rates:
        rate, lat = statistics.median(rates[name]), latencies[name]
        print(f"{name:<14}{rate:>11.1f}{1000 * percentile(lat, 0.5):>9.1f}{1000 * percentile(lat, 0.9):>9.1f}"
              f"{1000 * percentile(lat, 0.99):>9.1f}{ours / rate:>9.2f}x")
    per_round = "; ".join(f"{m} " + ", ".join(f"{r:.1f}" for r in v) for m, v in rates.items())
    print("rounds (programs/s): " + per_round)


if __name__ == "__main__":
    main()
