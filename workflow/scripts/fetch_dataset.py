"""Snakemake rule fetch_dataset: fetch and verify every file of one registry entry."""

from pathlib import Path

from osteoimmune.fetch import fetch_dataset, resolve_mirror, write_manifest
from osteoimmune.registry import load_registry
from osteoimmune.runlog import logged


def main(*, registry, dataset, manifest, mirror, offline):
    entry = load_registry(registry)[dataset]
    fetched = fetch_dataset(
        entry,
        dataset=dataset,
        dest_dir=Path(manifest).parent,
        mirror=resolve_mirror(mirror),
        offline=offline,
        progressbar=False,
    )
    write_manifest(fetched, entry, dataset=dataset, out=Path(manifest))


if __name__ == "__main__":
    with logged(snakemake.log[0]):
        main(
            registry=snakemake.params.registry,
            dataset=snakemake.wildcards.dataset,
            manifest=snakemake.output.manifest,
            mirror=snakemake.params.mirror,
            offline=snakemake.params.offline,
        )
