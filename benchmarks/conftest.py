"""pytest-benchmark suite: per-call costs inside one process (``pytest benchmarks
--benchmark-only``). The cross-process comparison is ``shmarray bench``.

The repository's pytest settings collect ``test_*.py`` under tests/; this conftest also
collects ``bench_*.py`` here, and fails a benchmark that leaves a shmarray object behind.
"""

from __future__ import annotations

import os
import pathlib
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

SHM = "/dev/shm"


def pytest_collect_file(file_path: pathlib.Path, parent: Any) -> Any:
    if file_path.suffix == ".py" and file_path.name.startswith("bench_"):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def _ours() -> set[str]:
    return {f for f in os.listdir(SHM) if f.startswith(("shmarray.", "sem.shmarray."))}


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    before = _ours()
    yield
    left = _ours() - before
    for f in left:
        try:
            os.unlink(os.path.join(SHM, f))
        except OSError:
            pass
    if left:
        pytest.fail(f"benchmark left shmarray objects in /dev/shm: {sorted(left)}")


@pytest.fixture
def name(request: pytest.FixtureRequest) -> str:
    stem = "".join(c if c.isalnum() else "_" for c in request.node.name)[:40]
    return f"b_{stem}_{uuid.uuid4().hex[:8]}"
