"""Downloading dataset files: a timeout, a progress bar, a checksum, and no half-written files.

Shared by the built-in dataset plugins.
"""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.error
import urllib.request
from pathlib import Path

from exptorch import ExptError

log = logging.getLogger("exptorch.download")

TIMEOUT_SECONDS = 30


def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class DownloadFailed(Exception):
    """The file could not be fetched; the message says why in a few words."""


def download(url: str, dest: Path, md5: str | None = None) -> Path:
    """Fetch ``url`` into ``dest`` with a progress bar; verify ``md5``; write atomically.

    Raises :class:`DownloadFailed` when there is no network, the server fails, the
    file arrives shorter than announced, or the checksum does not match (the bad file
    is removed).
    """
    from tqdm import tqdm

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part-{os.getpid()}")
    request = urllib.request.Request(url, headers={"User-Agent": "exptorch"})
    try:
        # A new opener reads the proxy variables now; urlopen's is built once per process.
        opener = urllib.request.build_opener()
        with opener.open(request, timeout=TIMEOUT_SECONDS) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with (
                open(tmp, "wb") as out,
                tqdm(
                    total=total,
                    unit="B",
                    unit_scale=True,
                    desc=dest.name,
                    disable=None,
                    leave=False,
                ) as bar,
            ):
                received = 0
                while block := response.read(1 << 16):
                    out.write(block)
                    bar.update(len(block))
                    received += len(block)
            if total is not None and received != total:
                # the server closed the connection early: http.client returns the bytes it
                # got without an error, and the half file would be moved into place
                raise DownloadFailed(
                    f"{url} arrived incomplete ({received} of {total} bytes); try again"
                )
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        tmp.unlink(missing_ok=True)
        reason = getattr(exc, "reason", exc)
        raise DownloadFailed(f"{url} could not be downloaded: {reason}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if md5 is not None and md5sum(tmp) != md5:
        tmp.unlink(missing_ok=True)
        raise DownloadFailed(f"{url} arrived with a wrong checksum; try again")
    os.replace(tmp, dest)
    return dest


def missing_data_error(what: str, folder: Path, reason: str, how: str) -> ExptError:
    """The one sentence a user sees when a dataset is neither on disk nor downloadable."""
    return ExptError(f"{what} is not in {folder} and {reason}; {how}")
