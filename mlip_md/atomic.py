"""Files written atomically: into a partial file beside the destination, then renamed over it.

A crash never leaves a half-written model, checkpoint or data file under its
real name. The partial is removed if writing fails (KeyboardInterrupt
included); partials of processes on this host that died (SIGKILL, power
loss) are removed by the next atomic write into the same directory. The
file gets the mode of any new file (0666 & ~umask).
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import socket
from typing import Callable

# A partial file's name: .<destination>.<host>.<pid>.<random>.partial, beside the destination.
_PARTIAL = re.compile(r"^\..+\.(?P<host>[^.]+)\.(?P<pid>\d+)\.[0-9a-f]+\.partial$")


def host_name() -> str:
    """This host's name as it appears in partial file names (no dots)."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname()) or "host"


def write_atomically(path: str | os.PathLike, write: Callable[[str], None]) -> str:
    """Calls ``write(partial_path)`` and renames the partial file to ``path``; returns the absolute path."""
    path = os.path.abspath(os.fspath(path))
    directory, name = os.path.split(path)
    os.makedirs(directory, exist_ok=True)
    _remove_stale_partials(directory)
    partial = os.path.join(directory, f".{name}.{host_name()}.{os.getpid()}.{secrets.token_hex(4)}.partial")
    try:
        # os.open applies the umask, as for any new file (mkstemp would make it 0600).
        os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        write(partial)
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return path


def _remove_stale_partials(directory: str) -> None:
    """Removes partial files left in ``directory`` by dead processes of this host."""
    host = host_name()
    for entry in os.listdir(directory):
        match = _PARTIAL.match(entry)
        if match is None or match["host"] != host or _process_alive(int(match["pid"])):
            continue
        try:
            os.remove(os.path.join(directory, entry))
        except FileNotFoundError:  # another writer removed it first
            pass


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as error:
        return error.errno == errno.EPERM  # exists, owned by another user
    return True
