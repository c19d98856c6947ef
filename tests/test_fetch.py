"""Tests of osteoimmune.fetch against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import REPO

from osteoimmune import fetch as fetch_module
from osteoimmune.checksums import read_lock
from osteoimmune.errors import FetchError
from osteoimmune.fetch import (
    FetchedFiles,
    fetch_dataset,
    fetch_file,
    read_manifest,
    resolve_mirror,
    sha256sum,
    write_manifest,
)
from osteoimmune.registry import load_registry

DATA = bytes(range(256)) * 40  # 10 KiB of binary "data"
OTHER = b"not the data\n" * 50
HTML = b"\n  <!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>login</body></html>\n"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Reply:
    status: int = 200
    body: bytes = DATA
    # Announce more bytes than are sent, then close: a transfer cut off mid-way.
    extra_length: int = 0


@dataclass
class Server:
    base: str
    routes: dict[str, list[Reply]] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)

    def serve(self, path: str, *replies: Reply) -> str:
        """Serve the replies in turn at path (the last one repeats); return its URL."""
        self.routes[path] = list(replies)
        return self.base + path

    def next_reply(self, path: str) -> Reply:
        self.requests.append(path)
        replies = self.routes.get(path)
        if not replies:
            return Reply(status=404, body=b"not found")
        return replies.pop(0) if len(replies) > 1 else replies[0]


@pytest.fixture
def server():
    state: Server | None = None

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the http.server API
            reply = state.next_reply(self.path)
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(reply.body) + reply.extra_length))
            self.end_headers()
            self.wfile.write(reply.body)
            self.close_connection = True

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state = Server(base=f"http://127.0.0.1:{httpd.server_address[1]}")
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def spec_for(url: str, data: bytes = DATA, *, filename: str = "counts.rda") -> dict:
    return {
        "role": "counts",
        "url": url,
        "sha256": sha(data),
        "filename": filename,
        "format": "rda",
    }


def leftovers(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*")) if folder.exists() else []


def snapshot(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


def test_download_then_cache_hit(server, tmp_path):
    spec = spec_for(server.serve("/data/counts.rda", Reply()))
    dest = tmp_path / "resources" / "ds"

    first = fetch_file(spec, dataset="ds", dest_dir=dest, progressbar=False)
    assert first == dest / "counts.rda"
    assert first.read_bytes() == DATA
    assert leftovers(dest) == [first]

    second = fetch_file(spec, dataset="ds", dest_dir=dest, progressbar=False)
    assert second == first
    assert server.requests == ["/data/counts.rda"]


def test_stale_cache_with_wrong_hash_is_refetched(server, tmp_path):
    spec = spec_for(server.serve("/counts.rda", Reply()))
    (tmp_path / "counts.rda").write_bytes(DATA[:100])

    path = fetch_file(spec, dataset="ds", dest_dir=tmp_path, progressbar=False)

    assert path.read_bytes() == DATA
    assert server.requests == ["/counts.rda"]


def test_wrong_sha256_in_spec_is_an_error_and_leaves_nothing(server, tmp_path):
    spec = spec_for(server.serve("/counts.rda", Reply()), data=OTHER)
    dest = tmp_path / "dest"

    with pytest.raises(FetchError) as info:
        fetch_file(spec, dataset="paul_test", dest_dir=dest, progressbar=False)

    msg = str(info.value)
    assert "paul_test" in msg and "counts.rda" in msg
    assert sha(OTHER) in msg and sha(DATA) in msg
    assert "truncated or the file changed upstream" in msg
    assert leftovers(dest) == []


def test_short_body_is_a_hash_mismatch_and_leaves_nothing(server, tmp_path):
    spec = spec_for(server.serve("/counts.rda", Reply(body=DATA[:1000])))

    with pytest.raises(FetchError, match="sha256 mismatch") as info:
        fetch_file(spec, dataset="ds", dest_dir=tmp_path / "dest", progressbar=False)

    assert sha(DATA[:1000]) in str(info.value)
    assert leftovers(tmp_path / "dest") == []


def test_transfer_cut_off_is_retried_then_an_error_and_leaves_nothing(server, tmp_path):
    spec = spec_for(server.serve("/counts.rda", Reply(body=DATA[:1000], extra_length=5000)))

    with pytest.raises(FetchError, match="truncated") as info:
        fetch_file(spec, dataset="ds", dest_dir=tmp_path / "dest", retries=1, progressbar=False)

    assert spec["url"] in str(info.value)
    assert server.requests == ["/counts.rda", "/counts.rda"]
    assert leftovers(tmp_path / "dest") == []


def test_html_page_instead_of_data_is_named_and_leaves_nothing(server, tmp_path):
    spec = spec_for(server.serve("/counts.rda", Reply(body=HTML)))

    with pytest.raises(FetchError, match="HTML page instead of data") as info:
        fetch_file(spec, dataset="ds", dest_dir=tmp_path / "dest", progressbar=False)

    assert "counts.rda" in str(info.value) and spec["url"] in str(info.value)
    assert leftovers(tmp_path / "dest") == []


def test_server_error_is_retried(server, tmp_path):
    spec = spec_for(server.serve("/counts.rda", Reply(status=500, body=b"oops"), Reply()))

    path = fetch_file(spec, dataset="ds", dest_dir=tmp_path, retries=3, progressbar=False)

    assert path.read_bytes() == DATA
    assert server.requests == ["/counts.rda", "/counts.rda"]


def test_not_found_names_the_url_is_not_retried_and_leaves_nothing(server, tmp_path):
    spec = spec_for(server.base + "/missing/counts.rda")

    with pytest.raises(FetchError, match="HTTP 404") as info:
        fetch_file(spec, dataset="ds", dest_dir=tmp_path / "dest", retries=3, progressbar=False)

    msg = str(info.value)
    assert spec["url"] in msg and "ds" in msg and "counts.rda" in msg
    assert server.requests == ["/missing/counts.rda"]
    assert leftovers(tmp_path / "dest") == []


def test_connection_refused_is_an_error_and_leaves_nothing(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    spec = spec_for(f"http://127.0.0.1:{port}/counts.rda")

    with pytest.raises(FetchError, match="could not connect") as info:
        fetch_file(spec, dataset="ds", dest_dir=tmp_path / "dest", retries=0, progressbar=False)

    assert spec["url"] in str(info.value)
    assert leftovers(tmp_path / "dest") == []


@pytest.mark.parametrize("where", ["", "ds", "elsewhere/deeper"])
def test_mirror_hit_copies_without_network(server, tmp_path, where):
    spec = spec_for(server.serve("/counts.rda", Reply()))
    mirror = tmp_path / "mirror"
    mirrored = mirror / where / "counts.rda"
    mirrored.parent.mkdir(parents=True, exist_ok=True)
    mirrored.write_bytes(DATA)
    before = snapshot(mirrored)
    dest = tmp_path / "dest"

    path = fetch_file(spec, dataset="ds", dest_dir=dest, mirror=mirror, progressbar=False)

    assert path == dest / "counts.rda"
    assert path.read_bytes() == DATA
    assert leftovers(dest) == [path]
    assert snapshot(mirrored) == before
    assert server.requests == []


def test_mirror_file_with_wrong_bytes_is_an_error(server, tmp_path):
    spec = spec_for(server.serve("/counts.rda", Reply()))
    mirrored = tmp_path / "mirror" / "ds" / "counts.rda"
    mirrored.parent.mkdir(parents=True)
    mirrored.write_bytes(OTHER)
    before = snapshot(mirrored)
    dest = tmp_path / "dest"

    with pytest.raises(FetchError) as info:
        fetch_file(spec, dataset="ds", dest_dir=dest, mirror=tmp_path / "mirror")

    msg = str(info.value)
    assert str(mirrored) in msg and sha(OTHER) in msg and sha(DATA) in msg and "'ds'" in msg
    assert leftovers(dest) == []
    assert snapshot(mirrored) == before
    assert server.requests == []


def test_offline_miss_lists_every_missing_file_without_network(server, tmp_path):
    entry = {
        "files": [
            spec_for(server.serve("/a/counts.rda", Reply()), filename="counts.rda"),
            spec_for(server.serve("/a/labels.rda", Reply()), filename="labels.rda"),
        ]
    }

    with pytest.raises(FetchError, match="offline") as info:
        fetch_dataset(entry, dataset="ds", dest_dir=tmp_path / "dest", offline=True)

    msg = str(info.value)
    for spec in entry["files"]:
        assert spec["filename"] in msg and spec["url"] in msg
    assert "offline: true" in msg
    assert server.requests == []
    assert leftovers(tmp_path / "dest") == []


def test_local_path_is_returned_unchanged(tmp_path):
    own = tmp_path / "own" / "my_counts.h5ad"
    own.parent.mkdir()
    own.write_bytes(DATA)
    before = snapshot(own)
    dest = tmp_path / "dest"
    spec = {"role": "counts", "path": str(own), "filename": own.name, "format": "h5ad"}

    assert fetch_file(spec, dataset="mine", dest_dir=dest) == own
    assert fetch_file({**spec, "sha256": sha(DATA)}, dataset="mine", dest_dir=dest) == own
    assert snapshot(own) == before
    assert leftovers(dest) == []

    with pytest.raises(FetchError, match="mine") as info:
        fetch_file({**spec, "sha256": sha(OTHER)}, dataset="mine", dest_dir=dest)
    assert str(own) in str(info.value) and sha(OTHER) in str(info.value)

    with pytest.raises(FetchError, match="does not exist"):
        fetch_file({**spec, "path": str(tmp_path / "nope.h5ad")}, dataset="mine", dest_dir=dest)


def test_resolve_mirror(tmp_path):
    from_config, from_env = tmp_path / "config_mirror", tmp_path / "env_mirror"
    from_config.mkdir()
    from_env.mkdir()
    env = {"OSTEOIMMUNE_MIRROR": str(from_env)}

    assert resolve_mirror(str(from_config), env) == from_config
    assert resolve_mirror(None, env) == from_env
    assert resolve_mirror("", env) == from_env
    assert resolve_mirror(None, {"OSTEOIMMUNE_MIRROR": ""}) is None
    assert resolve_mirror(None, {}) is None

    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(FetchError, match="not a directory"):
        resolve_mirror(str(a_file), env)
    with pytest.raises(FetchError, match="OSTEOIMMUNE_MIRROR"):
        resolve_mirror(None, {"OSTEOIMMUNE_MIRROR": str(tmp_path / "absent")})


def test_sha256sum_matches_hashlib(tmp_path):
    path = tmp_path / "big.bin"
    data = DATA * 300  # larger than one read chunk
    path.write_bytes(data)
    assert sha256sum(path) == sha(data)


def test_fetch_dataset_and_manifest_record_sources(server, tmp_path):
    own = tmp_path / "own.csv"
    own.write_bytes(OTHER)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "labels.rda").write_bytes(OTHER)
    entry = {
        "files": [
            spec_for(server.serve("/counts.rda", Reply()), filename="counts.rda"),
            spec_for(server.base + "/labels.rda", OTHER, filename="labels.rda"),
            {"role": "protein", "path": str(own), "filename": "own.csv", "format": "csv"},
        ]
    }
    dest = tmp_path / "dest"

    paths = fetch_dataset(entry, dataset="ds", dest_dir=dest, mirror=mirror, progressbar=False)
    assert isinstance(paths, FetchedFiles)
    assert paths == {
        "counts.rda": dest / "counts.rda",
        "labels.rda": dest / "labels.rda",
        "own.csv": own,
    }
    assert paths.sources == {"counts.rda": "download", "labels.rda": "mirror", "own.csv": "local"}
    assert paths.checksums == {
        "counts.rda": "registry",
        "labels.rda": "registry",
        "own.csv": "computed",
    }

    out = dest / "fetch_manifest.json"
    write_manifest(paths, entry, dataset="ds", out=out)
    manifest = json.loads(out.read_text())
    assert manifest["dataset"] == "ds"
    rows = {row["filename"]: row for row in manifest["files"]}
    assert rows["counts.rda"]["source"] == "download"
    assert rows["counts.rda"]["bytes"] == len(DATA)
    assert rows["counts.rda"]["sha256"] == sha(DATA)
    assert rows["counts.rda"]["url"] == entry["files"][0]["url"]
    assert rows["labels.rda"]["source"] == "mirror"
    assert rows["own.csv"] == {
        "filename": "own.csv",
        "role": "protein",
        "path": str(own),
        "url": None,
        "sample": None,
        "sha256": sha(OTHER),
        "bytes": len(OTHER),
        "mtime_ns": own.stat().st_mtime_ns,
        "source": "local",
        "checksum": "computed",
    }
    assert rows["counts.rda"]["checksum"] == rows["labels.rda"]["checksum"] == "registry"
    assert sorted(p.name for p in dest.iterdir()) == [
        "counts.rda",
        "fetch_manifest.json",
        "labels.rda",
    ]

    again = fetch_dataset(entry, dataset="ds", dest_dir=dest, mirror=mirror, progressbar=False)
    assert again.sources == {"counts.rda": "cache", "labels.rda": "cache", "own.csv": "local"}
    assert server.requests == ["/counts.rda"]


def test_read_manifest_round_trip_and_errors(tmp_path):
    data = tmp_path / "counts.rda"
    data.write_bytes(DATA)
    entry = {"files": [spec_for("https://example.org/counts.rda")]}
    out = tmp_path / "fetch_manifest.json"
    write_manifest({"counts.rda": data}, entry, dataset="ds", out=out)

    assert read_manifest(out) == {"counts.rda": data}
    assert json.loads(out.read_text())["files"][0]["source"] is None

    data.unlink()
    with pytest.raises(FetchError, match="no longer exist"):
        read_manifest(out)
    out.write_text("{not json")
    with pytest.raises(FetchError, match="invalid"):
        read_manifest(out)


# --- A cached file changed after its fetch: read_manifest refuses it, a rerun mends it ---------


def fetched_from_mirror(tmp_path: Path, spec: dict) -> tuple[Path, Path, Path]:
    """Fetch `spec` from a mirror folder holding DATA; the mirror file, cached copy, manifest."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / spec["filename"]).write_bytes(DATA)
    dest = tmp_path / "resources" / "ds"
    entry = {"files": [spec]}
    paths = fetch_dataset(entry, dataset="ds", dest_dir=dest, mirror=mirror, progressbar=False)
    out = dest / "fetch_manifest.json"
    write_manifest(paths, entry, dataset="ds", out=out)
    return mirror / spec["filename"], dest / spec["filename"], out


