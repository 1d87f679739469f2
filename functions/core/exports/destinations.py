"""Where exports go: a local folder, or a bucket (``s3://bucket/prefix``) through fsspec.

Every file is written under a temporary name first, in ``_incomplete/<run id>/`` beneath
the destination, and renamed into place only once the run has committed its watermark:

- a local folder renames with ``os.replace`` (atomic on one filesystem) after ``fsync``;
- a bucket copies the object to its final key and deletes the temporary one (an object
  appears whole or not at all; S3 has no rename).

Readers that take ``<destination>/*.parquet`` (or ``*.jsonl``, ``*.csv``) never see a
temporary file: those end in ``.partial`` and live one folder down.

Bucket credentials and endpoints come from the usual places for the library (for S3:
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL`` or the AWS config
files), or from ``storage_options`` passed to :func:`open_destination`; never from the URL
(:func:`check_destination`), which is stored with the series' watermark, written in each
manifest, logged, and kept by Prefect with the flow run's parameters.

What an export writes holds every tenant's conversations: in a local folder, its files
(temporary ones included) are created readable and writable by their owner only (0600),
and the folders it creates (the destination, ``_incomplete/``) accessible to them only
(0700). An existing folder keeps its mode.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from functions.core import url_secrets
from functions.core.errors import InvalidInputError

if TYPE_CHECKING:
    import uuid
    from collections.abc import Callable

INCOMPLETE = "_incomplete"
PARTIAL_SUFFIX = ".partial"
FILE_MODE = 0o600
FOLDER_MODE = 0o700


class Destination:
    """A place files are written to under temporary names, then published atomically.

    Paths given to and returned by its methods are relative to the destination.
    """

    url: str

    def temp_path(self, run_id: uuid.UUID, name: str) -> str:
        return f"{INCOMPLETE}/{run_id}/{name}{PARTIAL_SUFFIX}"

    def run_folder(self, run_id: uuid.UUID) -> str:
        return f"{INCOMPLETE}/{run_id}"

    def open(self, path: str) -> tuple[BinaryIO, Callable[[BinaryIO], None] | None]:
        """A new file for writing, and what to do with it before it is closed."""
        raise NotImplementedError

    def publish(self, temp: str, final: str) -> bool:
        """Move ``temp`` to ``final``; False when ``temp`` is gone (already published)."""
        raise NotImplementedError

    def exists(self, path: str) -> bool:
        raise NotImplementedError

    def remove(self, path: str) -> None:
        """Remove a file or a folder and everything in it; nothing if it is not there."""
        raise NotImplementedError

    def list(self) -> list[str]:
        """Every file, recursively, relative to the destination (for tests and checks)."""
        raise NotImplementedError


def _fsync(file: BinaryIO) -> None:
    os.fsync(file.fileno())


def _make_folders(folder: Path) -> None:
    """``folder`` and any missing parent, each created 0700 (``mkdir(parents=True)`` gives
    the parents the default mode)."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for created in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another run made it meanwhile
            created.mkdir(mode=FOLDER_MODE)


class LocalDestination(Destination):
    """A folder on this machine (created if missing)."""

    def __init__(self, root: Path) -> None:
        self.root = root.expanduser().resolve()
        self.url = str(self.root)

    def _path(self, path: str) -> Path:
        return self.root / path

    def open(self, path: str) -> tuple[BinaryIO, Callable[[BinaryIO], None] | None]:
        target = self._path(path)
        _make_folders(target.parent)
        # O_EXCL: a temporary name is never shared; another run's file is never truncated.
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        return os.fdopen(fd, "wb"), _fsync

    def publish(self, temp: str, final: str) -> bool:
        source, target = self._path(temp), self._path(final)
        if not source.exists():
            return False
        _make_folders(target.parent)
        source.replace(target)  # the file keeps its mode (0600)
        # The rename itself must survive a crash, not only the file's bytes.
        fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return True

    def exists(self, path: str) -> bool:
        return self._path(path).exists()

    def remove(self, path: str) -> None:
        target = self._path(path)
        if target.is_dir():
            shutil.rmtree(target, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                target.unlink()
        # Leave no empty _incomplete/ behind once the last run folder is gone.
        incomplete = self.root / INCOMPLETE
        with contextlib.suppress(OSError):
            incomplete.rmdir()

    def list(self) -> list[str]:
        if not self.root.exists():
            return []
        return sorted(
            str(path.relative_to(self.root)) for path in self.root.rglob("*") if path.is_file()
        )


class FsspecDestination(Destination):
    """A bucket or any other fsspec filesystem (``s3://bucket/prefix``)."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        import fsspec

        self.url = url.rstrip("/")
        fs, root = fsspec.core.url_to_fs(self.url, **(storage_options or {}))
        self.fs: Any = fs
        self.root: str = root.rstrip("/")

    def _path(self, path: str) -> str:
        return f"{self.root}/{path}"

    def open(self, path: str) -> tuple[BinaryIO, Callable[[BinaryIO], None] | None]:
        file: BinaryIO = self.fs.open(self._path(path), "wb")
        return file, None

    def publish(self, temp: str, final: str) -> bool:
        source = self._path(temp)
        if not self.fs.exists(source):
            return False
        # Copy, then delete: the final object appears whole when the copy completes. A run
        # killed in between leaves both; the next one copies again (same bytes) and deletes.
        self.fs.copy(source, self._path(final))
        self.fs.rm(source)
        return True

    def exists(self, path: str) -> bool:
        return bool(self.fs.exists(self._path(path)))

    def remove(self, path: str) -> None:
        target = self._path(path)
        if self.fs.exists(target):
            self.fs.rm(target, recursive=True)

    def list(self) -> list[str]:
        self.fs.invalidate_cache()
        if not self.fs.exists(self.root):
            return []
        prefix = self.root + "/"
        return sorted(
            str(path).removeprefix(prefix)
            for path in self.fs.find(self.root)
            if str(path).startswith(prefix)
        )


def check_destination(url: str) -> None:
    """Refuse a destination URL that carries a secret (credentials, a query or a fragment),
    without repeating it (:mod:`functions.core.url_secrets`).

    A folder path is not a URL: ``?`` and ``#`` are characters of its name.
    """
    if "://" not in url:
        return
    shown = url_secrets.shown(url)
    if url_secrets.has_credentials(url):
        raise InvalidInputError(
            f"invalid destination {shown!r}: credentials in the URL are not supported; give "
            "them in the environment (for S3: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY) "
            "or a Prefect block",
            details={"field": "destination"},
        )
    if url_secrets.has_query(url):
        raise InvalidInputError(
            f"invalid destination {shown!r}: a query or fragment in the URL is not supported "
            "(it may carry a token); give the bucket and prefix only",
            details={"field": "destination"},
        )


def open_destination(url: str, storage_options: dict[str, Any] | None = None) -> Destination:
    """The destination a folder path, ``file://`` URL or bucket URL names (checked with
    :func:`check_destination`)."""
    check_destination(url)
    if url.startswith("file://"):
        return LocalDestination(Path(url.removeprefix("file://")))
    if "://" in url:
        return FsspecDestination(url, storage_options)
    return LocalDestination(Path(url))
