"""SIGKILL at random moments under a mixed workload: nothing lost, nothing applied or answered twice.

The workload and the counting are in tests/peers/chaos.py (bench/chaos.py prints the same figures).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.peers.chaos import run_chaos
from tests.peers.mosquitto import MosquittoBroker


async def test_five_sigkills_under_load_lose_nothing(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    figures = await run_chaos(mosquitto, tmp_path, rounds=5, seed=5)
    assert figures.failures == {}, figures.as_json()
    assert figures.commands_sent > 50 and figures.print_jobs > 5, figures.as_json()


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_fifty_sigkills_under_load_lose_nothing(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    figures = await run_chaos(mosquitto, tmp_path, rounds=50, seed=50)
    assert figures.failures == {}, figures.as_json()
