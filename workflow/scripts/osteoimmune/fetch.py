"""Fetch the files of a registry entry: from the local cache, a mirror folder or the network.

Every file is verified by sha256 before it is used: against the registry's ``sha256``, or, for a
public file whose checksum the registry does not know (``sha256: null``), against the checksum
recorded in the checksum lock (:mod:`osteoimmune.checksums`) at its first download. A failed fetch
leaves nothing under the destination folder: downloads and mirror copies go to a temporary name
next to the target and are moved into place only after the hash matched (or was recorded). Raw
downloads are never modified.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

import pooch
import requests

from osteoimmune.checksums import lookup_checksum, record_checksum
from osteoimmune.errors import FetchError

logger = logging.getLogger(__name__)

Source = Literal["cache", "mirror", "download", "local"]
# What a file was verified against: the registry's sha256, the lock's (recorded at an earlier first
# download), recorded now (first download), or only computed (no checksum known, no lock).
Checksum = Literal["registry", "lock", "recorded", "computed"]

MIRROR_ENV = "OSTEOIMMUNE_MIRROR"
_CHUNK = 1 << 20
# Bytes kept from the start of a download to recognise an HTML page served instead of data.
_HEAD = 512
_BACKOFF_SECONDS = 0.5
_MIRROR_HINT = (
    "set `mirror:` in config/config.yaml (or the environment variable OSTEOIMMUNE_MIRROR) to a "
    "folder holding the file"
)
_DOWNLOAD_REMEDY = (
    "run again (the transfer may have been cut short); if it persists, check the URL in the "
    "dataset registry"
)


class FetchedFiles(dict[str, Path]):
    """Filename -> local path of the files of one dataset, plus where each one came from.

    Attributes
    ----------
    sources
        Filename -> ``"cache"``, ``"mirror"``, ``"download"`` or ``"local"``.
    checksums
        Filename -> what the file was verified against: ``"registry"``, ``"lock"`` (a checksum
        recorded at an earlier first download), ``"recorded"`` (recorded now) or ``"computed"``
        (nothing to verify against: a local file without ``sha256``, or no lock given).
    """

    def __init__(self) -> None:
        super().__init__()
        self.sources: dict[str, Source] = {}
        self.checksums: dict[str, Checksum] = {}


@dataclass(frozen=True)
class _Known:
    """The sha256 a file must have, where it comes from, and the lock to record an unknown one."""

    sha256: str | None
    kind: Literal["registry", "lock"] | None
    lock: Path | None


def sha256sum(path: str | os.PathLike) -> str:
    """Return the hex sha256 digest of a file, read in chunks.

    Parameters
    ----------
    path
        The file to hash.

    Returns
    -------
    str
        The lower-case hex digest.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_mirror(
    config_value: str | os.PathLike | None, env: Mapping[str, str] = os.environ
) -> Path | None:
    """Return the mirror folder to search before the network, or ``None``.

    Parameters
    ----------
    config_value
        The ``mirror`` key of the workflow config; wins when set.
    env
        The environment; ``OSTEOIMMUNE_MIRROR`` is used when the config key is unset.
        Empty strings count as unset.

    Returns
    -------
    Path or None
        The mirror folder, or ``None`` when neither is set.

    Raises
    ------
    FetchError
        If a mirror is set but is not a directory.
    """
    if config_value is not None and str(config_value).strip():
        value, origin = str(config_value), "`mirror:` in config/config.yaml"
    elif env.get(MIRROR_ENV, "").strip():
        value, origin = env[MIRROR_ENV], f"the environment variable {MIRROR_ENV}"
    else:
        return None
    mirror = Path(value).expanduser()
    if not mirror.is_dir():
        msg = (
            f"The mirror folder {mirror} (from {origin}) is not a directory. Point it at a "
            "folder holding the dataset files, or unset it to download from the network."
        )
        raise FetchError(msg)
    return mirror


