"""Hooks build_ffi.py into setuptools, so `pip install .` and `pip install -e .` build the library."""

import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class BuildKmsLibrary(build_ext):
    """Builds libkms-pkcs11.so (not a Python extension) where the package's files go."""

    def get_ext_filename(self, fullname):
        return str(Path(*fullname.split(".")[:-1]) / "libkms-pkcs11.so")

    def build_extension(self, ext):
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import build_ffi

        target = Path(self.get_ext_fullpath(ext.name))
        build_ffi.build(target.parent)


setup(
    ext_modules=[Extension("pkcs11_kms.libkms_pkcs11", sources=[])],
    cmdclass={"build_ext": BuildKmsLibrary},
)
