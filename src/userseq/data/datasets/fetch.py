"""Getting a usable copy: the local one, or a download verified by checksum and extracted."""

from __future__ import annotations

import hashlib
import http.client
import sys
import urllib.error
import urllib.request
import warnings
import zipfile
from pathlib import Path
from typing import Any

from userseq.core.errors import DataError
from userseq.data.datasets.base import DatasetFiles, DatasetSpec, Download
from userseq.data.datasets.registry import Found, cache_dir, find_in, get_spec, locate

DOWNLOAD_TIMEOUT_S = 60.0
_CHUNK = 1 << 20


def expected_files(spec: DatasetSpec) -> str:
    """The layouts of a dataset as file names, for messages ("'ml-1m.zip' or 'ml-1m/...'")."""
    return " or ".join(f"'{layout.describe()}'" for layout in spec.layouts)


def fetch_dataset(name: str, dest: Path | None = None) -> Path:
    """Return a usable local copy of `name`, downloading it when none exists.

    Without `dest`, the search roots (see `search_roots`) are tried first and downloads go to
    the cache. With `dest`, only `dest` is looked at and downloads go there. Downloads are
    verified against the published checksum (DataError on mismatch) and zips are extracted;
    the returned path is the directory holding the files (or a zip found locally).
    """
    return fetch(get_spec(name), dest).path


def open_files(name: str, directory: Path | None = None) -> DatasetFiles:
    """The files of a dataset: those in `directory` when given, else a (fetched) local copy."""
    spec = get_spec(name)
    if directory is None:
        return fetch(spec, None).files
    found = find_in(spec, Path(directory).expanduser())
    if found is None:
        raise DataError(f"{directory}: not a copy of {name} (expected {expected_files(spec)} "
                        "under it).")
    return found.files


def fetch(spec: DatasetSpec, dest: Path | None) -> Found:
    """The local copy of `spec` (see `fetch_dataset`), downloading it when there is none."""
    if dest is None:
        found = locate(spec)
        target = cache_dir(spec.name)
    else:
        target = Path(dest).expanduser()
        found = find_in(spec, target) if target.is_dir() else None
    if found is not None:
        return found
    if not spec.downloads:
        raise DataError(
            f"{spec.name}: no local copy found and there is no download for it. Get its files from "
            f"{spec.homepage or 'its publisher'} and place them in a directory named by "
            f"$USERSEQ_DATA, as {expected_files(spec)} under that directory."
        )
    for d in spec.downloads:
        path = download_file(spec, d, target)
        if d.extract:
            extract(path, target)
    found = find_in(spec, target)
    if found is None:
        raise DataError(
            f"{spec.name}: downloaded into {target} but found none of {expected_files(spec)} "
            "there; the publisher's layout may have changed."
        )
    return found


# ---------------------------------------------------------------------- download
def download_file(spec: DatasetSpec, d: Download, target: Path,
                  timeout: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """Stream `d.url` to `target/d.filename`, checking size and checksums; a bad file is removed."""
    target.mkdir(parents=True, exist_ok=True)
    out = target / d.filename
    part = out.with_name(out.name + ".part")
    try:
        sha, md5, size = _stream(spec, d, part, timeout)
    except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as e:
        part.unlink(missing_ok=True)
        reason = getattr(e, "reason", None) or e
        raise _unreachable(spec, d, str(reason)) from None
    except OSError as e:  # local disk problems (permissions, full disk) while writing
        part.unlink(missing_ok=True)
        raise DataError(f"{spec.name}: could not write {part}: {e}. Set $USERSEQ_CACHE to a "
                        "writable directory.") from None
    _verify(spec, d, part, sha, md5, size)
    part.replace(out)
    return out


def _stream(spec: DatasetSpec, d: Download, part: Path, timeout: float) -> tuple[str, str, int]:
    """Write the download to `part`; returns its sha256, md5 and size."""
    sha, md5, size = hashlib.sha256(), hashlib.md5(usedforsecurity=False), 0
    request = urllib.request.Request(d.url, headers={"User-Agent": "userseq"})
    with urllib.request.urlopen(request, timeout=timeout) as resp, part.open("wb") as fh:
        total = int(resp.headers.get("Content-Length") or 0) or d.size
        bar = _progress(total, f"{spec.name}: {d.filename}")
        try:
            if bar is not None:
                bar.start()
            while chunk := resp.read(_CHUNK):
                fh.write(chunk)
                sha.update(chunk)
                md5.update(chunk)
                size += len(chunk)
                if bar is not None:
                    bar.advance(bar.task_ids[0], len(chunk))
        finally:
            if bar is not None:
                bar.stop()
    return sha.hexdigest(), md5.hexdigest(), size


def _verify(spec: DatasetSpec, d: Download, part: Path, sha: str, md5: str, size: int) -> None:
    """Check size and checksums; a mismatch deletes the file, no checksum warns UNVERIFIED."""
    problems = []
    if d.size is not None and size != d.size:
        problems.append(f"size {size:,} bytes, expected {d.size:,}")
    if d.sha256 and sha != d.sha256:
        problems.append(f"sha256 {sha}, expected {d.sha256}")
    if d.md5 and md5 != d.md5:
        problems.append(f"md5 {md5}, expected {d.md5}")
    if problems:
        part.unlink(missing_ok=True)
        raise DataError(
            f"{spec.name}: checksum mismatch for {d.url}: {'; '.join(problems)}. The download is "
            "corrupt or the publisher changed the file; it was deleted. Retry, or place a verified "
            f"copy in $USERSEQ_DATA as {expected_files(spec)}."
        )
    if d.checksum is None:
        warnings.warn(
            f"{spec.name}: {d.filename} is UNVERIFIED: no published checksum is known for {d.url} "
            f"(sha256 of what was downloaded: {sha}).",
            stacklevel=4,
        )


def _unreachable(spec: DatasetSpec, d: Download, reason: str) -> DataError:
    return DataError(
        f"{spec.name}: this machine could not reach {d.url} ({reason}). Download "
        f"{', '.join(x.filename for x in spec.downloads)} elsewhere and place the files in a "
        f"directory named by $USERSEQ_DATA, as {expected_files(spec)} under that directory "
        "(files from this project's shared/data layout work too)."
    )


def _progress(total: int | None, label: str) -> Any:
    """A rich progress bar on stderr when rich is installed and stderr is a terminal, else None."""
    if not sys.stderr.isatty():
        return None
    try:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TransferSpeedColumn,
        )
    except ImportError:  # pragma: no cover - rich is a dependency, but stay usable without it
        return None
    bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                   TransferSpeedColumn(), transient=True)
    bar.add_task(label, total=total)
    return bar


def extract(archive: Path, target: Path) -> None:
    """Unzip `archive` into `target`, refusing members that would land outside it."""
    try:
        with zipfile.ZipFile(archive) as zf:
            root = target.resolve()
            for member in zf.namelist():
                if not (target / member).resolve().is_relative_to(root):
                    raise DataError(f"{archive}: unsafe path {member!r} in archive; not "
                                    "extracting.")
            zf.extractall(target)
    except zipfile.BadZipFile as e:
        raise DataError(f"{archive}: not a valid zip archive ({e}). Delete it and download it "
                        "again.") from None
