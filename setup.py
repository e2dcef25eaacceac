"""The compiled parts: the prefix index's tables and block hashing (epp/scheduling/prefix/
_blockindex.c), the precise index's block keys (epp/datalayer/_blockkeys.c), the metrics page
reader (epp/datalayer/_promscan.c), the request body's depth check (epp/requests/_jsondepth.c),
the simulator tokenizer's words path (epp/sim/_wordtokens.c), the virtual-time run's event
queue (epp/bench/_eventheap.c) and a profile's weighted totals over many candidates
(epp/scheduling/_scoresum.c). Optional: without a C compiler the install goes on and each uses
its pure-Python version."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "epp.scheduling.prefix._blockindex",
            ["epp/scheduling/prefix/_blockindex.c"],
            optional=True,
        ),
        Extension("epp.datalayer._blockkeys", ["epp/datalayer/_blockkeys.c"], optional=True),
        Extension("epp.datalayer._promscan", ["epp/datalayer/_promscan.c"], optional=True),
        Extension("epp.requests._jsondepth", ["epp/requests/_jsondepth.c"], optional=True),
        Extension("epp.sim._wordtokens", ["epp/sim/_wordtokens.c"], optional=True),
        Extension(
            "epp.bench._eventheap",
            ["epp/bench/_eventheap.c"],
            optional=True,
            # a cohort step's arithmetic must give the same doubles as Python's: no fused multiply-add
            extra_compile_args=["-ffp-contract=off"],
        ),
        Extension(
            "epp.scheduling._scoresum",
            ["epp/scheduling/_scoresum.c"],
            optional=True,
            # the totals must be the doubles numpy's separate multiply and add give: no fused multiply-add
            extra_compile_args=["-ffp-contract=off"],
        ),
    ]
)
