"""URIs: every path in afov_ray is a local folder or ``s3://bucket/prefix`` (docs/architecture.md).

``resolve`` turns a URI into a ``pyarrow.fs`` filesystem and a path inside it; the small helpers
below (``join``, ``exists``, ``listdir``, ``read_bytes``, ``write_bytes``) work on both kinds.
``boto3_client`` is for what pyarrow cannot do (managed multi-part copy, listing with prefixes).

S3 settings come from the environment only, never from code:

- ``AFOV_S3_ENDPOINT`` or ``AWS_ENDPOINT_URL`` (the first that is set): ``http://host:port``,
  ``https://host`` or a bare ``host:port`` (taken as https). Unset: AWS itself.
- ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (/ ``AWS_SESSION_TOKEN``); unset: the
  default credential chain of pyarrow / boto3 (profile, instance role, ...).
- ``AWS_DEFAULT_REGION`` (or ``AWS_REGION``), default ``us-east-1``.

Ray workers resolve URIs themselves, so on a cluster these variables must be in the workers'
environment (runtime env or pod spec), not only in the driver's.
"""

from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING

from afov_ray.errors import UnsafePathError  # noqa: F401 - raised here as U.UnsafePathError; lives in errors

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow.fs

S3_SCHEME = "s3://"


def check_component(part: str, what: str = "path component") -> str:
    """Return ``part`` if it is one safe relative path component: not empty, no ``/`` or ``\\``,
    not ``.``/``..``, no NUL, not absolute; else raise UnsafePathError naming it."""
    p = str(part)
    if (not p or p in (".", "..") or "/" in p or "\\" in p or "\x00" in p or p.startswith("~")
            or len(p) > 255):
        raise UnsafePathError(f"{what} {p!r} is not a safe file name (no '/', '..', '\\', absolute or empty names)")
    return p


def _check_relative(part: str) -> list[str]:
    """Components of a relative join part; ``..``/absolute/``.`` components are rejected."""
    p = str(part).replace("\\", "/")
    comps = [c for c in p.strip("/").split("/") if c]
    for c in comps:
        if c in (".", "..") or "\x00" in c:
            raise UnsafePathError(f"path part {part!r} would leave its folder ('..' / '.' components)")
    return comps


def is_s3(uri: str) -> bool:
    return str(uri).startswith(S3_SCHEME)


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b")``."""
    if not is_s3(uri):
        raise ValueError(f"{uri}: not an s3:// URI")
    rest = uri[len(S3_SCHEME):].strip("/")
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise ValueError(f"{uri}: no bucket in the URI")
    if any(c in (".", "..") for c in key.split("/")):
        raise UnsafePathError(f"{uri}: '.' / '..' components are not allowed in s3:// URIs")
    return bucket, key


def s3_endpoint() -> tuple[str | None, str]:
    """``(host[:port] or None, scheme)`` from ``AFOV_S3_ENDPOINT`` / ``AWS_ENDPOINT_URL``."""
    raw = os.environ.get("AFOV_S3_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL")
    if not raw:
        return None, "https"
    raw = raw.strip().rstrip("/")
    if "://" in raw:
        scheme, _, host = raw.partition("://")
        return host, scheme
    return raw, "https"


def _region() -> str:
    return os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1"


def _s3_settings() -> tuple:
    host, scheme = s3_endpoint()
    return (
        host,
        scheme,
        _region(),
        os.environ.get("AWS_ACCESS_KEY_ID"),
        os.environ.get("AWS_SECRET_ACCESS_KEY"),
        os.environ.get("AWS_SESSION_TOKEN"),
    )


@functools.lru_cache(maxsize=8)
def _s3_filesystem(settings: tuple) -> "pyarrow.fs.S3FileSystem":
    import pyarrow.fs as pafs

    host, scheme, region, key, secret, token = settings
    kwargs: dict = {"region": region, "scheme": scheme}
    if host:
        kwargs["endpoint_override"] = host
    if key and secret:
        kwargs.update(access_key=key, secret_key=secret)
        if token:
            kwargs["session_token"] = token
    return pafs.S3FileSystem(**kwargs)


def s3_filesystem() -> "pyarrow.fs.S3FileSystem":
    """The S3 filesystem configured from the current environment (cached per setting)."""
    return _s3_filesystem(_s3_settings())


