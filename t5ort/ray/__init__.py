"""Thin Ray adapters (the ``[ray]`` extra): corpus jobs on Ray Data, the HTTP server as Ray Serve replicas.

- :func:`run_ray_job`: ``t5ort batch --ray``: ``ray.data`` reads the corpus, ``map_batches`` runs
  :class:`CorpusMapper` (one runtime per actor, an actor pool sized by ``workers``) over it, and
  the rows go out as Parquet. Batching, bucketing, validation and the output columns are
  :mod:`t5ort.corpus`'s; nothing is re-implemented here.

Importing this package does not import Ray; each function does, when called.
"""

from .data import CorpusMapper, run_ray_job

__all__ = ["CorpusMapper", "run_ray_job"]
