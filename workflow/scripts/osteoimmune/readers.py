"""Read a registry dataset's fetched files into the project's standard AnnData.

The standard form, whatever the source format:

- cells x genes, ``X`` a CSR float32 matrix holding the values as read, never transformed;
  for ``values: counts`` the same values again in ``layers['counts']``, for normalized,
  log-normalised or TPM input no counts layer;
- ``var_names`` unique gene symbols, with ``var['original_symbol']`` and, when known,
  ``var['gene_id']``; a symbol the source gives to several genes is one column (counts summed,
  other values the copy in most cells kept; logged, see :func:`merge_duplicate_symbols`);
- cell barcodes unique within a sample (a repeated one is an error), cell names unique;
- ``obs`` with categorical ``dataset``, ``sample``, ``donor``, ``condition`` and, when the
  registry names author labels, ``author_cell_type``;
- ``obsm['protein']`` (cells x proteins DataFrame) for a CITE-seq protein file;
- ``uns['osteoimmune']`` with the dataset id, species, gene-symbol case, files and the value
  type: declared (``value_type``, what every later step goes by), detected from the values
  (``value_type_detected``, checked to agree, see :mod:`osteoimmune.values`) and a sentence
  for the report (``value_type_note``).
"""

from __future__ import annotations

import gzip
import logging
import re
import tarfile
import tempfile
import warnings
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import rdata
import scanpy as sc
from anndata.io import read_elem
from anndata.utils import make_index_unique
from rdata.parser import RObject, RObjectType
from scipy import sparse

from osteoimmune.archives import read_archive_sample, read_triplet_files
from osteoimmune.errors import ReaderError
from osteoimmune.values import VALUE_TYPES, ValueEvidence, check_value_type, input_note

log = logging.getLogger(__name__)

SPECIES = ("human", "mouse")
ORIENTATIONS = ("genes_x_cells", "cells_x_genes")
METADATA_KEYS = ("sample", "donor", "condition")

# Start bytes of the R serialisation formats and of the compressions R uses for them.
_R_MAGIC = (
    b"\x1f\x8b",
    b"BZh",
    b"\xfd7zXZ\x00",
    b"RDX2\n",
    b"RDX3\n",
    b"RDA2\n",
    b"RDA3\n",
    b"X\n",
    b"A\n",
)
_ENSEMBL_ID = re.compile(r"^ENS[A-Z]*G\d{6,}")
_PLAIN_SYMBOL = re.compile(r"^[A-Za-z][A-Za-z0-9]+$")
# Fewer recognisable symbols than this and the case rule has too little to go on.
_MIN_SYMBOLS = 20
_GZIP_MAGIC = b"\x1f\x8b"
# Errors that reading a damaged gzip stream raises, besides the parser's own.
_READ_ERRORS = (ValueError, UnicodeDecodeError, EOFError, OSError, zlib.error)


def _keep_s4(obj: Any, attrs: Any) -> Any:
    # rdata has no Matrix-package classes; keep the slots (i, p, x, Dim, Dimnames) as they are.
    return obj


_R_CLASSES = {**rdata.conversion.DEFAULT_CLASS_MAP, "dgCMatrix": _keep_s4, "dgTMatrix": _keep_s4}


def _where(dataset: str, filename: str) -> str:
    return f"Dataset '{dataset}', file '{filename}'"


def _examples(names: Sequence[Any], n: int = 3) -> str:
    return ", ".join(f"'{name}'" for name in list(names)[:n])


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


# --------------------------------------------------------------------------- entry point


def read_dataset(entry: dict, paths: dict[str, Path], *, dataset: str) -> ad.AnnData:
    """Read one registry dataset into the standard AnnData.

    Parameters
    ----------
    entry
        The dataset's registry entry (from :func:`osteoimmune.registry.load_registry`).
    paths
        Each file's ``filename`` -> its local path (a file, or a folder for ``10x_mtx``).
    dataset
        The dataset id, used in ``obs['dataset']`` and in error messages.

    Returns
    -------
    anndata.AnnData
        Cells x genes in the standard form described in this module's docstring.

    Raises
    ------
    ReaderError
        When a file is missing, unreadable, of the wrong format, or its values or metadata do
        not match the registry entry.
    """
    _check_entry(entry, dataset=dataset)
    spec = _file_with_role(entry, "counts", dataset=dataset)
    where = _where(dataset, spec["filename"])
    source = read_matrix_file(spec, _local_path(spec, paths, dataset=dataset), dataset=dataset)
    evidence = _check_values(source.X, value_type=entry["values"], where=where)
    var = _gene_table(source.var, spec, where=where)
    matrix, var = merge_duplicate_symbols(source.X, var, value_type=entry["values"], where=where)
    check_species_symbols(
        var["original_symbol"],
        entry["species"],
        dataset=dataset,
        gene_symbol_case=entry.get("gene_symbol_case", "as_is"),
        filename=spec["filename"],
    )
    obs = _cell_table(source.obs, entry, paths, dataset=dataset, where=where)
    adata = ad.AnnData(X=matrix, obs=obs, var=var)
    if entry["values"] == "counts":
        # A copy, not the same object: in-place normalisation of X must not touch the counts.
        adata.layers["counts"] = adata.X.copy()
    protein = _file_with_role(entry, "protein", dataset=dataset, required=False)
    if protein is not None:
        frame = _read_protein(
            protein, _local_path(protein, paths, dataset=dataset), source.obs_names, dataset=dataset
        )
        adata.obsm["protein"] = frame.set_axis(adata.obs_names, axis=0)
    adata.uns["osteoimmune"] = {
        "dataset": dataset,
        "species": entry["species"],
        **value_type_record(entry["values"], evidence),
        "gene_symbol_case": entry.get("gene_symbol_case", "as_is"),
        "source_files": _used_files(entry),
        "covariates": list(entry["metadata"].get("covariates", [])),
    }
    return adata


