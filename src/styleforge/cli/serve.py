"""``styleforge serve``: the web page over every method (needs the ``web`` extra: gradio)."""

from __future__ import annotations

import sys

from .. import validation as V
from .common import DEVICES, DTYPE_HELP, DTYPES, add_subcommand, str2bool

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def register(sub) -> None:
    p = add_subcommand(
        sub, "serve", help="serve a local web page with every method and the comparison (pip install styleforge[web])",
        description="A Gradio page with one tab per method (Region, Cross-Image Attention, Translate, Pair, One-shot) "
                    "and Compare, on the same code as these commands. Models stay loaded between requests; one request "
                    "runs at a time.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind; anything but 127.0.0.1 exposes the page to the network")
    p.add_argument("--port", type=V.Number(int, 1, 65535), default=7860, help="port to listen on")
    p.add_argument("--model", default=None, help="default Stable Diffusion model of the diffusion tabs, a hub id or local folder "
                                                  "(unset: each command's own)")
    p.add_argument("--region-model", default=None, help="region model folder (unset: the bundled model)")
    p.add_argument("--device", choices=DEVICES, default="auto", help="where every run happens")
    p.add_argument("--dtype", choices=DTYPES, default="auto", help=DTYPE_HELP)
    p.add_argument("--offline", action="store_true", help="never contact the hub (also HF_HUB_OFFLINE=1)")
    p.add_argument("--share", type=str2bool, default=False, help="also open a public gradio.live link (exposes the page)")
    p.add_argument("--max-file-size", default="50mb", help="largest accepted upload, e.g. 20mb or 1gb")
    p.add_argument("--workdir", default=None, help="where the sessions' temporary folder is made (removed on exit; unset: the "
                                                    "system's temporary folder)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..errors import StyleforgeError

    try:
        import gradio  # noqa: F401
    except ImportError:
        raise StyleforgeError("the web page needs gradio: pip install 'styleforge[web]'") from None
    from ..web.app import build_app, launch
    from ..web.handlers import ServerSettings, Workspace

    if args.host not in LOCAL_HOSTS:
        print(f"styleforge: warning: binding {args.host}: anyone who can reach this machine on port {args.port} can use "
              "the page and its models (the default, 127.0.0.1, keeps it local)", file=sys.stderr)
    if args.share:
        print("styleforge: warning: --share true opens a public link to this page", file=sys.stderr)
    server = ServerSettings(model=args.model, region_model=args.region_model, device=args.device, dtype=args.dtype,
                            offline=args.offline)
    workspace = Workspace(args.workdir)
    page, app = build_app(server, workspace)
    print(f"styleforge: serving on http://{'localhost' if args.host in LOCAL_HOSTS else args.host}:{args.port} "
          "(Ctrl+C stops)", flush=True)
    try:
        launch(page, app, host=args.host, port=args.port, share=args.share, max_file_size=args.max_file_size)
    finally:
        workspace.close()
    return 0
