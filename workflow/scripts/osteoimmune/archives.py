"""Read one sample out of a GEO series' supplementary archive (``GSE..._RAW.tar``).

A GEO series publishes its per-sample files in one plain tar whose member names start with the
sample's GSM id (``GSM5201883_S1_matrix.mtx.gz``). :func:`archive_samples` lists the GSM ids and
their files; :func:`read_archive_sample` extracts one GSM's matrix into a private temporary
folder and reads it with the reader it is given (the readers pass
:func:`osteoimmune.readers.read_matrix_file`), so every format check stays in the readers and
this module never imports them. The archive is only read, never modified or extracted beside
itself, and an archive with any unsafe member (absolute path, ``..``, link, device) is refused
as a whole before anything is extracted.
"""

from __future__ import annotations

import gzip
import logging
import os
import re
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import anndata as ad

from osteoimmune.errors import ReaderError

# read_matrix_file's signature: (spec, path, *, dataset) -> AnnData
MatrixReader = Callable[..., ad.AnnData]

log = logging.getLogger(__name__)

GSM_ID = re.compile(r"^(GSM\d+)")
_MTX = re.compile(r"matrix\.mtx(\.gz)?$")
_H5 = (".h5",)
_NESTED_TAR = (".tar.gz", ".tgz", ".tar")
# Name endings of a single-file matrix read with the spec's own `format:`.
_SINGLE_FILE = {
    "csv": (".csv", ".csv.gz"),
    "tsv": (".tsv", ".tsv.gz", ".txt", ".txt.gz"),
    "h5ad": (".h5ad",),
    "rds": (".rds",),
    "rda": (".rda", ".rdata"),
}
_REFUSED = "the archive is refused, nothing was extracted. Check the URL, or download a good copy."


def _where(dataset: str, archive: Path) -> str:
    return f"Dataset '{dataset}', archive '{archive.name}'"


# --------------------------------------------------------------------------- scanning


def archive_samples(archive: Path, *, dataset: str) -> dict[str, list[str]]:
    """The GSM ids of a GEO ``_RAW.tar`` archive, each with its member files.

    The archive (plain or compressed tar) is read once, member by member; nothing is extracted.

    Parameters
    ----------
    archive
        The downloaded tar file.
    dataset
        The dataset id, for messages.

    Returns
    -------
    dict
        GSM id -> names of its regular-file members (whose base name starts with the id), in
        GSM order. Files without a GSM id are left out (and logged).

    Raises
    ------
    ReaderError
        When the file is not a readable tar, or any member is unsafe to extract: an absolute
        path, a ``..`` component, a link, a device or a FIFO.
    """
    with _open_tar(archive, dataset=dataset) as tar:
        members = _safe_members(tar, archive=archive, dataset=dataset)
    return _group_by_gsm(list(members), archive=archive, dataset=dataset)


def _open_tar(archive: Path, *, dataset: str) -> tarfile.TarFile:
    where = _where(dataset, archive)
    if not archive.is_file():
        msg = f"{where}: the file {archive} does not exist; fetch the dataset again."
        raise ReaderError(msg)
    try:
        return tarfile.open(archive, mode="r:*")
    except (tarfile.TarError, OSError, EOFError) as err:
        msg = f"{where}: is not a readable tar archive ({err}); download it again."
        raise ReaderError(msg) from err


def _safe_members(
    tar: tarfile.TarFile, *, archive: Path, dataset: str
) -> dict[str, tarfile.TarInfo]:
    """Every regular-file member by name, after checking that all members are safe."""
    files: dict[str, tarfile.TarInfo] = {}
    try:
        for info in tar:
            _check_member(info, archive=archive, dataset=dataset)
            if info.isreg():
                files[info.name] = info  # a repeated name: the last copy wins, as tar has it
    except (tarfile.TarError, OSError, EOFError) as err:
        msg = (
            f"{_where(dataset, archive)}: the tar archive is damaged or truncated ({err}); "
            "download it again."
        )
        raise ReaderError(msg) from err
    return files