def test_manifest_records_size_and_mtime_and_reading_it_hashes_nothing(tmp_path, monkeypatch):
    mirrored, cached, out = fetched_from_mirror(tmp_path, spec_for("https://example.org/c.rda"))
    row = json.loads(out.read_text())["files"][0]
    assert (row["bytes"], row["mtime_ns"]) == (len(DATA), cached.stat().st_mtime_ns)

    hashed = []
    monkeypatch.setattr(
        fetch_module, "sha256sum", lambda path: hashed.append(Path(path)) or sha(DATA)
    )
    assert read_manifest(out) == {"counts.rda": cached}
    assert hashed == []  # size and mtime as recorded: nothing is hashed

    # touched, not changed: hashed once, accepted, the manifest kept
    os.utime(cached, ns=(cached.stat().st_atime_ns, cached.stat().st_mtime_ns + 10**9))
    assert read_manifest(out) == {"counts.rda": cached}
    assert hashed == [cached] and out.is_file()


def test_corrupted_cached_file_is_named_and_fetched_again(tmp_path):
    spec = spec_for("https://example.org/counts.rda")
    mirrored, cached, out = fetched_from_mirror(tmp_path, spec)
    cached.write_bytes(DATA[:1000])  # truncated on disk after the fetch

    with pytest.raises(FetchError) as info:
        read_manifest(out)
    message = str(info.value)
    assert "Dataset 'ds'" in message and str(cached) in message
    assert sha(DATA[:1000]) in message and sha(DATA) in message
    assert "run again; the file will be fetched again" in message
    assert not out.exists()  # so that the workflow fetches again
    assert mirrored.read_bytes() == DATA

    paths = fetch_dataset(
        {"files": [spec]}, dataset="ds", dest_dir=cached.parent, mirror=mirrored.parent
    )
    assert paths.sources == {"counts.rda": "mirror"}
    assert cached.read_bytes() == DATA
    write_manifest(paths, {"files": [spec]}, dataset="ds", out=out)
    assert read_manifest(out) == {"counts.rda": cached}


