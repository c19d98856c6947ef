"""The workflow used as a Snakemake module of another workflow, by its local path."""

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import h5py
import pandas as pd
import pytest
from conftest import MANIFEST_SHAPES, REPO

pytestmark = pytest.mark.e2e

DATASET = "paul2015_bm_myeloid"

OUTER = """\
import sys

module osteoimmune:
    snakefile:
        {snakefile!r}
    config:
        {config!r}


use rule * from osteoimmune as osteoimmune_*


# What a plain subprocess of a job (a shell command, a cluster job) imports as the library.
rule library_seen_by_jobs:
    output:
        "library.txt",
    shell:
        "{{sys.executable}} -c 'import osteoimmune; print(osteoimmune.__file__)' > {{output}}"
"""


@pytest.fixture
def python_without_library(tmp_path) -> str:
    """An interpreter with this one's packages but without the osteoimmune install.

    A venv whose site-packages chains to ours by a .pth line: the .pth files of our
    site-packages (the editable install of `pip install -e .`) are not processed there.
    """
    venv = tmp_path / "venv"
    subprocess.run(
        [sys._base_executable, "-m", "venv", "--without-pip", str(venv)],
        check=True,
        capture_output=True,
    )
    python = venv / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(site, "chain.pth").write_text("".join(f"{p}\n" for p in sorted(ours)))

    def probe(module):
        return subprocess.run(
            [python, "-c", f"import {module}"],
            cwd=tmp_path,
            env=_env(),
            capture_output=True,
            text=True,
        )

    needed = probe("snakemake, scanpy, h5py")
    assert needed.returncode == 0, needed.stderr[-2000:]
    if probe("osteoimmune").returncode == 0:
        pytest.skip("osteoimmune is installed into site-packages itself, not as `pip install -e .`")
    return str(python)


def _env() -> dict:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


def outer_workflow(workdir: Path, config: dict) -> Path:
    """An outer workflow in workdir using this one as a module; with decoy config files where a
    module resolving its config from the working directory would find them."""
    workdir.mkdir(parents=True, exist_ok=True)
    snakefile = workdir / "Snakefile"
    snakefile.write_text(OUTER.format(snakefile=str(REPO / "Snakefile"), config=config))
    decoy = workdir / "config"
    decoy.mkdir(exist_ok=True)
    (decoy / "config.yaml").write_text("datasets: [not_a_dataset]\nregistry: datasets.yaml\n")
    (decoy / "datasets.yaml").write_text("not_a_dataset: {}\n")
    return snakefile


def run_outer(python, workdir: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [python, "-m", "snakemake", "--cores", "2", *args]
    return subprocess.run(
        cmd, cwd=workdir, env=_env(), capture_output=True, text=True, stdin=subprocess.DEVNULL
    )


def test_module_runs_from_another_workflow_without_the_library_installed(
    tmp_path, mirror, python_without_library
):
    workdir = tmp_path / "outer"
    # the outer config: no qc, cluster, annotation... (the module's defaults fill them in), and
    # one key overriding a default (lzf) so that its effect on the outputs shows it was used
    config = {
        "datasets": [DATASET],
        "mirror": str(mirror),
        "offline": True,
        "intermediate_compression": "gzip",
    }
    outer_workflow(workdir, config)
    targets = [
        f"results/{DATASET}/intermediate/qc.h5ad",
        f"results/{DATASET}/tables/qc_summary.tsv",
        "library.txt",
    ]
    result = run_outer(python_without_library, workdir, *targets)
    assert result.returncode == 0, result.stderr[-5000:]
    for name in ("fetch_dataset", "read_dataset", "qc_sample", "filter_cells"):
        assert f"osteoimmune_{name}" in result.stderr

    # outputs in the outer workflow's working directory; the dataset and its files come from
    # the module's registry (the decoy registry in the working directory has neither)
    read = workdir / "results" / DATASET / "intermediate" / "read.h5ad"
    with h5py.File(read) as f:
        matrix = f["X"]["data"] if isinstance(f["X"], h5py.Group) else f["X"]
        assert matrix.compression == "gzip"  # the outer config's, not the default lzf
        index = [f[axis][f[axis].attrs["_index"]] for axis in ("obs", "var")]
        assert tuple(len(i) for i in index) == MANIFEST_SHAPES[DATASET]
    fetched = json.loads((workdir / "resources" / DATASET / "fetch_manifest.json").read_text())
    assert {item["source"] for item in fetched["files"]} == {"mirror"}
    summary = pd.read_csv(workdir / "results" / DATASET / "tables" / "qc_summary.tsv", sep="\t")
    assert len(summary) >= 1
    assert (workdir / "results" / DATASET / "intermediate" / "qc.h5ad").is_file()

    # jobs' subprocesses import the module's own library (PYTHONPATH set by common.smk)
    library = Path((workdir / "library.txt").read_text().strip())
    assert library == REPO / "workflow" / "scripts" / "osteoimmune" / "__init__.py"


def test_module_dry_run_of_the_default_target(tmp_path, mirror):
    workdir = tmp_path / "outer"
    outer_workflow(workdir, {"datasets": [DATASET], "mirror": str(mirror), "offline": True})
    result = run_outer(sys.executable, workdir, "--dry-run")
    assert result.returncode == 0, result.stderr[-5000:]
    out = result.stdout + result.stderr
    for rule in ("osteoimmune_all", "osteoimmune_report_dataset", "osteoimmune_report_index"):
        assert rule in out
    assert f"results/{DATASET}/report.html" in out
    assert "not_a_dataset" not in out
    assert not (workdir / "results").exists()
