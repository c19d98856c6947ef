# Shared setup: the dataset registry, the datasets to run, the mirror.

import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "workflow" / "scripts"))

from osteoimmune.registry import load_registry, select_datasets  # noqa: E402


def _repo_path(path):
    path = Path(path)
    return path if path.is_absolute() else Path(workflow.basedir) / path


REGISTRY_PATH = _repo_path(config["registry"])
REGISTRY = load_registry(REGISTRY_PATH)
DATASETS = select_datasets(REGISTRY, config["datasets"])


wildcard_constraints:
    dataset="|".join(DATASETS),
