"""Shared test fixtures and paths."""

import functools
import json
import os
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MIRROR = Path(os.environ.get("OSTEOIMMUNE_MIRROR") or REPO.parent / "shared" / "data")

# Cells x genes of every registered dataset as read, from ../shared/data/MANIFEST.tsv.
MANIFEST_SHAPES = {
    "matsushita2023_bm_stroma": (250, 20243),
    "paul2015_bm_myeloid": (2660, 240),
    "shalek2014_bmdc_lps": (131, 16776),
    "weinreb2020_larry_bm_culture": (781, 2481),
    "luecken2021_bmmc_cite": (600, 1000),
    "luecken2021_bmmc_multiome": (500, 600),
}


@pytest.fixture(scope="session")
def mirror() -> Path:
    """The offline mirror of the registered datasets (../shared/data), or skip."""
    if not (MIRROR / "MANIFEST.tsv").is_file():
        pytest.skip(f"no dataset mirror at {MIRROR}; set OSTEOIMMUNE_MIRROR")
    return MIRROR


def snakemake(workdir: Path, *config: str, targets=(), options=()) -> subprocess.CompletedProcess:
    cmd = snakemake_command(workdir, *config, targets=targets, options=options)
    return subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)


def snakemake_command(workdir: Path, *config: str, targets=(), options=()) -> list[str]:
    """The workflow's Snakemake command in ``workdir`` with the repository's config."""
    return [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(REPO / "config" / "config.yaml"),
        "--cores",
        "2",
        *options,
        "--config",
        *config,
        "--",
        *targets,
    ]


@pytest.fixture(scope="session")
def run(request, tmp_path_factory) -> Path:
    """Workdir of one workflow run on every mirrored dataset, shared by the session's tests.

    For development only, OSTEOIMMUNE_TEST_RESULTS may name the workdir of a finished run
    (the folder holding results/, resources/ and logs/) to test instead of running again.
    """
    prebuilt = os.environ.get("OSTEOIMMUNE_TEST_RESULTS")
    if prebuilt:
        workdir = Path(prebuilt).resolve()
        workdir = workdir.parent if workdir.name == "results" else workdir
        if not (workdir / "results" / "index.html").is_file():
            pytest.fail(f"OSTEOIMMUNE_TEST_RESULTS={prebuilt} holds no results/index.html")
        return workdir
    mirror = request.getfixturevalue("mirror")
    workdir = tmp_path_factory.mktemp("workflow")
    result = snakemake(
        workdir,
        f"datasets={json.dumps(list(MANIFEST_SHAPES))}",
        f"mirror={mirror}",
        "offline=True",
    )
    assert result.returncode == 0, result.stderr[-5000:]
    return workdir


@pytest.fixture
def http_folder(tmp_path):
    """A folder served over HTTP on 127.0.0.1 (stopped after the test); yields (folder, base)."""
    folder = tmp_path / "served"
    folder.mkdir()
    handler = functools.partial(QuietHandler, directory=str(folder))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass
