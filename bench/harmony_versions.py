"""Harmony before and after the harmonypy upgrade (0.0.10 -> 2.1.0): time and graph quality.

    pip install --no-deps --target /tmp/harmonypy-0.0.10 harmonypy==0.0.10
    .venv/bin/python bench/harmony_versions.py CLUSTERED_H5AD --old-path /tmp/harmonypy-0.0.10 \
        --cells 20000 100000

Reads ``obsm['X_pca']`` and ``obs['donor']`` of a clustered h5ad (backed), and the author
labels (``--labels-from``: the resampled input, by cell name) for type purity. For each size, a
seeded random subset of cells is integrated by each version in its own process, with the
pipeline's settings (``cluster.harmony`` of config/config.yaml, one thread), and compared:
seconds, 15-NN overlap between the two corrected embeddings, donor mix (share of the other
donors among each cell's 90 nearest neighbours; the uncorrected PCA's is given too) and type
purity (share of the same author label among 30).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

RUN = """
import json, sys, time
if sys.argv[1]:
    sys.path.insert(0, sys.argv[1])
import numpy as np, pandas as pd, harmonypy
pca = np.load(sys.argv[2])
donor = pd.DataFrame({"donor": np.load(sys.argv[3], allow_pickle=True)})
options = json.loads(sys.argv[4])
# harmonypy 2 takes a thread count (one, as the pipeline runs it); 0.0.10 has none
extra = {"ncores": 1} if "ncores" in harmonypy.run_harmony.__code__.co_varnames else {}
start = time.perf_counter()
out = harmonypy.run_harmony(pca, donor, "donor", random_state=0, verbose=False, **options, **extra)
seconds = time.perf_counter() - start
z = np.asarray(out.Z_corr)
np.save(sys.argv[5], z if z.shape[0] == pca.shape[0] else z.T)
print(json.dumps({"seconds": seconds, "file": harmonypy.__file__}))
"""


def integrate(pca: np.ndarray, donor: np.ndarray, options: dict, path: str, work: Path) -> tuple:
    """One version's corrected embedding and seconds, in a fresh process (one BLAS thread)."""
    np.save(work / "pca.npy", pca)
    np.save(work / "donor.npy", donor.astype(object))
    out = work / "z.npy"
    env = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", RUN, path, str(work / "pca.npy"), str(work / "donor.npy"),
         json.dumps(options), str(out)],
        capture_output=True, text=True, check=True, env=env | {"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    info = json.loads(done.stdout.strip().splitlines()[-1])
    return np.load(out), info["seconds"], info["file"]


def neighbours(z: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    from sklearn.neighbors import NearestNeighbors

    return (
        NearestNeighbors(n_neighbors=k + 1)
        .fit(z)
        .kneighbors(z[query], return_distance=False)[:, 1:]
    )


def quality(z: np.ndarray, donor: np.ndarray, labels: np.ndarray, query: np.ndarray) -> dict:
    near = neighbours(z, query, 90)
    return {
        "donor_mix": float((donor[near] != donor[query][:, None]).mean()),
        "type_purity": float((labels[near[:, :30]] == labels[query][:, None]).mean()),
    }


def main(argv: list[str] | None = None) -> None:
    import anndata as ad
    import pandas as pd
    import yaml

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("clustered", type=Path)
    parser.add_argument("--old-path", required=True, help="folder holding harmonypy 0.0.10")
    parser.add_argument("--labels-from", type=Path, required=True)
    parser.add_argument("--label-key", default="author_cell_type")
    parser.add_argument("--cells", type=int, nargs="+", default=[20_000])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    options = {k: v for k, v in config["cluster"]["harmony"].items() if v is not None}
    data = ad.read_h5ad(args.clustered, backed="r")
    source = ad.read_h5ad(args.labels_from, backed="r")
    labels_all = source.obs[args.label_key].astype(str).reindex(data.obs_names).to_numpy()
    rng = np.random.default_rng(args.seed)
    rows = []
    for n in args.cells:
        cells = np.sort(rng.choice(data.n_obs, size=min(n, data.n_obs), replace=False))
        pca = np.asarray(data.obsm["X_pca"][cells], dtype=np.float64)
        donor = data.obs["donor"].astype(str).to_numpy()[cells]
        labels = labels_all[cells]
        query = rng.choice(len(cells), size=min(5000, len(cells)), replace=False)
        row = {"cells": len(cells)} | {
            f"pca_{k}": v for k, v in quality(pca, donor, labels, query).items()
        }
        embeddings = {}
        for name, path in (("0.0.10", args.old_path), ("2.1.0", "")):
            with tempfile.TemporaryDirectory() as tmp:
                z, seconds, where = integrate(pca, donor, options, path, Path(tmp))
            embeddings[name] = z
            row[f"{name}_s"] = round(seconds, 1)
            row |= {f"{name}_{k}": v for k, v in quality(z, donor, labels, query).items()}
            print(f"{len(cells)} cells, harmonypy {name} ({where}): {seconds:.1f} s", flush=True)
        old, new = (neighbours(embeddings[v], query, 15) for v in ("0.0.10", "2.1.0"))
        row["knn15_overlap"] = float(
            np.mean([len(set(a) & set(b)) / 15 for a, b in zip(old, new, strict=True)])
        )
        rows.append(row)
    print(pd.DataFrame(rows).round(3).to_markdown(index=False))


if __name__ == "__main__":
    main()
