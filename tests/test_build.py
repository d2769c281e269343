"""The installed package carries the compiled C core, and it matches the Python layer."""

import importlib.machinery
import os

import shmarray
from shmarray import _native


def test_extension_is_compiled() -> None:
    from shmarray import _ring

    assert _ring.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))
    assert os.path.exists(_ring.__file__)


def test_abi_matches() -> None:
    assert _native.lib.shm_seg_abi_version() == _native.SEG_ABI_VERSION
    assert _native.lib.shm_ring_abi_version() == _native.RING_ABI_VERSION


def test_public_api() -> None:
    for name in shmarray.__all__:
        assert hasattr(shmarray, name), name
    assert issubclass(shmarray.NotFoundError, FileNotFoundError)
    assert issubclass(shmarray.WaitTimeoutError, TimeoutError)
