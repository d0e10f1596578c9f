"""Atomic writes: an output either exists whole under its final name or not at all.

Every writer writes to a temporary object ``<dir>/_tmp/<name>.<uuid>.tmp`` and commits it:

- local: ``os.replace`` (via ``LocalFileSystem.move``) after an fsync — a rename within one
  filesystem is atomic, so a reader sees the old file, the new file, or nothing.
- S3: a server-side copy of the finished temp object to the final key (boto3 managed copy,
  so objects over 5 GB work too), then the temp is deleted. S3 makes an object visible only when its
  PUT / CopyObject / CompleteMultipartUpload succeeds, and the copy starts only after the temp was
  written and closed without error, so no half-written final object can exist. (Writing straight to
  the final key was rejected: pyarrow's S3 stream has no abort, and closing it after an exception
  completes the multipart upload with what was written so far.)

A crash leaves at most a temp object under ``_tmp/``. Readers ignore it: it lives in a folder
starting with ``_`` and does not end in ``.parquet`` (pyarrow datasets skip ``_``/``.`` prefixes,
Ray's ``read_parquet`` keeps only ``*.parquet``). ``cleanup_stale`` deletes old temps.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator

from afov_ray.storage import uri as U

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

TMP_DIR = "_tmp"
TMP_SUFFIX = ".tmp"


def is_hidden_name(name: str) -> bool:
    """Names readers must skip: temp folder / temp objects and ``_``/``.``-prefixed side files."""
    return name.startswith(("_", ".")) or name.endswith(TMP_SUFFIX)


def temp_uri_for(final_uri: str) -> str:
    """A fresh temp URI beside ``final_uri``: ``<dir>/_tmp/<name>.<uuid>.tmp``."""
    return U.join(U.parent(final_uri), TMP_DIR, f"{U.basename(final_uri)}.{uuid.uuid4().hex}{TMP_SUFFIX}")


class HashingStream:
    """File-like wrapper that forwards writes and keeps sha256 + byte count of what went through.

    ``atomic_output`` yields one, so a shard's checksum for the manifest is known without reading
    the file back (which would mean a second download on S3).
    """

    def __init__(self, raw: Any):
        self._raw = raw
        self._sha = hashlib.sha256()
        self.bytes_written = 0
        self.closed = False

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self._sha.update(view)
        self._raw.write(view)
        self.bytes_written += view.nbytes
        return view.nbytes

    def tell(self) -> int:
        return self.bytes_written

    def flush(self) -> None:
        self._raw.flush()

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._raw.close()

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()


def _fsync_local(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit(temp_uri: str, final_uri: str) -> None:
    """Move a finished temp object to its final name atomically (see the module docstring)."""
    if U.is_s3(final_uri):
        from boto3.s3.transfer import TransferConfig

        src_bucket, src_key = U.split_s3(temp_uri)
        dst_bucket, dst_key = U.split_s3(final_uri)
        client = U.boto3_client()
        # One CopyObject up to 4 GiB; above that boto3 does a multipart copy, which also becomes
        # visible only on CompleteMultipartUpload (aborted on failure).
        client.copy({"Bucket": src_bucket, "Key": src_key}, dst_bucket, dst_key,
                    Config=TransferConfig(multipart_threshold=4 * 2**30, multipart_chunksize=512 * 2**20))
        client.delete_object(Bucket=src_bucket, Key=src_key)
        return
    fs, tmp_path = U.resolve(temp_uri)
    _, final_path = U.resolve(final_uri)
    _fsync_local(tmp_path)
    os.makedirs(os.path.dirname(final_path), exist_ok=True)
    fs.move(tmp_path, final_path)  # rename(2): atomic, replaces an existing file
    try:   # an empty temp folder is not part of the output (another writer's temp keeps it)
        os.rmdir(os.path.dirname(tmp_path))
    except OSError:
        pass


@contextmanager
def atomic_output(final_uri: str) -> Iterator[Any]:
    """Context manager yielding a writable ``HashingStream``; committed to ``final_uri`` on success.

    On an exception the temp object is deleted and the exception re-raised; ``final_uri`` is
    untouched (an older version of it, if any, stays as it was).
    """
    tmp = temp_uri_for(final_uri)
    fs, tmp_path = U.resolve(tmp)
    U.makedirs(U.parent(tmp))
    stream = HashingStream(fs.open_output_stream(tmp_path))
    try:
        yield stream
        stream.close()
    except BaseException:
        try:
            stream.close()
        except Exception:  # noqa: BLE001 - the write's own error is the one to report
            pass
        _discard(tmp)
        raise
    try:
        commit(tmp, final_uri)
    except BaseException:
        _discard(tmp)
        raise


def _discard(tmp: str) -> None:
    """Best-effort removal of a temp object after a failed write: with the store unreachable it stays
    (``cleanup_stale`` removes it on the next run) and the write's own error is raised."""
    try:
        U.delete(tmp)
    except Exception:  # noqa: BLE001
        pass


