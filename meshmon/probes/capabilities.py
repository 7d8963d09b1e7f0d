"""Moving CAP_NET_RAW into the effective set when the process is only permitted to use it.

Theory of operation
-------------------
A non-root agent opens raw ICMP sockets with ``CAP_NET_RAW``. Where it comes from decides
whether it is already *effective* (usable) or only *permitted* (usable once asked for):

* systemd ``AmbientCapabilities=CAP_NET_RAW``, ``setpriv --ambient-caps`` or ``capsh``: ambient
  capabilities are effective after ``exec``; nothing to do.
* A file capability on the interpreter, as the container image sets it: ``setcap
  cap_net_raw+p`` (permitted, no effective bit). We do not set the effective bit (``+ep``)
  because the kernel then refuses to ``exec`` the interpreter at all, with EPERM, whenever the
  container's bounding set lacks NET_RAW (``--cap-drop ALL``): the aggregator, the CLI and the
  health check would not start either. With ``+p`` the interpreter always starts, holds the
  capability only where the bounding set allows it, and :func:`raise_effective` makes it
  effective just before a raw socket is opened. (Under ``no_new_privs`` the kernel may withhold
  file capabilities; then the datagram ICMP socket is the way, see :mod:`meshmon.probes.icmp`.)

Only ``capget``/``capset`` on the calling thread are used (the engine opens its sockets on the
trio thread); nothing is ever added to the permitted set, which only ``exec`` can grant.

:func:`grant` sets that file capability, as ``setcap cap_net_raw+p FILE`` would, without
libcap's tools in the image (the Dockerfile calls it as root).
"""

from __future__ import annotations

import ctypes
import os
import struct
import sys

CAP_NET_RAW = 13
_VERSION_3 = 0x20080522
"""``_LINUX_CAPABILITY_VERSION_3``: 64 capability bits in two 32-bit words."""
_VFS_CAP_REVISION_2 = 0x02000000
"""``security.capability`` layout: magic and flags (bit 0: effective), then permitted and
inheritable for bits 0-31, then for bits 32-63, all little-endian 32-bit words."""
XATTR = "security.capability"


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]  # fmt: skip


def raise_effective(cap: int = CAP_NET_RAW) -> bool:
    """Make ``cap`` effective if this thread is permitted it.

    Returns:
        Whether ``cap`` is effective now (``False`` off Linux or when it is not permitted).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        capget, capset = libc.capget, libc.capset
    except (OSError, AttributeError):  # pragma: no cover - a libc without the wrappers
        return False
    header = _Header(_VERSION_3, 0)
    data = (_Data * 2)()
    if capget(ctypes.byref(header), data) != 0:
        return False
    word, mask = data[cap // 32], 1 << (cap % 32)
    if word.effective & mask:
        return True
    if not word.permitted & mask:
        return False
    word.effective |= mask
    return bool(capset(ctypes.byref(header), data) == 0)


def file_capability(cap: int = CAP_NET_RAW) -> bytes:
    """The ``security.capability`` value that permits ``cap``, not effective (``cap_…+p``)."""
    permitted = [0, 0]
    permitted[cap // 32] |= 1 << (cap % 32)
    return struct.pack("<5I", _VFS_CAP_REVISION_2, permitted[0], 0, permitted[1], 0)


def grant(path: str | os.PathLike[str], cap: int = CAP_NET_RAW) -> None:
    """Give the program at ``path`` (symbolic links followed) ``cap`` as permitted only."""
    os.setxattr(path, XATTR, file_capability(cap))
