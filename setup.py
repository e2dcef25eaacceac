"""The one compiled part: the prefix index's tables (epp/scheduling/prefix/_blockindex.c). Optional:
without a C compiler the install goes on and the index uses its pure-Python tables."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "epp.scheduling.prefix._blockindex",
            ["epp/scheduling/prefix/_blockindex.c"],
            extra_compile_args=["-O2"],
            optional=True,
        )
    ]
)
