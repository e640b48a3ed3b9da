"""``wanport serve RECIPE [overrides] [--host 127.0.0.1] [--port 8000] [--ui] ...``

Loads the recipe's pipeline once (every check of ``wanport run`` first), then serves it: the HTTP
task API (:mod:`.app`) and, with ``--ui``, the Gradio page (:mod:`.ui`). Under torchrun rank 0
serves and the other ranks follow (:mod:`.group`). Exit status: 0 after Ctrl-C / SIGTERM, the
usual codes for a recipe the pipeline refuses, 1 when a rank of the group failed.
"""

from __future__ import annotations

import ipaddress
import os
import sys

from ..errors import ConfigError

TOKEN_ENV = "WANPORT_SERVE_TOKEN"


def add_arguments(sp) -> None:
    sp.add_argument("recipe", nargs="?", default=None, help="recipe YAML (default: the embedded tiny recipe)")
    sp.add_argument("overrides", nargs="*", help="key.path=value overrides of the recipe")
    sp.add_argument("--set", action="append", metavar="KEY=VALUE", help="an override (repeatable)")
    sp.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    sp.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    sp.add_argument("--token", default=None,
                    help="bearer token required on every route but /v1/health (default: $%s; none: open)" % TOKEN_ENV)
    sp.add_argument("--out-dir", default=None, help="output folder: tasks.sqlite3, tasks/, uploads/ (default: the "
                                                "recipe's output.dir)")
    sp.add_argument("--queue", type=int, default=8, help="tasks that may wait (default 8; more: HTTP 429)")
    sp.add_argument("--image-dir", default=None,
                    help="folder whose images requests may name by path (default: none, uploads only)")
    sp.add_argument("--max-upload-bytes", type=int, default=8 << 20, help="largest image upload (default 8 MiB)")
    sp.add_argument("--ui", action="store_true", help="also serve the Gradio page at /ui (pip install 'wanport[serve]')")


def _check_settings(args) -> None:
    """Settings and the serving packages, before any weight loads."""
    problems = []
    if not 0 <= args.port <= 65535:
        problems.append("--port %d: give 0..65535" % args.port)
    if args.queue < 1:
        problems.append("--queue %d: at least 1 task must be able to wait" % args.queue)
    if args.max_upload_bytes < 1:
        problems.append("--max-upload-bytes %d: must be positive" % args.max_upload_bytes)
    if args.image_dir is not None and not os.path.isdir(args.image_dir):
        problems.append("--image-dir %s: not a folder" % args.image_dir)
    if args.token is not None and not args.token.strip():
        problems.append("--token: empty; give a secret or leave it out")
    missing = []
    for module in ("fastapi", "uvicorn") + (("gradio",) if args.ui else ()):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        problems.append("serving needs %s: pip install 'wanport[serve]'" % ", ".join(missing))
    if not problems and os.environ.get("RANK", "0") == "0":
        import socket

        try:  # the address, before any weight loads (rank 0 alone listens)
            family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((args.host, args.port))
        except OSError as exc:
            problems.append("cannot listen on %s port %d (%s): choose another --port or --host"
                            % (args.host, args.port, exc.strerror or exc))
    if problems:
        raise ConfigError("wanport serve: " + "; ".join(problems))


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cmd_serve(args) -> int:
    from ..config import load_recipe

    if args.recipe is not None and "=" in args.recipe and not args.recipe.endswith((".yaml", ".yml")):
        args.overrides.insert(0, args.recipe)
        args.recipe = None
    overrides = list(args.overrides) + list(args.set or [])
    args.token = args.token if args.token is not None else os.environ.get(TOKEN_ENV) or None
    _check_settings(args)
    cfg, raw = load_recipe(args.recipe, overrides)
    source = "recipe %s" % args.recipe if args.recipe else "the embedded tiny recipe"
    out_dir = os.path.abspath(args.out_dir or cfg.output.dir)

    from ..pipeline.api import Pipeline

    pipe = Pipeline.from_config(cfg, raw, source=source, progress=False)
    mesh = pipe._prep.mesh
    control = None
    if mesh is not None:
        from .group import Control

        control = Control(pipe._prep.plan.parallel.timeout_s)
        if not pipe.is_main:
            return _follower(pipe, control)
    return _serve(args, pipe, control, out_dir)