def find_in_mirror(mirror: Path, *, name: str, dataset: str) -> Path | None:
    """Return a dataset file of the mirror folder, searched by file name, or ``None``.

    Parameters
    ----------
    mirror
        The mirror folder.
    name
        The file name (the registry file's ``filename``).
    dataset
        The dataset id: ``mirror/<name>`` is tried first, then ``mirror/<dataset>/<name>``,
        then the first match anywhere below ``mirror`` (in sorted order).

    Returns
    -------
    Path or None
        The mirror file, or ``None`` when there is none.
    """
    for candidate in (mirror / name, mirror / dataset / name):
        if candidate.is_file():
            return candidate
    return next((p for p in sorted(mirror.rglob(name)) if p.is_file()), None)


def fetch_file(
    spec: dict,
    *,
    dataset: str,
    dest_dir: Path,
    mirror: Path | None = None,
    offline: bool = False,
    retries: int = 3,
    progressbar: bool = True,
    lock: Path | None = None,
    strict: bool = False,
) -> Path:
    """Return a verified local copy of one registry file, fetching it if needed.

    Looks in this order: a local ``path`` entry (returned unchanged), the cache
    ``dest_dir / spec["filename"]``, the mirror folder (copied into ``dest_dir``), the network
    (with pooch, retried on transient errors). A cached file with the wrong sha256 is replaced.

    The file is verified against the spec's ``sha256``, else against the checksum recorded for
    its URL in ``lock``. When neither is known, the file is fetched and its checksum recorded in
    ``lock`` (unless ``strict``, which refuses such files).

    Parameters
    ----------
    spec
        One file dict of a registry entry: ``url``, ``sha256`` (may be ``None``) and
        ``filename``, or ``path`` (with optional ``sha256``); optional ``sample`` and ``row``
        name the samplesheet row in messages.
    dataset
        The dataset id, used in messages.
    dest_dir
        Folder of the cached files (created if needed).
    mirror
        A folder searched by file name: ``mirror/<filename>``, ``mirror/<dataset>/<filename>``,
        then anywhere below ``mirror``. Never modified.
    offline
        Never use the network; fail at once if the file is neither cached nor mirrored.
    retries
        How many times a transient network failure (connection, 5xx, broken transfer) is retried.
    progressbar
        Show a download progress bar (only when stderr is a terminal).
    lock
        The checksum lock (``config/checksums.lock.tsv``); ``None`` records nothing.
    strict
        Refuse, before fetching anything, a file whose checksum is known neither from the
        registry nor from the lock.

    Returns
    -------
    Path
        The verified file.

    Raises
    ------
    FetchError
        If the file cannot be found or fetched, fails its sha256, or (``strict``) has no known
        checksum; nothing is left behind.
    """
    fetched = fetch_dataset(
        {"files": [spec]},
        dataset=dataset,
        dest_dir=dest_dir,
        mirror=mirror,
        offline=offline,
        retries=retries,
        progressbar=progressbar,
        lock=lock,
        strict=strict,
    )
    return fetched[spec["filename"]]


def fetch_dataset(
    entry: dict,
    *,
    dataset: str,
    dest_dir: Path,
    mirror: Path | None = None,
    offline: bool = False,
    retries: int = 3,
    progressbar: bool = True,
    lock: Path | None = None,
    strict: bool = False,
) -> FetchedFiles:
    """Fetch every file of a registry entry (see :func:`fetch_file`).

    Parameters
    ----------
    entry
        A registry entry as returned by :func:`osteoimmune.registry.load_registry`, or
        ``{"files": [...]}`` with the file specs of one sample of a study.
    dataset
        The dataset id.
    dest_dir
        Folder of the cached files.
    mirror, offline, retries, progressbar, lock, strict
        As in :func:`fetch_file`. Offline, the error lists every missing file, not only the
        first; strict, every file without a known checksum, and nothing is fetched.

    Returns
    -------
    FetchedFiles
        Filename -> path (a dict), with ``.sources`` recording where each file came from and
        ``.checksums`` what it was verified against.
    """
    dest_dir = Path(dest_dir)
    specs = entry["files"]
    _check_pinned(specs, dataset=dataset, lock=lock, strict=strict)
    fetched = FetchedFiles()
    missing = []
    for spec in specs:
        known = _known(spec, lock=lock)
        found = _locate(spec, dataset=dataset, dest_dir=dest_dir, mirror=mirror, known=known)
        if found is None and offline:
            missing.append(spec)
            continue
        if found is None:
            target = dest_dir / spec["filename"]
            found = _download(
                spec,
                dataset=dataset,
                target=target,
                retries=retries,
                progressbar=progressbar,
                known=known,
            )
        name = spec["filename"]
        fetched[name], fetched.sources[name], fetched.checksums[name] = found
    if missing:
        raise FetchError(_offline_message(missing, dataset=dataset, mirror=mirror))
    return fetched


