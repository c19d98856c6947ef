"""Stale results: what shapes a result reruns it, and a corrupted cached download is mended.

Snakemake runs only the fetch and read steps here, on tiny synthetic local files (a registry of
our own) or on the mirror's Paul 2015 files, and reruns are checked with ``--dry-run`` plans.
"""

import hashlib
import json
import os
import re

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO, snakemake
from scipy import sparse

from osteoimmune.registry import load_registry
from osteoimmune.samples import read_counts_once

pytestmark = pytest.mark.e2e

ENTRY = {
    "title": "Synthetic counts",
    "species": "mouse",
    "tissue": "bone marrow",
    "paper": "none: made in the test",
    "license": "MIT",
    "values": "counts",
}
DATASETS = ("alpha", "beta", "gamma")
READS = (
    "results/alpha/intermediate/read.h5ad",
    "results/beta/intermediate/read.h5ad",
    "results/gamma/intermediate/sample_reads/g1.h5ad",
)
PAUL = "paul2015_bm_myeloid"


def write_counts(path, *, seed):
    """40 cells x 20 genes of integer counts, as an h5ad file."""
    counts = np.random.default_rng(seed).poisson(2.0, size=(40, 20)).astype(np.float32)
    obs = pd.DataFrame(index=[f"cell{i}" for i in range(40)])
    var = pd.DataFrame(index=[f"Gene{i}" for i in range(20)])
    ad.AnnData(X=sparse.csr_matrix(counts), obs=obs, var=var).write_h5ad(path)


def constant_design(name, condition="control"):
    return {
        "sample": {"constant": name},
        "donor": {"constant": name},
        "condition": {"constant": condition},
    }


def local_file(name):
    return {"role": "counts", "path": f"{name}.h5ad", "format": "h5ad"}


def write_registry(folder, **edits):
    """Two one-file datasets and a one-sample study, each of local files; `edits` per entry."""
    datasets = {
        "alpha": ENTRY | {"files": [local_file("alpha")], "metadata": constant_design("alpha")},
        "beta": ENTRY | {"files": [local_file("beta")], "metadata": constant_design("beta")},
        "gamma": ENTRY
        | {
            "samples": [
                {"sample": "g1", "donor": "D1", "condition": "control", "file": "g1.h5ad"}
                | {"format": "h5ad"}
            ]
        },
    }
    for name, fields in edits.items():
        datasets[name] = datasets[name] | fields
    path = folder / "datasets.yaml"
    path.write_text(yaml.safe_dump({"datasets": datasets}, sort_keys=False))
    return path


def run(workdir, registry, *options, targets=READS, config=()):
    return snakemake(
        workdir,
        f"registry={registry}",
        f"datasets={json.dumps(list(DATASETS))}",
        f"checksum_lock={workdir / 'checksums.lock.tsv'}",
        *config,
        targets=targets,
        options=options,
    )


def planned(result):
    """(rule, dataset) of every job a dry run plans."""
    assert result.returncode == 0, result.stderr[-3000:]
    text = result.stdout + result.stderr
    jobs = re.findall(
        r"^(?:local)?(?:rule|checkpoint) (\w+):\n(?:    .*\n)*?    wildcards: ([^\n]*)",
        text,
        flags=re.M,
    )
    return {(rule, re.search(r"dataset=([^,\s]+)", wildcards)[1]) for rule, wildcards in jobs}


@pytest.fixture
def finished(tmp_path):
    """A workdir where the synthetic datasets were fetched and read; its registry."""
    for name, seed in (("alpha", 0), ("beta", 1), ("g1", 2)):
        write_counts(tmp_path / f"{name}.h5ad", seed=seed)
    registry = write_registry(tmp_path)
    workdir = tmp_path / "run"
    result = run(workdir, registry)
    assert result.returncode == 0, result.stderr[-3000:]
    assert planned(run(workdir, registry, "--dry-run")) == set()
    return workdir, registry