def _unsafe(info: tarfile.TarInfo) -> str | None:
    """Why a member is unsafe to extract, or None when it is a plain file or folder inside."""
    name = info.name
    if name.startswith("/") or re.match(r"^[A-Za-z]:[\\/]", name):
        return "has an absolute path"
    if ".." in re.split(r"[\\/]", name):
        return "points outside the archive folder"
    if info.issym() or info.islnk():
        kind = "symbolic" if info.issym() else "hard"
        return f"is a {kind} link (to '{info.linkname}')"
    if info.ischr() or info.isblk() or info.isfifo():
        return "is a device or FIFO, not a regular file"
    if not (info.isreg() or info.isdir()):
        return f"has tar type {info.type!r}, not a regular file or folder"
    return None


def _check_member(info: tarfile.TarInfo, *, archive: Path, dataset: str) -> None:
    why = _unsafe(info)
    if why:
        msg = f"{_where(dataset, archive)}: member '{info.name}' {why}; {_REFUSED}"
        raise ReaderError(msg)


def _check_nested(tar: tarfile.TarFile, info: tarfile.TarInfo, *, where: str) -> None:
    """Check the members of a tar inside the archive (a 10x folder), read in place."""
    try:
        with tarfile.open(fileobj=tar.extractfile(info), mode="r:*") as nested:
            unsafe = next(((i.name, why) for i in nested if (why := _unsafe(i))), None)
    except (tarfile.TarError, OSError, EOFError) as err:
        msg = f"{where}: member '{info.name}' is not a readable tar ({err}); download again."
        raise ReaderError(msg) from err
    if unsafe:
        msg = f"{where}: member '{info.name}' holds '{unsafe[0]}', which {unsafe[1]}; {_REFUSED}"
        raise ReaderError(msg)


def _group_by_gsm(names: list[str], *, archive: Path, dataset: str) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    ignored = []
    for name in names:
        match = GSM_ID.match(PurePosixPath(name).name)
        if match:
            groups.setdefault(match.group(1), []).append(name)
        else:
            ignored.append(name)
    if ignored:
        log.info(
            "%s: %d file(s) without a GSM id ignored: %s",
            _where(dataset, archive),
            len(ignored),
            ", ".join(ignored[:5]) + (", ..." if len(ignored) > 5 else ""),
        )
    return {gsm: sorted(groups[gsm]) for gsm in sorted(groups, key=lambda g: int(g[3:]))}


# --------------------------------------------------------------------------- one sample