def _follower(pipe, control) -> int:
    import signal

    from .group import follow

    # Ctrl-C reaches every rank of a terminal's torchrun: rank 0 shuts the server down and sends
    # "stop"; the other ranks wait for it (or notice rank 0's end) instead of dying mid-collective
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        code = follow(pipe, control)
    except Exception as exc:
        print("wanport serve (rank %d): rank 0 failed or stopped answering: %s: %s; exiting"
              % (control.rank, type(exc).__name__, exc), file=sys.stderr, flush=True)
        os._exit(1)  # the process group is broken: its teardown could wait for the dead rank
    pipe.close()
    return code


def _serve(args, pipe, control, out_dir: str) -> int:
    import uvicorn

    from .app import ServeState, make_app
    from .body import BodyLimits
    from .store import TaskStore
    from .tasks import LocalRunner, TaskQueue

    store = TaskStore(out_dir)
    if control is not None:
        from .group import GroupRunner

        runner = GroupRunner(pipe, control)
        idle_s = max(0.5, min(2.0, control.timeout_s / 4))
    else:
        runner, idle_s = LocalRunner(pipe), 2.0
    holder = {}

    def on_fatal(message: str) -> None:
        server = holder.get("server")
        if server is not None:
            server.should_exit = True

    queue = TaskQueue(store, runner, max_queued=args.queue, idle_s=idle_s, on_fatal=on_fatal)
    limits = BodyLimits(out_dir, os.path.abspath(args.image_dir) if args.image_dir else None, args.max_upload_bytes)
    os.makedirs(limits.upload_dir, exist_ok=True)
    state = ServeState(pipe, queue, store, limits, token=args.token, world=runner.world)
    app = make_app(state)
    if args.ui:
        from .ui import mount_ui

        app = mount_ui(app, state)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    holder["server"] = server
    queue.start()
    where = "http://%s:%d" % (args.host if ":" not in args.host else "[%s]" % args.host, args.port)
    print("wanport serve: %s on %s (%d process%s), loaded in %.2f s; %s/v1/health%s%s; output folder %s%s"
          % (pipe.model, pipe.device, runner.world, "" if runner.world == 1 else "es", pipe.load_s, where,
             ", page %s/ui" % where if args.ui else "", ", bearer token required" if args.token else "", out_dir,
             "; %d interrupted task(s) of an earlier server marked failed" % store.interrupted if store.interrupted
             else ""), flush=True)
    if not _loopback(args.host) and not args.token:
        print("wanport serve: warning: listening on %s without a token: anyone who reaches this address can "
              "submit tasks (set --token or $%s)" % (args.host, TOKEN_ENV), file=sys.stderr, flush=True)
    import signal

    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)  # uvicorn re-sends it after its shutdown
    try:
        server.run()
    except KeyboardInterrupt:  # likewise Ctrl-C: the shutdown has happened, end normally
        pass
    except SystemExit:  # uvicorn exits when it cannot bind after all
        if server.started:
            raise
    finally:
        signal.signal(signal.SIGTERM, previous)
        if queue.fatal is None:
            queue.stop()
    if queue.fatal is not None:
        store.close()
        print("wanport serve: stopped: %s" % queue.fatal, file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(1)  # the process group is broken: its teardown could wait for the dead rank
    if not server.started:
        store.close()
        pipe.close()
        raise ConfigError("wanport serve: could not listen on %s:%d (in use, or not an address of this machine); "
                          "choose another --port or --host" % (args.host, args.port))
    store.close()
    pipe.close()
    return 0


__all__ = ["add_arguments", "cmd_serve", "TOKEN_ENV"]