def read_study_sample(
    sample: dict, paths: dict[str, Path], *, dataset: str, settings: dict
) -> ad.AnnData:
    """Read one sample of a study (a samplesheet row) into the standard AnnData.

    Parameters
    ----------
    sample
        The sample record of :func:`osteoimmune.samplesheet.parse_samples`: ``sample``,
        ``row``, ``files`` (or ``member`` of the dataset's archive), ``format`` and the
        reader options (``layer``, ``gene_column``, ``orientation``, ``object``).
    paths
        Each fetched file's ``filename`` -> its local path (the sample's files, or the
        dataset's archive for a ``member``).
    dataset
        The dataset id.
    settings
        The registry entry's ``species``, ``values``, ``gene_symbol_case``, ``author_label``
        and, for a member, ``archive`` (the archive's file name).

    Returns
    -------
    anndata.AnnData
        The sample's cells in the standard form, ``obs`` with ``dataset`` and ``sample`` (donor,
        condition and covariates are joined from the samplesheet after QC); cell names are
        ``<barcode>-<sample>``, unique across the study.
    """
    _check_entry(settings, dataset=dataset)
    name = sample["sample"]
    source, spec = _read_sample_matrix(sample, paths, dataset=dataset, settings=settings)
    where = f"Dataset '{dataset}', sample '{name}' (samplesheet row {sample['row']})"
    where += f", file '{spec['filename']}'"
    evidence = _check_values(source.X, value_type=settings["values"], where=where)
    var = _gene_table(source.var, spec, where=where)
    matrix, var = merge_duplicate_symbols(source.X, var, value_type=settings["values"], where=where)
    check_species_symbols(
        var["original_symbol"], settings["species"], dataset=dataset,
        gene_symbol_case=settings.get("gene_symbol_case", "as_is"), filename=spec["filename"],
    )  # fmt: skip
    _check_unique_cells(pd.Index(source.obs_names.astype(str)), None, where=where)
    cells = pd.Index(source.obs_names.astype(str) + f"-{name}")
    obs = pd.DataFrame(index=cells)
    obs["dataset"] = pd.Categorical([dataset] * len(cells))
    obs["sample"] = pd.Categorical([name] * len(cells))
    label = settings.get("author_label") or {}
    if "column" in label:
        values = _obs_column(source.obs, label["column"], key="author_label", where=where)
        obs["author_cell_type"] = pd.Categorical(values)
    adata = ad.AnnData(X=matrix, obs=obs, var=var)
    if settings["values"] == "counts":
        adata.layers["counts"] = adata.X.copy()
    adata.uns["osteoimmune"] = {
        "dataset": dataset,
        "species": settings["species"],
        **value_type_record(settings["values"], evidence),
        "gene_symbol_case": settings.get("gene_symbol_case", "as_is"),
        "source_files": [f["filename"] for f in sample["files"]] or [settings.get("archive")],
    }
    return adata


def _read_sample_matrix(
    sample: dict, paths: dict[str, Path], *, dataset: str, settings: dict
) -> tuple[ad.AnnData, dict]:
    """The sample's matrix as found in its file(s), and the spec it was read with."""
    options = {
        k: sample[k] for k in ("layer", "gene_column", "orientation", "object") if k in sample
    }
    if sample.get("member"):
        archive = settings["archive"]
        spec = {"format": sample.get("format"), "filename": archive, **options}
        path = _local_path({"filename": archive}, paths, dataset=dataset)
        source = read_archive_sample(
            path, member=sample["member"], spec=spec, dataset=dataset, sample=sample["sample"],
            read=read_matrix_file,
        )  # fmt: skip
        return source, spec
    files = sample["files"]
    spec = {**files[0], **options}
    if len(files) == 1:
        return read_matrix_file(
            spec, _local_path(spec, paths, dataset=dataset), dataset=dataset
        ), spec
    local = [_local_path(f, paths, dataset=dataset) for f in files]
    where = f"Dataset '{dataset}', sample '{sample['sample']}' (samplesheet row {sample['row']})"
    matrix = read_triplet_files(
        local, spec=spec, dataset=dataset, where=where, read=read_matrix_file
    )
    return matrix, spec


def _check_entry(entry: dict, *, dataset: str) -> None:
    if entry.get("species") not in SPECIES:
        msg = (
            f"Dataset '{dataset}': species {entry.get('species')!r} is not supported; set "
            f"`species:` to one of {', '.join(SPECIES)} in the registry."
        )
        raise ReaderError(msg)
    if entry.get("values") not in VALUE_TYPES:
        msg = (
            f"Dataset '{dataset}': values {entry.get('values')!r} is not known; set `values:` "
            f"to one of {', '.join(VALUE_TYPES)} in the registry."
        )
        raise ReaderError(msg)


def _file_with_role(entry: dict, role: str, *, dataset: str, required: bool = True) -> dict | None:
    specs = [f for f in entry["files"] if f["role"] == role]
    if len(specs) > 1 or (required and not specs):
        msg = (
            f"Dataset '{dataset}': expected {'exactly' if required else 'at most'} one file "
            f"with role '{role}', found {len(specs)}; fix `files:` in the registry."
        )
        raise ReaderError(msg)
    return specs[0] if specs else None


def _local_path(spec: dict, paths: dict[str, Path], *, dataset: str) -> Path:
    where = _where(dataset, spec["filename"])
    if spec["filename"] not in paths:
        msg = f"{where}: no local path was given for this file; fetch the dataset first."
        raise ReaderError(msg)
    path = Path(paths[spec["filename"]])
    if not path.exists():
        msg = f"{where}: the local copy {path} does not exist; fetch the dataset again."
        raise ReaderError(msg)
    return path


def _used_files(entry: dict) -> list[str]:
    label = entry.get("author_label") or {}
    used = {"counts", "protein"} | ({"labels"} if label.get("file") == "labels" else set())
    return [f["filename"] for f in entry["files"] if f["role"] in used]


# --------------------------------------------------------------------------- one reader per format


def read_matrix_file(spec: dict, path: Path, *, dataset: str) -> ad.AnnData:
    """Read a registry file holding an expression matrix, as cells x genes CSR float32.

    Parameters
    ----------
    spec
        The file's registry spec (``format``, ``orientation``, ``layer``, ``object``, ...).
    path
        The local file (or folder, for ``10x_mtx``).
    dataset
        The dataset id, for error messages.

    Returns
    -------
    anndata.AnnData
        The matrix as found in the file: source cell and gene names, the source ``obs`` and
        ``var`` tables where the format has them, ``X`` CSR float32. Values are not validated.
    """
    with warnings.catch_warnings():
        # anndata says to make repeated names unique; the caller merges or refuses them.
        warnings.filterwarnings("ignore", "(Observation|Variable) names are not unique")
        return _read_matrix_file(spec, path, dataset=dataset)