def test_changed_file_with_nothing_to_verify_against_says_to_delete_it(tmp_path):
    data = tmp_path / "counts.rda"
    data.write_bytes(DATA)
    entry = {"files": [unpinned("https://example.org/counts.rda")]}
    out = tmp_path / "fetch_manifest.json"
    write_manifest(
        {"counts.rda": data}, entry, dataset="ds", out=out, checksums={"counts.rda": "computed"}
    )
    data.write_bytes(OTHER)

    with pytest.raises(FetchError, match=f"delete {data} and run again"):
        read_manifest(out)
    assert data.read_bytes() == OTHER and not out.exists()


def test_replaced_local_file_is_read_anew_after_a_rerun(tmp_path):
    own = tmp_path / "own.h5ad"
    own.write_bytes(DATA)
    entry = {"files": [{"role": "counts", "path": str(own), "filename": own.name}]}
    out = tmp_path / "fetch_manifest.json"
    write_manifest(
        fetch_dataset(entry, dataset="mine", dest_dir=tmp_path), entry, dataset="mine", out=out
    )
    own.write_bytes(OTHER)

    with pytest.raises(FetchError, match=f"the local file {own} has sha256") as info:
        read_manifest(out)
    assert "Dataset 'mine'" in str(info.value) and "run again" in str(info.value)
    assert own.read_bytes() == OTHER and not out.exists()


