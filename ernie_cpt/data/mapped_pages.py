"""Keep the pages of memory-mapped Arrow files out of the resident set (Linux).

``datasets`` memory-maps every Arrow file it reads. A page a pass has read stays in the
process's resident set (RSS, counted as ``RssFile``) for as long as the file is mapped, so
one pass over N GB of Arrow shows N GB more RSS although nothing is held: measured on the
built-in sample repeated 16 times (48 MB of text, 8 tasks), preparation peaked at 806 MB
of such pages against 475 MB of its own (``RssAnon``), and the file part grew with the
corpus. Memory limits and monitors that read RSS count those pages.

``keep_arrow_pages_released`` starts one daemon thread per process that, every
``INTERVAL_S`` seconds, asks the kernel to reclaim the pages of this process's read-only
mappings of ``*.arrow`` files (``madvise(MADV_PAGEOUT)``, Linux 5.4+). The advice is
safe whatever happens to the address range meanwhile: a clean file page is read back from
its file on the next access, and ``MADV_PAGEOUT`` never discards anonymous memory (it is
swapped out or left alone), so an address reused by another mapping between the scan and
the call loses nothing. Pages mapped by several processes are left alone by the kernel.
Elsewhere (other systems, older kernels, no ``/proc``) it does nothing, and so does
``ERNIE_CPT_ARROW_PAGES_INTERVAL=0`` (the environment variable sets the interval).
``prepare_data`` pauses the thread when it returns (``pause_arrow_page_release``): training
re-reads its examples every epoch, and a released page costs a read from the file.

What stays resident is what a pass reads between two releases: read rate x interval
(measured, all eight tasks on 12 MB: the pass file peaked at 95 MB resident with 0.5 s,
24 MB with 0.1 s). One release costs about 1 ms (reading ``/proc/self/maps``), 0.5% of a
core at the default 0.2 s; ``releasing_every`` shortens it around steps that read at
memory speed. The kernel leaves alone pages of a file this process maps
twice, and dirty pages (so preparation ``fsync``s what it writes before reading it).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import re
import sys
import threading
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)

MADV_PAGEOUT = 21
INTERVAL_S = 0.2

_madvise: Any = None
_overrides: list[float] = []  # shorter intervals asked for by releasing_every blocks
_wake = threading.Event()
_owner_pid: int | None = None
_active = False  # released on each tick only while set (pause_arrow_page_release clears it)
_lock = threading.Lock()


def _libc_madvise() -> Any:
    """libc's ``madvise`` (typed), or None where it is not available."""
    global _madvise
    if _madvise is None:
        _madvise = False
        if sys.platform.startswith("linux") and os.path.exists("/proc/self/maps"):
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
                function = libc.madvise
                function.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
                function.restype = ctypes.c_int
                _madvise = function
            except (OSError, AttributeError):
                pass
    return _madvise or None


# A /proc/<pid>/maps line of a read-only mapping of an *.arrow file: one regex pass over
# the text (a torch process has ~1,000 lines; splitting each cost as much as reading them).
_ARROW_LINE = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) r-\S* .*\.arrow$", re.MULTILINE)


def arrow_mappings(maps: str) -> list[tuple[int, int]]:
    """(start, end) of every read-only mapping of an ``*.arrow`` file in ``/proc/<pid>/maps``
    text (writable mappings are skipped)."""
    return [(int(m[1], 16), int(m[2], 16)) for m in _ARROW_LINE.finditer(maps)]


def release_arrow_pages() -> int:
    """Advise the kernel to reclaim this process's mapped Arrow pages now; returns the bytes
    of the mappings advised (0 where unsupported)."""
    madvise = _libc_madvise()
    if madvise is None:
        return 0
    try:
        with open("/proc/self/maps") as handle:
            ranges = arrow_mappings(handle.read())
    except OSError:
        return 0
    advised = 0
    for start, end in ranges:
        if madvise(start, end - start, MADV_PAGEOUT) == 0:
            advised += end - start
    return advised


def keep_arrow_pages_released(interval: float | None = None) -> bool:
    """Start (once per process; forked workers start their own) the thread that releases
    mapped Arrow pages every ``interval`` seconds (default ``$ERNIE_CPT_ARROW_PAGES_INTERVAL``
    or ``INTERVAL_S``; 0 turns it off). Returns whether it runs here."""
    global _owner_pid, _active
    if _owner_pid == os.getpid():
        _active = True
        return True
    if interval is None:
        interval = float(os.environ.get("ERNIE_CPT_ARROW_PAGES_INTERVAL", INTERVAL_S))
    if interval <= 0 or _libc_madvise() is None:
        return False
    with _lock:
        if _owner_pid == os.getpid():
            return True
        if not _pageout_supported():
            return False
        _owner_pid, _active = os.getpid(), True
        thread = threading.Thread(
            target=_release_forever, args=(interval,), name="ernie-arrow-pages", daemon=True
        )
        thread.start()
    return True


def _pageout_supported() -> bool:
    """Whether the kernel knows MADV_PAGEOUT (EINVAL before Linux 5.4): advised on one page
    of a fresh anonymous mapping, which it cannot discard."""
    import mmap

    page = mmap.mmap(-1, mmap.PAGESIZE)
    view = ctypes.c_char.from_buffer(page)
    ok = _libc_madvise()(ctypes.addressof(view), mmap.PAGESIZE, MADV_PAGEOUT) == 0
    del view  # the mapping cannot close while a view of it exists
    page.close()
    if not ok:
        log.debug("MADV_PAGEOUT unsupported: mapped Arrow pages stay resident")
    return ok


@contextlib.contextmanager
def releasing_every(seconds: float) -> Iterator[None]:
    """Release every ``seconds`` inside the block (where the thread runs here), for steps
    that read mapped Arrow at memory speed: ``save_to_disk`` of a memory-mapped dataset
    copies ~1 GB/s, so pages pile up faster than the default interval clears them."""
    _overrides.append(seconds)
    _wake.set()
    try:
        yield
    finally:
        _overrides.remove(seconds)
        if _owner_pid == os.getpid():
            release_arrow_pages()


def pause_arrow_page_release() -> None:
    """Stop releasing (the thread idles) until ``keep_arrow_pages_released`` is called again:
    preparation's passes read each page once, training reads the same examples epoch after
    epoch, and a released page would be read back from the file (from disk if the kernel
    dropped it from the page cache) on the next access."""
    global _active
    _active = False


def _release_forever(interval: float) -> None:
    while True:
        _wake.wait(min(_overrides, default=interval))
        _wake.clear()
        if _active or _overrides:
            release_arrow_pages()