def read_archive_sample(
    archive: Path, *, member: str, spec: dict, dataset: str, sample: str, read: MatrixReader
) -> ad.AnnData:
    """Read one GSM sample of a GEO ``_RAW.tar`` archive, as cells x genes CSR float32.

    The whole archive is checked first (as in :func:`archive_samples`); then only the sample's
    matrix files are extracted into a private temporary folder, which is removed afterwards.
    The matrix is found by its files: a 10x triplet (``matrix.mtx``, ``barcodes.tsv`` and
    ``features.tsv`` or Cell Ranger v2 ``genes.tsv``, gzipped or not, sharing a prefix), a 10x
    HDF5 ``.h5`` file, a ``.tar.gz`` of a 10x folder, or else the one file of ``spec['format']``
    (csv, tsv, h5ad, rds, rda).

    Parameters
    ----------
    archive
        The downloaded tar file; only read.
    member
        The sample's GSM id in the archive (e.g. ``'GSM5201883'``).
    spec
        The archive's registry file spec; ``format`` (when a single-file format),
        ``orientation``, ``layer``, ``object`` and ``gene_column`` apply to the member file.
    dataset
        The dataset id, for messages.
    sample
        The sample's name in the samplesheet, for messages.
    read
        Reads the extracted matrix: ``read(spec, path, dataset=...)``, i.e.
        :func:`osteoimmune.readers.read_matrix_file`.

    Returns
    -------
    anndata.AnnData
        As ``read`` (:func:`osteoimmune.readers.read_matrix_file`) returns it: the source cell
        and gene names and tables, ``X`` CSR float32.

    Raises
    ------
    ReaderError
        When the archive is unsafe or unreadable, the GSM id is not in it, the GSM has no
        readable matrix or more than one, or the matrix file itself cannot be read.
    """
    where = f"{_where(dataset, archive)}, sample '{sample}' (member {member})"
    with _open_tar(archive, dataset=dataset) as tar:
        files = _safe_members(tar, archive=archive, dataset=dataset)
        groups = _group_by_gsm(list(files), archive=archive, dataset=dataset)
        if member not in groups:
            msg = (
                f"{where}: {member} is not in the archive (it holds "
                f"{', '.join(groups) or 'no GSM files'}); fix the samplesheet's `member`."
            )
            raise ReaderError(msg)
        fmt, names = _find_matrix(groups[member], spec=spec, where=where)
        inner = {k: spec[k] for k in ("orientation", "layer", "object", "gene_column") if k in spec}
        inner |= {"format": fmt, "filename": f"{archive.name}:{names[0]}"}
        try:
            return _read_members(
                tar,
                [files[n] for n in names],
                spec=inner,
                dataset=dataset,
                where=_where(dataset, archive),
                read=read,
            )
        except ReaderError as err:
            msg = f"{err} (sample '{sample}', member {member})"
            raise ReaderError(msg) from err


def _read_members(
    tar: tarfile.TarFile,
    members: list[tarfile.TarInfo],
    *,
    spec: dict,
    dataset: str,
    where: str,
    read: MatrixReader,
) -> ad.AnnData:
    """Extract the members into a private temporary folder and read them as ``spec`` says."""
    with tempfile.TemporaryDirectory(prefix="osteoimmune-geo-") as tmp:
        folder = Path(tmp)
        for info in members:
            if info.name.lower().endswith(_NESTED_TAR):
                _check_nested(tar, info, where=where)
        for info in members:
            _extract(tar, info, folder=folder, where=where)
        path = _prepare(spec["format"], [info.name for info in members], folder=folder)
        # Read fully into memory here: the temporary folder is gone once this returns.
        return read(spec, path, dataset=dataset)


def _find_matrix(names: list[str], *, spec: dict, where: str) -> tuple[str, list[str]]:
    """The matrix format of a GSM's files and the member names to extract for it."""
    found = [("10x_mtx", triplet) for triplet in _triplets(names)]
    found += [("10x_h5", [n]) for n in names if n.lower().endswith(_H5)]
    found += [("10x_mtx", [n]) for n in names if n.lower().endswith(_NESTED_TAR)]
    endings = _SINGLE_FILE.get(spec.get("format"), ())
    if not found and endings:
        found = [(spec["format"], [n]) for n in names if n.lower().endswith(endings)]
    if len(found) == 1:
        return found[0]
    if not found:
        wanted = f", or a {spec['format']} file (`format:`)" if endings else ""
        msg = (
            f"{where}: no readable matrix among its files ({', '.join(names)}); expected a 10x "
            f"triplet (matrix.mtx, barcodes.tsv, features.tsv or genes.tsv) or a 10x .h5 file"
            f"{wanted}. Check the GSM id, or register the sample's files one by one."
        )
        raise ReaderError(msg)
    listed = "; ".join(", ".join(files) for _, files in found)
    msg = (
        f"{where}: {len(found)} matrices among its files ({listed}); which one to read is "
        "ambiguous. Register the one you want as its own file."
    )
    raise ReaderError(msg)


def _triplets(names: list[str]) -> list[list[str]]:
    """Complete 10x triplets: [matrix, barcodes, features or genes] sharing a prefix."""
    present = set(names)
    triplets = []
    for name in names:
        found = _MTX.search(name)
        if not found:
            continue
        prefix = name[: found.start()]
        barcodes = _first_present(present, prefix, ["barcodes.tsv"])
        genes = _first_present(present, prefix, ["features.tsv", "genes.tsv"])
        if barcodes and genes:
            triplets.append([name, barcodes, genes])
    return triplets