def test_real_registry_entry_through_the_mirror(tmp_path, mirror):
    registry = load_registry(REPO / "config" / "datasets.yaml")
    entry = registry["paul2015_bm_myeloid"]

    paths = fetch_dataset(
        entry, dataset="paul2015_bm_myeloid", dest_dir=tmp_path, mirror=mirror, offline=True
    )

    assert sorted(paths) == ["celltype.rda", "countMatrix.rda"]
    for spec in entry["files"]:
        path = paths[spec["filename"]]
        assert path == tmp_path / spec["filename"]
        assert sha256sum(path) == spec["sha256"]
        assert paths.sources[spec["filename"]] == "mirror"
        assert paths.checksums[spec["filename"]] == "registry"


# --- Files whose checksum the registry does not know: the checksum lock -------------------------


def unpinned(url: str, *, filename: str = "counts.rda", **extra) -> dict:
    return {**spec_for(url, filename=filename), "sha256": None, **extra}


def manifest_rows(paths: FetchedFiles, entry: dict, out: Path) -> dict[str, dict]:
    write_manifest(paths, entry, dataset="ds", out=out)
    return {row["filename"]: row for row in json.loads(out.read_text())["files"]}


def test_first_download_records_later_fetches_verify_against_the_lock(server, tmp_path):
    url = server.serve("/raw/counts.rda", Reply())
    entry = {"files": [unpinned(url)]}
    lock = tmp_path / "config" / "checksums.lock.tsv"
    lock.parent.mkdir()

    first = fetch_dataset(
        entry, dataset="ds", dest_dir=tmp_path / "a", lock=lock, progressbar=False
    )
    assert first.sources == {"counts.rda": "download"}
    assert first.checksums == {"counts.rda": "recorded"}
    assert first["counts.rda"].read_bytes() == DATA
    assert leftovers(tmp_path / "a") == [first["counts.rda"]]
    assert lock.read_text() == f"url\tsha256\tbytes\n{url}\t{sha(DATA)}\t{len(DATA)}\n"
    row = manifest_rows(first, entry, tmp_path / "a.json")["counts.rda"]
    assert (row["checksum"], row["sha256"]) == ("recorded", sha(DATA))

    second = fetch_dataset(
        entry, dataset="ds", dest_dir=tmp_path / "b", lock=lock, progressbar=False
    )
    assert second.sources == {"counts.rda": "download"}
    assert second.checksums == {"counts.rda": "lock"}
    assert manifest_rows(second, entry, tmp_path / "b.json")["counts.rda"]["checksum"] == "lock"
    cached = fetch_dataset(entry, dataset="ds", dest_dir=tmp_path / "b", lock=lock)
    assert (cached.sources, cached.checksums) == ({"counts.rda": "cache"}, {"counts.rda": "lock"})
    assert server.requests == ["/raw/counts.rda"] * 2


