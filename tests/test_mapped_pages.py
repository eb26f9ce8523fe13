"""Mapped Arrow pages leave the resident set: parsing of /proc maps, the release itself
(Linux with MADV_PAGEOUT), data intact after it, and the per-process thread's switches."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from ernie_cpt.data import mapped_pages

MAPS = """\
7f0000000000-7f0000100000 r--s 00000000 08:01 1234 /data/cache/train/data-00000-of-00001.arrow
7f0000100000-7f0000200000 rw-s 00000000 08:01 1235 /data/cache/writable.arrow
7f0000200000-7f0000300000 r--p 00000000 08:01 1236 /usr/lib/libarrow.so.1800
7f0000300000-7f0000400000 r--s 00000000 08:01 1237 /tmp/old.arrow (deleted)
7f0000400000-7f0000401000 rw-p 00000000 00:00 0
7f0000500000-7f0000600000 r--s 00000000 08:01 1238 /data/with space/cache-abc.arrow
"""


def test_arrow_mappings_keeps_read_only_arrow_files_only() -> None:
    assert mapped_pages.arrow_mappings(MAPS) == [
        (0x7F0000000000, 0x7F0000100000),
        (0x7F0000500000, 0x7F0000600000),
    ]
    assert mapped_pages.arrow_mappings("") == []


def _write_arrow(path: Path, rows: int) -> pa.Table:
    table = pa.table({"input_ids": [list(range(i % 97, i % 97 + 64)) for i in range(rows)]})
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return table


def _mapping_rss_kb(path: Path) -> int:
    """Resident kB of this process's mappings of ``path`` (from /proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as handle:
        for line in handle:
            first = line.split(maxsplit=1)[0]
            if "-" in first and not first.endswith(":"):
                inside = line.rstrip("\n").endswith(str(path))
            elif inside and first == "Rss:":
                total += int(line.split()[1])
    return total


needs_pageout = pytest.mark.skipif(
    not (mapped_pages._libc_madvise() and mapped_pages._pageout_supported()),
    reason="needs Linux with MADV_PAGEOUT (5.4+)",
)


@needs_pageout
def test_release_drops_resident_pages_and_data_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "data-00000-of-00001.arrow"
    expected = _write_arrow(path, rows=20_000)  # ~10 MB of int64
    with pa.memory_map(str(path)) as source:
        table = pa.ipc.open_stream(source).read_all()
        # touch every page of the mapping
        assert pa.compute.sum(table["input_ids"].combine_chunks().flatten()).as_py() > 0
        before = _mapping_rss_kb(path)
        assert before > 4_000, before
        advised = mapped_pages.release_arrow_pages()
        after = _mapping_rss_kb(path)
        assert advised >= path.stat().st_size - 4096
        assert after < before / 4, (before, after)
        # the pages come back from the file on the next access, unchanged
        assert table.equals(expected)


@needs_pageout
def test_release_leaves_anonymous_memory_alone() -> None:
    data = bytearray(os.urandom(1 << 20))
    copy = bytes(data)
    mapped_pages.release_arrow_pages()
    assert bytes(data) == copy


