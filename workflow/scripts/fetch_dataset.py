"""Rules fetch_dataset, fetch_sample and fetch_model: fetch and verify the registry's files."""

from pathlib import Path

from osteoimmune.fetch import fetch_dataset, resolve_mirror, write_manifest
from osteoimmune.runlog import logged


def main(*, files, dataset, manifest, mirror, offline, lock, strict):
    entry = {"files": files}
    fetched = fetch_dataset(
        entry,
        dataset=dataset,
        dest_dir=Path(manifest).parent,
        mirror=resolve_mirror(mirror),
        offline=offline,
        lock=Path(lock),
        strict=strict,
        progressbar=False,
    )
    write_manifest(fetched, entry, dataset=dataset, out=Path(manifest))


if __name__ == "__main__":
    with logged(snakemake.log[0]):
        main(
            files=snakemake.params.files,
            dataset=getattr(snakemake.wildcards, "dataset", None) or snakemake.wildcards.model,
            manifest=snakemake.output.manifest,
            # not params (fetch.smk): where the files come from must not rerun the fetch
            mirror=snakemake.config["mirror"],
            offline=snakemake.config["offline"],
            lock=snakemake.params.lock,
            strict=snakemake.params.strict,
        )
