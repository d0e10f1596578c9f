"""Logging and progress bars, one way for the whole package.

- Modules log through ``logging.getLogger(__name__)`` (``get_logger``); nothing is configured at import.
  Jobs call ``setup_logging()`` once: one line per record on stderr, ``AFOV_LOG_LEVEL`` (default INFO)
  sets the level for ``afov_ray.*``.
- ``progress(iterable, total=..., desc=...)`` is the progress bar of long loops (tqdm on stderr,
  disabled with ``AFOV_PROGRESS=0``). Inside Ray workers use ``worker_progress``: Ray's own
  ``tqdm_ray`` draws the bar on the driver's console instead of interleaving lines from workers.
- ``redact_uri`` strips credentials from a URI before it is logged, printed or stored as a param.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from typing import Any, Iterable

ROOT = "afov_ray"
_FORMAT = "%(asctime)s %(levelname).1s %(name)s: %(message)s"


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name)


def setup_logging(level: str | int | None = None) -> None:
    """Configure the ``afov_ray`` logger once: a stderr handler, level from ``AFOV_LOG_LEVEL``."""
    logger = logging.getLogger(ROOT)
    lvl = level or os.environ.get("AFOV_LOG_LEVEL", "INFO")
    logger.setLevel(lvl if isinstance(lvl, int) else str(lvl).upper())
    if not any(getattr(h, "_afov", False) for h in logger.handlers):
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter(_FORMAT, datefmt="%H:%M:%S"))
        h._afov = True  # type: ignore[attr-defined]
        logger.addHandler(h)
        logger.propagate = False


def progress_enabled(enabled: bool | None = None) -> bool:
    """``AFOV_PROGRESS=0`` turns every bar off (a config's ``progress: true`` included)."""
    if os.environ.get("AFOV_PROGRESS", "1") in ("0", "false", "no"):
        return False
    return True if enabled is None else enabled


def progress(iterable: Iterable | None = None, total: int | None = None, desc: str = "", unit: str = "it",
             enabled: bool | None = None, **kwargs: Any):
    """A tqdm progress bar on stderr (a no-op bar when disabled)."""
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not progress_enabled(enabled),
                dynamic_ncols=True, file=sys.stderr, **kwargs)


def worker_progress(total: int, desc: str, enabled: bool = True, **kwargs: Any):
    """A progress bar for code running in a Ray worker (drawn on the driver by ``tqdm_ray``)."""
    if not progress_enabled(enabled):
        return progress(total=total, desc=desc, enabled=False)
    try:
        from ray.experimental.tqdm_ray import tqdm as ray_tqdm

        return ray_tqdm(total=total, desc=desc, **kwargs)
    except Exception:  # noqa: BLE001 - no Ray runtime: a plain bar
        return progress(total=total, desc=desc, **kwargs)


_CRED_RE = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<cred>[^/@\s]+)@")
_QUERY_SECRET_RE = re.compile(r"(?i)([?&](?:access_key|secret_key|session_token|password|token|sig|signature|"
                              r"x-amz-signature|x-amz-credential|x-amz-security-token)=)[^&\s]+")


def redact_uri(uri: str | None) -> str | None:
    """``http://user:pass@host/x?token=abc`` -> ``http://***@host/x?token=***`` (None stays None)."""
    if uri is None:
        return None
    s = _CRED_RE.sub(lambda m: m.group("scheme") + "***@", str(uri))
    return _QUERY_SECRET_RE.sub(lambda m: m.group(1) + "***", s)


def format_duration(seconds: float) -> str:
    """``75.3`` -> ``"1m15s"``; ``3720`` -> ``"1h02m"``."""
    s = int(round(max(seconds, 0.0)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"