def test_thread_switched_off_by_environment() -> None:
    code = (
        "from ernie_cpt.data import mapped_pages as m;"
        "import threading;"
        "print(m.keep_arrow_pages_released(), "
        "any(t.name == 'ernie-arrow-pages' for t in threading.enumerate()))"
    )
    env = {**os.environ, "ERNIE_CPT_ARROW_PAGES_INTERVAL": "0"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["False", "False"]


@needs_pageout
def test_thread_starts_once_per_process() -> None:
    code = (
        "from ernie_cpt.data import mapped_pages as m;"
        "import threading, os;"
        "first = m.keep_arrow_pages_released(0.05); second = m.keep_arrow_pages_released(0.05);"
        "names = [t.name for t in threading.enumerate()].count('ernie-arrow-pages');"
        "pid = os.fork();"
        "child = m.keep_arrow_pages_released(0.05) if pid == 0 else None;"
        "pid == 0 and print('child', child, "
        "[t.name for t in threading.enumerate()].count('ernie-arrow-pages'), flush=True);"
        "pid == 0 and os._exit(0);"
        "os.waitpid(pid, 0);"
        "print('parent', first, second, names)"
    )
    env = {k: v for k, v in os.environ.items() if k != "ERNIE_CPT_ARROW_PAGES_INTERVAL"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.splitlines() == ["child True 1", "parent True True 1"]


RELEASING_EVERY = """
import sys, time
from pathlib import Path
import pyarrow as pa
sys.path.insert(0, sys.argv[2])
from test_mapped_pages import _mapping_rss_kb, _write_arrow
from ernie_cpt.data import mapped_pages as m

path = Path(sys.argv[1])
_write_arrow(path, rows=20_000)
assert m.keep_arrow_pages_released(600.0)  # the thread's own interval: far away
with pa.memory_map(str(path)) as source:
    table = pa.ipc.open_stream(source).read_all()
    pa.compute.sum(table["input_ids"].combine_chunks().flatten())
    time.sleep(0.3)
    idle = _mapping_rss_kb(path)
    with m.releasing_every(0.01):
        pa.compute.sum(table["input_ids"].combine_chunks().flatten())
        time.sleep(0.3)
        inside = _mapping_rss_kb(path)
    print(idle, inside)
"""


@needs_pageout
def test_releasing_every_shortens_the_interval_inside_the_block(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "ERNIE_CPT_ARROW_PAGES_INTERVAL"}
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            RELEASING_EVERY,
            str(tmp_path / "a.arrow"),
            str(Path(__file__).parent),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    idle, inside = (int(v) for v in out.stdout.split())
    assert idle > 4_000, idle  # not released on the 600 s interval
    assert inside < idle / 4, (idle, inside)


PAUSED = """
import sys, time
from pathlib import Path
import pyarrow as pa
sys.path.insert(0, sys.argv[2])
from test_mapped_pages import _mapping_rss_kb, _write_arrow
from ernie_cpt.data import mapped_pages as m

path = Path(sys.argv[1])
_write_arrow(path, rows=20_000)
assert m.keep_arrow_pages_released(0.02)
m.pause_arrow_page_release()
with pa.memory_map(str(path)) as source:
    table = pa.ipc.open_stream(source).read_all()
    pa.compute.sum(table["input_ids"].combine_chunks().flatten())
    time.sleep(0.3)
    paused = _mapping_rss_kb(path)
    assert m.keep_arrow_pages_released()  # running already: active again
    time.sleep(0.3)
    print(paused, _mapping_rss_kb(path))
"""


@needs_pageout
def test_paused_thread_leaves_pages_until_asked_again(tmp_path: Path) -> None:
    """prepare_data pauses the releaser when it returns: training re-reads its pages."""
    env = {k: v for k, v in os.environ.items() if k != "ERNIE_CPT_ARROW_PAGES_INTERVAL"}
    command = [sys.executable, "-c", PAUSED, str(tmp_path / "a.arrow"), str(Path(__file__).parent)]
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    paused, resumed = (int(v) for v in out.stdout.split())
    assert paused > 4_000, paused  # 20 ticks went by, none released
    assert resumed < paused / 4, (paused, resumed)


def test_prepare_data_pauses_the_releaser(monkeypatch: pytest.MonkeyPatch) -> None:
    from ernie_cpt.data import prepare

    calls: list[str] = []
    monkeypatch.setattr(prepare, "keep_arrow_pages_released", lambda: calls.append("keep"))
    monkeypatch.setattr(prepare, "pause_arrow_page_release", lambda: calls.append("pause"))

    def failing(*args: object) -> None:
        calls.append("prepare")
        raise RuntimeError("bad corpus")

    monkeypatch.setattr(prepare, "_prepare", failing)
    with pytest.raises(RuntimeError, match="bad corpus"):
        prepare.prepare_data(object())  # type: ignore[arg-type]
    assert calls == ["keep", "prepare", "pause"]  # paused even when preparation fails
