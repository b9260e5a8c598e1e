"""The link to head office failing: a 100k-event outage drained in order, and a link gone silent.

Both through the real process against a real mosquitto (tests/peers/chaos.py has the scenarios;
bench/chaos.py prints the same figures).
"""

from __future__ import annotations

from pathlib import Path

from tests.peers.chaos import blackholed_link, outage_drain
from tests.peers.mosquitto import MosquittoBroker


async def test_a_100k_event_outage_drains_in_order_and_loses_nothing(
    own_mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    figures = await outage_drain(own_mosquitto, tmp_path, events=100_000)
    assert figures["lost"] == 0, figures
    assert figures["in_seq_order"], figures
    # at least once: only what was in flight when a connection broke may come twice (none broke here)
    assert figures["duplicated"] <= 100, figures


async def test_a_black_holed_link_is_noticed_within_the_keepalive_and_loses_nothing(
    own_mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    figures = await blackholed_link(own_mosquitto, tmp_path)
    assert figures["lost"] == 0, figures
    # events are flowing: the oldest one's missing PUBACK ends the link after 1.5 keepalives
    assert figures["noticed_in_keepalives"] <= 2.0, figures
