"""Thin Ray adapters (the ``[ray]`` extra): corpus jobs on Ray Data, the HTTP server as Ray Serve replicas.

- :func:`run_ray_job`: ``t5ort batch --ray``: ``ray.data`` reads the corpus, ``map_batches`` runs
  :class:`CorpusMapper` (one runtime per actor, an actor pool sized by ``workers``) over it, and
  the rows go out as Parquet. Batching, bucketing, validation and the output columns are
  :mod:`t5ort.corpus`'s; nothing is re-implemented here.
- :func:`serve_deployment`: ``t5ort serve --ray``: a Ray Serve deployment whose replicas each load
  the export and serve :func:`t5ort.serve.create_app`'s FastAPI app (``@serve.ingress``), N of
  them or autoscaled; :func:`run_serve` runs it behind Ray Serve's HTTP proxy.

Importing this package does not import Ray; each function does, when called.
"""

from .data import CorpusMapper, run_ray_job
from .serve import REPLICA_HEADER, run_serve, serve_deployment

__all__ = ["REPLICA_HEADER", "CorpusMapper", "run_ray_job", "run_serve", "serve_deployment"]