def _read_matrix_file(spec: dict, path: Path, *, dataset: str) -> ad.AnnData:
    where = _where(dataset, spec["filename"])
    fmt = spec["format"]
    if fmt in ("10x_mtx", "10x_h5") and spec.get("orientation", "cells_x_genes") != "cells_x_genes":
        msg = f"{where}: 10x files are always cells x genes; remove `orientation:` from the spec."
        raise ReaderError(msg)
    if fmt == "h5ad":
        adata = _read_h5ad(path, layer=spec.get("layer"), where=where)
        if spec.get("orientation") == "genes_x_cells":
            adata = adata.T
    elif fmt == "10x_mtx":
        adata = _read_10x_mtx(path, where=where)
    elif fmt == "10x_h5":
        adata = _read_10x_h5(path, where=where)
    elif fmt in ("csv", "tsv"):
        adata = _read_table(path, sep="," if fmt == "csv" else "\t", spec=spec, where=where)
    elif fmt in ("rda", "rds"):
        obj, _ = read_r_object(path, fmt=fmt, name=spec.get("object"), where=where)
        adata = matrix_from_r(
            obj, orientation=spec.get("orientation"), dataset=dataset, filename=spec["filename"]
        )
    else:
        msg = f"{where}: format {fmt!r} is not supported; see config/schemas for the formats."
        raise ReaderError(msg)
    adata.X = _to_csr32(adata.X, where=where)
    return adata


def _require_hdf5(path: Path, *, fmt: str, where: str) -> None:
    if path.is_file() and h5py.is_hdf5(path):
        return
    msg = (
        f"{where}: is not an HDF5 file, so it cannot be {fmt}. Check `format:` in the registry "
        "and that the download is the file itself, not an error page."
    )
    raise ReaderError(msg)


def _read_h5ad(path: Path, *, layer: str | None, where: str) -> ad.AnnData:
    """X, a layer, or with ``layer='raw.X'`` the raw matrix (CELLxGENE keeps counts there)."""
    _require_hdf5(path, fmt="h5ad", where=where)
    with h5py.File(path, "r") as handle:
        missing = [key for key in ("obs", "var") if key not in handle]
        if missing:
            msg = f"{where}: HDF5 file without AnnData groups {missing}; it is not an h5ad file."
            raise ReaderError(msg)
        key = _h5ad_matrix_key(handle, layer=layer, where=where)
        if isinstance(handle["obs"], h5py.Dataset):  # written before anndata 0.7
            legacy = ad.read_h5ad(path)
            raw = legacy.raw
            matrix = raw.X if key == "raw/X" else legacy.layers[layer] if layer else legacy.X
            var = raw.var if key == "raw/X" else legacy.var
            return ad.AnnData(X=matrix, obs=legacy.obs, var=var)
        with warnings.catch_warnings():
            # Files from older anndata lack encoding metadata; they read correctly anyway.
            warnings.simplefilter("ignore", ad.OldFormatWarning)
            # Read only the matrix that is used, not every layer and embedding of the file.
            matrix = read_elem(handle[key])
            obs = read_elem(handle["obs"])
            var = read_elem(handle["raw/var" if key == "raw/X" else "var"])
    return ad.AnnData(X=matrix, obs=obs, var=var)


def _h5ad_matrix_key(handle: h5py.File, *, layer: str | None, where: str) -> str:
    layers = list(handle["layers"]) if "layers" in handle else []
    has_raw = "raw" in handle and "X" in handle["raw"]
    if layer == "raw.X":
        if not has_raw:
            msg = f"{where}: `layer: raw.X` but the file has no raw.X; fix or remove `layer:`."
            raise ReaderError(msg)
        return "raw/X"
    if layer is not None and layer not in layers:
        msg = (
            f"{where}: layer '{layer}' is not in the file (layers: "
            f"{', '.join(layers + ['raw.X'] * has_raw) or 'none'}); fix `layer:` or remove it "
            "to read X."
        )
        raise ReaderError(msg)
    if layer is None and "X" not in handle:
        msg = f"{where}: the h5ad file has no X; set `layer:` to one of {layers}."
        raise ReaderError(msg)
    return f"layers/{layer}" if layer else "X"


def _read_10x_mtx(path: Path, *, where: str) -> ad.AnnData:
    if path.is_dir():
        return _read_mtx_folder(_find_mtx_folder(path, where=where), where=where)
    if path.is_file() and tarfile.is_tarfile(path):
        # Extract into a private temporary folder, never beside the raw download.
        with tempfile.TemporaryDirectory(prefix="osteoimmune-10x-") as tmp:
            try:
                with tarfile.open(path) as tar:
                    tar.extractall(tmp, filter="data")
            except tarfile.FilterError as err:  # an unsafe member, not a damaged download
                msg = (
                    f"{where}: member '{err.tarinfo.name}' of the tar archive points outside "
                    f"the folder it is extracted to ({err}); nothing is extracted from it. "
                    "Pack the 10x files with paths inside one folder."
                )
                raise ReaderError(msg) from err
            except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
                _raise_if_bad_gzip(path, where=where)
                msg = f"{where}: the tar archive could not be extracted ({err}); download it again."
                raise ReaderError(msg) from err
            return _read_mtx_folder(_find_mtx_folder(Path(tmp), where=where), where=where)
    if path.is_file():
        _raise_if_bad_gzip(path, where=where)
    msg = (
        f"{where}: format 10x_mtx needs a folder with matrix.mtx(.gz), features.tsv(.gz) or "
        "genes.tsv, and barcodes.tsv(.gz), or a .tar.gz of such a folder."
    )
    raise ReaderError(msg)


def _find_mtx_folder(root: Path, *, where: str) -> Path:
    found = sorted(
        p
        for p in root.rglob("*matrix.mtx*")
        if p.name.endswith(("matrix.mtx", "matrix.mtx.gz")) and not p.name.startswith("._")
    )
    if len(found) != 1:
        names = ", ".join(str(p.relative_to(root)) for p in found) or "none"
        msg = (
            f"{where}: expected exactly one matrix.mtx(.gz) in the 10x folder, found {names}; "
            "give one sample's folder per file."
        )
        raise ReaderError(msg)
    return found[0]