def resolve(uri: str) -> tuple["pyarrow.fs.FileSystem", str]:
    """URI -> ``(filesystem, path inside it)``.

    ``s3://bucket/key`` -> (S3FileSystem, ``"bucket/key"``); ``file:///x`` or a plain path ->
    (LocalFileSystem, absolute path).
    """
    import pyarrow.fs as pafs

    uri = str(uri)
    if is_s3(uri):
        bucket, key = split_s3(uri)
        return s3_filesystem(), f"{bucket}/{key}" if key else bucket
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))


def join(uri: str, *parts: str) -> str:
    """Join relative path parts onto a URI with ``/`` (keeps the ``s3://`` form for S3).

    Parts never leave ``uri``: ``..`` / ``.`` components raise UnsafePathError, and leading slashes
    are dropped (``join("s3://b/p", "/x")`` is ``s3://b/p/x``)."""
    uri = str(uri)
    comps = [c for p in parts for c in _check_relative(p)]
    if is_s3(uri):
        return "/".join([uri.rstrip("/")] + comps)
    return os.path.join(uri, *comps)


def parent(uri: str) -> str:
    uri = str(uri).rstrip("/")
    if is_s3(uri):
        head, _, _ = uri.rpartition("/")
        return head if len(head) > len(S3_SCHEME) else uri
    return os.path.dirname(os.path.abspath(uri))


def basename(uri: str) -> str:
    return str(uri).rstrip("/").rpartition("/")[2]


def exists(uri: str) -> bool:
    import pyarrow.fs as pafs

    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_file(uri: str) -> bool:
    import pyarrow.fs as pafs

    fs, path = resolve(uri)
    return fs.get_file_info(path).type == pafs.FileType.File


def file_size(uri: str) -> int:
    fs, path = resolve(uri)
    return int(fs.get_file_info(path).size)


def listdir(uri: str, kind: str | None = None) -> list[str]:
    """Sorted names (not paths) of the direct children of a folder; ``[]`` if it does not exist.
    ``kind="file"`` / ``"dir"`` keeps only files / sub-folders (on S3: objects / common prefixes)."""
    import pyarrow.fs as pafs

    if kind not in (None, "file", "dir"):
        raise ValueError(f"listdir: kind must be None, 'file' or 'dir', got {kind!r}")
    fs, path = resolve(uri)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True, recursive=False))
    want = {None: None, "file": pafs.FileType.File, "dir": pafs.FileType.Directory}[kind]
    return sorted(basename(i.path) for i in infos if want is None or i.type == want)


def makedirs(uri: str) -> None:
    """Create a local folder (and parents). No-op on S3, where folders are implicit."""
    if is_s3(uri):
        return
    fs, path = resolve(uri)
    fs.create_dir(path, recursive=True)


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    with fs.open_input_stream(path) as f:
        return f.read()


def read_head(uri: str, nbytes: int) -> bytes:
    """The first ``nbytes`` bytes of a file (fewer if it is shorter): one ranged read on S3, e.g. for an
    image header."""
    fs, path = resolve(uri)
    with fs.open_input_file(path) as f:
        return f.read(nbytes)


def write_bytes(uri: str, data: bytes) -> None:
    """Plain (non-atomic) write. Use ``afov_ray.storage.atomic.atomic_write_bytes`` for outputs."""
    fs, path = resolve(uri)
    if not is_s3(uri):
        fs.create_dir(os.path.dirname(path), recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(data)


def delete(uri: str, missing_ok: bool = True) -> None:
    """Delete one file / object. On S3 through boto3: pyarrow's delete_file leaves a ``dir/``
    marker object behind when it removes the last object of a "folder"."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        client = boto3_client()
        if not missing_ok:
            client.head_object(Bucket=bucket, Key=key)  # raises if absent
        client.delete_object(Bucket=bucket, Key=key)
        return
    fs, path = resolve(uri)
    try:
        fs.delete_file(path)
    except FileNotFoundError:
        if not missing_ok:
            raise


def boto3_client():
    """A boto3 S3 client with the same endpoint / credentials / region as ``resolve``."""
    import boto3

    host, scheme, region, key, secret, token = _s3_settings()
    kwargs: dict = {"region_name": region}
    if host:
        kwargs["endpoint_url"] = f"{scheme}://{host}"
    if key and secret:
        kwargs.update(aws_access_key_id=key, aws_secret_access_key=secret)
        if token:
            kwargs["aws_session_token"] = token
    return boto3.client("s3", **kwargs)
