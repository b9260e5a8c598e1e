"""`store-gateway demo` as a new user runs it: prices to label PNGs, a scan answered, events at head office."""

from __future__ import annotations

import io
import json
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import zxingcpp
from PIL import Image

from gateway.labels.render import DisplaySpec, LabelContent, content_hash, render
from gateway.schema import validate_event

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "gateway"]


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO)


class Output:
    """Collects a child's output in a thread, so the test can wait for a line without blocking."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.text = ""
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.text += line

    def wait_for(self, marker: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while marker not in self.text:
            if time.monotonic() > deadline:
                raise AssertionError(f"{marker!r} not seen; output so far:\n{self.text}")
            time.sleep(0.1)
        return self.text

    def rest(self) -> str:
        self._thread.join(30)
        return self.text


def test_demo_end_to_end(tmp_path: Path) -> None:
    demo_dir = tmp_path / "demo"
    demo = subprocess.Popen(
        [*CLI, "demo", "--dir", str(demo_dir)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO
    )
    out = Output(demo)
    try:
        output = out.wait_for("Ctrl-C stops everything")
        broker = re.search(r"mqtt://127\.0\.0\.1:\d+", output)
        assert broker, output
        url = broker.group(0)
        page = re.search(r"status page  (http://127\.0\.0\.1:\d+/)", output)
        assert page, output
        with urllib.request.urlopen(page.group(1), timeout=10) as answer:
            html = answer.read().decode()
        assert answer.status == 200 and "DEMO1" in html and 'data-device="till-1"' in html
        label = demo_dir / "labels" / "demo-0001.png"
        for _ in range(100):
            if label.exists():
                break
            time.sleep(0.1)
        before = label.read_bytes()
        watch = subprocess.Popen(
            [*CLI, "hq", "--broker", url, "watch", "--store", "DEMO1", "--timeout", "20"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO,
        )  # fmt: skip
        time.sleep(1.0)
        prices = tmp_path / "prices.csv"
        prices.write_text(
            "sku,price,currency,gtin,name\n"
            "DEMO-0001,4.75,EUR,3017620422003,Pâte à tartiner noisettes 750 g\n"
            "DEMO-0002,1.25,EUR,,\n"
            "DEMO-0003,0.99,EUR,,\n"
        )
        pushed = run("hq", "--broker", url, "push-prices", "--store", "DEMO1", str(prices), "--quiet")
        assert pushed.returncode == 0, pushed.stdout + pushed.stderr
        assert "applied 3" in pushed.stdout
        for _ in range(100):
            if label.read_bytes() != before:
                break
            time.sleep(0.1)
        image = Image.open(io.BytesIO(label.read_bytes()))
        assert [r.text for r in zxingcpp.read_barcodes(image.convert("L"))] == ["3017620422003"]
        expected = render(
            LabelContent("DEMO-0001", "Pâte à tartiner noisettes 750 g", 475, "EUR", gtin="3017620422003"),
            DisplaySpec(296, 128),
        )
        assert content_hash(image.convert("RGB").quantize(palette=expected.image)) == expected.content_hash, (
            "the label PNG shows exactly the new price"
        )
        scanned = run("demo", "--dir", str(demo_dir), "scan", "3017620422003")
        assert scanned.returncode == 0, scanned.stderr
        assert scanned.stdout.strip() == "Pâte à tartiner noisettes 750 g\t4,75 €"
        unknown = run("demo", "--dir", str(demo_dir), "scan", "96385074")
        assert unknown.stdout.strip() == "unknown article"
        time.sleep(1.0)
        watch.send_signal(signal.SIGINT)
        events = [json.loads(line) for line in watch.communicate(timeout=15)[0].splitlines() if line.startswith("{")]
        kinds = {e["type"] for e in events}
        assert {"command_result", "label", "scan"} <= kinds, kinds
        assert all(e["store"] == "DEMO1" for e in events)
        for event in events:
            validate_event(event)
    finally:
        demo.send_signal(signal.SIGINT)
        demo.wait(30)
        rest = out.rest()
    assert demo.returncode == 0, rest
    assert "demo stopped" in rest
    stray = subprocess.run(["pgrep", "-f", f"{demo_dir}/broker"], capture_output=True, text=True)
    assert stray.stdout.strip() == "", "the demo's broker is still running"
    # running it twice works
    again = subprocess.Popen(
        [*CLI, "demo", "--dir", str(demo_dir)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO
    )
    second = Output(again)
    try:
        second.wait_for("Ctrl-C stops everything")
    finally:
        again.send_signal(signal.SIGINT)
        again.wait(30)
    assert again.returncode == 0
