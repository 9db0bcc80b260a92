"""``t5ort serve --ray``: the plain server's FastAPI app as a Ray Serve deployment, one runtime per replica.

Each replica loads the export in its constructor and builds its ingress with
:func:`t5ort.serve.create_app` (``@serve.ingress()`` + ``__serve_build_asgi_app__``), so every
replica runs the same routes, schemas, validation, scheduler and batcher as ``t5ort serve``, with
its own runtime and batcher. The only addition is an ``x-t5ort-replica`` response header naming
the replica that answered. Multi-node: every node needs the export directory at the same path.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any, Mapping

REPLICA_HEADER = "x-t5ort-replica"


def serve_deployment(
    export_dir: str | Path,
    config=None,
    *,
    threads: int = 1,
    load_options: Mapping[str, Any] | None = None,
    num_replicas: int | None = 1,
    autoscaling: Mapping[str, Any] | None = None,
    name: str = "t5ort",
):
    """A bound Ray Serve application serving ``export_dir`` with ``t5ort serve``'s app; pass it to ``serve.run``.

    - ``config``: a :class:`t5ort.serve.ServeConfig` (each replica's limits and batching);
    - ``threads``: onnxruntime threads per replica (and the Ray CPUs each replica reserves);
    - ``load_options``: further :func:`t5ort.load` arguments (``max_input_tokens``, ...);
    - ``num_replicas`` replicas, or ``autoscaling``: Ray Serve's autoscaling config, e.g.
      ``{"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 4}``.
    """
    from ray import serve

    from ..serve import ServeConfig

    config = (config or ServeConfig()).validate()
    export_dir = str(Path(export_dir).resolve())
    if not (Path(export_dir) / "t5ort.json").is_file():
        raise FileNotFoundError(f"{export_dir}: no t5ort.json; pass the OUT_DIR written by `t5ort export`.")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be an int >= 1, got {threads!r}.")
    if autoscaling is not None:
        unknown = set(autoscaling) - {"min_replicas", "max_replicas", "initial_replicas", "target_ongoing_requests",
                                      "upscale_delay_s", "downscale_delay_s"}
        if unknown:
            raise ValueError(f"autoscaling: unknown key(s) {sorted(unknown)}.")
        scaling: dict[str, Any] = {"autoscaling_config": dict(autoscaling)}
    else:
        if isinstance(num_replicas, bool) or not isinstance(num_replicas, int) or num_replicas < 1:
            raise ValueError(f"num_replicas must be an int >= 1, got {num_replicas!r}.")
        scaling = {"num_replicas": num_replicas}

    @serve.deployment(name=name, ray_actor_options={"num_cpus": threads},
                      max_ongoing_requests=config.max_queue, **scaling)
    @serve.ingress()
    class T5ortReplica:
        def __init__(self, export_dir: str, config, threads: int, load_options: dict):
            import t5ort

            self.runtime = t5ort.load(export_dir, threads=threads, **load_options)
            self.config = config

        def __serve_build_asgi_app__(self):
            from t5ort.serve import create_app

            app = create_app(self.runtime, self.config)
            replica = serve.get_replica_context().replica_id.unique_id

            @app.middleware("http")
            async def name_the_replica(request, call_next):
                response = await call_next(request)
                response.headers[REPLICA_HEADER] = replica
                return response

            return app

    return T5ortReplica.bind(export_dir, config, threads, dict(load_options or {}))


def run_serve(app, *, host: str, port: int, address: str | None = None, name: str = "t5ort") -> int:
    """Start Ray Serve's HTTP proxy on ``host:port``, deploy ``app`` at ``/``, block until SIGTERM/SIGINT.

    ``address``: a running cluster (``"auto"``, ``"127.0.0.1:6379"``); None starts a local one.
    The deployment is deleted on the way out; a cluster this call started is shut down.
    """
    import ray
    from ray import serve

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address or "local")  # "local": a new cluster, never another `ray start` one
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(app, name=name, route_prefix="/")
        stop.wait()
        serve.delete(name)
        serve.shutdown()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if started_here:
            ray.shutdown()
    return 0
