"""Only here to hook the cffi extension into the build; all metadata is in pyproject.toml."""
from setuptools import setup

setup(cffi_modules=["native/build_ffi.py:ffibuilder"])
