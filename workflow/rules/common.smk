# Shared setup: the dataset registry, the datasets to run, the mirror.

import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "workflow" / "scripts"))

from osteoimmune.registry import load_registry, select_datasets  # noqa: E402


def _repo_path(path):
    path = Path(path)
    return path if path.is_absolute() else Path(workflow.basedir) / path


REGISTRY_PATH = _repo_path(config["registry"])
# h5py's name of the intermediate h5ad files' compression (None: uncompressed)
_COMPRESSION = config.get("intermediate_compression", "lzf")
INTERMEDIATE_COMPRESSION = None if _COMPRESSION == "none" else _COMPRESSION
REGISTRY = load_registry(REGISTRY_PATH)
DATASETS = select_datasets(REGISTRY, config["datasets"])


def qc_sample_files(wildcards):
    """The per-sample QC outputs of a dataset, once read_dataset has split it."""
    folder = checkpoints.read_dataset.get(dataset=wildcards.dataset).output.samples
    slugs = glob_wildcards(f"{folder}/{{sample}}.h5ad").sample
    return {
        "h5ads": expand(
            "results/{dataset}/intermediate/qc_samples/{sample}.h5ad",
            dataset=wildcards.dataset,
            sample=sorted(slugs),
        ),
        "thresholds": expand(
            "results/{dataset}/intermediate/qc_samples/{sample}_thresholds.tsv",
            dataset=wildcards.dataset,
            sample=sorted(slugs),
        ),
        "samples": f"{folder}/samples.tsv",
    }


wildcard_constraints:
    dataset="|".join(DATASETS),
    sample="[^/]+",
