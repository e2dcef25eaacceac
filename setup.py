"""The one compiled part: the prefix index's tables and block hashing (epp/scheduling/prefix/
_blockindex.c). Optional: without a C compiler the install goes on and the index and the hashing
use their pure-Python versions."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "epp.scheduling.prefix._blockindex",
            ["epp/scheduling/prefix/_blockindex.c"],
            optional=True,
        )
    ]
)
