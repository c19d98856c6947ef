"""After a kill (issue 18): no job outlives Snakemake, and `make run` resumes by itself.

`make run` runs ``python -m osteoimmune.runguard`` in the working directory, then
``snakemake --rerun-incomplete``; the tests run both the same way. A tiny workflow of our own
(one rule script that waits for a file) shows the guard and the jobs' tie to Snakemake; the
real workflow on one small mirrored dataset shows that a killed and resumed run writes the same
tables, byte for byte, as an uninterrupted one.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import snakemake, snakemake_command

from osteoimmune.runguard import (
    RunInProgressError,
    program,
    recover,
    stale_locks,
    workflow_processes,
)

pytestmark = pytest.mark.e2e

TIMEOUT = 600  # seconds; generous, for a loaded machine: the tests poll, they do not time

TINY_SNAKEFILE = """
if config.get("shell_between"):
    # a command after the script keeps bash between Snakemake and Python (bash 5.1+ otherwise
    # replaces itself with Python), as older bash always does
    shell.suffix("; true")


rule wait_for_release:
    output:
        "done.txt",
    log:
        "job.log",
    script:
        "job.py"
"""

TINY_SCRIPT = """
import os
import time
from pathlib import Path

from osteoimmune.runlog import logged

with logged(snakemake.log[0]):
    Path("job.pid").write_text(str(os.getpid()))
    while not Path("release").exists():
        time.sleep(0.2)
    Path(snakemake.output[0]).write_text("done")
"""


# A script that does not use osteoimmune.runlog, so nothing stops it when Snakemake dies.
UNTIED_SCRIPT = """
import os
import time
from pathlib import Path

Path("job.pid").write_text(str(os.getpid()))
while not Path("release").exists():
    time.sleep(0.2)
