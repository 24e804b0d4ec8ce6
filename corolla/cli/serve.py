"""`corolla serve`: the web page of corolla.serve (Gradio) on a local port."""
from __future__ import annotations

import socket
import sys
import warnings
from pathlib import Path

from .. import limits
from ..storage import checkpoint, pretrained
from .options import add_precision, path_text, whole_number

INSTALL = "pip install 'corolla[serve]'"


def register(sub) -> None:
    p = sub.add_parser("serve", help="a web page on 127.0.0.1 to generate, edit, interpolate and watch a training run")
    p.add_argument("checkpoints", nargs="*", type=path_text, metavar="CHECKPOINT",
                   help="checkpoint or run folders to offer besides the shipped models (the first is chosen at "
                        "first; a run folder follows its newest checkpoint)")
    p.add_argument("--model", metavar="NAME", help="the shipped model chosen at first (default: the first "
                                                   "CHECKPOINT, else the default shipped model)")
    add_precision(p)
    p.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda, cuda:N, mps")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=whole_number(0, 65535), default=7860, help="port (0: any free one)")
    p.add_argument("--run", metavar="DIR", type=path_text,
                   help="a training run folder whose loss curves and grids the page shows (default: the first "
                        "CHECKPOINT that is a run folder)")
    p.add_argument("--max-images", type=whole_number(1, 1024), default=64, help="images per request")
    p.add_argument("--max-steps", type=whole_number(1, limits.MAX_STEPS), default=200,
                   help="sampling steps per request")
    p.set_defaults(func=run_serve)


def listen(host: str, port: int) -> socket.socket:
    """A listening socket, bound before the server starts: a port in use is a one-line error, and
    --port 0 gets a free port whose number is printed."""
    try:
        return socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except OSError as error:
        raise ValueError(f"cannot listen on {host}:{port} ({error.strerror or error}); "
                         f"choose another --port or --host") from None


def _run_dir(args) -> Path | None:
    if args.run:
        if not Path(args.run).is_dir():
            raise ValueError(f"--run {args.run!r} is not a folder")
        return Path(args.run)
    return next((Path(c) for c in args.checkpoints if (Path(c) / "metrics.jsonl").is_file()), None)


def _default(args) -> str:
    if args.model is not None and args.checkpoints:
        raise ValueError(f"give checkpoints ({args.checkpoints[0]}, ...) or --model {args.model}, not both")
    if args.model is not None:
        pretrained.path(args.model)  # an unknown name fails here, with the shipped names
        return args.model
    return args.checkpoints[0] if args.checkpoints else pretrained.DEFAULT


def run_serve(args) -> int:
    try:
        from ..serve import app as served
        from ..serve.engine import Limits
        from ..serve.guards import Turns, is_loopback_host
        from ..serve.models import Catalogue
        from ..serve.page import Page
        from ..serve.results import Results
        from ..serve.run import RunPanel
    except ImportError as error:
        raise ValueError(f"corolla serve needs the web page extra ({error.name} is missing): {INSTALL}") from None
    from ..devices import resolve_device
    from ..precision import resolve
    run_dir, default = _run_dir(args), _default(args)
    for given in args.checkpoints:
        checkpoint.resolve(given)  # a folder that is no checkpoint fails before the server starts
    with listen(args.host, args.port) as server_socket, served.private_folder() as folder:
        device = resolve_device(args.device)
        turns = Turns()
        catalogue = Catalogue(args.checkpoints, device, resolve(args.precision, device),
                              Limits(args.max_images, args.max_steps), turns)
        served.gradio_cache(Path(folder))
        page = Page(catalogue, Results(Path(folder) / "results"),
                    RunPanel(run_dir, Path(folder) / "run") if run_dir else None, default)
        page.engine(default)  # loaded now: a checkpoint that cannot load fails before serving
        loopback = is_loopback_host(args.host)
        if not loopback:
            warnings.warn(f"--host {args.host}: anyone who can reach this port can use this machine's "
                          f"{'GPU' if device.type == 'cuda' else 'CPU'} through the page; there is no login",
                          stacklevel=2)
        app = served.create_app(page, loopback_only=loopback)
        host, port = server_socket.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        print(f"corolla: serving {default} at http://{shown}:{port}/ (Ctrl-C stops)", flush=True)
        served.serve(app, server_socket, turns)
    print("corolla: server stopped", file=sys.stderr)
    return 0
