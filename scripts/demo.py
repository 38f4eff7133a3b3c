"""The README's main job: region-wise stylization with the model bundled in the package, offline.

Restyles the meadow of examples/content_landscape.png (examples/mask_meadow.png) with the look of the coffee photo
and writes outputs/demo/region_landscape.png and its side-by-side strip (content | style | mask | result).
"""

import os
import sys
from pathlib import Path

from styleforge.cli.main import main

# relative to where it runs (run.sh runs it from the repository root), as a user types them: the output's metadata
# records the input paths as given
examples = Path(os.path.relpath(Path(__file__).resolve().parent.parent / "examples"))
out = Path("outputs/demo/region_landscape.png")
sys.exit(main(["region", "apply", "--content", str(examples / "content_landscape.png"),
               "--style", str(examples / "style_coffee.png"), "--mask", str(examples / "mask_meadow.png"),
               "-o", str(out), "--offline", "--overwrite"]))
