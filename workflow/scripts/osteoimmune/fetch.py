"""Fetch the files of a registry entry: from the local cache, a mirror folder or the network.

Every file is verified by sha256 before it is used. A failed fetch leaves nothing under the
destination folder: downloads and mirror copies go to a temporary name next to the target and are
moved into place only after the hash matched.
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
from pathlib import Path
from typing import Any, BinaryIO, Literal

import pooch
import requests

from osteoimmune.errors import FetchError

logger = logging.getLogger(__name__)

Source = Literal["cache", "mirror", "download", "local"]

MIRROR_ENV = "OSTEOIMMUNE_MIRROR"
_CHUNK = 1 << 20
# Bytes kept from the start of a download to recognise an HTML page served instead of data.
_HEAD = 512
_BACKOFF_SECONDS = 0.5
_MIRROR_HINT = (
    "set `mirror:` in config/config.yaml (or the environment variable OSTEOIMMUNE_MIRROR) to a "
    "folder holding the file"
)


class FetchedFiles(dict[str, Path]):
    """Filename -> local path of the files of one dataset, plus where each one came from.

    Attributes
    ----------
    sources
        Filename -> ``"cache"``, ``"mirror"``, ``"download"`` or ``"local"``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.sources: dict[str, Source] = {}


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


def fetch_file(
    spec: dict,
    *,
    dataset: str,
    dest_dir: Path,
    mirror: Path | None = None,
    offline: bool = False,
    retries: int = 3,
    progressbar: bool = True,
) -> Path:
    """Return a verified local copy of one registry file, fetching it if needed.

    Looks in this order: a local ``path`` entry (returned unchanged), the cache
    ``dest_dir / spec["filename"]``, the mirror folder (copied into ``dest_dir``), the network
    (with pooch, retried on transient errors). A cached file with the wrong sha256 is replaced.

    Parameters
    ----------
    spec
        One file dict of a registry entry: ``url``, ``sha256`` and ``filename``, or ``path``
        (with optional ``sha256``).
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

    Returns
    -------
    Path
        The verified file.

    Raises
    ------
    FetchError
        If the file cannot be found or fetched, or fails its sha256; nothing is left behind.
    """
    return _fetch(
        spec,
        dataset=dataset,
        dest_dir=Path(dest_dir),
        mirror=mirror,
        offline=offline,
        retries=retries,
        progressbar=progressbar,
    )[0]


