"""Fixtures shared by the page reader's tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from epp.datalayer import promtext


@pytest.fixture(scope="module", params=["python", "compiled"])
def page_reader(request: pytest.FixtureRequest) -> Iterator[str]:
    """Each test of a module that uses it runs with the Python page reader (the reference) and
    with the C one (`_promscan`; skipped where it was not built): every `Extractor` made without
    `compiled=` reads with that one."""
    compiled = request.param == "compiled"
    if compiled and not promtext.COMPILED:
        pytest.skip("epp.datalayer._promscan was not built")
    built = promtext.COMPILED
    promtext.COMPILED = compiled
    try:
        yield request.param
    finally:
        promtext.COMPILED = built