def test_file_changed_since_recorded_is_refused_and_nothing_is_kept(server, tmp_path):
    url = server.serve("/raw/counts.rda", Reply())
    spec = unpinned(url)
    lock = tmp_path / "checksums.lock.tsv"
    fetch_file(spec, dataset="ds", dest_dir=tmp_path / "a", lock=lock, progressbar=False)
    recorded = lock.read_bytes()
    server.serve("/raw/counts.rda", Reply(body=OTHER))
    dest = tmp_path / "b"

    with pytest.raises(FetchError, match="changed since its checksum was recorded") as info:
        fetch_file(spec, dataset="paul_test", dest_dir=dest, lock=lock, progressbar=False)

    msg = str(info.value)
    assert "paul_test" in msg and "counts.rda" in msg and url in msg and str(lock) in msg
    assert sha(OTHER) in msg and sha(DATA) in msg and "delete the line" in msg
    assert leftovers(dest) == []
    assert lock.read_bytes() == recorded

    # A stale cached file is not trusted either: it is removed, and the refetch refused.
    dest.mkdir(exist_ok=True)
    (dest / "counts.rda").write_bytes(OTHER)
    with pytest.raises(FetchError, match="changed since its checksum was recorded"):
        fetch_file(spec, dataset="ds", dest_dir=dest, lock=lock, progressbar=False)
    assert leftovers(dest) == []
    assert lock.read_bytes() == recorded