def _read_mtx_folder(matrix: Path, *, where: str) -> ad.AnnData:
    folder = matrix.parent
    prefix = matrix.name[: matrix.name.index("matrix.mtx")]
    legacy = (folder / f"{prefix}genes.tsv").is_file()
    expected = (
        ["matrix.mtx", "genes.tsv", "barcodes.tsv"]
        if legacy
        else ["matrix.mtx.gz", "features.tsv.gz", "barcodes.tsv.gz"]
    )
    missing = [name for name in expected if not (folder / f"{prefix}{name}").is_file()]
    if missing:
        present = ", ".join(sorted(p.name for p in folder.iterdir()))
        msg = (
            f"{where}: the 10x folder lacks {', '.join(prefix + m for m in missing)} (it has "
            f"{present}); Cell Ranger v3 files must be gzipped, v2 files (genes.tsv) not."
        )
        raise ReaderError(msg)
    try:
        # Not made unique: repeated symbols are merged and repeated barcodes refused later.
        return sc.read_10x_mtx(
            folder, var_names="gene_symbols", make_unique=False, prefix=prefix, gex_only=True
        )
    except (*_READ_ERRORS, KeyError, IndexError, pd.errors.ParserError) as err:
        for name in expected:
            _raise_if_bad_gzip(folder / f"{prefix}{name}", where=where)
        msg = f"{where}: the 10x matrix could not be read ({err}); check the files are intact."
        raise ReaderError(msg) from err


def _read_10x_h5(path: Path, *, where: str) -> ad.AnnData:
    _require_hdf5(path, fmt="10x_h5", where=where)
    try:
        return sc.read_10x_h5(path, gex_only=True)
    except (ValueError, KeyError, OSError) as err:
        msg = (
            f"{where}: not a readable 10x HDF5 matrix ({err}); it needs the Cell Ranger layout "
            "(matrix/data, indices, indptr, shape, barcodes, features)."
        )
        raise ReaderError(msg) from err


def _read_table(path: Path, *, sep: str, spec: dict, where: str) -> ad.AnnData:
    table = _read_delimited(path, sep=sep, what=f"{spec['format'].upper()} table", where=where)
    bad = [c for c, t in table.dtypes.items() if not pd.api.types.is_numeric_dtype(t)]
    if bad:
        _raise_if_bad_gzip(path, where=where)
        msg = (
            f"{where}: column {bad[0]!r} is not numeric; a dense table needs names in the first "
            "column and numbers everywhere else. Check the separator (`format: csv` or `tsv`)."
        )
        raise ReaderError(msg)
    # Converted to sparse once; the dense table is dropped when this function returns.
    matrix = sparse.csr_matrix(table.to_numpy())
    return _oriented(
        matrix, table.index, table.columns, orientation=spec.get("orientation"), where=where
    )


def _read_delimited(path: Path, *, sep: str, what: str, where: str) -> pd.DataFrame:
    """A text table, gzipped or not, indexed by its first column; columns named as written."""
    with path.open("rb") as handle:
        compression = "gzip" if handle.read(2) == _GZIP_MAGIC else None
    try:
        table = pd.read_csv(path, sep=sep, index_col=0, compression=compression)
        header = pd.read_csv(
            path, sep=sep, header=None, nrows=1, dtype=str, keep_default_na=False,
            compression=compression,
        ).iloc[0].tolist()  # fmt: skip
    except _READ_ERRORS as err:
        _raise_if_bad_gzip(path, where=where)
        msg = f"{where}: could not be read as a {what} ({err})."
        raise ReaderError(msg) from err
    # pandas renames repeated column names (Actb, Actb.1); they are genes or cells to merge or
    # refuse, so the names are taken from the header line as written (R omits the corner one).
    names = header[1:] if len(header) == table.shape[1] + 1 else header
    if len(names) == table.shape[1]:
        table.columns = pd.Index(names)
    return table


def _gzip_problem(path: Path) -> str | None:
    """What is wrong with ``path`` as a gzip file; None when it is whole or not gzip at all."""
    if not path.is_file():
        return None
    with path.open("rb") as handle:
        magic = handle.read(2) == _GZIP_MAGIC
    if not magic:
        return "is not a valid gzip file (no gzip header)" if path.name.endswith(".gz") else None
    try:
        with gzip.open(path, "rb") as stream:
            while stream.read(1 << 24):
                pass
    except EOFError:
        return "is truncated (the gzip stream ends before its end marker)"
    except (OSError, zlib.error) as err:
        return f"is not a valid gzip file ({err})"
    return None


def _raise_if_bad_gzip(path: Path, *, where: str) -> None:
    """Raise when ``path`` is a damaged gzip file, so that is what the error says."""
    problem = _gzip_problem(path)
    if problem is None:
        return
    msg = (
        f"{where}: '{path.name}' {problem}, so the download is damaged; re-download it "
        f"(delete the local copy {path} and the dataset's fetch manifest, then fetch again)."
    )
    raise ReaderError(msg)


# --------------------------------------------------------------------------- R data


def read_r_object(
    path: Path, *, fmt: str, name: str | None, where: str
) -> tuple[Any, np.ndarray | None]:
    """Read one object of an R data file, with its ``names`` attribute.

    Parameters
    ----------
    path
        An ``.rda``/``.RData`` (``fmt='rda'``) or ``.rds`` (``fmt='rds'``) file.
    fmt
        ``'rda'`` or ``'rds'``.
    name
        The object's name inside an ``.rda`` file; ignored for ``.rds``.
    where
        Dataset and file, for error messages.

    Returns
    -------
    tuple
        The object as :mod:`rdata` converts it (an S4 ``dgCMatrix`` stays a
        :class:`~types.SimpleNamespace` of its slots), and its ``names`` attribute (cell
        barcodes of a named factor or vector) or ``None``; ``rdata`` drops ``names`` on
        conversion, so they are taken from the parse tree.
    """
    parsed = _parse_r_file(path, fmt=fmt, where=where)
    robj = parsed.object
    if fmt == "rda":
        objects = dict(_pairlist(robj))
        if name is None or name not in objects:
            msg = (
                f"{where}: R object {name!r} is not in the file (it holds: "
                f"{', '.join(map(str, objects)) or 'nothing'}); set `object:` to one of these."
            )
            raise ReaderError(msg)
        robj = objects[name]
    return rdata.conversion.convert(robj, _R_CLASSES), _r_names(robj)


