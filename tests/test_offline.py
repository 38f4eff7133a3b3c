"""No network and nothing cached (HF_HUB_OFFLINE unset): loaders fail in seconds with their one-line message
instead of the hub client's minutes of retries."""

import json
import socket
import subprocess
import sys

from PIL import Image

SCRIPT = r"""
import contextlib, io, json, sys, time
from styleforge.cli.main import main

runs = {}
for name, argv in json.loads(sys.argv[1]).items():
    err = io.StringIO()
    start = time.monotonic()
    with contextlib.redirect_stderr(err):
        code = main(argv)
    runs[name] = {"code": code, "seconds": time.monotonic() - start, "stderr": err.getvalue()}
print(json.dumps(runs))
"""


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_no_network_fails_fast_with_the_one_line_message(tmp_path, tiny_sd1_folder):
    Image.new("RGB", (64, 64), (90, 140, 200)).save(tmp_path / "cat.png")
    commands = {
        "caption": ["translate", str(tmp_path / "cat.png"), "--source", "cat", "--target", "dog", "--model",
                    str(tiny_sd1_folder), "--steps", "2", "-o", str(tmp_path / "dog.png")],
        "model": ["invert", str(tmp_path / "cat.png"), "--model", "someone/not-cached", "-o", str(tmp_path / "i.safetensors")],
    }
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith(("HF_", "HTTP", "http"))}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{_closed_port()}", HF_HOME=str(tmp_path / "hf"),
               STYLEFORGE_CACHE=str(tmp_path / "cache"), TORCH_HOME=str(tmp_path / "torch"))
    done = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(commands)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = json.loads(done.stdout.strip().splitlines()[-1])
    for name, run in runs.items():
        lines = [line for line in run["stderr"].splitlines() if line.strip()]
        assert run["code"] == 2, (name, run)
        assert len(lines) == 1 and lines[0].startswith("styleforge: error:"), (name, run["stderr"][-2000:])
        assert "no network" in lines[0] and "Retrying" not in run["stderr"], (name, lines)
        assert run["seconds"] < 30, (name, run["seconds"])  # the hub client's retries took 3.6 minutes
    assert "--caption" in runs["caption"]["stderr"] and "someone/not-cached" in runs["model"]["stderr"]
