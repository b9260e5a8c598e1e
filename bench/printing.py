"""Print jobs rendered and sent to a loopback ESC/POS printer, vs writing the same bytes with a bare socket.

Ours: render a receipt with python-escpos (Dummy) and send it through the printer driver (status
query, then the job), as the print queue does per job. Raw: the same bytes over one plain socket.
Run: .venv/bin/python bench/printing.py [--jobs 500]
"""

from __future__ import annotations

import argparse
import socket
import time

from _common import emit, progress  # type: ignore[import-not-found]

from drivers.printers import open_printer
from gateway.printing.documents import StoreHeader, render_document
from tests.peers.escpos_printer import EscposPrinterPeer

LINES = [{"name": f"Article {n} à 1,99 €", "qty": 1 + n % 3, "unit_price": "1.99"} for n in range(12)]


def wait_jobs(peer: EscposPrinterPeer, count: int) -> None:
    deadline = time.monotonic() + 60
    while len(peer.jobs) < count and time.monotonic() < deadline:
        time.sleep(0.001)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=500)
    args = parser.parse_args()
    store = StoreHeader("Supérette", ("12 place Bellecour", "69002 Lyon"), "Merci !")
    data = {"number": "T-1", "lines": LINES, "total": "47.76", "payment": "carte"}
    peer = EscposPrinterPeer()
    try:
        progress(f"{args.jobs} receipts through render + driver (status + send)...")
        device = open_printer(peer.url, timeout=2.0)
        start = time.perf_counter()
        for _ in range(args.jobs):
            payload = render_document("receipt", data, store)
            assert device.status().ready
            device.send(payload)
        wait_jobs(peer, args.jobs)
        ours = args.jobs / (time.perf_counter() - start)
        device.close()
        size = len(payload)
        progress("the same bytes over a bare socket...")
        peer.jobs.clear()
        start = time.perf_counter()
        with socket.create_connection(("127.0.0.1", peer.port)) as sock:
            for _ in range(args.jobs):
                sock.sendall(payload)
            wait_jobs(peer, args.jobs)
        raw = args.jobs / (time.perf_counter() - start)
    finally:
        peer.close()
    emit(
        {
            "bench": "printing",
            "jobs": args.jobs,
            "job_bytes": size,
            "ours_jobs_per_s": round(ours),
            "raw_socket_jobs_per_s": round(raw),
            "ratio_ours_over_raw": round(ours / raw, 3),
            "note": "ours renders each receipt and asks DLE EOT 1-4 before each job; a real printer prints ~1 receipt/s",
        }
    )


if __name__ == "__main__":
    main()