def write_manifest(
    paths: Mapping[str, Path],
    entry: dict,
    *,
    dataset: str,
    out: Path,
    sources: Mapping[str, Source] | None = None,
    checksums: Mapping[str, Checksum] | None = None,
) -> None:
    """Write a JSON manifest of the fetched files of a dataset, atomically.

    Parameters
    ----------
    paths
        Filename -> path, usually the :class:`FetchedFiles` returned by :func:`fetch_dataset`.
    entry
        The registry entry the files belong to.
    dataset
        The dataset id.
    out
        The JSON file to write.
    sources
        Filename -> source; defaults to ``paths.sources`` for a :class:`FetchedFiles`.
        A source that is not known is written as ``null``.
    checksums
        Filename -> what the file was verified against (``registry``, ``lock``, ``recorded``,
        ``computed``); defaults to ``paths.checksums`` for a :class:`FetchedFiles`. A local
        file's is ``registry`` with a ``sha256``, else ``computed``; unknown ones are ``null``.
    """
    if sources is None:
        sources = paths.sources if isinstance(paths, FetchedFiles) else {}
    if checksums is None:
        checksums = paths.checksums if isinstance(paths, FetchedFiles) else {}
    files = []
    for spec in entry["files"]:
        name = spec["filename"]
        if name not in paths:
            msg = f"{_label(spec, dataset)} was not fetched; run fetch_dataset first."
            raise FetchError(msg)
        path = Path(paths[name])
        local = "path" in spec
        stat = path.stat()
        files.append(
            {
                "filename": name,
                "role": spec.get("role"),
                "sample": spec.get("sample"),
                "path": str(path),
                "url": spec.get("url"),
                "sha256": spec.get("sha256") or sha256sum(path),
                # size and modification time: read_manifest hashes the file only when they differ
                "bytes": stat.st_size,
                "mtime_ns": stat.st_mtime_ns,
                "source": "local" if local else sources.get(name),
                "checksum": _local_checksum(spec) if local else checksums.get(name),
            }
        )
    text = json.dumps({"dataset": dataset, "files": files}, indent=2) + "\n"
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with _temporary(out.parent, out.name) as tmp:
        tmp.write_text(text)
        os.replace(tmp, out)


def read_manifest(path: str | os.PathLike) -> dict[str, Path]:
    """Read a manifest written by :func:`write_manifest`, checking that no file changed since.

    A file whose size and modification time are those recorded at the fetch is taken as is
    (nothing is hashed); one whose size or modification time differ is hashed, and accepted if
    its sha256 is the recorded one (only touched). Otherwise it changed after the fetch (a
    corrupted cached download, a replaced local file): the manifest is removed, so that the
    workflow runs the fetch again, which verifies the cached file by its sha256 and fetches it
    anew when it fails.

    Parameters
    ----------
    path
        The JSON manifest (``resources/{dataset}/fetch_manifest.json``).

    Returns
    -------
    dict
        Filename -> path of every fetched file.

    Raises
    ------
    FetchError
        If the manifest is unreadable, a file it lists no longer exists, or a file changed since
        it was fetched (the manifest is then removed; the message says what to do).
    """
    path = Path(path)
    try:
        manifest = json.loads(path.read_text())
        rows = manifest["files"]
        paths = {row["filename"]: Path(row["path"]) for row in rows}
    except (OSError, ValueError, KeyError, TypeError) as err:
        msg = f"Fetch manifest {path} is missing or invalid ({err}); run the fetch_dataset rule."
        raise FetchError(msg) from err
    gone = [str(p) for p in paths.values() if not p.is_file()]
    if gone:
        msg = (
            f"Fetch manifest {path} of dataset '{manifest.get('dataset')}' lists files that no "
            f"longer exist: {', '.join(gone)}. Delete the manifest and fetch the dataset again."
        )
        raise FetchError(msg)
    changed = [(row, digest) for row in rows if (digest := _changed_digest(row)) is not None]
    if changed:
        # Without its manifest the fetch is run again, and the fetch mends a cached file.
        path.unlink(missing_ok=True)
        raise FetchError(_changed_message(changed, dataset=manifest.get("dataset"), manifest=path))
    return paths