def test_strict_refuses_unpinned_files_and_fetches_nothing(server, tmp_path):
    pinned_url = server.serve("/counts.rda", Reply())
    raw_url = server.serve("/raw/S1.rda", Reply())
    entry = {
        "files": [spec_for(pinned_url), unpinned(raw_url, filename="S1.rda", sample="S1", row=2)]
    }
    lock = tmp_path / "checksums.lock.tsv"
    dest = tmp_path / "dest"

    with pytest.raises(FetchError, match="strict") as info:
        fetch_dataset(entry, dataset="ds", dest_dir=dest, lock=lock, strict=True)

    msg = str(info.value)
    assert "Dataset 'ds'" in msg and "sample 'S1' (samplesheet row 2), file 'S1.rda'" in msg
    assert raw_url in msg and "`sha256:`" in msg and "without `strict_checksums`" in msg
    assert pinned_url not in msg
    assert server.requests == []
    assert leftovers(dest) == [] and not lock.exists()
    with pytest.raises(FetchError, match="sample 'S1', file 'S1.rda': "):
        fetch_file(
            {**entry["files"][1], "row": None},
            dataset="ds",
            dest_dir=dest,
            lock=lock,
            strict=True,
        )
    assert server.requests == []

    # Once recorded (a run without strict), strict accepts the file and verifies it.
    fetch_dataset(entry, dataset="ds", dest_dir=tmp_path / "a", lock=lock, progressbar=False)
    again = fetch_dataset(
        entry, dataset="ds", dest_dir=dest, lock=lock, strict=True, progressbar=False
    )
    assert again.checksums == {"counts.rda": "registry", "S1.rda": "lock"}


def test_mirror_file_with_unknown_checksum_is_recorded_then_verified(server, tmp_path):
    url = server.base + "/raw/counts.rda"
    spec = unpinned(url)
    mirror = tmp_path / "mirror"
    mirrored = mirror / "ds" / "counts.rda"
    mirrored.parent.mkdir(parents=True)
    mirrored.write_bytes(DATA)
    lock = tmp_path / "checksums.lock.tsv"

    paths = fetch_dataset(
        {"files": [spec]}, dataset="ds", dest_dir=tmp_path / "a", mirror=mirror, lock=lock
    )

    assert (paths.sources, paths.checksums) == (
        {"counts.rda": "mirror"},
        {"counts.rda": "recorded"},
    )
    assert read_lock(lock) == {url: (sha(DATA), len(DATA))}
    mirrored.write_bytes(OTHER)
    before, recorded = snapshot(mirrored), lock.read_bytes()
    dest = tmp_path / "b"

    with pytest.raises(FetchError, match="changed since its checksum was recorded") as info:
        fetch_file(spec, dataset="ds", dest_dir=dest, mirror=mirror, lock=lock, offline=True)

    msg = str(info.value)
    assert str(mirrored) in msg and str(lock) in msg and sha(OTHER) in msg and sha(DATA) in msg
    assert "remove it from the mirror" in msg
    assert leftovers(dest) == []
    assert snapshot(mirrored) == before and lock.read_bytes() == recorded
    assert server.requests == []


