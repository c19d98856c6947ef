"""Tests of osteoimmune.catalog: the registry listing."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import MANIFEST_SHAPES, REPO

from osteoimmune.catalog import COLUMNS, format_table, main, registry_table
from osteoimmune.registry import load_registry

SHA = "0" * 64


def url_file(name: str, *, sha256: str | None = SHA, **extra) -> dict:
    return {
        "role": "counts",
        "url": f"https://example.org/{name}",
        "filename": name,
        "sha256": sha256,
        **extra,
    }


def single(*files: dict, **extra) -> dict:
    return {
        "species": "mouse",
        "tissue": "bone marrow",
        "files": list(files),
        "metadata": {
            "sample": {"constant": "s"},
            "donor": {"constant": "d"},
            "condition": {"column": "time"},
        },
        "default": True,
        **extra,
    }


def study(samples: list[tuple[str, str, str]], *, files=(), **extra) -> dict:
    rows = [
        {
            "sample": sample,
            "donor": donor,
            "condition": condition,
            "covariates": {},
            "files": [url_file(f"{sample}.h5", sha256=None, sample=sample, bytes=1000)],
            "member": None,
            "row": row,
        }
        for row, (sample, donor, condition) in enumerate(samples, start=1)
    ]
    entry = {"species": "human", "tissue": "bone", "files": list(files), "samples": rows}
    return {**entry, "default": False, **extra}


def test_registry_table_design_cells_size_status_default(tmp_path):
    mirror = tmp_path / "mirror"
    (mirror / "here").mkdir(parents=True)
    (mirror / "here" / "a.rda").write_bytes(b"x" * 1500)
    (mirror / "deep" / "er").mkdir(parents=True)
    (mirror / "deep" / "er" / "b.rda").write_bytes(b"y" * 500)
    lock = tmp_path / "checksums.lock.tsv"
    lock.write_text(f"url\tsha256\tbytes\nhttps://example.org/S1.h5\t{SHA}\t1000\n")
    registry = {
        "here": single(url_file("a.rda"), url_file("b.rda", sha256=None), cells=2660),
        "pinned": single(url_file("c.rda", bytes=2_500_000), url_file("d.rda", bytes=500_000)),
        "texty": single(url_file("e.tar", size="134.0 Mb"), default=False),
        "study": study(
            [("S1", "D1", "ctrl"), ("S2", "D1", "ovx"), ("S3", "D2", "ovx")],
            files=[url_file("GSE1_RAW.tar", role="archive", bytes=10**9)],
        ),
        "recorded": study([("S1", "D1", "ctrl")]),
    }

    table = registry_table(registry, mirror=mirror, lock=lock)

    assert list(table.columns) == COLUMNS
    rows = table.set_index("id").to_dict("index")
    assert rows["here"] == {
        "species": "mouse",
        "tissue": "bone marrow",
        "design": "1 samples x 1 donors x ? conditions",
        "cells": "2660",
        "size": "2.0 kB",
        "status": "mirrored here",
        "default": "yes",
    }
    assert (rows["pinned"]["size"], rows["pinned"]["status"]) == ("3.0 MB", "checksum known")
    assert rows["pinned"]["cells"] == "?"
    assert (rows["texty"]["size"], rows["texty"]["default"]) == ("134.0 Mb", "no")
    assert rows["study"]["design"] == "3 samples x 2 donors x 2 conditions"
    assert rows["study"]["size"] == "1.0 GB"
    # S2 and S3 have no checksum in the registry or the lock.
    assert rows["study"]["status"] == "unknown"
    assert rows["study"]["default"] == "no"
    assert rows["recorded"]["status"] == "recorded"
    assert rows["recorded"]["design"] == "1 samples x 1 donors x 1 conditions"


def test_registry_table_without_mirror_or_lock(tmp_path):
    registry = {
        "a": single(url_file("a.rda"), url_file("b.rda")),
        "b": single(url_file("c.rda", sha256=None)),
        "own": single({"role": "counts", "path": str(tmp_path / "own.h5ad"), "filename": "x"}),
    }
    (tmp_path / "own.h5ad").write_bytes(b"z" * 10)

    rows = registry_table(registry, mirror=None, lock=None).set_index("id")

    assert rows["status"].to_dict() == {
        "a": "checksum known",
        "b": "unknown",
        "own": "mirrored here",
    }
    assert rows["size"].to_dict() == {"a": "?", "b": "?", "own": "10 B"}


def test_format_table_aligns_columns():
    table = registry_table(
        {"long_dataset_id": single(url_file("a.rda")), "b": single()}, mirror=None, lock=None
    )

    lines = format_table(table).splitlines()

    assert lines[0].split() == COLUMNS
    assert len(lines) == 3
    status = lines[0].index("status")
    assert lines[1][status:].startswith("checksum known")
    assert lines[2][status:].startswith("unknown")


def test_real_registry_through_the_mirror(mirror, capsys, monkeypatch):
    monkeypatch.setenv("OSTEOIMMUNE_MIRROR", str(mirror))
    registry = load_registry(REPO / "config" / "datasets.yaml")

    table = registry_table(registry, mirror=mirror, lock=None).set_index("id")

    assert set(MANIFEST_SHAPES) <= set(table.index)
    for name in MANIFEST_SHAPES:
        assert table.loc[name, "status"] == "mirrored here", name
        assert table.loc[name, "size"] != "?", name
    assert table.loc["paul2015_bm_myeloid", "design"] == "1 samples x 1 donors x 1 conditions"
    assert table.loc["shalek2014_bmdc_lps", "design"] == "? samples x 1 donors x ? conditions"

    assert main(["--tsv"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split("\t") == COLUMNS
    assert {line.split("\t")[0] for line in out[1:]} == set(table.index)
    status = {line.split("\t")[0]: line.split("\t")[6] for line in out[1:]}
    assert {name: status[name] for name in MANIFEST_SHAPES} == dict.fromkeys(
        MANIFEST_SHAPES, "mirrored here"
    )


def test_command_line_reports_a_bad_registry(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "osteoimmune.catalog", "--registry", str(tmp_path / "no.yaml")],
        capture_output=True,
        text=True,
        cwd=REPO,
    )

    assert result.returncode == 1
    assert "no.yaml" in result.stderr and "does not exist" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("flag", [[], ["--tsv"]])
def test_command_line_prints_every_entry(flag, tmp_path):
    lock = tmp_path / "lock.tsv"
    result = subprocess.run(
        [sys.executable, "-m", "osteoimmune.catalog", "--lock", str(lock), *flag],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "OSTEOIMMUNE_MIRROR": ""},
    )

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1 + len(load_registry(REPO / "config" / "datasets.yaml"))
    assert "checksum known" in result.stdout