def _parse_r_file(path: Path, *, fmt: str, where: str) -> rdata.parser.RData:
    with path.open("rb") as handle:
        head = handle.read(8)
    if not head.startswith(_R_MAGIC):
        msg = (
            f"{where}: is not an R data file (it starts with {head!r}); check `format:` in the "
            "registry and that the download is the file itself."
        )
        raise ReaderError(msg)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # rdata warns about extensions it does not expect
            return rdata.parser.parse_file(path, extension=f".{fmt}")
    except Exception as err:  # rdata raises many types on corrupt input
        msg = f"{where}: could not be parsed as R data ({type(err).__name__}: {err})."
        raise ReaderError(msg) from err


def _resolve(robj: RObject | None) -> RObject | None:
    while robj is not None and robj.info.type == RObjectType.REF:
        robj = robj.referenced_object
    return robj


def _char(robj: RObject) -> str | None:
    robj = _resolve(robj)
    return None if robj.value is None else robj.value.decode("utf-8", errors="replace")


def _pairlist(robj: RObject | None) -> Iterator[tuple[str | None, RObject]]:
    robj = _resolve(robj)
    while robj is not None and robj.info.type == RObjectType.LIST:
        tag = _resolve(robj.tag)
        name = _char(tag.value) if tag is not None and tag.info.type == RObjectType.SYM else None
        yield name, robj.value[0]
        robj = _resolve(robj.value[1])


def _r_names(robj: RObject) -> np.ndarray | None:
    robj = _resolve(robj)
    for name, value in _pairlist(robj.attributes):
        value = _resolve(value)
        if name == "names" and value.info.type == RObjectType.STR:
            return np.array([_char(c) for c in value.value], dtype=object)
    return None


def matrix_from_r(obj: Any, *, orientation: str | None, dataset: str, filename: str) -> ad.AnnData:
    """Turn an R matrix, as :mod:`rdata` returns it, into a cells x genes AnnData.

    Parameters
    ----------
    obj
        A ``dgCMatrix``/``dgTMatrix`` (a :class:`~types.SimpleNamespace` with ``i``, ``p`` or
        ``j``, ``x``, ``Dim``, ``Dimnames``), a dense matrix (an :class:`xarray.DataArray`
        with dimnames, or a 2-D array) or a ``data.frame`` (a DataFrame).
    orientation
        ``'genes_x_cells'`` (the R convention) or ``'cells_x_genes'``.
    dataset, filename
        For error messages.

    Returns
    -------
    anndata.AnnData
        ``X`` CSR float32; gene names from the dimnames; cell names from the dimnames or
        ``'0'``, ``'1'``, ... when the matrix has none.
    """
    where = _where(dataset, filename)
    if isinstance(obj, SimpleNamespace):
        matrix, rows, cols = _sparse_from_r(obj, where=where)
    elif hasattr(obj, "dims") and hasattr(obj, "coords") and len(obj.dims) == 2:
        coords = [obj.coords[d].values if d in obj.coords else None for d in obj.dims]
        matrix, rows, cols = _dense_to_csr(obj.values, where=where), *coords
    elif isinstance(obj, np.ndarray) and obj.ndim == 2:
        matrix, rows, cols = _dense_to_csr(obj, where=where), None, None
    elif isinstance(obj, pd.DataFrame):
        matrix, rows, cols = _dense_to_csr(obj.to_numpy(), where=where), obj.index, obj.columns
    else:
        msg = (
            f"{where}: the R object is a {type(obj).__name__}, not a matrix; expected a "
            "dgCMatrix, a numeric matrix or a data.frame. Check `object:` in the registry."
        )
        raise ReaderError(msg)
    return _oriented(matrix, rows, cols, orientation=orientation, where=where)


def _sparse_from_r(obj: SimpleNamespace, *, where: str) -> tuple[sparse.spmatrix, Any, Any]:
    slots = vars(obj)
    r_class = str(np.asarray(slots.get("class", ["S4 object"])).ravel()[0])
    if "Dim" not in slots or not ({"i", "p"} <= slots.keys() or {"i", "j"} <= slots.keys()):
        msg = (
            f"{where}: the R object is of class '{r_class}', not a dgCMatrix or dgTMatrix; "
            "convert it in R with as(x, 'CsparseMatrix') and save it again."
        )
        raise ReaderError(msg)
    shape = tuple(int(d) for d in np.asarray(obj.Dim))
    values = np.asarray(slots["x"]) if "x" in slots else np.ones(len(obj.i), dtype=np.float32)
    if "p" in slots:
        matrix = sparse.csc_matrix((values, np.asarray(obj.i), np.asarray(obj.p)), shape=shape)
    else:
        matrix = sparse.coo_matrix((values, (np.asarray(obj.i), np.asarray(obj.j))), shape=shape)
    dimnames = list(slots.get("Dimnames") or [None, None])
    return matrix, dimnames[0], dimnames[1]


def _dense_to_csr(values: np.ndarray, *, where: str) -> sparse.csr_matrix:
    values = np.asarray(values)
    if not (np.issubdtype(values.dtype, np.number) or values.dtype == bool):
        msg = f"{where}: the matrix holds {values.dtype} values, not numbers; check `object:`."
        raise ReaderError(msg)
    return sparse.csr_matrix(values)


def _oriented(
    matrix: sparse.spmatrix, rows: Any, cols: Any, *, orientation: str | None, where: str
) -> ad.AnnData:
    if orientation not in ORIENTATIONS:
        msg = (
            f"{where}: set `orientation:` to genes_x_cells (genes in rows, the R convention) or "
            "cells_x_genes in the registry; this format does not say which."
        )
        raise ReaderError(msg)
    if orientation == "genes_x_cells":
        # For a CSC matrix the transpose is a CSR matrix with no data copied.
        matrix, rows, cols = matrix.T, cols, rows
    if cols is None:
        msg = f"{where}: the matrix has no gene names; save it with gene symbols as dimnames."
        raise ReaderError(msg)
    cells = np.arange(matrix.shape[0]).astype(str) if rows is None else np.asarray(rows)
    return ad.AnnData(
        X=_to_csr32(matrix, where=where),
        obs=pd.DataFrame(index=pd.Index(cells.astype(str))),
        var=pd.DataFrame(index=pd.Index(np.asarray(cols).astype(str))),
    )


def _to_csr32(matrix: Any, *, where: str) -> sparse.csr_matrix:
    if not sparse.issparse(matrix):
        matrix = _dense_to_csr(matrix, where=where)
    matrix = sparse.csr_matrix(matrix.tocsr(), dtype=np.float32)
    matrix.sum_duplicates()
    return matrix


