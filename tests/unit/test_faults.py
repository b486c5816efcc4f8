"""orgsyncd.faults: the spec syntax, n-th hits, streams and in-process hooks."""

from __future__ import annotations

from collections import Counter

import pytest

from orgsyncd import faults
from orgsyncd.errors import InjectedFault


@pytest.fixture(autouse=True)
def fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(faults, "_hits", Counter())


def test_unset_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ORGSYNCD_FAULT", raising=False)
    faults.checkpoint("after_plan")
    assert not faults.armed("after_plan")


def test_a_named_point_raises_every_time_and_others_do_not(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORGSYNCD_FAULT", "after_plan")
    faults.checkpoint("after_stage")
    for _ in range(2):
        with pytest.raises(InjectedFault, match="after_plan"):
            faults.checkpoint("after_plan")


def test_nth_hit_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORGSYNCD_FAULT", "after_stage, after_commit:raise@3")
    faults.checkpoint("after_commit")
    faults.checkpoint("after_commit")
    with pytest.raises(InjectedFault):
        faults.checkpoint("after_commit")
    faults.checkpoint("after_commit")  # the 4th passes
    with pytest.raises(InjectedFault):
        faults.checkpoint("after_stage")


def test_stream_reaches_its_point_in_the_middle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORGSYNCD_FAULT", "during_stage")
    seen: list[int] = []
    with pytest.raises(InjectedFault):
        for item in faults.stream(iter(range(1000)), "during_stage", at=100):
            seen.append(item)
    assert seen == list(range(100))


def test_stream_of_fewer_items_reaches_the_point_at_its_end(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORGSYNCD_FAULT", "during_stage")
    with pytest.raises(InjectedFault):
        list(faults.stream(iter(range(5)), "during_stage", at=100))


def test_an_unarmed_stream_is_the_same_iterator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORGSYNCD_FAULT", "after_plan")
    items = iter(range(3))
    assert faults.stream(items, "during_stage") is items


def test_a_hook_runs_at_its_point_until_its_block_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ORGSYNCD_FAULT", raising=False)
    calls: list[str] = []
    with faults.hook("after_commit", lambda: calls.append("hit")):
        assert faults.armed("after_commit")
        faults.checkpoint("after_commit")
        faults.checkpoint("after_plan")
    faults.checkpoint("after_commit")
    assert calls == ["hit"]
