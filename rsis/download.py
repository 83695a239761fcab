"""``rsis download``: resumable, checksummed downloads of the datasets, with mirrors.

A download goes to ``<out>.part``; an interrupted one continues from its size with an HTTP
Range request; the file is renamed to ``<out>`` only once complete and, when a SHA-256 is
given, verified. Offline, every URL fails fast and the error says where to put the file.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from pathlib import Path

from rsis.cli import add_command, output_file
from rsis.errors import UserError
from rsis.io import (
    is_disk_full,
    missing_folders,
    require_writable_folder,
    sha256_of,
    undo_on_failure,
)
from rsis.progress import progress_bar

log = logging.getLogger(__name__)

CHUNK = 1 << 20
URL_SCHEMES = ("http", "https", "ftp", "file")


def url_argument(text: str) -> str:
    """argparse type: an http(s), ftp or file URL."""
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in URL_SCHEMES or not (parts.netloc or parts.scheme == "file"):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a URL: give an http://, https://, ftp:// or file:// address"
        )
    return text


def sha256_argument(text: str) -> str:
    """argparse type: a SHA-256 digest, 64 hexadecimal digits."""
    if not re.fullmatch(r"[0-9a-fA-F]{64}", text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a SHA-256 digest: give its 64 hexadecimal digits"
        )
    return text.lower()


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
    with undo_on_failure(missing_folders(out.parent)):
        out.parent.mkdir(parents=True, exist_ok=True)
        part = _fetch_first(urls, out, timeout)
        _verify(part, out, sha256)
        os.replace(part, out)
    return out


def _fetch_first(urls: list[str], out: Path, timeout: float) -> Path:
    """``<out>.part``, complete from the first of ``urls`` that answers."""
    part = out.with_name(out.name + ".part")
    errors = []
    for address in urls:
        try:
            _fetch(address, part, timeout)
            return part
        except (urllib.error.URLError, OSError) as error:
            errors.append(f"{address}: {getattr(error, 'reason', error)}")
            log.warning("download failed: %s", errors[-1])
    kept = f"a partial download is kept as {part} and resumed next time"
    raise UserError(
        f"could not download {out.name} ({'; '.join(errors)}). Without internet access, "
        f"fetch it elsewhere and place it at {out} (or its extracted contents where "
        f"README.md, 'Reproducing the paper', says){'; ' + kept if part.exists() else ''}"
    )


def _verify(part: Path, out: Path, sha256: str | None) -> None:
    """Check ``part`` against ``sha256`` (deleting it on a mismatch), or log its digest."""
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


def _require_inside(zf: zipfile.ZipFile, archive: Path, destination: Path) -> None:
    """Refuse an archive with a member that would be written outside ``destination``."""
    root = destination.resolve()
    for member in zf.namelist():
        if not (destination / member).resolve().is_relative_to(root):
            raise UserError(f"{archive}: member {member!r} would be written outside {root}")


class UnreadableArchive(UserError):
    """The downloaded file is no zip archive ``extract`` can read: of no use kept."""


def extract(archive: Path, destination: Path) -> None:
    """Unzip ``archive`` into ``destination`` (members may not escape it). On failure the
    entries it added at the top of ``destination`` (and ``destination``, if it created it)
    are removed."""
    try:
        with zipfile.ZipFile(archive) as zf:
            _require_inside(zf, archive, destination)
            tops = {destination / Path(member).parts[0] for member in zf.namelist()}
            with undo_on_failure(missing_folders(destination)) as written:
                written += sorted(top for top in tops if not top.exists())
                destination.mkdir(parents=True, exist_ok=True)
                bar = progress_bar(zf.infolist(), desc=f"extract {archive.name}", unit="file")
                for member in bar:
                    zf.extract(member, destination)
    except (zipfile.BadZipFile, zlib.error, EOFError) as error:
        raise UnreadableArchive(
            f"{archive} is not a readable zip archive ({error}), so it cannot be extracted: "
            "check the URL, or drop --extract-to to keep the file as it is"
        ) from error
    except OSError as error:
        if not is_disk_full(error, archive.parent):
            raise
        raise UserError(
            f"disk full while extracting {archive} into {destination}: free space there and "
            f"rerun; the verified download is kept at {archive}"
        ) from error


def _require_arguments(args: argparse.Namespace) -> None:
    """Refuse, before downloading, a timeout that is no number of seconds, an ``--out`` that
    is a folder and an unwritable output path."""
    if not 0 < args.timeout < math.inf:
        raise UserError(f"--timeout {args.timeout}: give a number of seconds above 0")
    if args.out.is_dir():
        raise UserError(f"--out {args.out} is a folder: give the path of the file to download")
    require_writable_folder(args.out.parent, f"--out {args.out}")
    if args.extract_to:
        require_writable_folder(args.extract_to, f"--extract-to {args.extract_to}")


def _download_command(args: argparse.Namespace) -> None:
    _require_arguments(args)
    with undo_on_failure(missing_folders(args.out.parent)) as written:
        archive = download([args.url, *args.mirror], args.out, args.sha256, args.timeout)
        if args.extract_to:
            try:
                extract(archive, args.extract_to)
            except UnreadableArchive as error:  # of no use kept; any other failure keeps it
                written.append(archive)
                raise UserError(f"{error}; the download {archive} was deleted") from error
    if args.extract_to and args.remove_archive:
        archive.unlink()


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``rsis download``."""
    p = add_command(subparsers, "download")
    p.add_argument("--url", type=url_argument, required=True, help="primary URL")
    p.add_argument(
        "--mirror", type=url_argument, action="append", default=[], help="fallback URL (repeatable)"
    )
    p.add_argument("--out", type=output_file, required=True, help="destination file")
    p.add_argument(
        "--sha256", type=sha256_argument, help="expected SHA-256 (hex); verified when given"
    )
    p.add_argument("--timeout", type=float, default=30, help="connect/read timeout, seconds")
    p.add_argument("--extract-to", type=Path, help="unzip the download into this folder")
    p.add_argument("--remove-archive", action="store_true", help="delete the zip after extracting")
    p.set_defaults(func=_download_command)
