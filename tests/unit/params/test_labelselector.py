"""Kubernetes label selectors in their string form, as `labels.Parse` reads them."""

from __future__ import annotations

import pytest

from epp.params.labelselector import Requirement, parse_selector


def test_every_requirement_form() -> None:
    selector = parse_selector("a in (x, y),!b, c!=d,e, f==g,h=i")
    assert selector.requirements == (
        Requirement("a", "In", frozenset({"x", "y"})),
        Requirement("b", "DoesNotExist"),
        Requirement("c", "NotIn", frozenset({"d"})),
        Requirement("e", "Exists"),
        Requirement("f", "In", frozenset({"g"})),
        Requirement("h", "In", frozenset({"i"})),
    )
    labels = {"a": "x", "e": "", "f": "g", "h": "i"}
    assert selector.matches(labels)
    assert not selector.matches({**labels, "b": "1"})
    assert not selector.matches({**labels, "c": "d"})
    assert not selector.matches({**labels, "a": "z"})


def test_prefixed_keys_and_the_empty_selector() -> None:
    selector = parse_selector("disaggregatedset.x-k8s.io/name=my-set")
    assert selector.matches({"disaggregatedset.x-k8s.io/name": "my-set"})
    assert not selector.matches({})
    assert parse_selector("").matches({"anything": "x"})


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("a=b=c", "at 'a=b=c'"),
        ("a in x", "at 'a in x'"),
        ("=b", "at '=b'"),
        ("a,,b", "at ',b'"),
        ("a in ()", "values of 'a'"),
    ],
)
def test_malformed_selectors_say_where(text: str, where: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_selector(text)
    assert str(caught.value) == f"{text!r} is not a valid label selector ({where})"
