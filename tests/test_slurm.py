"""Cluster jobs: requests that grow with input and retries, failures said plainly, and the
README's SLURM command on a real single-node SLURM cluster (`.ci/slurm start`; CI runs these
tests with `make test-slurm`)."""

import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml
from conftest import REPO
from conftest import snakemake as run_workflow

from osteoimmune.slurm import (
    diagnose,
    explain_failures,
    failed_jobs,
    memory_request,
    runtime_request,
)

SLURM_LOG = """\
slurmstepd-node1: error: StepId=35.batch exceeded memory limit (157392896 > 157286400), being killed
slurmstepd-node1: error: Exceeded job memory limit
"""


def _main_log(tmp_path, slurm_text):
    slurm = tmp_path / ".snakemake/slurm_logs/rule_qc_sample/d_s1/7.log"
    slurm.parent.mkdir(parents=True)
    slurm.write_text(slurm_text)
    rule_log = tmp_path / "logs/qc_sample/d/s1.log"
    main = tmp_path / "main.log"
    main.write_text(
        "[Sun Dec  6 21:12:31 2026]\nError in rule qc_sample:\n    message: SLURM-job '7' failed\n"
        f"    jobid: 3\n    log: {rule_log}, {slurm} (check log file(s) for error details)\n"
        "    external_jobid: 7\n\nShutting down\n"
    )
    return main, rule_log, slurm


def test_requests_grow_with_input_and_attempt_up_to_the_cap():
    small, large = memory_request(2, 1, cap_mb=64000), memory_request(400, 1, cap_mb=64000)
    assert small == 1030 and large == 7000  # 1,000 MB + 15 MB per input MB
    assert memory_request(400, 2, cap_mb=64000) == 2 * large
    assert memory_request(400, 3, cap_mb=16000) == 16000
    assert runtime_request(2, 1, cap_min=1440) == "15m"  # a unit: a bare 15 means seconds
    assert runtime_request(400, 2, cap_min=1440) == "110m"
    assert runtime_request(400, 30, cap_min=1440) == "1440m"


def test_rules_measured_in_the_benchmark_request_their_own_memory(tmp_path):
    """A measured rule scales by its own peak per input MB; read jobs by their data files."""
    from osteoimmune.slurm import RULE_MEMORY_PER_INPUT_MB, manifest_mb

    assert memory_request(400, 1, cap_mb=64000, rule="not_a_rule") == 7000
    for rule, ratio in RULE_MEMORY_PER_INPUT_MB.items():
        assert memory_request(400, 1, cap_mb=64000, rule=rule) == int(1000 + ratio * 400)
    assert set(RULE_MEMORY_PER_INPUT_MB) >= {"qc_sample", "cluster_cells", "filter_cells"}
    manifest = tmp_path / "fetch_manifest.json"
    manifest.write_text('{"files": [{"bytes": 3000000}, {"bytes": 500000}]}')
    assert manifest_mb(manifest) == 3.5
    assert manifest_mb(tmp_path / "not_fetched_yet.json") == 0.0


def test_memory_follows_the_data_not_the_compression_of_an_h5ad_input(tmp_path):
    """The same cells written uncompressed, lzf or gzip ask for the same memory."""
    import anndata as ad
    import numpy as np
    import scipy.sparse as sp

    from osteoimmune.samples import write_h5ad
    from osteoimmune.slurm import data_mb

    rng = np.random.default_rng(0)
    counts = sp.random(3000, 2000, density=0.1, format="csr", dtype=np.float32, rng=rng)
    counts.data = np.floor(counts.data * 4) + 1  # counts compress, like real ones
    adata = ad.AnnData(X=counts, layers={"counts": counts.copy()})
    sizes, files = {}, {}
    for compression in (None, "lzf", "gzip"):
        path = tmp_path / f"{compression}.h5ad"
        write_h5ad(adata, path, compression=compression)
        sizes[compression], files[compression] = data_mb([path]), path.stat().st_size / 2**20
    arrays = 2 * (counts.data.nbytes + counts.indices.nbytes + counts.indptr.nbytes) / 2**20
    assert files["gzip"] < files["lzf"] < files[None]  # what input.size_mb would have said
    for compression, mb in sizes.items():
        assert arrays <= mb < arrays * 1.01, compression  # + obs and var names
    table = tmp_path / "table.tsv"
    table.write_text("a\tb\n" * 1000)
    both = data_mb([table, tmp_path / "None.h5ad"])  # a table counts its bytes
    assert both == pytest.approx(sizes[None] + 4000 / 2**20)
    assert data_mb([tmp_path / "not_there_yet.h5ad"]) == 0.0


