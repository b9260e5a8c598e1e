"""The reliability figures in one JSON line: SIGKILLs under load, a 100k-event outage, a silent link.

Each part runs the real `store-gateway run` against its own mosquitto, as tests/reliability does
(the scenarios are tests/peers/chaos.py):
- kills: the gateway SIGKILLed --rounds times at random moments under prices, stock, print jobs,
  scans and labels; commands lost / applied twice / answered twice, events lost / duplicated by id /
  seq gaps, receipts printed twice or lost, labels left in `sent`, PRAGMA integrity_check;
- drain: --outage events made while the broker is down, then drained: rate, order, losses; the
  baseline is the raw paho publisher of bench/relay.py (run it for the ratio on this machine);
- blackhole: a link that swallows every byte: seconds to notice, in keepalives; scans lost.

Run: .venv/bin/python bench/chaos.py [--rounds 50] [--outage 100000] [--seed 1]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
from pathlib import Path

from _common import emit, progress  # type: ignore[import-not-found]

from tests.peers.chaos import blackholed_link, outage_drain, run_chaos
from tests.peers.mosquitto import MosquittoBroker


async def main(rounds: int, outage: int, seed: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="bench-chaos-"))
    try:
        figures: dict[str, object] = {"bench": "chaos"}
        broker = MosquittoBroker(root / "broker-kills").start()
        try:
            progress(f"kills: {rounds} SIGKILLs under load")
            (root / "kills").mkdir()
            kills = await run_chaos(broker, root / "kills", rounds=rounds, seed=seed)
            figures["kills"] = kills.as_json()
        finally:
            broker.stop()
        broker = MosquittoBroker(root / "broker-drain").start()
        try:
            progress(f"drain: {outage} events made during a broker outage")
            (root / "drain").mkdir()
            figures["drain"] = await outage_drain(broker, root / "drain", events=outage)
        finally:
            broker.stop()
        broker = MosquittoBroker(root / "broker-hole").start()
        try:
            progress("blackhole: the link swallows every byte")
            (root / "hole").mkdir()
            figures["blackhole"] = await blackholed_link(broker, root / "hole")
        finally:
            broker.stop()
        emit(figures)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--outage", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    asyncio.run(main(args.rounds, args.outage, args.seed))
