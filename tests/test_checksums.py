"""Tests of osteoimmune.checksums: the checksum lock of files the registry does not pin."""

from __future__ import annotations

import multiprocessing
import threading

import pytest

from osteoimmune.checksums import (
    Recorded,
    default_lock,
    lookup_checksum,
    read_lock,
    record_checksum,
)
from osteoimmune.errors import FetchError

A, B = "a" * 64, "b" * 64


def test_missing_lock_is_empty(tmp_path):
    lock = tmp_path / "checksums.lock.tsv"
    assert read_lock(lock) == {}
    assert lookup_checksum(lock, "https://example.org/x") is None
    assert not lock.exists()


def test_default_lock_sits_beside_the_registry(tmp_path):
    assert default_lock(tmp_path / "config" / "datasets.yaml") == (
        tmp_path / "config" / "checksums.lock.tsv"
    )


def test_record_writes_sorted_deterministic_rows_and_keeps_the_first(tmp_path):
    lock = tmp_path / "checksums.lock.tsv"
    assert record_checksum(lock, url="https://z.org/2", sha256=B, size=20) == Recorded(B, 20)
    assert record_checksum(lock, url="https://a.org/1", sha256=A.upper(), size=10) == (A, 10)
    expected = (
        "url\tsha256\tbytes\nhttps://a.org/1\t" + A + "\t10\nhttps://z.org/2\t" + B + "\t20\n"
    )
    assert lock.read_text() == expected
    assert lookup_checksum(lock, "https://z.org/2") == Recorded(B, 20)

    # A URL already recorded keeps its checksum; the caller gets it back to compare.
    assert record_checksum(lock, url="https://a.org/1", sha256=B, size=99) == Recorded(A, 10)
    assert lock.read_text() == expected
    assert oct(lock.stat().st_mode & 0o777) == oct(0o644)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".checksums.lock.tsv.flock",
        "checksums.lock.tsv",
    ]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("url\tsha\tbytes\n", "header"),
        ("", "header"),
        (f"url\tsha256\tbytes\nhttps://x.org/1\t{A}\n", "line 2"),
        (f"url\tsha256\tbytes\nhttps://x.org/1\t{A}\t12kb\n", "line 2"),
        (f"url\tsha256\tbytes\n\nhttps://x.org/1\t{A[:-1]}\t1\n", "line 3"),
        (f"url\tsha256\tbytes\nhttps://x.org/1\t{A}\t1\nhttps://x.org/1\t{B}\t1\n", "twice"),
    ],
)
def test_malformed_lock_is_an_error_naming_file_and_line(tmp_path, text, match):
    lock = tmp_path / "checksums.lock.tsv"
    lock.write_text(text)

    with pytest.raises(FetchError, match=match) as info:
        read_lock(lock)
    assert str(lock) in str(info.value)
    with pytest.raises(FetchError):
        record_checksum(lock, url="https://x.org/2", sha256=A, size=1)
    assert lock.read_text() == text


def test_record_refuses_a_bad_checksum(tmp_path):
    with pytest.raises(ValueError, match="invalid"):
        record_checksum(tmp_path / "lock.tsv", url="https://x.org/1", sha256="abc", size=1)
    assert not (tmp_path / "lock.tsv").exists()


def _record_many(lock: str, worker: int, count: int, barrier) -> None:
    barrier.wait()
    for i in range(count):
        record_checksum(lock, url=f"https://x.org/{worker}/{i}", sha256=f"{worker:064x}", size=i)


def test_parallel_processes_recording_different_urls_all_end_up_in_the_lock(tmp_path):
    lock = tmp_path / "checksums.lock.tsv"
    workers, count = 4, 15
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(workers)
    procs = [
        context.Process(target=_record_many, args=(str(lock), w, count, barrier))
        for w in range(workers)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=60)

    assert [proc.exitcode for proc in procs] == [0] * workers
    recorded = read_lock(lock)
    assert len(recorded) == workers * count
    assert recorded["https://x.org/3/14"] == Recorded(f"{3:064x}", 14)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")] == []


def test_parallel_threads_recording_different_urls_all_end_up_in_the_lock(tmp_path):
    lock = tmp_path / "checksums.lock.tsv"
    barrier = threading.Barrier(4)
    threads = [threading.Thread(target=_record_many, args=(lock, w, 15, barrier)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(read_lock(lock)) == sorted(
        f"https://x.org/{w}/{i}" for w in range(4) for i in range(15)
    )