# --------------------------------------------------------------------------- labels and protein


def labels_from_r(
    obj: Any, *, names: Sequence[str] | None = None, dataset: str, filename: str
) -> pd.Series:
    """Turn an R factor or character vector, as :mod:`rdata` returns it, into a Series.

    Parameters
    ----------
    obj
        A factor (:class:`pandas.Categorical`), a character or numeric vector (1-D array) or
        a 1-D :class:`xarray.DataArray`.
    names
        The vector's ``names`` (cell names), when the file has them.
    dataset, filename
        For error messages.

    Returns
    -------
    pandas.Series
        Labels as strings (missing values stay missing), indexed by ``names`` when given,
        else by position.
    """
    if hasattr(obj, "dims") and hasattr(obj, "values") and len(obj.dims) == 1:
        obj = obj.values
    if not isinstance(obj, pd.Categorical | np.ndarray | list) or np.ndim(obj) != 1:
        msg = (
            f"{_where(dataset, filename)}: the labels object is a {type(obj).__name__}; "
            "expected a factor or character vector with one label per cell."
        )
        raise ReaderError(msg)
    labels = pd.Series(obj).map(str, na_action="ignore")
    if names is not None:
        if len(names) != len(labels):
            msg = f"{_where(dataset, filename)}: the labels and their names differ in length."
            raise ReaderError(msg)
        labels.index = pd.Index(np.asarray(names, dtype=object))
    return labels


def _read_labels(spec: dict, path: Path, *, dataset: str) -> tuple[pd.Series, bool]:
    where = _where(dataset, spec["filename"])
    if spec["format"] in ("rda", "rds"):
        obj, names = read_r_object(path, fmt=spec["format"], name=spec.get("object"), where=where)
        labels = labels_from_r(obj, names=names, dataset=dataset, filename=spec["filename"])
        return labels, names is not None
    if spec["format"] in ("csv", "tsv"):
        sep = "," if spec["format"] == "csv" else "\t"
        table = _read_delimited(path, sep=sep, what="labels table", where=where)
        if table.shape[1] != 1:
            msg = f"{where}: a labels table needs two columns, cell name and label."
            raise ReaderError(msg)
        return table.iloc[:, 0].map(str, na_action="ignore"), True
    msg = f"{where}: labels must be an R factor/vector (rda, rds) or a two-column csv/tsv."
    raise ReaderError(msg)


def _positions(names: pd.Index, cells: pd.Index, *, what: str, where: str) -> np.ndarray:
    """Position of each cell among ``names`` (-1 where absent); names must be unique."""
    if not names.is_unique:
        msg = f"{where}: cell names in the {what} file are not unique; cannot align by name."
        raise ReaderError(msg)
    return names.get_indexer(cells)


def _align_labels(labels: pd.Series, by_name: bool, cells: pd.Index, *, where: str) -> np.ndarray:
    if not by_name:
        if len(labels) != len(cells):
            msg = (
                f"{where}: {len(labels)} labels for {len(cells)} cells, and the labels have no "
                "cell names to align by; use the labels file that belongs to this matrix."
            )
            raise ReaderError(msg)
        return labels.to_numpy(dtype=object)
    position = _positions(labels.index, cells, what="labels", where=where)
    unmatched = position < 0
    if np.all(unmatched):
        msg = (
            f"{where}: none of the {len(cells)} cells (e.g. '{cells[0]}') is among the "
            f"{len(labels)} label names (e.g. '{labels.index[0]}'): the label names do not "
            "match the matrix's cell names. Use the labels file of this matrix, or one whose "
            "cell names are written as the matrix writes them."
        )
        raise ReaderError(msg)
    # Cells the authors did not label (e.g. removed in their QC) keep a missing label.
    values = labels.to_numpy(dtype=object)[np.maximum(position, 0)]
    values = np.where(unmatched, None, values)
    if np.any(unmatched):
        log.warning(
            "%s: %d of %d cells have an author label; %d cells (e.g. %s) are not among the %d "
            "label names and stay unlabelled. Expected for cells the authors removed; if many "
            "are missing, check that the labels belong to this matrix.",
            where, int(np.count_nonzero(pd.notna(values))), len(cells),
            int(np.count_nonzero(unmatched)), _examples(cells[unmatched]), len(labels),
        )  # fmt: skip
    return values


def _read_protein(spec: dict, path: Path, cells: pd.Index, *, dataset: str) -> pd.DataFrame:
    where = _where(dataset, spec["filename"])
    if spec["format"] != "h5ad":
        msg = f"{where}: a protein (ADT) file must be h5ad, not {spec['format']}."
        raise ReaderError(msg)
    source = _read_h5ad(path, layer=spec.get("layer"), where=where)
    matrix = source.X.toarray() if sparse.issparse(source.X) else np.asarray(source.X)
    if not np.all(np.isfinite(matrix)):
        msg = f"{where}: the protein matrix holds NaN or infinite values; point `layer:` elsewhere."
        raise ReaderError(msg)
    frame = pd.DataFrame(
        matrix.astype(np.float32),
        index=source.obs_names.astype(str),
        columns=source.var_names.astype(str),
    )
    position = _positions(frame.index, cells, what="protein", where=where)
    if np.any(position < 0):
        msg = (
            f"{where}: {np.count_nonzero(position < 0)} cells of the counts file are not in the "
            f"protein file (e.g. '{cells[np.argmax(position < 0)]}'); use the protein file of "
            "the same cells."
        )
        raise ReaderError(msg)
    return frame.iloc[position]


# --------------------------------------------------------------------------- obs and var


def _cell_table(
    source_obs: pd.DataFrame, entry: dict, paths: dict[str, Path], *, dataset: str, where: str
) -> pd.DataFrame:
    cells = pd.Index(source_obs.index.astype(str))
    obs = pd.DataFrame(index=make_index_unique(cells))
    obs["dataset"] = pd.Categorical([dataset] * len(cells))
    for key in METADATA_KEYS:
        obs[key] = pd.Categorical(
            _metadata_values(entry["metadata"][key], source_obs, key=key, where=where)
        )
    _check_unique_cells(cells, obs["sample"].to_numpy(), where=where)
    for name in entry["metadata"].get("covariates", []):
        obs[name] = covariate_values(source_obs, name, where=where)
    label = entry.get("author_label")
    if label and "column" in label:
        values = _obs_column(source_obs, label["column"], key="author_label", where=where)
        obs["author_cell_type"] = pd.Categorical(values)
    elif label and label.get("file") == "labels":
        spec = _file_with_role(entry, "labels", dataset=dataset)
        labels, by_name = _read_labels(
            spec, _local_path(spec, paths, dataset=dataset), dataset=dataset
        )
        values = _align_labels(labels, by_name, cells, where=_where(dataset, spec["filename"]))
        obs["author_cell_type"] = pd.Categorical(values)
    return obs


