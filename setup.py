"""The compiled parts: the prefix index's tables and block hashing (epp/scheduling/prefix/
_blockindex.c) and the precise index's block keys (epp/datalayer/_blockkeys.c). Optional: without
a C compiler the install goes on and each uses its pure-Python version."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "epp.scheduling.prefix._blockindex",
            ["epp/scheduling/prefix/_blockindex.c"],
            optional=True,
        ),
        Extension("epp.datalayer._blockkeys", ["epp/datalayer/_blockkeys.c"], optional=True),
    ]
)
