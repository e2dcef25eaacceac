"""Kubernetes quantities and the pydantic value types config files use."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from epp.params.strict import StrictModel
from epp.params.values import Duration, Quantity, parse_quantity


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("500", 500),
        ("1Gi", 2**30),
        ("2k", 2000),
        ("1.5M", 1_500_000),
        ("1e3", 1000),
        ("100m", 1),
        (7, 7),
        ("0", 0),
    ],
)
def test_quantities(text: str | int, value: int) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize("text", ["lots", "1GB", "-1", "Gi", ""])
def test_invalid_quantities(text: str) -> None:
    with pytest.raises(ValueError, match="invalid quantity"):
        parse_quantity(text)


class Limits(StrictModel):
    ttl: Duration = 0.0
    size: Quantity = 0


def test_value_types_in_models() -> None:
    limits = Limits.model_validate({"ttl": "1m30s", "size": "1Ki"})
    assert (limits.ttl, limits.size) == (90.0, 1024)
    for bad in ({"ttl": "soon"}, {"ttl": "-5s"}, {"size": True}):
        with pytest.raises(ValidationError):
            Limits.model_validate(bad)
