"""One weights file for all graphs: each distinct tensor stored once, page-aligned, memory-mappable.

optimum writes every graph with its weights inside the protobuf, so the encoder
and the decoder each carry the word embedding. Here every initializer of a graph
(its If branches included) above a small size moves into one ``weights.bin``
beside the graphs, as ONNX external data; a tensor whose bytes another graph
already stored points at the same region. onnxruntime memory-maps the file:
the pages a kernel re-packs at load are released after, and an embedding table
that only a Gather reads stays on disk except for the rows a request touches.
Large tensors start on a page of their own, so no neighbour pulls theirs in.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..runtime.manifest import WeightsSpec, file_sha256

WEIGHTS_FILE = "weights.bin"
MIN_EXTERNAL_BYTES = 1024  # smaller tensors (shapes, scales, biases of tiny models) stay in the graph
PAGE_BYTES = 4096
LARGE_BYTES = 1 << 16  # tensors from this size on are page-aligned; smaller ones 64-byte aligned (SIMD loads)


def _initializers(graph):
    """Every initializer of ``graph`` and of its subgraphs (If branches, loop bodies)."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.g.ByteSize():
                yield from _initializers(attr.g)
            for sub in attr.graphs:
                yield from _initializers(sub)


def store_weights(directory: Path, graph_files: list[str]) -> int:
    """Move the initializers of ``graph_files`` (in ``directory``) into ``directory/weights.bin``.

    Each graph file is rewritten to refer to the weights file; external-data files
    that optimum wrote beside a graph are removed. Returns the weights file's size.
    """
    import onnx
    from onnx.external_data_helper import set_external_data

    regions: dict[tuple, tuple[int, int]] = {}  # (dtype, dims, sha256) -> (offset, length)
    old_files: set[Path] = set()
    models = []
    partial = directory / f".{WEIGHTS_FILE}.partial"  # graphs may still read an older weights.bin while this is written
    with open(partial, "wb") as out:
        for name in graph_files:
            path = directory / name
            model = onnx.load(str(path), load_external_data=False)
            old_files |= {path.parent / e.value for t in _initializers(model.graph) for e in t.external_data
                          if e.key == "location"}
            onnx.external_data_helper.load_external_data_for_model(model, str(directory))
            for tensor in _initializers(model.graph):
                data = tensor.raw_data  # exporters write initializers as raw bytes; others stay in the graph
                if len(data) < MIN_EXTERNAL_BYTES:
                    continue
                key = (tensor.data_type, tuple(tensor.dims), hashlib.sha256(data).digest())
                if key not in regions:
                    align = PAGE_BYTES if len(data) >= LARGE_BYTES else 64
                    offset = -out.tell() % align + out.tell()
                    out.seek(offset)
                    out.write(data)
                    regions[key] = (offset, len(data))
                offset, length = regions[key]
                set_external_data(tensor, WEIGHTS_FILE, offset=offset, length=length)
                tensor.ClearField("raw_data")
            models.append((path, model))
    partial.replace(directory / WEIGHTS_FILE)
    for path, model in models:
        onnx.save(model, str(path))
    for old in old_files - {directory / WEIGHTS_FILE}:
        old.unlink(missing_ok=True)
    return (directory / WEIGHTS_FILE).stat().st_size


def weights_spec(directory: Path) -> WeightsSpec:
    """The manifest entry for ``directory/weights.bin``: its size and checksum."""
    path = directory / WEIGHTS_FILE
    return WeightsSpec(file=WEIGHTS_FILE, sha256=file_sha256(path), bytes=path.stat().st_size)
