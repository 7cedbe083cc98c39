"""A file system that forgets what was not synced: power cuts on demand.

Mounted with FUSE (libfuse3 through mfusepy), it keeps every file in memory
twice: what programs see (every write, at once) and what a card would still
hold after the power went (what the last fsync/fdatasync of that file
covered). Writing ``cut`` to the control file ``/.powercut`` throws the
unsynced part away, file by file, as a power cut does; reading it gives the
figures (fsyncs, bytes synced) as JSON.

What it models and what not: file contents and sizes are lost back to the
last sync of that file. Names (create, rename, unlink, mkdir) are kept at
once, as if every directory were synced: the agent syncs the directory after
making a new buffer file, so this is the kinder side of the one thing not
modelled. The kernel keeps no cached copy (``direct_io``, zero attribute
timeouts), so after a cut every reader sees what the card holds.

Run as ``python -m tests.powercut.fs MOUNTPOINT``; it stays in the
foreground until unmounted (``fusermount3 -u MOUNTPOINT``).
"""

from __future__ import annotations

import errno
import json
import os
import stat
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import mfusepy as fuse

CONTROL = "/.powercut"


@dataclass
class Node:
    mode: int
    data: bytearray = field(default_factory=bytearray)  # what programs see
    synced: bytes = b""  # what survives a cut
    mtime: float = field(default_factory=time.time)

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)


class PowerCutFS(fuse.Operations):
    use_ns = False

    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {"/": Node(stat.S_IFDIR | 0o755)}
        self._guard = threading.RLock()
        self.fsyncs = 0
        self.synced_bytes = 0
        self.cuts = 0
        self.lost_bytes = 0
        self._control_reply = b""

    # -- the control file ------------------------------------------------------------------------
    def _figures(self) -> bytes:
        return json.dumps({"fsyncs": self.fsyncs, "synced_bytes": self.synced_bytes, "cuts": self.cuts,
                           "lost_bytes": self.lost_bytes}).encode()

    def cut(self) -> None:
        """The power goes: every file falls back to what its last sync covered."""
        with self._guard:
            self.cuts += 1
            for node in self.nodes.values():
                if not node.is_dir:
                    self.lost_bytes += sum(1 for a, b in zip(node.data, node.synced, strict=False) if a != b) + abs(
                        len(node.data) - len(node.synced))
                    node.data = bytearray(node.synced)

    # -- helpers ---------------------------------------------------------------------------------
    def _node(self, path: str) -> Node:
        node = self.nodes.get(path)
        if node is None:
            raise fuse.FuseOSError(errno.ENOENT)
        return node

    @staticmethod
    def _parent(path: str) -> str:
        return os.path.dirname(path) or "/"

    # -- metadata --------------------------------------------------------------------------------
    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        if path == CONTROL:
            return {"st_mode": stat.S_IFREG | 0o600, "st_nlink": 1, "st_size": 0}
        with self._guard:
            node = self._node(path)
            size = len(node.data)
            return {"st_mode": node.mode, "st_nlink": 2 if node.is_dir else 1, "st_size": size,
                    "st_mtime": node.mtime, "st_ctime": node.mtime, "st_atime": node.mtime,
                    "st_uid": os.getuid(), "st_gid": os.getgid(), "st_blocks": (size + 511) // 512}

    def readdir(self, path: str, fh: int) -> list[str]:
        with self._guard:
            prefix = path.rstrip("/") + "/"
            names = [p[len(prefix):] for p in self.nodes if p.startswith(prefix) and p != path
                     and "/" not in p[len(prefix):]]
        return [".", "..", *names]

    def mkdir(self, path: str, mode: int) -> int:
        with self._guard:
            if path in self.nodes:
                raise fuse.FuseOSError(errno.EEXIST)
            self._node(self._parent(path))
            self.nodes[path] = Node(stat.S_IFDIR | mode)
        return 0

    def rmdir(self, path: str) -> int:
        with self._guard:
            if any(p.startswith(path.rstrip("/") + "/") for p in self.nodes):
                raise fuse.FuseOSError(errno.ENOTEMPTY)
            self.nodes.pop(path, None)
        return 0

    def create(self, path: str, mode: int, fi: Any = None) -> int:
        with self._guard:
            self._node(self._parent(path))
            if path not in self.nodes:
                self.nodes[path] = Node(stat.S_IFREG | (mode & 0o7777))
        return 0

    def open(self, path: str, flags: int) -> int:
        if path != CONTROL:
            with self._guard:
                self._node(path)
        return 0

    def unlink(self, path: str) -> int:
        with self._guard:
            self._node(path)
            del self.nodes[path]
        return 0

    def rename(self, old: str, new: str) -> int:
        with self._guard:
            node = self._node(old)
            for path in [p for p in self.nodes if p == old or p.startswith(old + "/")]:
                self.nodes[new + path[len(old):]] = self.nodes.pop(path)
            node.mtime = time.time()
        return 0

    def chmod(self, path: str, mode: int) -> int:
        with self._guard:
            node = self._node(path)
            node.mode = (node.mode & ~0o7777) | (mode & 0o7777)
        return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        return 0

    def utimens(self, path: str, times: tuple[float, float] | None = None) -> int:
        with self._guard:
            self._node(path).mtime = times[1] if times else time.time()
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        return {"f_bsize": 4096, "f_frsize": 4096, "f_blocks": 1 << 20, "f_bfree": 1 << 19,
                "f_bavail": 1 << 19, "f_files": 1 << 16, "f_ffree": 1 << 15, "f_namemax": 255}

    # -- contents --------------------------------------------------------------------------------
    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        if path == CONTROL:
            return self._figures()[offset:offset + size]
        with self._guard:
            return bytes(self._node(path).data[offset:offset + size])

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        if path == CONTROL:
            if data.strip() == b"cut":
                self.cut()
            return len(data)
        with self._guard:
            node = self._node(path)
            if offset > len(node.data):
                node.data.extend(bytes(offset - len(node.data)))
            node.data[offset:offset + len(data)] = data
            node.mtime = time.time()
        return len(data)

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        if path == CONTROL:
            return 0
        with self._guard:
            node = self._node(path)
            if length < len(node.data):
                del node.data[length:]
            else:
                node.data.extend(bytes(length - len(node.data)))
        return 0

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        with self._guard:
            node = self._node(path)
            self.fsyncs += 1
            self.synced_bytes += len(node.data)
            node.synced = bytes(node.data)
        return 0

    def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
        return 0  # names are kept at once (see the module's docstring)

    def flush(self, path: str, fh: int) -> int:
        return 0  # close() is not a sync

    def release(self, path: str, fh: int) -> int:
        return 0


def main(argv: list[str]) -> int:
    mountpoint = argv[0]
    os.makedirs(mountpoint, exist_ok=True)
    fuse.FUSE(PowerCutFS(), mountpoint, foreground=True, nothreads=False, direct_io=True,
              attr_timeout=0, entry_timeout=0, negative_timeout=0, default_permissions=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