def fetch_dataset(
    entry: dict,
    *,
    dataset: str,
    dest_dir: Path,
    mirror: Path | None = None,
    offline: bool = False,
    retries: int = 3,
    progressbar: bool = True,
) -> FetchedFiles:
    """Fetch every file of a registry entry (see :func:`fetch_file`).

    Parameters
    ----------
    entry
        A registry entry as returned by :func:`osteoimmune.registry.load_registry`.
    dataset
        The dataset id.
    dest_dir
        Folder of the cached files.
    mirror, offline, retries, progressbar
        As in :func:`fetch_file`. Offline, the error lists every missing file, not only the first.

    Returns
    -------
    FetchedFiles
        Filename -> path (a dict), with ``.sources`` recording where each file came from.
    """
    dest_dir = Path(dest_dir)
    fetched = FetchedFiles()
    missing = []
    for spec in entry["files"]:
        found = _locate(spec, dataset=dataset, dest_dir=dest_dir, mirror=mirror)
        if found is None and offline:
            missing.append(spec)
            continue
        if found is None:
            target = dest_dir / spec["filename"]
            found = _download(
                spec, dataset=dataset, target=target, retries=retries, progressbar=progressbar
            )
        fetched[spec["filename"]], fetched.sources[spec["filename"]] = found
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
    """
    if sources is None:
        sources = paths.sources if isinstance(paths, FetchedFiles) else {}
    files = []
    for spec in entry["files"]:
        name = spec["filename"]
        if name not in paths:
            msg = f"Dataset '{dataset}': file '{name}' was not fetched; run fetch_dataset first."
            raise FetchError(msg)
        path = Path(paths[name])
        files.append(
            {
                "filename": name,
                "role": spec.get("role"),
                "path": str(path),
                "url": spec.get("url"),
                "sha256": spec.get("sha256") or sha256sum(path),
                "bytes": path.stat().st_size,
                "source": "local" if "path" in spec else sources.get(name),
            }
        )
    text = json.dumps({"dataset": dataset, "files": files}, indent=2) + "\n"
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with _temporary(out.parent, out.name) as tmp:
        tmp.write_text(text)
        os.replace(tmp, out)


def read_manifest(path: str | os.PathLike) -> dict[str, Path]:
    """Read a manifest written by :func:`write_manifest`.

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
        If the manifest is unreadable or a file it lists no longer exists.
    """
    path = Path(path)
    try:
        manifest = json.loads(path.read_text())
        paths = {row["filename"]: Path(row["path"]) for row in manifest["files"]}
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
    return paths


def _fetch(
    spec: dict,
    *,
    dataset: str,
    dest_dir: Path,
    mirror: Path | None,
    offline: bool,
    retries: int,
    progressbar: bool,
) -> tuple[Path, Source]:
    found = _locate(spec, dataset=dataset, dest_dir=dest_dir, mirror=mirror)
    if found is not None:
        return found
    if offline:
        raise FetchError(_offline_message([spec], dataset=dataset, mirror=mirror))
    target = dest_dir / spec["filename"]
    return _download(spec, dataset=dataset, target=target, retries=retries, progressbar=progressbar)


def _locate(
    spec: dict, *, dataset: str, dest_dir: Path, mirror: Path | None
) -> tuple[Path, Source] | None:
    """Return a verified file without the network: local path, cache or mirror; else None."""
    if "path" in spec:
        return _check_local(spec, dataset=dataset), "local"
    name = spec["filename"]
    if Path(name).name != name or name in ("", ".", ".."):
        msg = f"Dataset '{dataset}': file name '{name}' must be a plain name, not a path."
        raise FetchError(msg)
    target = dest_dir / name
    if target.is_file():
        if sha256sum(target) == spec["sha256"].lower():
            logger.info("Dataset '%s': using cached %s", dataset, target)
            return target, "cache"
        logger.warning("Dataset '%s': cached %s has the wrong sha256; re-fetching", dataset, target)
        target.unlink()
    if mirror is None:
        return None
    source = _find_in_mirror(Path(mirror), name=name, dataset=dataset)
    if source is None:
        return None
    _copy_from_mirror(source, target, spec=spec, dataset=dataset)
    logger.info("Dataset '%s': copied %s from the mirror %s", dataset, name, source)
    return target, "mirror"


def _check_local(spec: dict, *, dataset: str) -> Path:
    path = Path(spec["path"])
    if not path.is_file():
        msg = (
            f"Dataset '{dataset}', file '{spec.get('filename', path.name)}': the local file "
            f"{path} does not exist. Fix its `path:` in the dataset registry."
        )
        raise FetchError(msg)
    expected = spec.get("sha256")
    if expected and (actual := sha256sum(path)) != expected.lower():
        msg = (
            f"Dataset '{dataset}', file '{spec.get('filename', path.name)}': the local file "
            f"{path} has sha256 {actual}, but the registry expects {expected}. Check that it is "
            "the right file, or update its `sha256:` in the dataset registry."
        )
        raise FetchError(msg)
    return path


def _find_in_mirror(mirror: Path, *, name: str, dataset: str) -> Path | None:
    for candidate in (mirror / name, mirror / dataset / name):
        if candidate.is_file():
            return candidate
    return next((p for p in sorted(mirror.rglob(name)) if p.is_file()), None)


def _copy_from_mirror(source: Path, target: Path, *, spec: dict, dataset: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    expected = spec["sha256"].lower()
    with _temporary(target.parent, target.name) as tmp:
        digest = hashlib.sha256()
        with open(source, "rb") as src, open(tmp, "wb") as dst:
            for chunk in iter(lambda: src.read(_CHUNK), b""):
                digest.update(chunk)
                dst.write(chunk)
        if digest.hexdigest() != expected:
            msg = (
                f"Dataset '{dataset}', file '{spec['filename']}': the mirror file {source} has "
                f"sha256 {digest.hexdigest()}, but the registry expects {expected}. Replace it "
                f"with a good copy of {spec['url']}, or remove it from the mirror to download it."
            )
            raise FetchError(msg)
        os.replace(tmp, target)


def _offline_message(missing: list[dict], *, dataset: str, mirror: Path | None) -> str:
    where = f"the mirror {mirror}" if mirror is not None else "a mirror (none is set)"
    lines = [f"  - {spec['filename']}: {spec['url']}" for spec in missing]
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
    spec: dict, *, dataset: str, target: Path, retries: int, progressbar: bool
) -> tuple[Path, Source]:
    url, expected = spec["url"], spec["sha256"].lower()
    target.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(retries + 1):
        sniffer = _SniffingDownloader(
            pooch.HTTPDownloader(progressbar=_use_progressbar(progressbar))
        )
        try:
            # pooch streams to a temporary file next to the target, checks the hash and only
            # then moves it into place; on failure it deletes the temporary file.
            pooch.retrieve(
                url,
                known_hash=f"sha256:{expected}",
                fname=target.name,
                path=target.parent,
                downloader=sniffer,
            )
            return target, "download"
        except ValueError as err:
            if sniffer.sha256 is None or sniffer.sha256 == expected:
                raise FetchError(_prefix(spec, dataset) + f"{err}") from err
            msg = _hash_message(spec, dataset=dataset, actual=sniffer.sha256, head=sniffer.head)
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
    return f"Dataset '{dataset}', file '{spec['filename']}' from {spec['url']}: "


def _hash_message(spec: dict, *, dataset: str, actual: str, head: bytes) -> str:
    start = head.lstrip().lower()
    if start.startswith((b"<!doctype html", b"<html")):
        return _prefix(spec, dataset) + (
            "the server returned an HTML page instead of data; the URL may be wrong or need a "
            "login. Check the URL in the dataset registry, or download the file by hand and "
            f"{_MIRROR_HINT}."
        )
    return _prefix(spec, dataset) + (
        f"sha256 mismatch: expected {spec['sha256']}, got {actual}. The download may be "
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
