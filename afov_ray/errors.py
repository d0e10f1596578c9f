"""Errors that name the bad item, so a job can report it and go on with the rest."""

from __future__ import annotations


class AfovError(Exception):
    """Base class of afov_ray errors."""


class DataError(AfovError):
    """Bad input data. ``item`` names the file, sample, camera or field at fault."""

    def __init__(self, item: str, message: str):
        self.item = item
        self.message = message
        super().__init__(item, message)   # args = (item, message): pickles and copies across Ray processes

    def __str__(self) -> str:
        return f"{self.item}: {self.message}"


class UnsafePathError(AfovError, ValueError):
    """A path built from data or user input would leave its folder (``..``, absolute, ``s3://b/a/../x``)."""


class EngineNotInstalled(AfovError, ImportError):
    """A requested sparse-conv engine is not importable; the message says what to install."""
