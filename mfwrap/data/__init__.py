"""Graph data: key names, neighbour lists, structure → graph conversion, readers, batching."""

from mfwrap.data import keys
from mfwrap.data.graph import AtomicGraph, GraphSpec, StructureError, edge_vectors, structures_to_graphs, to_graph
from mfwrap.data.readers import LabelledStructure, labels_of, read_dataset, read_fidelities, to_graphs

__all__ = [
    "keys",
    "AtomicGraph",
    "GraphSpec",
    "StructureError",
    "edge_vectors",
    "structures_to_graphs",
    "to_graph",
    "LabelledStructure",
    "labels_of",
    "read_dataset",
    "read_fidelities",
    "to_graphs",
]