def _changed_digest(row: dict) -> str | None:
    """A fetched file's sha256 when not the manifest's; hashed only if its size or mtime differ."""
    stat = Path(row["path"]).stat()
    if stat.st_size == row.get("bytes") and stat.st_mtime_ns == row.get("mtime_ns"):
        return None
    actual = sha256sum(row["path"])
    return None if actual == str(row.get("sha256") or "").lower() else actual


def _changed_message(changed: list[tuple[dict, str]], *, dataset: str, manifest: Path) -> str:
    lines = []
    for row, actual in changed:
        if row.get("source") == "local":
            what = f"the local file {row['path']}"
            remedy = "run again to read the file as it is now"
        elif row.get("checksum") in ("registry", "lock", "recorded"):
            what = f"the cached file {row['path']}"
            remedy = "run again; the file will be fetched again (verified by its sha256)"
        else:  # nothing for the fetch to verify the cached file against
            what = f"the cached file {row['path']}"
            remedy = f"delete {row['path']} and run again; the file will be fetched again"
        lines.append(
            f"  - {what} has sha256 {actual}, but {row.get('sha256')} when it was fetched "
            f"({row.get('bytes')} bytes; now {Path(row['path']).stat().st_size}): {remedy}"
        )
    return (
        f"Dataset '{dataset}': {len(changed)} file(s) changed after they were fetched "
        "(corrupted or modified on disk):\n"
        + "\n".join(lines)
        + f"\nThe fetch manifest {manifest} was removed, so that the next run fetches them again."
    )


def _what(spec: dict) -> str:
    """Name a file in messages: ``sample 'S1' (samplesheet row 3), file 'f'`` or ``file 'f'``."""
    name = spec.get("filename") or Path(spec.get("path", "")).name
    if spec.get("sample") is None:
        return f"file '{name}'"
    row = f" (samplesheet row {spec['row']})" if spec.get("row") is not None else ""
    return f"sample '{spec['sample']}'{row}, file '{name}'"


def _label(spec: dict, dataset: str) -> str:
    return f"Dataset '{dataset}', {_what(spec)}"


def _local_checksum(spec: dict) -> Checksum:
    return "registry" if spec.get("sha256") else "computed"


def _known(spec: dict, *, lock: Path | None) -> _Known:
    """The checksum to verify a file against: the registry's wins over the lock's."""
    lock = Path(lock) if lock is not None else None
    if spec.get("sha256"):
        return _Known(spec["sha256"].lower(), "registry", lock)
    if lock is not None and "url" in spec:
        recorded = lookup_checksum(lock, spec["url"])
        if recorded is not None:
            return _Known(recorded.sha256, "lock", lock)
    return _Known(None, None, lock)


def _check_pinned(specs: list[dict], *, dataset: str, lock: Path | None, strict: bool) -> None:
    """With strict checksums, refuse files whose checksum is known from neither source."""
    if not strict:
        return
    unpinned = [s for s in specs if "path" not in s and _known(s, lock=lock).sha256 is None]
    if not unpinned:
        return
    lines = [f"  - {_what(spec)}: {spec['url']}" for spec in unpinned]
    lock_name = f"the checksum lock {lock}" if lock is not None else "a checksum lock (none given)"
    msg = (
        f"Dataset '{dataset}': strict checksums are on, and {len(unpinned)} file(s) have no "
        f"known sha256, neither in the dataset registry nor in {lock_name}:\n"
        + "\n".join(lines)
        + "\nPut each file's `sha256:` in the dataset registry, or run once without "
        "`strict_checksums` to download the files and record their checksums in the lock. "
        "Nothing was fetched."
    )
    raise FetchError(msg)


