"""The checksum lock: sha256 and size of public files whose checksum the registry does not pin.

The lock is a TSV beside the dataset registry (``config/checksums.lock.tsv``) with the header
``url  sha256  bytes`` and one row per URL, sorted by URL, so that the same records give the same
bytes. The first download of a file whose registry ``sha256`` is null records it here; later
fetches are verified against it. Fetch jobs run in parallel, so a writer takes an exclusive
``fcntl.flock`` on a side file, re-reads the lock under it, and replaces the lock atomically.
"""

from __future__ import annotations

import fcntl
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

from osteoimmune.errors import FetchError

LOCK_NAME = "checksums.lock.tsv"
HEADER = ("url", "sha256", "bytes")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class Recorded(NamedTuple):
    """The checksum of one URL as recorded in the lock."""

    sha256: str
    bytes: int


def default_lock(registry: str | os.PathLike) -> Path:
    """Return the lock path that belongs to a registry: ``checksums.lock.tsv`` beside it.

    Parameters
    ----------
    registry
        The dataset registry file (``config/datasets.yaml``).

    Returns
    -------
    Path
        ``<registry folder>/checksums.lock.tsv``.
    """
    return Path(registry).parent / LOCK_NAME


def read_lock(path: str | os.PathLike) -> dict[str, Recorded]:
    """Read a checksum lock; a lock file that does not exist yet is empty.

    Parameters
    ----------
    path
        The lock file.

    Returns
    -------
    dict
        URL -> :class:`Recorded` (sha256, bytes).

    Raises
    ------
    FetchError
        If the file is not a lock: wrong header, a malformed or repeated row.
    """
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return {}
    if not lines or tuple(lines[0].split("\t")) != HEADER:
        msg = (
            f"Checksum lock {path}: the first line must be the tab-separated header "
            f"{', '.join(HEADER)}. Fix the file, or delete it to record every checksum again "
            "at the next download."
        )
        raise FetchError(msg)
    entries: dict[str, Recorded] = {}
    for number, line in enumerate(lines[1:], start=2):
        if line.strip():
            url, recorded = _parse_row(line, path=path, number=number)
            if url in entries:
                msg = f"Checksum lock {path}, line {number}: {url} is listed twice; keep one line."
                raise FetchError(msg)
            entries[url] = recorded
    return entries


def lookup_checksum(path: str | os.PathLike, url: str) -> Recorded | None:
    """Return the checksum recorded for a URL, or ``None`` when the lock has none.

    Parameters
    ----------
    path
        The lock file (missing means empty).
    url
        The file's URL, exactly as in the registry.

    Returns
    -------
    Recorded or None
        The recorded sha256 and size.
    """
    return read_lock(path).get(url)


def record_checksum(path: str | os.PathLike, *, url: str, sha256: str, size: int) -> Recorded:
    """Record the checksum of a URL in the lock, unless it already has one.

    Safe when several processes record at once: the lock is re-read under an exclusive
    ``flock`` on the side file ``.<name>.flock`` and replaced atomically. A URL already in the
    lock keeps its recorded checksum, which is returned; the caller compares it with its own.

    Parameters
    ----------
    path
        The lock file; created with its header when missing.
    url
        The file's URL.
    sha256
        The hex sha256 of the fetched file.
    size
        The file's size in bytes.

    Returns
    -------
    Recorded
        The checksum in the lock for ``url`` after the call.
    """
    path = Path(path)
    new = Recorded(sha256.lower(), int(size))
    if not _SHA256.match(new.sha256) or new.bytes < 0:
        msg = f"Cannot record {url} in the checksum lock {path}: {sha256!r}/{size} is invalid."
        raise ValueError(msg)
    with _exclusive(path):
        entries = read_lock(path)
        if url in entries:
            return entries[url]
        entries[url] = new
        _write_lock(path, entries)
    return new


def _parse_row(line: str, *, path: Path, number: int) -> tuple[str, Recorded]:
    fields = line.split("\t")
    if len(fields) != 3 or not _SHA256.match(fields[1]) or not fields[2].isdigit():
        msg = (
            f"Checksum lock {path}, line {number}: expected a URL, a lower-case hex sha256 and "
            f"a byte count separated by tabs, got {line!r}. Fix the line, or delete it to record "
            "that file's checksum again at its next download."
        )
        raise FetchError(msg)
    return fields[0], Recorded(fields[1], int(fields[2]))


def _write_lock(path: Path, entries: Mapping[str, Recorded]) -> None:
    rows = ["\t".join(HEADER)]
    rows += [f"{url}\t{entries[url].sha256}\t{entries[url].bytes}" for url in sorted(entries)]
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "w", newline="\n") as fh:
            fh.write("\n".join(rows) + "\n")
        # mkstemp makes the file private; the lock is a shared config file.
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


@contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on the side file of ``path`` (blocking until it is free)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.flock", "a") as side:
        fcntl.flock(side, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(side, fcntl.LOCK_UN)