def test_a_job_killed_for_memory_is_explained_in_its_rule_log(tmp_path):
    main, rule_log, slurm = _main_log(tmp_path, SLURM_LOG)
    (job,) = failed_jobs(main.read_text())
    assert (job.rule, job.logs, job.slurm_log) == ("qc_sample", (rule_log,), slurm)
    messages = explain_failures([str(main)], max_mem_mb=8000, max_runtime_min=60)
    assert len(messages) == 1
    assert "Rule qc_sample: the SLURM job ran out of memory" in messages[0]
    assert "resources.max_mem_mb (now 8000)" in messages[0]
    assert messages[0] in rule_log.read_text()


def test_time_limit_and_other_failures():
    assert diagnose("slurmstepd: error: *** JOB 9 ON n1 CANCELLED DUE TO TIME LIMIT ***") == "time"
    assert diagnose(SLURM_LOG) == "memory"
    assert diagnose("Traceback (most recent call last):\nValueError: bad input") is None


def test_a_failure_slurm_did_not_cause_is_left_alone(tmp_path):
    main, rule_log, _ = _main_log(tmp_path, "Traceback ...\nValueError: bad input\n")
    assert explain_failures(main, max_mem_mb=8000, max_runtime_min=60) == []
    assert not rule_log.exists()


LIMITED = """
rule all:
    input: expand("out/{i}.txt", i=range(3))

rule first:
    output: "first.txt"
    resources: mem_mb=15000
    shell: "touch {output}"

rule job:
    input: "first.txt"
    output: "out/{i}.txt"
    resources: mem_mb=15000
    shell: "date +%s.%N > {output}; sleep 1; date +%s.%N >> {output}"
"""


def test_a_local_run_keeps_its_jobs_within_the_memory_limit(tmp_path):
    """make run gives Snakemake the memory limit, and Snakemake keeps to it: jobs whose
    requests do not fit together run one after the other, also after a job that ran alone
    (Snakemake 9.16 freed the memory of such a job without having reserved it, and ran two
    of these 15 GB jobs side by side within 20 GB, as it ran scoring, enrichment and
    communication of 300,000 cells side by side)."""
    dry = subprocess.run(["make", "-n", "run"], cwd=REPO, capture_output=True, text=True)
    assert re.search(r"snakemake --cores \d+ --resources mem_mb=\d+ ", dry.stdout), dry.stdout
    (tmp_path / "Snakefile").write_text(LIMITED)
    snakemake = [sys.executable, "-m", "snakemake", "--cores", "2", "--resources", "mem_mb=20000"]
    subprocess.run([*snakemake, "-q"], cwd=tmp_path, check=True, capture_output=True)
    spans = sorted(
        tuple(map(float, path.read_text().split())) for path in (tmp_path / "out").glob("*.txt")
    )
    assert len(spans) == 3
    assert all(end <= start for (_, end), (start, _) in zip(spans, spans[1:], strict=False))