def _first_present(present: set[str], prefix: str, stems: list[str]) -> str | None:
    candidates = [f"{prefix}{stem}{gz}" for stem in stems for gz in (".gz", "")]
    return next((c for c in candidates if c in present), None)


def _extract(tar: tarfile.TarFile, info: tarfile.TarInfo, *, folder: Path, where: str) -> None:
    # Checked again here, whatever the scan found: the target must stay inside the folder.
    target = (folder / info.name).resolve()
    if not target.is_relative_to(folder.resolve()):
        msg = f"{where}: member '{info.name}' points outside the archive folder; {_REFUSED}"
        raise ReaderError(msg)
    try:
        tar.extract(info, folder, filter="data")
    except (tarfile.TarError, OSError, EOFError) as err:
        msg = f"{where}: member '{info.name}' could not be extracted ({err}); download again."
        raise ReaderError(msg) from err


def _prepare(fmt: str, names: list[str], *, folder: Path) -> Path:
    """The path to read: a 10x triplet is laid out afresh as a Cell Ranger v3 folder."""
    if fmt != "10x_mtx" or len(names) != 3:
        return folder / names[0]
    matrix, barcodes, genes = (folder / name for name in names)
    prefix = matrix.name[: _MTX.search(matrix.name).start()]
    out = folder / "10x"
    out.mkdir()
    _gzipped(matrix, out / f"{prefix}matrix.mtx.gz")
    _gzipped(barcodes, out / f"{prefix}barcodes.tsv.gz")
    _v3_features(genes, out / f"{prefix}features.tsv.gz")
    return out


def _is_gzip(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(2) == b"\x1f\x8b"


def _gzipped(source: Path, target: Path) -> None:
    if _is_gzip(source):
        os.replace(source, target)
        return
    # Level 1: the file is read once and removed with the temporary folder.
    with source.open("rb") as raw, gzip.open(target, "wb", compresslevel=1) as out:
        shutil.copyfileobj(raw, out)
    source.unlink()


def _v3_features(source: Path, target: Path) -> None:
    """Write a (v2, 1-2 column) gene table as v3 features: id, symbol, feature type."""
    opener = gzip.open if _is_gzip(source) else open
    with opener(source, "rt", newline="") as lines, gzip.open(target, "wt", newline="") as out:
        for line in lines:
            fields = line.rstrip("\r\n").split("\t")
            if len(fields) == 1:
                fields *= 2
            if len(fields) == 2:
                fields.append("Gene Expression")
            out.write("\t".join(fields) + "\n")


def read_triplet_files(
    paths: list[Path], *, spec: dict, dataset: str, where: str, read: MatrixReader
) -> ad.AnnData:
    """Read a 10x triplet given as three separate files (a GEO sample's supplementary files).

    The files keep their names (``GSM..._matrix.mtx.gz``, ``..._barcodes.tsv.gz``,
    ``..._genes.tsv.gz`` or ``features.tsv.gz``, with any shared prefix); they are linked into
    a private temporary folder and laid out as a Cell Ranger v3 folder, as an archive's are.
    """
    triplets = _triplets([p.name for p in paths])
    if len(triplets) != 1 or len(paths) != 3:
        msg = (
            f"{where}: the files {', '.join(p.name for p in paths)} are not one 10x triplet "
            "(matrix.mtx, barcodes.tsv and features.tsv or genes.tsv, sharing a prefix)."
        )
        raise ReaderError(msg)
    with tempfile.TemporaryDirectory(prefix="osteoimmune-10x-") as tmp:
        folder = Path(tmp)
        for path in paths:
            (folder / path.name).symlink_to(Path(path).resolve())
        path = _prepare("10x_mtx", triplets[0], folder=folder)
        return read({**spec, "format": "10x_mtx"}, path, dataset=dataset)
