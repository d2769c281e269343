"""The installed package carries the compiled parts, and they match the Python layer."""

import importlib.machinery
import os

import shmarray
from shmarray._os import native


def test_extensions_are_compiled() -> None:
    from shmarray import _lease, _ring

    for mod in (_ring, _lease):
        assert mod.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))
        assert os.path.exists(mod.__file__)


def test_abi_matches() -> None:
    assert native.lib.shm_seg_abi_version() == native.SEG_ABI_VERSION
    assert native.lib.shm_chan_abi_version() == native.CHAN_ABI_VERSION
    assert native.lease.ABI_VERSION == native.CHAN_ABI_VERSION


def test_public_api() -> None:
    for name in shmarray.__all__:
        assert hasattr(shmarray, name), name
    assert issubclass(shmarray.NotFoundError, FileNotFoundError)
    assert issubclass(shmarray.WaitTimeoutError, TimeoutError)
