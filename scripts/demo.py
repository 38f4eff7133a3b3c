"""The README's main job. Runs offline, writes into outputs/demo/.

For now it runs the shared inversion machinery on a tiny, randomly initialised SD-shaped model (so the result
is noise-like by design): it shows the whole path (model folder -> CLI -> inversion file -> reconstruction PNG)
working without any downloaded weights.
"""

import sys
from pathlib import Path

import numpy as np
from PIL import Image

from styleforge.cli.main import main

out = Path("outputs/demo")
out.mkdir(parents=True, exist_ok=True)
model = out / "tiny-sd1"
if not (model / "model_index.json").exists():
    assert main(["tiny-model", str(model)]) == 0
image = out / "input.png"
if not image.exists():
    rng = np.random.RandomState(0)
    Image.fromarray((rng.rand(64, 64, 3) * 255).astype(np.uint8)).save(image)
code = main(["invert", str(image), "--model", str(model), "--prompt", "a photo of a cat", "--steps", "10",
             "-o", str(out / "input.inversion.safetensors"), "--reconstruction", str(out / "input.recon.png"),
             "--overwrite", "--no-cache"])
print("tiny random model: the reconstruction is noise-like by design" if code == 0 else "demo failed")
sys.exit(code)