"""


def tiny_workflow(folder: Path, *config: str, script: str = TINY_SCRIPT) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "Snakefile").write_text(TINY_SNAKEFILE)
    (folder / "job.py").write_text(script)
    command = [sys.executable, "-m", "snakemake", "--cores", "1", "--rerun-incomplete"]
    return [*command, "--config", *config] if config else command


def start(command: list[str], workdir: Path) -> subprocess.Popen:
    """Start Snakemake in the background, in a process group of its own (killed as a whole)."""
    return subprocess.Popen(
        command,
        cwd=workdir,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def guard(workdir: Path) -> subprocess.CompletedProcess:
    """The first step of `make run`, run the way the Makefile runs it."""
    return subprocess.run(
        [sys.executable, "-m", "osteoimmune.runguard"],
        cwd=workdir,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )


def wait_until(condition, what: str):
    deadline = time.monotonic() + TIMEOUT
    while not (value := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"waited {TIMEOUT} s for {what}")
        time.sleep(0.2)
    return value


def alive(pid: int) -> bool:
    """The process runs (an exited process not yet reaped, a zombie, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


linux_only = pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads /proc")


@pytest.mark.parametrize(
    "argv",
    [
        ["/x/.venv/bin/python3", "/x/.venv/bin/snakemake", "--cores", "2"],
        ["python", "-m", "snakemake", "--cores", "2"],
        ["python3.11", "-X", "dev", "-msnakemake"],
        ["/x/.venv/bin/snakemake", "--unlock"],
    ],
)
def test_snakemake_is_recognised_in_its_command_lines(argv):
    assert program(argv) == "snakemake"


@pytest.mark.parametrize(
    "argv",
    [
        ["/x/.venv/bin/python3", "/w/.snakemake/scripts/tmpab12.cluster_cells.py"],
        ["python", "-m", "osteoimmune.runguard"],
        ["python", "-c", "import snakemake"],
        ["bash", "-c", "set -euo pipefail; python snakemake"],
    ],
)
def test_other_command_lines_are_not_snakemake(argv):
    assert program(argv) != "snakemake"


@linux_only
def test_guard_names_a_running_snakemake_then_removes_the_lock_it_left(tmp_path):
    command = tiny_workflow(tmp_path)
    proc = start(command, tmp_path)
    try:
        job = int(wait_until(lambda: _read(tmp_path / "job.pid"), "the job to start"))
        refused = guard(tmp_path)
        assert refused.returncode == 1
        assert f"pid {proc.pid} (snakemake)" in refused.stderr
        assert "already running" in refused.stderr and f"kill {proc.pid}" in refused.stderr
        assert stale_locks(tmp_path)  # untouched while Snakemake runs

        proc.kill()  # SIGKILL: Snakemake cannot remove its lock
        proc.wait()
        wait_until(lambda: not alive(job), "the job to stop")
        assert stale_locks(tmp_path)
    finally:
        kill_group(proc)

    recovered = guard(tmp_path)
    assert recovered.returncode == 0, recovered.stderr
    assert "removed the lock of an interrupted run" in recovered.stderr
    assert not stale_locks(tmp_path)
    (tmp_path / "release").touch()
    resumed = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (tmp_path / "done.txt").read_text() == "done"
    assert not stale_locks(tmp_path)
    assert guard(tmp_path).stderr == ""  # a finished run leaves nothing to recover


@linux_only
@pytest.mark.parametrize("shell_between", [False, True], ids=["python-child", "bash-between"])
def test_a_job_stops_when_snakemake_alone_is_killed(tmp_path, shell_between):
    command = tiny_workflow(tmp_path, f"shell_between={shell_between}")
    proc = start(command, tmp_path)
    try:
        job = int(wait_until(lambda: _read(tmp_path / "job.pid"), "the job to start"))
        parent = int(Path(f"/proc/{job}/stat").read_text().rsplit(")", 1)[1].split()[1])
        if shell_between:
            assert parent != proc.pid and program(_argv(parent)) == "bash"
        proc.kill()  # SIGKILL of Snakemake alone: its job is not signalled by anyone else
        proc.wait()
        wait_until(lambda: not alive(job) and not alive(parent), "the job to stop")
        assert not workflow_processes(tmp_path)
        if shell_between:  # the watcher thread, not the kernel, stopped it: it says why
            assert f"Snakemake (pid {proc.pid}) is gone" in (tmp_path / "job.log").read_text()
        assert not (tmp_path / "done.txt").exists()
    finally:
        kill_group(proc)


@linux_only
def test_guard_names_a_job_left_running_and_keeps_the_lock(tmp_path):
    proc = start(tiny_workflow(tmp_path, script=UNTIED_SCRIPT), tmp_path)
    try:
        job = int(wait_until(lambda: _read(tmp_path / "job.pid"), "the job to start"))
        proc.kill()
        proc.wait()
        assert alive(job)
        with pytest.raises(RunInProgressError, match=rf"pid {job} \(job\)") as error:
            recover(tmp_path, grace=1)
        assert "Jobs of an interrupted Snakemake run" in str(error.value)
        assert f"kill {job}" in str(error.value)
        assert stale_locks(tmp_path)
    finally:
        kill_group(proc)
    wait_until(lambda: not alive(job), "the job to be killed")
    assert recover(tmp_path, grace=1)
    assert not stale_locks(tmp_path)


DATASET = "shalek2014_bmdc_lps"  # 131 cells: the smallest registered dataset
TARGET = f"results/{DATASET}/{DATASET}.h5ad"  # read, QC, cluster, annotate and score


@linux_only
def test_a_killed_and_resumed_run_writes_the_same_tables(mirror, tmp_path):
    # markers only (no reference model), to keep the run short; the rules are the same
    config = [
        f'datasets=["{DATASET}"]',
        f"mirror={mirror}",
        "offline=True",
        "annotation={reference: none}",
    ]
    uninterrupted, interrupted = tmp_path / "uninterrupted", tmp_path / "interrupted"
    for workdir in (uninterrupted, interrupted):
        workdir.mkdir()
    make_run(uninterrupted, config)

    results = interrupted / "results" / DATASET
    command = workflow_command(interrupted, config)
    # 1. Snakemake alone is killed while a job runs, once QC's h5ad is written (QC writing its
    # tables, or clustering): the job stops too
    proc = start(command, interrupted)
    try:
        wait_until(lambda: (results / "intermediate" / "qc.h5ad").is_file(), "QC to finish")
        wait_until(lambda: _jobs(interrupted), "the next job to start")
        assert proc.poll() is None
        proc.kill()
        proc.wait()
        wait_until(lambda: not workflow_processes(interrupted), "the jobs to stop")
    finally:
        kill_group(proc)
    # 2. resumed the `make run` way, then the whole run is killed as clustering writes its h5ad
    assert guard(interrupted).returncode == 0
    proc = start(command, interrupted)
    try:
        clustered = results / "intermediate" / "clustered.h5ad"
        wait_until(lambda: clustered.is_file(), "clustering to finish")
        assert proc.poll() is None
    finally:
        kill_group(proc)
    assert stale_locks(interrupted)
    # 3. resumed the `make run` way to the end
    make_run(interrupted, config)

    expected = _tables(uninterrupted / "results" / DATASET / "tables")
    found = _tables(results / "tables")
    # the tables of every rule of the target: QC, clustering, annotation, scoring
    assert {"qc_summary.tsv", "markers.tsv", "composition.tsv", "scores_by_group.tsv"} <= set(
        expected
    )
    assert sorted(found) == sorted(expected)
    differ = [name for name in expected if found[name] != expected[name]]
    assert not differ, f"tables differ from the uninterrupted run's: {differ}"


def workflow_command(workdir: Path, config: list[str]) -> list[str]:
    """The workflow's Snakemake command of conftest.snakemake, as `make run` gives it."""
    return snakemake_command(workdir, *config, targets=[TARGET], options=["--rerun-incomplete"])


def make_run(workdir: Path, config: list[str]) -> None:
    guarded = guard(workdir)
    assert guarded.returncode == 0, guarded.stderr
    result = snakemake(workdir, *config, targets=[TARGET], options=["--rerun-incomplete"])
    assert result.returncode == 0, result.stderr[-5000:]


def _jobs(workdir: Path) -> list:
    return [p for p in workflow_processes(workdir) if p.kind == "job"]


def _tables(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def _argv(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


@linux_only
def test_a_job_of_snakemake_embedded_in_another_program_runs_to_the_end(tmp_path):
    # Snakemake driven from another Python program (its API, a notebook): no process is named
    # snakemake, which is no reason for the job to stop itself.
    command = tiny_workflow(tmp_path)
    embedded = "import sys; from snakemake.cli import main; sys.argv = sys.argv[1:]; main()"
    (tmp_path / "release").touch()
    result = subprocess.run(
        [sys.executable, "-c", embedded, *command[2:]],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert (tmp_path / "done.txt").read_text() == "done"