def atomic_write_bytes(final_uri: str, data: bytes) -> None:
    with atomic_output(final_uri) as f:
        f.write(data)


def atomic_write_json(final_uri: str, obj: Any, indent: int | None = 2) -> None:
    atomic_write_bytes(final_uri, json.dumps(obj, indent=indent, sort_keys=True).encode() + b"\n")


def atomic_write_parquet(final_uri: str, table: "pa.Table", **write_kwargs: Any) -> None:
    """Write one Table as a Parquet file atomically (``write_kwargs`` go to ``pq.write_table``)."""
    import pyarrow.parquet as pq

    with atomic_output(final_uri) as f:
        pq.write_table(table, f, **write_kwargs)


class AtomicParquetWriter:
    """Streaming Parquet writer (one row group per ``write_table``) committed atomically on close.

    Use as a context manager; an exception inside the block discards everything written.
    Memory stays bounded by one row group, so long scenes (KITTI sequences) fit. After a clean
    exit, ``rows``, ``stream.bytes_written`` and ``stream.sha256`` describe the committed file.
    """

    def __init__(self, final_uri: str, schema: "pa.Schema", **writer_kwargs: Any):
        self.final_uri = final_uri
        self.schema = schema
        self.writer_kwargs = writer_kwargs
        self.rows = 0
        self.stream: HashingStream | None = None
        self._ctx = None
        self._writer = None

    def __enter__(self) -> "AtomicParquetWriter":
        import pyarrow.parquet as pq

        self._ctx = atomic_output(self.final_uri)
        self.stream = self._ctx.__enter__()
        self._writer = pq.ParquetWriter(self.stream, self.schema, **self.writer_kwargs)
        return self

    def write_table(self, table: "pa.Table") -> None:
        self._writer.write_table(table)
        self.rows += table.num_rows

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self._writer.close()
        else:
            try:
                self._writer.close()
            except Exception:  # the original exception matters, not this one
                pass
        return bool(self._ctx.__exit__(exc_type, exc, tb))


def cleanup_stale(dir_uri: str, older_than_s: float = 3600.0) -> int:
    """Delete temp objects under ``<dir_uri>/_tmp`` older than ``older_than_s``; return how many.

    Keep the default age when another job may be writing to the same folder right now.
    """
    import pyarrow.fs as pafs

    tmp_dir = U.join(dir_uri, TMP_DIR)
    fs, path = U.resolve(tmp_dir)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True, recursive=True))
    now = time.time()
    removed = 0
    for info in infos:
        if info.type != pafs.FileType.File:
            continue
        mtime = info.mtime.timestamp() if info.mtime is not None else 0.0
        if now - mtime >= older_than_s:
            U.delete(U.S3_SCHEME + info.path if U.is_s3(dir_uri) else info.path)
            removed += 1
    return removed