def test_the_longest_jobs_after_annotation_start_first(tmp_path):
    """Enrichment, then communication, then scoring: the report waits for all three, so
    they are not left behind the short jobs or the h5ad export (which only the index waits
    for). Snakemake's dry run lists each job's priority when it is not 0."""
    result = run_workflow(tmp_path, 'datasets=["paul2015_bm_myeloid"]', options=["-n"])
    assert result.returncode == 0, result.stderr
    jobs = re.split(r"\n(?=(?:local)?rule )", result.stdout)
    priority = {}
    for job in jobs:
        name = re.match(r"(?:local)?rule (\w+):", job)
        if name:
            found = re.search(r"^\s+priority: (\d+)$", job, re.MULTILINE)
            priority[name.group(1)] = int(found.group(1)) if found else 0
    assert priority["enrichment"] > priority["infer_communication"]
    assert priority["infer_communication"] > priority["score_signatures"]
    assert priority["score_signatures"] > priority["export_h5ad"]
    assert priority["score_signatures"] > priority["compare_expression"]


# --------------------------------------------------------------------- a real SLURM cluster

cluster = pytest.mark.skipif(
    shutil.which("sinfo") is None
    or subprocess.run(["sinfo", "-h"], capture_output=True).returncode != 0,
    reason="no SLURM cluster here (start one with `.ci/slurm start`, as root)",
)
DATASETS = ["paul2015_bm_myeloid", "shalek2014_bmdc_lps"]


def _readme_slurm_command():
    """The README's SLURM command, exactly as it stands there."""
    readme = (REPO / "README.md").read_text()
    (command,) = re.findall(r"^snakemake --profile profiles/slurm$", readme, flags=re.M)
    return command.split()


def _run(workdir, *extra, config=()):
    env = os.environ | {"PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}
    cmd = [*_readme_slurm_command(), "--directory", str(workdir), *extra, "--config", *config]
    return subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL
    )


@cluster
@pytest.mark.slurm
def test_readme_slurm_command_runs_the_workflow_through_sbatch(mirror, tmp_path):
    result = _run(
        tmp_path,
        config=[f"datasets={DATASETS}", f"mirror={mirror}", "offline=True"],
    )
    assert result.returncode == 0, result.stderr[-5000:]
    log = result.stdout + result.stderr
    submitted = set(re.findall(r"slurm_logs/rule_(\w+)/", log))
    local = set(re.findall(r"^localrule (\w+):", log, flags=re.M))
    assert {"read_dataset", "qc_sample", "cluster_cells", "report_dataset"} <= submitted
    assert "fetch_dataset" in local and "fetch_dataset" not in submitted
    for dataset in DATASETS:
        assert (tmp_path / "results" / dataset / "report.html").is_file()
    # each job asked for memory and time from its input (and a unit on the time)
    ids = re.findall(r"submitted with SLURM jobid (\d+)", log)
    # the last job (finished jobs stay known to slurmctld for MinJobAge, 600 s in .ci/slurm);
    # its inputs are a few MB: 1,000 MB + 15 MB per input MB, 15 min + 0.1 min per input MB
    shown = subprocess.run(["scontrol", "show", "job", ids[-1]], capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert re.search(r"TimeLimit=00:1\d:00", shown.stdout), shown.stdout
    memory = int(re.search(r"MinMemoryNode=(\d+)M", shown.stdout).group(1))
    assert 1000 < memory < 1000 + 15 * 50, memory


@cluster
@pytest.mark.slurm
def test_a_job_out_of_memory_names_the_resource_and_the_setting(mirror, tmp_path):
    caps = tmp_path / "caps.yaml"
    caps.write_text(yaml.safe_dump({"resources": {"max_mem_mb": 150}}))
    target = "results/paul2015_bm_myeloid/intermediate/read.h5ad"
    result = _run(
        tmp_path,
        "--retries",
        "0",
        "--configfile",
        str(caps),
        config=['datasets=["paul2015_bm_myeloid"]', f"mirror={mirror}", "offline=True"],
    )
    assert result.returncode != 0
    assert "Rule read_dataset: the SLURM job ran out of memory" in result.stderr
    assert "resources.max_mem_mb (now 150)" in result.stderr
    rule_log = (tmp_path / "logs/read_dataset/paul2015_bm_myeloid.log").read_text()
    assert "ran out of memory" in rule_log
    assert not (tmp_path / target).exists()
