"""The compiled fast lane (router/dataplane/fastlane.pyx). Optional: without a C compiler the install
still succeeds and the Python path serves every request (`edge-router serve` says so at start)."""
from setuptools import Extension, setup

try:
    from Cython.Build import cythonize
except ImportError:  # (pip installs Cython for the build: pyproject.toml's build-system)
    ext_modules = []
else:
    ext_modules = cythonize([Extension("router.dataplane.fastlane", ["router/dataplane/fastlane.pyx"],
                                       extra_compile_args=["-O2"], optional=True)],
                            compiler_directives={"language_level": 3}, quiet=True)

setup(ext_modules=ext_modules)
