import sys

from setuptools import setup

sys.path.insert(0, "csrc")
from native_build import lease_extension  # noqa: E402  (csrc/native_build.py)

setup(cffi_modules=["csrc/native_build.py:ffibuilder"], ext_modules=[lease_extension()])
