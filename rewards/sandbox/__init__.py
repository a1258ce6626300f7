"""The code sandbox: run untrusted Python programs against unit tests, isolated, bounded and killed.

    from answerkey.rewards.sandbox import Job, Sandbox, SandboxUnavailable
    with Sandbox(workers=2) as box:                  # raises SandboxUnavailable if isolation is missing
        outcomes = box.run([Job(program, tests, "add", timeout_s=5.0)])

Most callers want `answerkey.rewards.code` (`run_tests`, `run_tests_batch`), which keeps one
`Sandbox` per process and maps each `Outcome` onto a `Score`. The modules, caller's side first:
  `pool`    `Sandbox`: starts the worker processes, checks the isolation, runs batches of jobs.
  `cgroup`  per-slot cgroups (pids, memory) that bound a job's whole process tree.
  `probe`   the self-check program and its asserts, run through the real path before any job.
  `worker`  one slot's process, started as a script (`python -I -S worker.py`): forks the isolated
            child per job and the judge. Stdlib only.
  `judge`   the candidate's server and the judge that runs the tests. Stdlib only.
  `wire`    the frames and exact-type value encoding between candidate and judge. Stdlib only.
`worker`, `judge` and `wire` run outside this package (as top-level modules of a bare interpreter)
and import each other by file name; nothing in the caller imports them.
"""

from answerkey.rewards.sandbox.pool import Job, Limits, Outcome, Sandbox, SandboxUnavailable

__all__ = ["Job", "Limits", "Outcome", "Sandbox", "SandboxUnavailable"]
