# Shared setup: the dataset registry, the datasets to run, the mirror.

import os
import sys
from pathlib import Path

# The library (workflow/scripts/osteoimmune) of this copy of the workflow, found from its own
# folder (WORKFLOW_DIR, set by the Snakefile), whether run directly or as a module, with or
# without `pip install -e .`. Here for this process; on PYTHONPATH, first, for the jobs' rule
# scripts (subprocesses, cluster jobs), so that they import the same copy rather than another
# install on site-packages. (Snakemake's script preamble also appends this process's sys.path
# and the script's folder, workflow/scripts, to a script's sys.path: after site-packages. Under
# --sdm conda it drops PYTHONPATH, and that is how the conda envs find the library.)
SCRIPTS_DIR = str(WORKFLOW_DIR / "workflow" / "scripts")
sys.path.insert(0, SCRIPTS_DIR)
_PYTHONPATH = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
_PYTHONPATH = [SCRIPTS_DIR, *(p for p in _PYTHONPATH if p != SCRIPTS_DIR)]
# set here, not required of the user: not an `envvars:` entry (which remote jobs would copy)
os.environ.update(PYTHONPATH=os.pathsep.join(_PYTHONPATH))

from osteoimmune.registry import (  # noqa: E402
    is_study,
    load_models,
    load_registry,
    select_datasets,
)
from osteoimmune.samplesheet import design_rows, study_covariates  # noqa: E402
from osteoimmune.workers import threads_for_file  # noqa: E402


def _repo_path(path):
    """A config path: as given when absolute, else in this workflow's folder (the registry and
    the checksum lock belong to the workflow, not to the working directory)."""
    path = Path(path)
    return path if path.is_absolute() else WORKFLOW_DIR / path


REGISTRY_PATH = _repo_path(config["registry"])
# h5py's name of the intermediate h5ad files' compression (None: uncompressed)
_COMPRESSION = config["intermediate_compression"]
INTERMEDIATE_COMPRESSION = None if _COMPRESSION == "none" else _COMPRESSION
REGISTRY = load_registry(REGISTRY_PATH)
MODELS = load_models(REGISTRY_PATH)
DATASETS = select_datasets(REGISTRY, config["datasets"])


CHECKSUM_LOCK = _repo_path(config["checksum_lock"])


def local_files(files):
    """Size and modification time of each local (`path:`) file of a fetch, by path (None when
    missing: the fetch then says so): a param, so that replacing a file at the same path reruns
    the fetch and what follows. Files fetched by URL are verified by sha256 instead."""
    stats = {}
    for spec in files:
        if "path" in spec:
            try:
                stat = os.stat(spec["path"])
            except OSError:
                stats[spec["path"]] = None
            else:
                stats[spec["path"]] = (stat.st_size, stat.st_mtime_ns)
    return stats


def dataset_reading(wildcards):
    """The registry fields read_dataset uses (this entry's, not the registry file: editing them
    re-reads the dataset; editing another entry, or another field, does not)."""
    entry = REGISTRY[wildcards.dataset]
    keys = ("species", "values", "gene_symbol_case", "author_label")
    return {k: entry[k] for k in (*keys, "files", "metadata") if k in entry}


def index_entries(wildcards):
    """What the report index shows of every registry entry (earlier runs' datasets too)."""
    shown = ("title", "species")
    return {k: {f: e[f] for f in shown} for k, e in REGISTRY.items()}


def study_sample(wildcards):
    """The samplesheet record of one sample of a study."""
    samples = REGISTRY[wildcards.dataset]["samples"] or []
    found = [s for s in samples if s["sample"] == wildcards.sample]
    if not found:
        raise ValueError(f"{wildcards.dataset} has no sample {wildcards.sample}")
    return found[0]


def sample_reading(wildcards):
    """What read_sample needs of a sample: its files and reader options, not its design (a
    changed condition or covariate re-joins the samples, it does not re-read them)."""
    design = ("donor", "condition", "covariates")
    return {k: v for k, v in study_sample(wildcards).items() if k not in design}


def read_settings(wildcards):
    """The registry fields a sample's reader uses (editing others does not re-read it)."""
    entry = REGISTRY[wildcards.dataset]
    archive = [f["filename"] for f in entry["files"] if f["role"] == "archive"]
    keys = ("species", "values", "gene_symbol_case", "author_label")
    return {k: entry[k] for k in keys} | {"archive": archive[0] if archive else None}


def sample_manifest(wildcards):
    """A study sample's fetch manifest: its own files, or the dataset's archive."""
    if study_sample(wildcards)["member"]:
        return f"resources/{wildcards.dataset}/fetch_manifest.json"
    return f"resources/{wildcards.dataset}/samples/{wildcards.sample}/fetch_manifest.json"


def fetch_manifests(wildcards):
    """Every fetch manifest of a dataset: its own, then its samples' (studies)."""
    samples = REGISTRY[wildcards.dataset]["samples"] or []
    return [f"resources/{wildcards.dataset}/fetch_manifest.json"] + [
        f"resources/{wildcards.dataset}/samples/{s['sample']}/fetch_manifest.json"
        for s in samples
        if not s["member"]
    ]


