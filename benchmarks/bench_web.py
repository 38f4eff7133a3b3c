"""The web page's costs: time from `styleforge serve` to a page that answers, the region request round trip over
HTTP (Gradio's own client, as the page sends it), and the server's memory (RSS) after 1, 10, 20, ... region
requests.

    python benchmarks/bench_web.py [--requests 20] [--json out.json]

Runs `styleforge serve` (bundled region model, CPU) on a free port of 127.0.0.1 and stops it at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="OMP/torch threads of the server")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    from gradio_client import Client, handle_file

    sys.path.insert(0, str(ROOT / "src"))
    from styleforge.web.app import REGION_MAIN
    from styleforge.web.handlers import advanced_options, shown_default

    advanced = [shown_default(o) for o in advanced_options("region", REGION_MAIN)]  # the page's defaults

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    work = Path(tempfile.mkdtemp(prefix="bench-web-"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(args.threads),
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "styleforge.cli.main", "serve", "--port", str(port), "--device", "cpu",
                             "--workdir", str(work / "w")], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    try:
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.1)
            if proc.poll() is not None:
                raise SystemExit("styleforge serve exited")
        startup = time.monotonic() - started
        client = Client(url, verbose=False)
        examples = ROOT / "examples"
        editor = {"background": handle_file(str(examples / "content_landscape.png")), "layers": [], "composite": None}
        mask = handle_file(str(examples / "mask_meadow.png"))
        style = handle_file(str(examples / "style_coffee.png"))
        times, rss = [], {}
        for i in range(args.requests):
            t = time.monotonic()
            client.predict(editor, style, None, None, mask, None, None, 1.0, True, 0, *advanced, api_name="/region")
            times.append(time.monotonic() - t)
            if i + 1 == 1 or (i + 1) % 10 == 0 or i + 1 == args.requests:
                rss[i + 1] = round(rss_mb(proc.pid), 1)
        result = {
            "startup_s": round(startup, 2),
            "first_region_request_s": round(times[0], 3),
            "region_request_median_s": round(statistics.median(times[1:] or times), 3),
            "rss_mb_after_requests": rss, "requests": args.requests,
        }
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