def _locate(
    spec: dict, *, dataset: str, dest_dir: Path, mirror: Path | None, known: _Known
) -> tuple[Path, Source, Checksum] | None:
    """Return a verified file without the network: local path, cache or mirror; else None."""
    if "path" in spec:
        return _check_local(spec, dataset=dataset), "local", _local_checksum(spec)
    name = spec["filename"]
    if Path(name).name != name or name in ("", ".", ".."):
        msg = f"{_label(spec, dataset)}: the file name must be a plain name, not a path."
        raise FetchError(msg)
    target = dest_dir / name
    if target.is_file():
        cached = _from_cache(spec, dataset=dataset, target=target, known=known)
        if cached is not None:
            return cached
    if mirror is None:
        return None
    source = find_in_mirror(Path(mirror), name=name, dataset=dataset)
    if source is None:
        return None
    checksum = _copy_from_mirror(source, target, spec=spec, dataset=dataset, known=known)
    logger.info("%s: copied from the mirror %s", _label(spec, dataset), source)
    return target, "mirror", checksum


def _from_cache(
    spec: dict, *, dataset: str, target: Path, known: _Known
) -> tuple[Path, Source, Checksum] | None:
    """Return the cached file when it passes; a stale one is removed (None: fetch it anew)."""
    actual = sha256sum(target)
    if known.sha256 is not None and actual != known.sha256:
        logger.warning(
            "%s: cached %s has the wrong sha256; re-fetching", _label(spec, dataset), target
        )
        target.unlink()
        return None
    try:
        checksum = _settle(
            spec,
            dataset=dataset,
            actual=actual,
            size=target.stat().st_size,
            known=known,
            origin=f"the cached file {target}",
            remedy="run again to fetch it anew",
        )
    except FetchError:
        # Another job recorded a different checksum meanwhile: the cached file is not kept.
        target.unlink()
        raise
    logger.info("%s: using cached %s", _label(spec, dataset), target)
    return target, "cache", checksum


def _settle(
    spec: dict,
    *,
    dataset: str,
    actual: str,
    size: int,
    known: _Known,
    origin: str,
    remedy: str,
) -> Checksum:
    """Check a file's sha256 against the known one, or record it in the lock; say which."""
    if known.sha256 is None:
        if known.lock is None:
            return "computed"
        recorded = record_checksum(known.lock, url=spec["url"], sha256=actual, size=size)
        if recorded.sha256 == actual:
            logger.info(
                "%s: recorded sha256 %s in the checksum lock %s (first download)",
                _label(spec, dataset),
                actual,
                known.lock,
            )
            return "recorded"
        # Another job recorded this URL meanwhile, with other bytes.
        known = _Known(recorded.sha256, "lock", known.lock)
    if actual != known.sha256:
        msg = _mismatch_message(
            spec, dataset=dataset, actual=actual, known=known, origin=origin, remedy=remedy
        )
        raise FetchError(msg)
    return known.kind


def _mismatch_message(
    spec: dict, *, dataset: str, actual: str, known: _Known, origin: str, remedy: str
) -> str:
    if known.kind == "lock":
        return (
            f"{_label(spec, dataset)}: {origin} has sha256 {actual}, but {known.sha256} was "
            f"recorded for {spec['url']} at its first download (checksum lock {known.lock}). "
            "The file changed since its checksum was recorded; nothing was kept. If the new file "
            f"is the right one, delete the line of this URL from {known.lock} to accept it (its "
            f"checksum is then recorded again); otherwise {remedy}."
        )
    return (
        f"{_label(spec, dataset)}: {origin} has sha256 {actual}, but the registry expects "
        f"{known.sha256}. {remedy[:1].upper()}{remedy[1:]}."
    )