def qc_sample_input(wildcards):
    """A sample's cells before QC: read from its own files (studies) or split by read_dataset."""
    if is_study(REGISTRY[wildcards.dataset]):
        return f"results/{wildcards.dataset}/intermediate/sample_reads/{wildcards.sample}.h5ad"
    return f"results/{wildcards.dataset}/intermediate/samples/{wildcards.sample}.h5ad"


def study_design(wildcards):
    """A study's samples with donor, condition and covariates (None for one-file datasets)."""
    entry = REGISTRY[wildcards.dataset]
    return design_rows(entry["samples"]) if is_study(entry) else None


def study_covariate_types(wildcards):
    entry = REGISTRY[wildcards.dataset]
    return study_covariates(entry["samples"]) if is_study(entry) else None


def qc_sample_files(wildcards):
    """The per-sample QC outputs of a dataset (studies: its samplesheet's samples; else the
    samples read_dataset split it into)."""
    entry = REGISTRY[wildcards.dataset]
    if is_study(entry):  # in the samplesheet's order
        slugs = [s["sample"] for s in entry["samples"]]
    else:
        folder = checkpoints.read_dataset.get(dataset=wildcards.dataset).output.samples
        slugs = sorted(glob_wildcards(f"{folder}/{{sample}}.h5ad").sample)
    return {
        "h5ads": expand(
            "results/{dataset}/intermediate/qc_samples/{sample}.h5ad",
            dataset=wildcards.dataset,
            sample=slugs,
        ),
        "thresholds": expand(
            "results/{dataset}/intermediate/qc_samples/{sample}_thresholds.tsv",
            dataset=wildcards.dataset,
            sample=slugs,
        ),
    }


def annotation_reference(dataset):
    """The registry model or entry whose labels type the cells of `dataset`, or None.

    config annotation.reference: "auto" (the first registry model of the dataset's species,
    else the first registry entry with `reference: true` of that species), "none", or the id
    of a registry model or of an entry with `reference: true`.
    """
    choice = config["annotation"]["reference"]
    species = REGISTRY[dataset]["species"]
    if choice == "none":
        return None
    references = {k: e for k, e in REGISTRY.items() if e.get("reference")}
    if choice != "auto":
        if choice not in MODELS and choice not in references:
            raise ValueError(
                f"config annotation.reference: {choice!r} is neither a registry model nor a "
                "registry entry with `reference: true`; use auto, none or one of "
                f"{sorted(MODELS) + sorted(references)}"
            )
        entry = MODELS.get(choice) or references[choice]
        return choice if entry["species"] == species else None
    found = [k for k, e in MODELS.items() if e["species"] == species]
    found += [k for k, e in references.items() if e["species"] == species]
    return found[0] if found else None


def reference_model(wildcards):
    """What the dataset's annotation reads of its reference ([] when none is needed): a
    registry model's fetch manifest, or the model trained on a reference dataset."""
    reference = annotation_reference(wildcards.dataset)
    if reference is None or reference == wildcards.dataset:
        return []
    if reference in MODELS:
        return f"resources/models/{reference}/fetch_manifest.json"
    return f"results/references/{reference}/model.pkl"


def reference_params(wildcards):
    """The reference's id, kind and labels: editing them reruns the annotation."""
    reference = annotation_reference(wildcards.dataset)
    if reference is None:
        return {}
    if reference in MODELS:
        return {
            "id": reference,
            "self": False,
            "model_file": MODELS[reference]["files"][0]["filename"],
            "label_map": MODELS[reference]["label_map"],
        }
    return {
        "id": reference,
        "self": reference == wildcards.dataset,
        "label_map": REGISTRY[reference].get("author_label_map") or {},
    }


# Datasets run for their own results, and reference datasets their annotation needs.
REFERENCES = sorted({annotation_reference(d) for d in DATASETS} - {None} - set(MODELS))


wildcard_constraints:
    dataset="|".join(sorted(set(DATASETS) | set(REFERENCES))),
    reference="|".join(REFERENCES) or "(?!)",
    model="|".join(MODELS) or "(?!)",
    sample="[^/]+",


# Config keys that say how and which datasets are run, not what their results are: a dataset's
# report does not take them as params, so that fetching from another mirror, going offline or
# adding a dataset to the run leaves finished reports alone.
RUN_ONLY_KEYS = ("datasets", "mirror", "offline", "strict_checksums", "checksum_lock")


def report_config(wildcards):
    """The config the report shows and depends on (all but RUN_ONLY_KEYS)."""
    return {key: value for key, value in config.items() if key not in RUN_ONLY_KEYS}


def job_threads(wildcards, input):
    """Two threads for a job whose h5ad has enough cells for worker processes, else one.

    The job's script decides with the same rule (osteoimmune.workers.workers_for), so that a
    job holds the second core exactly when it uses it.
    """
    return threads_for_file(input.h5ad, 2)
