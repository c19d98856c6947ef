"""Rules fetch_dataset and fetch_sample: fetch and verify a dataset's or sample's files."""

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
            dataset=snakemake.wildcards.dataset,
            manifest=snakemake.output.manifest,
            # not params (fetch.smk): where the files come from must not rerun the fetch
            mirror=snakemake.config["mirror"],
            offline=snakemake.config["offline"],
            lock=snakemake.params.lock,
            strict=snakemake.params.strict,
        )
