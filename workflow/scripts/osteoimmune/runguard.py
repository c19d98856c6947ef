"""After a kill: a stale lock is removed before the next run, and no job outlives its workflow.

``python -m osteoimmune.runguard [--directory DIR]`` runs before Snakemake in ``make run``. A
killed Snakemake leaves ``.snakemake/locks`` behind, and every later run stops with a
LockException until ``snakemake --unlock``. The guard looks at the processes of this machine:
when no Snakemake and no job of one runs in DIR, the lock is stale and is removed; when one
does, it says which (pid) and what to do, and exits with status 1. Outputs the killed run left
unfinished are redone by ``--rerun-incomplete``, which ``make run`` passes.

:func:`follow_workflow` ties a rule script to the Snakemake process that started it: when that
process dies, even by SIGKILL, the script stops too instead of writing the outputs a resumed
run writes. ``osteoimmune.runlog.logged`` calls it, so every rule script does. Linux only (it
reads ``/proc``); elsewhere both do nothing.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import NamedTuple

from osteoimmune.errors import RunInProgressError

log = logging.getLogger("osteoimmune")

PROC = Path("/proc")
# From <linux/prctl.h>: the signal a process gets when the thread that forked it exits.
PR_SET_PDEATHSIG = 1
# Options of the Python interpreter that take a value (so the value is not the program).
PYTHON_OPTIONS_WITH_VALUE = {"-W", "-X", "--check-hash-based-pycs"}


class Process(NamedTuple):
    """A process of a workflow: a Snakemake process, or a rule script (a job) of one."""

    pid: int
    kind: str  # "snakemake" or "job"
    command: str


def program(argv: list[str]) -> str:
    """The program a command line runs: its executable, or the script or module Python runs.

    ``['/x/.venv/bin/python3', '/x/.venv/bin/snakemake', '--cores', '2']`` and
    ``['python', '-m', 'snakemake']`` both give ``'snakemake'``.
    """
    if not argv:
        return ""
    if not Path(argv[0]).name.startswith("python"):
        return Path(argv[0]).name
    args = iter(argv[1:])
    for arg in args:
        if arg == "-m":
            return next(args, "")
        if arg.startswith("-m"):
            return arg[2:]
        if arg == "-c":
            return ""
        if arg in PYTHON_OPTIONS_WITH_VALUE:
            next(args, None)
        elif not arg.startswith("-"):
            return Path(arg).name
    return ""


def _argv(pid: int) -> list[str]:
    raw = (PROC / str(pid) / "cmdline").read_bytes()
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of ``pid``, or None once it is gone."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # the command name, in parentheses, may hold spaces and parentheses itself
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), int(fields[19])


def workflow_processes(workdir: str | os.PathLike) -> list[Process]:
    """Snakemake processes and rule scripts of this user running in ``workdir``.

    A process runs in ``workdir`` when that is its current directory (Snakemake changes into
    its ``--directory``); a rule script is a process running a script Snakemake wrote to
    ``.snakemake/scripts/``.
    """
    workdir = Path(workdir).resolve()
    scripts = ".snakemake/scripts/"
    found = []
    for entry in PROC.glob("[0-9]*"):
        pid = int(entry.name)
        try:
            if pid == os.getpid() or Path(os.readlink(entry / "cwd")) != workdir:
                continue
            argv = _argv(pid)
        except OSError:  # gone meanwhile, or another user's
            continue
        if program(argv) == "snakemake":
            found.append(Process(pid, "snakemake", " ".join(argv)))
        elif any(scripts in arg for arg in argv):
            found.append(Process(pid, "job", " ".join(argv)))
    return sorted(found)


def stale_locks(workdir: str | os.PathLike) -> list[Path]:
    """The lock files Snakemake left in ``workdir`` (none after a run that ended by itself)."""
    return sorted((Path(workdir) / ".snakemake" / "locks").glob("*.lock"))


def recover(workdir: str | os.PathLike = ".", *, grace: float = 10.0) -> list[Path]:
    """Make ``workdir`` ready for a new Snakemake run after an interrupted one.

    Jobs left running by a killed Snakemake stop by themselves (:func:`follow_workflow`);
    they get ``grace`` seconds to do so. Then, if nothing of a workflow runs in ``workdir``,
    the locks are removed as ``snakemake --unlock`` does (it removes ``.snakemake/locks``).

    Returns
    -------
    The lock files removed (none when there were none, or off Linux, where the processes
    are not looked at and a stale lock needs ``snakemake --unlock``).

    Raises
    ------
    RunInProgressError
        A Snakemake process, or a job of one, runs in ``workdir``; the message names them.
    """
    if not PROC.is_dir():  # no process table to look at: leave the lock to Snakemake
        return []
    deadline = time.monotonic() + grace
    running = workflow_processes(workdir)
    while running and all(p.kind == "job" for p in running) and time.monotonic() < deadline:
        time.sleep(0.5)
        running = workflow_processes(workdir)
    if running:
        raise RunInProgressError(_busy_message(Path(workdir).resolve(), running))
    locks = stale_locks(workdir)
    if locks:
        shutil.rmtree(Path(workdir) / ".snakemake" / "locks")
    return locks


def _busy_message(workdir: Path, running: list[Process]) -> str:
    listed = "\n".join(f"  pid {p.pid} ({p.kind}): {p.command[:200]}" for p in running)
    snakemakes = " ".join(str(p.pid) for p in running if p.kind == "snakemake")
    if snakemakes:
        return (
            f"Snakemake is already running in {workdir}:\n{listed}\n"
            "Wait for it to finish, or stop it: Ctrl-C in its terminal stops its jobs, "
            f"`kill {snakemakes}` lets the running ones finish. Then run again; outputs it "
            "leaves unfinished are redone."
        )
    pids = " ".join(str(p.pid) for p in running)
    return (
        f"Jobs of an interrupted Snakemake run are still running in {workdir}:\n{listed}\n"
        f"Stop them (`kill {pids}`), then run again; outputs they leave unfinished are redone."
    )


def follow_workflow() -> int | None:
    """Stop this process when the Snakemake process running it as a job dies.

    Snakemake starts a rule script as ``bash -c '... python script.py'``: bash 5.1 and later
    replace themselves with Python, older ones stay in between. A parent-death signal
    (``PR_SET_PDEATHSIG``) sends SIGTERM when the parent dies, from the kernel, whatever the
    script is doing; when the parent is such a shell, a daemon thread also watches Snakemake
    and sends SIGTERM once it is gone. A job orphaned before this call (its Snakemake died
    while the script imported its libraries) stops at once.

    Returns
    -------
    The pid of the Snakemake process followed; None outside a Snakemake job or off Linux.
    """
    if not sys.platform.startswith("linux") or not _in_snakemake_job():
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        return None
    workflow = _snakemake_ancestor(os.getppid())
    if workflow is None:
        # Orphaned (adopted by init): Snakemake died while the script imported its libraries.
        # Otherwise Snakemake runs inside another program (its Python API, a notebook): the
        # parent-death signal follows that process.
        if os.getppid() == 1:
            _stop("the Snakemake process that started this job is gone")
        return None
    pid, started = workflow
    if pid != os.getppid():
        threading.Thread(target=_watch, args=(pid, started), daemon=True).start()
    return pid


def _in_snakemake_job() -> bool:
    # Snakemake's preamble of a rule script first thing unpickles the job's `snakemake`
    # object: into the script's own globals (Snakemake 9.17+), or into snakemake.script
    # (before); its class is named Snakemake either way
    for module in ("__main__", "snakemake.script"):
        job = getattr(sys.modules.get(module), "snakemake", None)
        if type(job).__name__ == "Snakemake":
            return True
    return False


def _snakemake_ancestor(pid: int) -> tuple[int, int] | None:
    """(pid, start time) of the nearest Snakemake process among ``pid`` and its ancestors."""
    while pid > 0:
        stat = _stat(pid)
        if stat is None:
            return None
        try:
            if program(_argv(pid)) == "snakemake":
                return pid, stat[1]
        except OSError:
            return None
        pid = stat[0]
    return None


def _watch(pid: int, started: int) -> None:
    # the start time tells Snakemake from a later process given the same pid
    while (stat := _stat(pid)) is not None and stat[1] == started:
        time.sleep(1.0)
    _stop(f"Snakemake (pid {pid}) is gone")


def _stop(reason: str) -> None:
    log.error(
        "%s: stopping this job so that it does not write outputs a new run writes too; "
        "`make run` (or `snakemake --rerun-incomplete`) redoes it",
        reason,
    )
    os.kill(os.getpid(), signal.SIGTERM)


def main(argv: list[str] | None = None) -> int:
    """Command line: recover a working directory before ``snakemake`` runs in it."""
    parser = argparse.ArgumentParser(
        prog="python -m osteoimmune.runguard",
        description="Remove the stale lock of an interrupted Snakemake run, unless one still runs.",
    )
    parser.add_argument("--directory", "-d", default=".", help="Snakemake's working directory")
    parser.add_argument(
        "--grace", type=float, default=10.0, help="seconds left to orphaned jobs to stop"
    )
    args = parser.parse_args(argv)
    try:
        locks = recover(args.directory, grace=args.grace)
    except RunInProgressError as error:
        print(f"runguard: {error}", file=sys.stderr)
        return 1
    if locks:
        print(
            f"runguard: removed the lock of an interrupted run in "
            f"{Path(args.directory).resolve()} (no Snakemake runs there); outputs it left "
            "unfinished are redone (--rerun-incomplete).",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
