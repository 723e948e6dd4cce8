"""Only here for the cffi build step; all metadata lives in pyproject.toml."""

from setuptools import setup

setup(cffi_modules=["shmpamt/_shim_build.py:ffibuilder"])
