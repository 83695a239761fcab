"""``rsis download``: resumable, checksummed downloads of the datasets, with mirrors.

A download goes to ``<out>.part``; an interrupted one continues from its size with an HTTP
Range request; the file is renamed to ``<out>`` only once complete and, when a SHA-256 is
given, verified. Offline, every URL fails fast and the error says where to put the file.
"""

from __future__ import annotations

import argparse
import logging
import os
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from rsis.cli import add_command
from rsis.errors import UserError
from rsis.io import sha256_of
from rsis.progress import progress_bar

log = logging.getLogger(__name__)

CHUNK = 1 << 20


def _fetch(url: str, part: Path, timeout: float) -> None:
    """Append the rest of ``url`` to ``part`` (starting at its current size)."""
    start = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        resumed = start > 0 and response.status == 206
        if start and not resumed:
            log.info("%s does not support resuming: starting over", url)
            start = 0
        length = response.headers.get("Content-Length")
        total = start + int(length) if length is not None else None
        with (
            part.open("ab" if resumed else "wb") as out,
            progress_bar(
                total=total, initial=start, unit="B", unit_scale=True, desc=part.stem
            ) as bar,
        ):
            for block in iter(lambda: response.read(CHUNK), b""):
                out.write(block)
                bar.update(len(block))


def download(urls: list[str], out: Path, sha256: str | None = None, timeout: float = 30) -> Path:
    """Download the first reachable of ``urls`` to ``out``, resuming and verifying.

    Args:
        urls: the primary URL, then mirrors, tried in order.
        out: destination file.
        sha256: expected hex digest; without it the computed digest is logged to pin.
        timeout: seconds to wait for a connection or a read.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(out.name + ".part")
    errors = []
    for url in urls:
        try:
            _fetch(url, part, timeout)
            break
        except (urllib.error.URLError, OSError) as error:
            errors.append(f"{url}: {getattr(error, 'reason', error)}")
            log.warning("download failed: %s", errors[-1])
    else:
        raise UserError(
            f"could not download {out.name} ({'; '.join(errors)}). Without internet access, "
            f"fetch it elsewhere and place it at {out} (or its extracted contents where "
            "README.md, 'Reproducing the paper', says); a partial download is kept as "
            f"{part} and resumed next time"
        )
    digest = sha256_of(part)
    if sha256 and digest != sha256.lower():
        part.unlink()
        raise UserError(
            f"{out.name}: SHA-256 {digest} does not match the expected {sha256}; the corrupt "
            "download was deleted, try again or another mirror"
        )
    if not sha256:
        log.warning(
            "%s has SHA-256 %s: pin it in config.yaml to verify future downloads", out, digest
        )
    os.replace(part, out)
    return out


def extract(archive: Path, destination: Path) -> None:
    """Unzip ``archive`` into ``destination`` (members may not escape it)."""
    destination.mkdir(parents=True, exist_ok=True)
    root = destination.resolve()
    with zipfile.ZipFile(archive) as zf:
        for member in zf.namelist():
            if not (destination / member).resolve().is_relative_to(root):
                raise UserError(f"{archive}: member {member!r} would be written outside {root}")
        for member in progress_bar(zf.infolist(), desc=f"extract {archive.name}", unit="file"):
            zf.extract(member, destination)


def _download_command(args: argparse.Namespace) -> None:
    archive = download([args.url, *args.mirror], Path(args.out), args.sha256, args.timeout)
    if args.extract_to:
        extract(archive, Path(args.extract_to))
        if args.remove_archive:
            archive.unlink()


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``rsis download``."""
    p = add_command(subparsers, "download")
    p.add_argument("--url", required=True, help="primary URL")
    p.add_argument("--mirror", action="append", default=[], help="fallback URL (repeatable)")
    p.add_argument("--out", required=True, help="destination file")
    p.add_argument("--sha256", help="expected SHA-256 (hex); verified when given")
    p.add_argument("--timeout", type=float, default=30, help="connect/read timeout, seconds")
    p.add_argument("--extract-to", help="unzip the download into this folder")
    p.add_argument("--remove-archive", action="store_true", help="delete the zip after extracting")
    p.set_defaults(func=_download_command)
