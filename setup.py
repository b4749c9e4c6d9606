"""Builds the optional compiled audio fast path (`src/callbridge/fast_path/_compiled.pyx`).

Everything else is in pyproject.toml. Without a C compiler the build goes on without the
module and callbridge runs the same code paths in plain Python (see fast_path/__init__.py).
"""

from setuptools import Extension, setup

try:
    import picows
    from Cython.Build import cythonize

    extensions = cythonize(
        [
            Extension(
                "callbridge.fast_path._compiled",
                ["src/callbridge/fast_path/_compiled.pyx"],
                optional=True,  # a failed compile leaves the plain-Python path, not an error
                # Checked at import: the module reads picows's C structures.
                define_macros=[("CALLBRIDGE_PICOWS_VERSION", f'"{picows.__version__}"')],
            )
        ],
        compiler_directives={"language_level": 3},
    )
except Exception as exc:  # no Cython or no picows.pxd: plain Python
    print(f"callbridge: building without the compiled fast path ({exc})")
    extensions = []

setup(ext_modules=extensions)
