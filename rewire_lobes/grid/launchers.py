"""How a cell's command is started: a local process, or a submitit job.

Every launcher runs the same command in the repository with the same environment
additions, stdout and stderr going to the cell's log; ``start`` returns a handle whose
``poll()`` is None while it runs, then the exit status, and whose ``kill()`` stops it.

* :class:`LocalLauncher` (``--launcher local``): a subprocess, killed with its runner (so
  a runner killed mid-grid leaves no orphan run writing into a folder that the rerun uses);
* :class:`SubmititLauncher`: ``submitit``'s ``LocalExecutor`` (``--launcher
  submitit-local``) or ``AutoExecutor`` on Slurm (``--launcher slurm``); each cell is a
  job running :func:`run_logged`. submitit is imported only when chosen.
"""

import ctypes
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from rewire_lobes.errors import OptionError

LAUNCHERS = ("local", "submitit-local", "slurm")
PR_SET_PDEATHSIG = 1


def cell_environment(overrides, base=None):
    """``base`` (default ``os.environ``) with ``overrides``; a None value removes the name."""
    env = dict(os.environ if base is None else base)
    for name, value in overrides.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = str(value)
    return env


def _die_with_parent():
    """In the child, before exec: SIGKILL when the runner dies (Linux)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def _open_log(log):
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    return open(log, "wb")


class LocalProcess:
    def __init__(self, process):
        self.process = process

    def poll(self):
        return self.process.poll()

    def kill(self, grace_seconds=10):
        """SIGTERM to the cell's process group, SIGKILL if it is still there after
        ``grace_seconds``."""
        for sent in (signal.SIGTERM, signal.SIGKILL):
            if self.process.poll() is not None:
                return
            try:
                os.killpg(self.process.pid, sent)
            except ProcessLookupError:
                return
            try:
                self.process.wait(timeout=grace_seconds)
            except subprocess.TimeoutExpired:
                continue


class LocalLauncher:
    """Each cell a subprocess of the runner, in its own process group."""

    poll_seconds = 0.02

    def start(self, command, cwd, env, log):
        with _open_log(log) as out:
            process = subprocess.Popen(
                command, cwd=cwd, env=cell_environment(env), stdout=out,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
        return LocalProcess(process)


def run_logged(command, cwd, env, log):
    """Runs ``command`` with ``env`` added, its output to ``log``; returns its exit status.

    What a submitit job runs (module-level, so that the job can unpickle it).
    """
    with _open_log(log) as out:
        return subprocess.call(command, cwd=cwd, env=cell_environment(env), stdout=out,
                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


class SubmititJob:
    def __init__(self, job, log):
        self.job, self.log = job, log

    def poll(self):
        if not self.job.done():
            return None
        try:
            return int(self.job.result())
        except Exception as err:  # the job itself failed: timeout, preemption, node lost
            with open(self.log, "a", encoding="utf-8") as out:
                out.write(f"\nsubmitit job {self.job.job_id} failed: {err}\n")
            return -1

    def kill(self):
        self.job.cancel(check=False)


class SubmititLauncher:
    """Each cell a submitit job; its files go to ``folder`` (``<R>/grid/submitit``).

    Arguments
    ---------
    folder : path
        submitit's folder for the jobs' pickles and its own logs.
    cluster : str
        ``local`` (``LocalExecutor``: jobs are local processes) or ``slurm``.
    timeout_min : int
        A job's time limit.
    slurm : dict, optional
        ``partition``, ``gpus_per_node``, ``cpus_per_task``, ``mem_gb`` for Slurm.
    """

    def __init__(self, folder, cluster="local", timeout_min=4320, slurm=None):
        try:
            import submitit
        except ImportError:
            raise OptionError(
                f"--launcher {'submitit-local' if cluster == 'local' else cluster} needs "
                "submitit: pip install submitit==1.5.4 (the project's 'cluster' extra)"
            ) from None
        self.folder = Path(folder)
        if cluster == "local":
            self.executor = submitit.LocalExecutor(folder=str(self.folder))
            self.executor.update_parameters(timeout_min=timeout_min)
            # LocalExecutor hides every GPU from a job that asks for none: keep the runner's.
            self.visible = {"CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES")}
            self.poll_seconds = 0.05
        elif cluster == "slurm":
            if shutil.which("sbatch") is None:
                raise OptionError("--launcher slurm: no sbatch on this machine (run the grid "
                                  "where Slurm jobs can be submitted, or use --launcher local)")
            slurm = slurm or {}
            self.executor = submitit.AutoExecutor(folder=str(self.folder), cluster="slurm")
            parameters = {"timeout_min": timeout_min,
                          "gpus_per_node": slurm.get("gpus_per_node", 1),
                          "cpus_per_task": slurm.get("cpus_per_task", 8),
                          "mem_gb": slurm.get("mem_gb", 64)}
            if slurm.get("partition"):
                parameters["slurm_partition"] = slurm["partition"]
            self.executor.update_parameters(**parameters)
            self.threads = parameters["cpus_per_task"]
            self.visible = {}
            self.poll_seconds = 5.0
        else:
            raise OptionError(f"unknown submitit cluster {cluster!r} (local or slurm)")
        self.cluster = cluster

    def start(self, command, cwd, env, log):
        env = {**self.visible, **env}
        job = self.executor.submit(run_logged, list(command), str(cwd), env, str(log))
        return SubmititJob(job, log)


def make_launcher(name, folder, timeout_min=4320, slurm=None):
    """The launcher called ``name`` (one of :data:`LAUNCHERS`)."""
    if name == "local":
        return LocalLauncher()
    if name == "submitit-local":
        return SubmititLauncher(folder, "local", timeout_min)
    if name == "slurm":
        return SubmititLauncher(folder, "slurm", timeout_min, slurm)
    raise OptionError(f"--launcher {name}: one of {', '.join(LAUNCHERS)}")