def _check_unique_cells(cells: pd.Index, samples: np.ndarray | None, *, where: str) -> None:
    """Raise if a barcode repeats within a sample (across samples barcodes may repeat)."""
    keys = pd.DataFrame({"cell": cells, "sample": "" if samples is None else samples})
    repeated = keys[keys.duplicated()].drop_duplicates()
    if repeated.empty:
        return
    scope = "within one sample"
    if samples is not None:
        scope = f"within sample {_examples(pd.unique(repeated['sample']))}"
    n = len(repeated)
    msg = (
        f"{where}: {_count(n, 'cell barcode')} {'occurs' if n == 1 else 'occur'} more than once "
        f"{scope} (e.g. {_examples(repeated['cell'])}), so their cells cannot be told apart. "
    )
    if samples is None:
        msg += (
            "If the file joins several samples, give each sample its own file and samplesheet "
            "row; otherwise the file is damaged or not a cell matrix: check it."
        )
    else:
        msg += (
            "If the file joins several samples, set `sample:` in the registry to the obs column "
            "(or cell-name pattern) that tells them apart; otherwise check the file."
        )
    raise ReaderError(msg)


def _metadata_values(source: dict, obs: pd.DataFrame, *, key: str, where: str) -> np.ndarray:
    ((kind, value),) = source.items()
    if kind == "constant":
        return np.full(len(obs), str(value), dtype=object)
    if kind == "column":
        return _obs_column(obs, value, key=key, where=where)
    if kind == "cell_name":
        return _from_cell_names(obs.index.astype(str), value, key=key, where=where)
    msg = f"{where}: `{key}` has unknown source {kind!r}; use constant, column or cell_name."
    raise ReaderError(msg)


def covariate_values(obs: pd.DataFrame, column: str, *, where: str) -> pd.Series | pd.Categorical:
    """An obs column kept as a covariate: float when numeric, else categorical text."""
    values = _obs_column(obs, column, key="covariates", where=where)
    if pd.api.types.is_numeric_dtype(obs[column]) and not pd.api.types.is_bool_dtype(obs[column]):
        return obs[column].to_numpy(dtype=np.float64)
    return pd.Categorical(values)


def _obs_column(obs: pd.DataFrame, column: str, *, key: str, where: str) -> np.ndarray:
    if column not in obs.columns:
        msg = (
            f"{where}: `{key}` reads obs column '{column}', which the file does not have "
            f"(columns: {', '.join(map(str, obs.columns)) or 'none'}); fix the registry entry."
        )
        raise ReaderError(msg)
    return obs[column].map(str, na_action="ignore").to_numpy(dtype=object)


def _from_cell_names(names: pd.Index, pattern: str, *, key: str, where: str) -> np.ndarray:
    try:
        regex = re.compile(pattern)
    except re.error as err:
        msg = f"{where}: `{key}: {{cell_name: {pattern!r}}}` is not a valid regex ({err})."
        raise ReaderError(msg) from err
    if regex.groups < 1:
        msg = f"{where}: the `{key}` regex {pattern!r} needs a capture group, e.g. '^(.+?)_'."
        raise ReaderError(msg)
    extracted = names.str.extract(regex, expand=True)[0]
    unmatched = names[extracted.isna().to_numpy()]
    if len(unmatched):
        msg = (
            f"{where}: the `{key}` regex {pattern!r} does not match {len(unmatched)} of "
            f"{len(names)} cell names, e.g. '{unmatched[0]}'; fix the regex in the registry."
        )
        raise ReaderError(msg)
    return extracted.to_numpy(dtype=object)


def _gene_table(var: pd.DataFrame, spec: dict, *, where: str) -> pd.DataFrame:
    column = spec.get("gene_column")
    if column is not None and column not in var.columns:
        msg = (
            f"{where}: `gene_column: {column}` is not a var column (columns: "
            f"{', '.join(map(str, var.columns)) or 'none'}); fix or remove it."
        )
        raise ReaderError(msg)
    # Plain arrays: the source index may hold duplicate names, which pandas cannot align on.
    symbols = np.asarray(var[column] if column else var.index, dtype=object)
    ids = next((var[c].to_numpy() for c in ("gene_ids", "gene_id") if c in var.columns), None)
    if ids is None and column is not None:
        ids = var.index.to_numpy()
    if ids is not None:
        blank = pd.isna(symbols) | (pd.Series(symbols).astype(str).str.strip() == "").to_numpy()
        symbols = np.where(blank, ids, symbols)  # no symbol: fall back to the ID
    symbols = symbols.astype(str)
    # Repeated symbols stay repeated here; merge_duplicate_symbols makes one column of each.
    table = pd.DataFrame(index=pd.Index(symbols))
    if ids is not None:
        table["gene_id"] = ids.astype(str)
    table["original_symbol"] = symbols
    return table


