"""The only place shmarray.dask touches shmarray internals (named in the package docstring).

- ``rebuild``: the function a pickled SharedArray is rebuilt with (attach once per process,
  check the segment's incarnation, build the view). A by-name SharedArray arriving through
  Dask is rebuilt exactly as an unpickled one, without unpickling anything.
- ``segment_exists``: whether a segment still has its name (the sender's check before it sends
  a name rather than bytes).
"""

from __future__ import annotations

import os

from shmarray._os.names import segment_path
from shmarray.array import _rebuild as rebuild

__all__ = ["rebuild", "segment_exists"]


def segment_exists(name: str) -> bool:
    return os.path.exists(segment_path(name))
