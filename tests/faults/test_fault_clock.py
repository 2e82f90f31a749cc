"""Item 10: the clock moves back between saves: ``latest`` still returns the newest by seq."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path

import pytest
from fault_harness import common_check

import ckptlite
import ckptlite.manager


class SteppingClock(datetime):
    """A datetime whose now() replays a fixed list of instants."""

    instants: list[datetime] = []

    @classmethod
    def now(cls, tz: tzinfo | None = None) -> SteppingClock:  # type: ignore[override]
        t = cls.instants.pop(0)
        return t if tz is None else t.astimezone(tz)  # type: ignore[return-value]


T0 = datetime(2030, 6, 1, 12, tzinfo=UTC)
BACKWARDS = [
    T0,
    T0 - timedelta(hours=1),  # NTP step back
    T0 - timedelta(days=400),  # a dead RTC battery
    T0 - timedelta(days=400),  # the very same instant twice
    T0 + timedelta(days=1),  # and forward again
    datetime(1970, 1, 1, tzinfo=UTC),
]


@pytest.mark.parametrize("url", ["local", "memory://"])
def test_latest_is_newest_by_seq_when_the_clock_goes_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    store = tmp_path / "store"
    monkeypatch.setattr(SteppingClock, "instants", list(BACKWARDS))
    monkeypatch.setattr(ckptlite.manager, "datetime", SteppingClock)
    with ckptlite.open(store if url == "local" else url, durability="none") as mgr:
        saved = [mgr.save("clock", {"i": i}, name="slot", metadata={"i": i}) for i in range(6)]
        assert [cp.created_at for cp in saved] == BACKWARDS  # the clock really went back
        seqs = [cp.seq for cp in saved]
        assert seqs == sorted(seqs) and len(set(seqs)) == 6
        latest = mgr.latest("clock", name="slot")
        assert latest is not None and latest.id == saved[5].id  # stamped 1970, yet newest
        hit = mgr.load_latest("clock", name="slot")
        assert hit is not None and hit[1] == {"i": 5}
        assert [cp.id for cp in mgr.list(process_id="clock")] == [cp.id for cp in reversed(saved)]
        mgr.delete(saved[5].id)
        mgr.delete(saved[4].id)
        # Of the rest, saved[0] has the newest wall clock time; saved[3] the highest seq.
        latest = mgr.latest("clock", name="slot")
        assert latest is not None and latest.id == saved[3].id
        assert mgr.load_latest("clock", name="slot")[1] == {"i": 3}  # type: ignore[index]
    if url == "local":
        common_check(store, expected=lambda cp: {"i": cp.metadata["i"]})