def test_replacing_a_local_file_reruns_its_fetch_and_read_only(finished, tmp_path):
    workdir, registry = finished
    # where files come from is a run setting: it reruns nothing
    other = (f"mirror={tmp_path}", "offline=True")
    assert planned(run(workdir, registry, "--dry-run", config=other)) == set()

    write_counts(tmp_path / "alpha.h5ad", seed=10)  # the user's new data, at the same path
    write_counts(tmp_path / "g1.h5ad", seed=12)
    assert planned(run(workdir, registry, "--dry-run")) == {
        ("fetch_dataset", "alpha"),
        ("read_dataset", "alpha"),
        ("fetch_sample", "gamma"),
        ("read_sample", "gamma"),
    }

    result = run(workdir, registry, targets=READS[:1])
    assert result.returncode == 0, result.stderr[-3000:]
    read = read_counts_once(workdir / READS[0])  # the raw counts are stored once, as X
    new = ad.read_h5ad(tmp_path / "alpha.h5ad")
    np.testing.assert_array_equal(read.layers["counts"].toarray(), new.X.toarray())


def test_a_missing_local_file_still_fails_naming_it(finished, tmp_path):
    workdir, registry = finished
    (tmp_path / "beta.h5ad").unlink()
    result = run(workdir, registry, targets=READS[1:2])
    assert result.returncode != 0
    log = (workdir / "logs" / "fetch_dataset" / "beta.log").read_text()
    assert "beta.h5ad does not exist" in log and "Dataset 'beta'" in log


def test_editing_an_entry_reruns_its_read_not_another_entry(finished, tmp_path):
    workdir, registry = finished
    write_registry(tmp_path, alpha={"metadata": constant_design("alpha", "treated")})
    assert planned(run(workdir, registry, "--dry-run")) == {("read_dataset", "alpha")}

    write_registry(tmp_path, beta={"species": "human"})
    assert planned(run(workdir, registry, "--dry-run")) == {("read_dataset", "beta")}

    # the registry file changed, but no field read_dataset uses: nothing is read again
    write_registry(tmp_path, alpha={"title": "Synthetic counts, renamed"})
    assert planned(run(workdir, registry, "--dry-run")) == set()


def paul(workdir, mirror, *options):
    return snakemake(
        workdir,
        f'datasets=["{PAUL}"]',
        f"mirror={mirror}",
        "offline=True",
        f"checksum_lock={workdir / 'checksums.lock.tsv'}",
        targets=[f"results/{PAUL}/intermediate/read.h5ad"],
        options=options,
    )


def test_touched_download_is_read_corrupted_one_is_named_then_fetched_again(tmp_path, mirror):
    workdir = tmp_path / "run"
    assert paul(workdir, mirror).returncode == 0
    cached = workdir / "resources" / PAUL / "countMatrix.rda"
    manifest = workdir / "resources" / PAUL / "fetch_manifest.json"
    good = cached.read_bytes()
    # touched, not changed (its sha256 is the one fetched): read as it is
    os.utime(cached, ns=(cached.stat().st_atime_ns, cached.stat().st_mtime_ns + 10**9))
    result = paul(workdir, mirror, "--forcerun", "read_dataset")
    assert result.returncode == 0, result.stderr[-3000:]
    assert manifest.is_file()

    mirrored = (mirror / PAUL / "countMatrix.rda").read_bytes()
    cached.write_bytes(good[: len(good) // 2])  # corrupted after it was fetched

    result = paul(workdir, mirror, "--forcerun", "read_dataset")
    assert result.returncode != 0
    log = (workdir / "logs" / "read_dataset" / f"{PAUL}.log").read_text()
    assert f"Dataset '{PAUL}'" in log and f"resources/{PAUL}/countMatrix.rda" in log
    assert "changed after they were fetched" in log and "fetched again" in log
    assert "could not be parsed" not in log
    assert not manifest.exists()  # so that the rerun fetches again

    result = paul(workdir, mirror)
    assert result.returncode == 0, result.stderr[-3000:]
    assert cached.read_bytes() == good
    assert (mirror / PAUL / "countMatrix.rda").read_bytes() == mirrored
    expected = load_registry(REPO / "config" / "datasets.yaml")[PAUL]["files"][0]["sha256"]
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == expected
    assert ad.read_h5ad(workdir / f"results/{PAUL}/intermediate/read.h5ad").shape == (2660, 240)
