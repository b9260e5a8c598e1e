"""Shared helpers of the benchmarks: a private mosquitto, temp dirs, RSS, one JSON line out."""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.peers.mosquitto import MosquittoBroker  # noqa: E402


def broker(workdir: Path) -> MosquittoBroker:
    return MosquittoBroker(workdir).start()


def rss_mb(pid: int | None = None) -> float:
    """Resident memory of a process in MB, from /proc."""
    status = Path(f"/proc/{pid or os.getpid()}/status").read_text()
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def gtin13(n: int) -> str:
    body = f"376{n:09d}"
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(body)))
    return body + str((10 - total % 10) % 10)


def price_items(count: int, version: int = 1, seed: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [
        {
            "sku": f"SKU{i:06d}",
            "price": f"{rng.randint(50, 99999) / 100:.2f}",
            "currency": "EUR",
            "gtin": gtin13(i),
            "name": f"Produit d'épicerie n°{i} 500 g",
            "version": version,
        }
        for i in range(count)
    ]


def emit(figures: dict[str, Any]) -> None:
    """The one JSON line a bench prints."""
    print(json.dumps(figures, ensure_ascii=False), flush=True)


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
