"""Writing a version's files into a folder: hashed while written, verified, renamed into place."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from ._perms import new_folder
from .errors import IntegrityError, RegistryError
from .tables import AdapterVersion
from .validate import check_file_name

ChunkSource = Callable[[str], Iterator[bytes]]


def checkout_ok(v: AdapterVersion, folder: Path) -> bool:
    """Cheap check of a cached checkout: every file present with its recorded size."""
    try:
        return all((folder / f.path).stat().st_size == f.size for f in v.files)
    except OSError:
        return False


def materialize(
    v: AdapterVersion,
    dest: Path,
    chunks: ChunkSource,
    *,
    progress: Callable[[str, int, int], None] | None = None,
    check: Callable[[Path], None] | None = None,
) -> Path:
    """Write ``v``'s files to ``dest`` (which must be absent or empty) via a temp folder.

    Every file is re-hashed as it is written and cut off once it passes its recorded size (a
    source cannot fill the disk); a mismatch raises IntegrityError and leaves ``dest``
    untouched, as does any error of ``check`` (run on the complete temp folder). Raises
    FileExistsError if ``dest`` appeared meanwhile. The rename makes the folder appear whole to
    other processes even if this one is killed; files are not fsynced (a pulled folder can be
    pulled again; see ``checkout_ok`` for the cached ones).
    """
    dest = Path(dest).absolute()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise RegistryError(
            f"cannot pull {v.ref} into {str(dest)!r}: it exists and is not an empty folder; "
            f"choose a new folder"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    new_folder(tmp)  # the umask's mode, not mkdtemp's 0700: other users' engines read it
    total = sum(f.size for f in v.files)
    done = 0
    try:
        for f in v.files:
            out_path = tmp / check_file_name(f.path)
            out_path.parent.mkdir(parents=True, exist_ok=True)
            h = hashlib.sha256()
            written = 0
            source = chunks(f.digest)
            try:
                with open(out_path, "wb") as out:
                    for block in source:
                        written += len(block)
                        if written > f.size:
                            raise IntegrityError(
                                f"{v.ref}: {f.path!r} should have {f.size} bytes but its source "
                                f"sent more; the stored blob is corrupted (run `adapters "
                                f"verify`) or the source is not to be trusted"
                            )
                        h.update(block)
                        out.write(block)
                        done += len(block)
                        if progress:
                            progress(f.path, done, total)
            finally:  # hang up on a source that would send more (a generator over a stream)
                close = getattr(source, "close", None)
                if close is not None:
                    close()
            actual = "sha256:" + h.hexdigest()
            if actual != f.digest:
                raise IntegrityError(
                    f"{v.ref}: {f.path!r} should hash to {f.digest} but the bytes read hash to "
                    f"{actual}; the stored blob is corrupted (run `adapters verify`) or the "
                    f"transfer failed"
                )
        if check is not None:
            check(tmp)
        if dest.is_dir():
            dest.rmdir()  # empty (checked above); rename cannot replace it portably
        try:
            os.rename(tmp, dest)
        except OSError as e:
            raise FileExistsError(str(dest)) from e
        return dest
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