def test_registry_sha256_wins_over_a_conflicting_lock_line(server, tmp_path):
    url = server.serve("/counts.rda", Reply())
    lock = tmp_path / "checksums.lock.tsv"
    lock.write_text(f"url\tsha256\tbytes\n{url}\t{sha(OTHER)}\t{len(OTHER)}\n")
    recorded = lock.read_bytes()

    paths = fetch_dataset(
        {"files": [spec_for(url)]}, dataset="ds", dest_dir=tmp_path, lock=lock, progressbar=False
    )

    assert paths["counts.rda"].read_bytes() == DATA
    assert paths.checksums == {"counts.rda": "registry"}
    assert lock.read_bytes() == recorded


def test_unknown_checksum_without_a_lock_is_only_computed(server, tmp_path):
    spec = unpinned(server.serve("/raw/counts.rda", Reply()))

    paths = fetch_dataset({"files": [spec]}, dataset="ds", dest_dir=tmp_path, progressbar=False)

    assert paths["counts.rda"].read_bytes() == DATA
    assert paths.checksums == {"counts.rda": "computed"}
    assert leftovers(tmp_path) == [paths["counts.rda"]]


def test_html_page_with_unknown_checksum_is_refused_and_not_recorded(server, tmp_path):
    spec = unpinned(server.serve("/raw/counts.rda", Reply(body=HTML)))
    lock = tmp_path / "checksums.lock.tsv"
    dest = tmp_path / "dest"

    with pytest.raises(FetchError, match="HTML page instead of data") as info:
        fetch_file(spec, dataset="ds", dest_dir=dest, lock=lock, progressbar=False)

    assert spec["url"] in str(info.value)
    assert leftovers(dest) == [] and not lock.exists()


def test_sample_files_are_named_in_errors_and_the_manifest(server, tmp_path):
    # A study's samples are fetched one at a time, each as {"files": [...]} of its own.
    gone = {**spec_for(server.base + "/gone.rda", filename="S2.rda"), "sample": "S2", "row": 2}

    with pytest.raises(FetchError, match="HTTP 404") as info:
        fetch_dataset({"files": [gone]}, dataset="ds", dest_dir=tmp_path, retries=0)
    assert "Dataset 'ds', sample 'S2' (samplesheet row 2), file 'S2.rda'" in str(info.value)
    with pytest.raises(FetchError, match="offline") as info:
        fetch_dataset({"files": [gone]}, dataset="ds", dest_dir=tmp_path, offline=True)
    assert "sample 'S2' (samplesheet row 2), file 'S2.rda'" in str(info.value)

    sample = {"files": [{**spec_for(server.serve("/S1.rda", Reply())), "sample": "S1", "row": 1}]}
    paths = fetch_dataset(sample, dataset="ds", dest_dir=tmp_path, progressbar=False)
    assert manifest_rows(paths, sample, tmp_path / "m.json")["counts.rda"]["sample"] == "S1"
    assert leftovers(tmp_path) == [tmp_path / "counts.rda", tmp_path / "m.json"]


def test_parallel_first_downloads_of_different_urls_all_end_up_in_the_lock(server, tmp_path):
    specs = [
        unpinned(server.serve(f"/raw/{i}.bin", Reply(body=DATA + bytes([i]))), filename=f"{i}.bin")
        for i in range(6)
    ]
    lock = tmp_path / "checksums.lock.tsv"
    errors = []

    def fetch(spec):
        try:
            fetch_file(spec, dataset="ds", dest_dir=tmp_path / "dest", lock=lock, progressbar=False)
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=fetch, args=(spec,)) for spec in specs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert read_lock(lock) == {
        spec["url"]: (sha(DATA + bytes([i])), len(DATA) + 1) for i, spec in enumerate(specs)
    }