def _check_local(spec: dict, *, dataset: str) -> Path:
    path = Path(spec["path"])
    if not path.is_file():
        msg = (
            f"{_label(spec, dataset)}: the local file {path} does not exist. Fix its `path:` in "
            "the dataset registry."
        )
        raise FetchError(msg)
    expected = spec.get("sha256")
    if expected and (actual := sha256sum(path)) != expected.lower():
        msg = (
            f"{_label(spec, dataset)}: the local file {path} has sha256 {actual}, but the "
            f"registry expects {expected}. Check that it is the right file, or update its "
            "`sha256:` in the dataset registry."
        )
        raise FetchError(msg)
    return path


def _copy_from_mirror(
    source: Path, target: Path, *, spec: dict, dataset: str, known: _Known
) -> Checksum:
    target.parent.mkdir(parents=True, exist_ok=True)
    with _temporary(target.parent, target.name) as tmp:
        digest = hashlib.sha256()
        with open(source, "rb") as src, open(tmp, "wb") as dst:
            for chunk in iter(lambda: src.read(_CHUNK), b""):
                digest.update(chunk)
                dst.write(chunk)
        checksum = _settle(
            spec,
            dataset=dataset,
            actual=digest.hexdigest(),
            size=tmp.stat().st_size,
            known=known,
            origin=f"the mirror file {source}",
            remedy=(
                f"replace it with a good copy of {spec.get('url')}, or remove it from the mirror "
                "to download it"
            ),
        )
        os.replace(tmp, target)
    return checksum


def _offline_message(missing: list[dict], *, dataset: str, mirror: Path | None) -> str:
    where = f"the mirror {mirror}" if mirror is not None else "a mirror (none is set)"
    lines = [f"  - {_what(spec)}: {spec['url']}" for spec in missing]
    return (
        f"Dataset '{dataset}': offline mode, and {len(missing)} file(s) are neither cached nor "
        f"in {where}:\n" + "\n".join(lines) + "\nPut them in a mirror folder and "
        f"{_MIRROR_HINT}, or run without `offline: true` to download them."
    )


class _SniffingDownloader:
    """Wrap a pooch downloader to record the sha256 and the first bytes of what it wrote."""

    def __init__(self, downloader: Any) -> None:
        self.downloader = downloader
        self.head = b""
        self.sha256: str | None = None

    def __call__(self, url: str, output_file: str, pooch_: Any) -> None:
        with open(output_file, "wb") as fh:
            writer = _HashingWriter(fh)
            self.downloader(url, writer, pooch_)
        self.head, self.sha256 = writer.head, writer.digest.hexdigest()


