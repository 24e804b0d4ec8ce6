"""`corolla serve`: the web app of corolla.serve on a local port."""
from __future__ import annotations

import socket
import sys
import warnings
from pathlib import Path

from .. import limits
from .options import add_model_options, checkpoint_path, load_model_for, path_text, whole_number

INSTALL = "pip install 'corolla[serve]'"


def register(sub) -> None:
    p = sub.add_parser("serve", help="a web page on 127.0.0.1 to generate, interpolate and watch a training run")
    add_model_options(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=whole_number(0, 65535), default=7860, help="port (0: any free one)")
    p.add_argument("--run", metavar="DIR", type=path_text,
                   help="a training run folder whose loss curve and grids the page shows (default: the "
                        "checkpoint argument when it is a run folder)")
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


def run_serve(args) -> int:
    try:
        import uvicorn

        from ..serve import guards
        from ..serve.app import create_app
        from ..serve.engine import Engine, Limits
    except ImportError as error:
        raise ValueError(f"corolla serve needs the web app extra ({error.name} is missing): {INSTALL}") from None
    run_dir = Path(args.run) if args.run else None
    if run_dir is not None and not run_dir.is_dir():
        raise ValueError(f"--run {args.run!r} is not a folder")
    if run_dir is None and args.checkpoint and (Path(args.checkpoint) / "metrics.jsonl").is_file():
        run_dir = Path(args.checkpoint)
    with listen(args.host, args.port) as server_socket:  # before the model loads: a busy port fails at once
        model, config, device = load_model_for(args)
        name = args.checkpoint or f"shipped model {args.model or 'default'} ({checkpoint_path(args)})"
        engine = Engine(model, config.data.image_size, str(name), Limits(args.max_images, args.max_steps))
        loopback = guards.is_loopback_host(args.host)
        if not loopback:
            warnings.warn(f"--host {args.host}: anyone who can reach this port can use this machine's "
                          f"{'GPU' if device.type == 'cuda' else 'CPU'} through the page; there is no login",
                          stacklevel=2)
        host, port = server_socket.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        print(f"corolla: serving {name} at http://{shown}:{port}/ (Ctrl-C stops)", flush=True)
        app = create_app(engine, run_dir, loopback_only=loopback)
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=2,
                                               limit_concurrency=guards.MAX_CONNECTIONS))
        server.run(sockets=[server_socket])
    print("corolla: server stopped", file=sys.stderr)
    return 0
