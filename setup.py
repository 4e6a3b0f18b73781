"""The one compiled part of moediag: the MXFP4/FP8 decoders (moediag/checkpoint/_decode.c).

Everything else is declared in pyproject.toml. The extension is optional: where no C compiler (or no
Python headers) is found, the build goes on without it and moediag decodes with torch ops instead,
bit for bit the same, about half as fast (docs/install.md).
"""

import sys

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "moediag.checkpoint._decode",
            ["moediag/checkpoint/_decode.c"],
            # plain IEEE arithmetic (no -ffast-math: that would break bit-exactness); O3 vectorises
            extra_compile_args=[] if sys.platform == "win32" else ["-O3"],
            optional=True,
        )
    ]
)
