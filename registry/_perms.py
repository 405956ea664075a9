"""What the registry writes gets the permissions the umask gives any new file or folder.

``tempfile.mkstemp`` and ``mkdtemp`` create ``0600`` / ``0700`` whatever the umask (right for
a temporary name in a shared folder); a blob or a checkout renamed into place from one would
stay readable by its owner alone, so an engine running as another user on shared storage
could not read it. Each such file or folder is given ``0666`` / ``0777`` less the umask.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

_lock = threading.Lock()


def current_umask() -> int:
    """The process's umask, read without changing it where Linux allows (``/proc``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _lock:  # elsewhere: set and restore (the only way POSIX offers)
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def file_mode() -> int:
    return 0o666 & ~current_umask()


def folder_mode() -> int:
    return 0o777 & ~current_umask()


def new_file(fd: int) -> None:
    """Give a file from ``mkstemp`` (open as ``fd``) the mode a plain ``open`` would."""
    os.fchmod(fd, file_mode())


def new_folder(path: Path) -> None:
    """Give a folder from ``mkdtemp`` the mode a plain ``mkdir`` would."""
    os.chmod(path, folder_mode())


__all__ = ["current_umask", "file_mode", "folder_mode", "new_file", "new_folder"]