def merge_duplicate_symbols(
    matrix: sparse.csr_matrix, var: pd.DataFrame, *, value_type: str, where: str
) -> tuple[sparse.csr_matrix, pd.DataFrame]:
    """One column per gene symbol, in order of first occurrence, with a logged warning.

    A symbol can name several genes of the source annotation (e.g. two Ensembl IDs). Counts
    of its columns are summed into one column, which keeps the first copy's ``var`` row (its
    gene ID); other value types (size- or log-normalised, TPM) cannot be summed, so the copy
    with the most non-zero cells is kept and the others dropped. The matrix stays sparse.

    Parameters
    ----------
    matrix
        Cells x genes CSR matrix.
    var
        The gene table, one row per column of ``matrix``, with ``original_symbol``.
    value_type
        The registry's ``values:``.
    where
        Dataset, sample and file, for the warning.

    Returns
    -------
    tuple
        The matrix and the gene table, indexed by the now unique symbols.
    """
    codes, symbols = pd.factorize(var["original_symbol"].to_numpy())
    symbols = pd.Index(symbols.astype(str))
    if len(symbols) == len(codes):
        return matrix, var.set_axis(symbols)
    if value_type == "counts":
        # A genes x symbols indicator: the product adds up each symbol's columns, sparse.
        indicator = sparse.csr_matrix(
            (np.ones(len(codes), dtype=np.float32), (np.arange(len(codes)), codes)),
            shape=(len(codes), len(symbols)),
        )
        merged = sparse.csr_matrix(matrix @ indicator, dtype=np.float32)
        kept = np.unique(codes, return_index=True)[1]
        how = "their counts are summed into one column each (the first copy's gene ID kept)"
    else:
        cells = np.bincount(matrix.indices[matrix.data != 0], minlength=matrix.shape[1])
        order = np.lexsort((np.arange(len(codes)), -cells, codes))
        kept = order[np.r_[True, np.diff(codes[order]) != 0]]
        merged = matrix[:, kept].tocsr()
        how = (
            f"`values: {value_type}` cannot be summed, so of each the copy with the most "
            "non-zero cells is kept and the others dropped"
        )
    merged.sort_indices()
    copies = pd.Series(np.bincount(codes), index=symbols)
    repeated = copies[copies > 1]
    log.warning(
        "%s: %s %s more than once (%d columns in all), e.g. %s; %s.",
        where, _count(len(repeated), "gene symbol"), "occurs" if len(repeated) == 1 else "occur",
        int(repeated.sum()),
        ", ".join(f"'{s}' ({n} columns)" for s, n in repeated.iloc[:3].items()), how,
    )  # fmt: skip
    return merged, var.iloc[kept].set_axis(symbols)


# --------------------------------------------------------------------------- checks


def value_type_record(declared: str, evidence: ValueEvidence) -> dict[str, str]:
    """The ``uns['osteoimmune']`` keys of the value type: declared, detected, a sentence."""
    return {
        "value_type": declared,
        "value_type_detected": evidence.kind,
        "value_type_note": input_note(declared, evidence),
    }


def _check_values(matrix: sparse.csr_matrix, *, value_type: str, where: str) -> ValueEvidence:
    data = matrix.data
    if 0 in matrix.shape or not np.any(data):
        msg = (
            f"{where}: the matrix is empty ({matrix.shape[0]} cells x {matrix.shape[1]} genes, "
            f"{np.count_nonzero(data)} non-zero values); check the file, `layer:` and `object:`."
        )
        raise ReaderError(msg)
    finite = np.isfinite(data)
    if not np.all(finite):
        msg = (
            f"{where}: the matrix holds {np.count_nonzero(~finite)} NaN or infinite values; "
            "expression values must be finite. Point `layer:` at another matrix or fix the file."
        )
        raise ReaderError(msg)
    if np.any(data < 0):
        msg = (
            f"{where}: the matrix holds {np.count_nonzero(data < 0)} negative values (min "
            f"{data.min():g}), so it is scaled or log-ratio data; point `layer:` at raw counts "
            "or use the authors' counts, normalized or log-normalized matrix."
        )
        raise ReaderError(msg)
    return check_value_type(matrix, declared=value_type, where=where)


def _symbol_case_counts(var_names: Sequence[str]) -> tuple[int, int]:
    upper = title = 0
    for name in map(str, var_names):
        # Alphanumeric symbols only; RIKEN clones and human ORFs (C1orf112) mix cases by design.
        if not _PLAIN_SYMBOL.match(name) or name.endswith("Rik") or "orf" in name:
            continue
        rest = name[1:]
        if name == name.upper() and sum(c.isalpha() for c in name) >= 2:
            upper += 1
        elif name[0].isupper() and rest == rest.lower() and any(c.islower() for c in rest):
            title += 1
    return upper, title


def check_species_symbols(
    var_names: Sequence[str],
    species: str,
    *,
    dataset: str,
    gene_symbol_case: str = "as_is",
    filename: str | None = None,
) -> None:
    """Raise if the gene names do not look like gene symbols of ``species``.

    Human symbols are upper-case (``ACTB``), mouse symbols title-case (``Actb``). Among the
    purely alphanumeric symbols, a majority in the other species' case is an error (for mouse,
    unless ``gene_symbol_case`` is ``'upper'``), and so is a majority of Ensembl gene IDs.
    With fewer than 20 recognisable symbols the case rule is not applied.

    Parameters
    ----------
    var_names
        The gene names (symbols) of the matrix.
    species
        ``'human'`` or ``'mouse'``.
    dataset
        The dataset id, for the message.
    gene_symbol_case
        The registry's ``gene_symbol_case``: ``'upper'`` when the source upper-cased symbols.
    filename
        The file the names come from, for the message.

    Raises
    ------
    ReaderError
        When the species is unknown, the names are mostly Ensembl IDs, or their case says
        the other species.
    """
    where = _where(dataset, filename) if filename else f"Dataset '{dataset}'"
    if species not in SPECIES:
        msg = f"{where}: species {species!r} is not supported; set `species:` to human or mouse."
        raise ReaderError(msg)
    names = pd.Index(var_names).astype(str)
    n_ensembl = int(names.str.match(_ENSEMBL_ID).sum())
    if n_ensembl > len(names) / 2:
        msg = (
            f"{where}: {n_ensembl} of {len(names)} gene names are Ensembl IDs (e.g. "
            f"'{names[names.str.match(_ENSEMBL_ID)][0]}'), not symbols; set `gene_column:` to "
            "the var column with gene symbols."
        )
        raise ReaderError(msg)
    upper, title = _symbol_case_counts(names)
    if upper + title < _MIN_SYMBOLS:
        return
    if species == "mouse" and upper > title and gene_symbol_case != "upper":
        msg = (
            f"{where}: species is mouse but {upper} of {upper + title} symbols are upper-case "
            "like human symbols (ACTB, not Actb). If the data are human set `species: human`; "
            "if the source upper-cased mouse symbols set `gene_symbol_case: upper`."
        )
        raise ReaderError(msg)
    if species == "human" and title > upper:
        msg = (
            f"{where}: species is human but {title} of {upper + title} symbols are title-case "
            "like mouse symbols (Actb, not ACTB); if the data are mouse set `species: mouse`."
        )
        raise ReaderError(msg)