class _HashingWriter:
    """A binary file wrapper that hashes what is written and keeps its first bytes."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh = fh
        self.head = b""
        self.digest = hashlib.sha256()

    def write(self, data: bytes) -> int:
        if len(self.head) < _HEAD:
            self.head += data[: _HEAD - len(self.head)]
        self.digest.update(data)
        return self.fh.write(data)

    def flush(self) -> None:
        self.fh.flush()


def _download(
    spec: dict, *, dataset: str, target: Path, retries: int, progressbar: bool, known: _Known
) -> tuple[Path, Source, Checksum]:
    target.parent.mkdir(parents=True, exist_ok=True)
    with _temporary(target.parent, target.name) as tmp:
        tmp.unlink()  # pooch does not download to a name that exists
        sniffer = _retrieve(
            spec, dataset=dataset, tmp=tmp, retries=retries, progressbar=progressbar, known=known
        )
        if known.sha256 is None and _is_html(sniffer.head):
            raise FetchError(_html_message(spec, dataset=dataset))
        checksum = _settle(
            spec,
            dataset=dataset,
            actual=sniffer.sha256,
            size=tmp.stat().st_size,
            known=known,
            origin="the download",
            remedy=_DOWNLOAD_REMEDY,
        )
        os.replace(tmp, target)
    return target, "download", checksum


def _retrieve(
    spec: dict, *, dataset: str, tmp: Path, retries: int, progressbar: bool, known: _Known
) -> _SniffingDownloader:
    """Download to ``tmp`` with pooch, verified when the checksum is known; retry transients."""
    url = spec["url"]
    known_hash = f"sha256:{known.sha256}" if known.sha256 is not None else None
    for attempt in range(retries + 1):
        sniffer = _SniffingDownloader(
            pooch.HTTPDownloader(progressbar=_use_progressbar(progressbar))
        )
        try:
            # pooch streams to a temporary file of its own, checks the hash (when one is known)
            # and only then moves it to tmp; on failure it deletes its temporary file.
            pooch.retrieve(
                url, known_hash=known_hash, fname=tmp.name, path=tmp.parent, downloader=sniffer
            )
            return sniffer
        except ValueError as err:
            if known.sha256 is None or sniffer.sha256 in (None, known.sha256):
                raise FetchError(_prefix(spec, dataset) + f"{err}") from err
            msg = _hash_message(
                spec, dataset=dataset, actual=sniffer.sha256, head=sniffer.head, known=known
            )
            raise FetchError(msg) from err
        except requests.RequestException as err:
            if attempt == retries or not _transient(err):
                msg = _network_message(spec, dataset=dataset, err=err, attempts=attempt + 1)
                raise FetchError(msg) from err
            logger.warning("Dataset '%s': fetching %s failed (%s); retrying", dataset, url, err)
            time.sleep(_BACKOFF_SECONDS * 2**attempt)
    raise AssertionError("unreachable")  # pragma: no cover


def _use_progressbar(progressbar: bool) -> bool:
    if not progressbar or not sys.stderr.isatty():
        return False
    try:
        import tqdm  # noqa: F401
    except ImportError:
        return False
    return True


def _transient(err: requests.RequestException) -> bool:
    if isinstance(err, requests.HTTPError):
        status = err.response.status_code if err.response is not None else 0
        return status >= 500 or status == 429
    return isinstance(
        err,
        requests.ConnectionError | requests.Timeout | requests.exceptions.ChunkedEncodingError,
    )


def _prefix(spec: dict, dataset: str) -> str:
    return f"{_label(spec, dataset)} from {spec['url']}: "


def _is_html(head: bytes) -> bool:
    return head.lstrip().lower().startswith((b"<!doctype html", b"<html"))


def _html_message(spec: dict, *, dataset: str) -> str:
    return _prefix(spec, dataset) + (
        "the server returned an HTML page instead of data; the URL may be wrong or need a "
        "login; nothing was kept. Check the URL in the dataset registry, or download the file "
        f"by hand and {_MIRROR_HINT}."
    )


def _hash_message(spec: dict, *, dataset: str, actual: str, head: bytes, known: _Known) -> str:
    if _is_html(head):
        return _html_message(spec, dataset=dataset)
    if known.kind == "lock":
        return _mismatch_message(
            spec,
            dataset=dataset,
            actual=actual,
            known=known,
            origin="the download",
            remedy=_DOWNLOAD_REMEDY,
        )
    return _prefix(spec, dataset) + (
        f"sha256 mismatch: expected {known.sha256}, got {actual}. The download may be "
        "truncated or the file changed upstream; nothing was kept. Run again; if it persists, "
        f"check the URL and sha256 in the dataset registry, or {_MIRROR_HINT}."
    )


def _network_message(
    spec: dict, *, dataset: str, err: requests.RequestException, attempts: int
) -> str:
    if isinstance(err, requests.HTTPError) and err.response is not None:
        what = f"the server answered HTTP {err.response.status_code} {err.response.reason}"
    elif isinstance(err, requests.exceptions.ChunkedEncodingError):
        what = "the connection broke before the whole file arrived (truncated download)"
    elif isinstance(err, requests.ConnectionError):
        what = f"could not connect ({err})"
    else:
        what = f"the download failed ({err})"
    return _prefix(spec, dataset) + (
        f"{what}, after {attempts} attempt(s); nothing was kept. Check the URL and your "
        f"network, or {_MIRROR_HINT} and run with `offline: true`."
    )


@contextmanager
def _temporary(folder: Path, name: str) -> Iterator[Path]:
    """Yield a temporary file name next to ``name`` in ``folder``; remove it on exit if left."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".part")
    os.close(fd)
    path = Path(tmp)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)
