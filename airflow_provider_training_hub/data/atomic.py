"""Writing a file so that readers see the old one or the whole new one, never half of it."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def umask() -> int:
    """The process's umask (reading it means setting it: set it straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


class AtomicWriter:
    """Bytes go to a hidden temporary file beside ``path``, renamed over it only on a clean exit
    (not after an exception or ``discard()``)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        # mkstemp's 0600 would keep the file from the pods' user when the worker's uid wrote it.
        os.chmod(fd, 0o666 & ~umask())
        self.file = os.fdopen(fd, "wb")
        self.write = self.file.write
        self.discarded = False

    def discard(self) -> None:
        self.discarded = True

    def __enter__(self) -> AtomicWriter:
        return self

    def __exit__(self, exc_type, *_) -> None:
        self.file.close()
        if exc_type is None and not self.discarded:
            os.replace(self.tmp, self.path)
        else:
            Path(self.tmp).unlink(missing_ok=True)
