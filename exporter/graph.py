"""A Keras 3 model as one flat graph of layer calls: what the folder reads and what the folded module runs.

Keras records a functional model as nodes (one per call of a layer or op) joined by KerasTensors. This
module lists those nodes in an order where every input is computed before it is used, with nested
functional and Sequential models inlined, so that folding can ask of any tensor who produced it and who
consumes it, across model boundaries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import keras

from bnserve.core.errors import UserError


@dataclass(frozen=True)
class GraphNode:
    """One call of one layer or op: ``outputs = operation(*args, **kwargs)``."""

    index: int
    operation: object
    arguments: object
    """The call's keras SymbolicArguments: ``arguments.fill_in({tensor id: value})`` gives (args, kwargs)."""
    inputs: tuple[int, ...]
    """ids of the KerasTensors this call reads."""
    outputs: tuple[int, ...]
    """ids of the KerasTensors this call writes."""
    input_shapes: tuple[tuple, ...]
    output_shapes: tuple[tuple, ...]

    @property
    def name(self) -> str:
        return getattr(self.operation, "name", type(self.operation).__name__)

    @property
    def kind(self) -> str:
        return type(self.operation).__name__


@dataclass
class LayerGraph:
    """A model with one input and one output, flattened: ``nodes`` in execution order."""

    input_id: int
    input_shape: tuple
    output_id: int
    nodes: list[GraphNode]
    aliases: dict[int, int] = field(default_factory=dict)
    """A nested model's input and output tensors, each mapped to the outer tensor it stands for."""

    def resolve(self, tensor_id: int) -> int:
        while tensor_id in self.aliases:
            tensor_id = self.aliases[tensor_id]
        return tensor_id

    def producer(self, tensor_id: int) -> GraphNode | None:
        tensor_id = self.resolve(tensor_id)
        return self._producers.get(tensor_id)

    def consumers(self, tensor_id: int) -> list[GraphNode]:
        return self._consumers.get(self.resolve(tensor_id), [])

    def calls_of(self, operation) -> list[GraphNode]:
        return [node for node in self.nodes if node.operation is operation]

    def is_output(self, tensor_id: int) -> bool:
        return self.resolve(tensor_id) == self.resolve(self.output_id)

    def index(self) -> None:
        self._producers = {self.resolve(t): n for n in self.nodes for t in n.outputs}
        self._consumers: dict[int, list[GraphNode]] = {}
        for node in self.nodes:
            for tensor in dict.fromkeys(self.resolve(t) for t in node.inputs):
                self._consumers.setdefault(tensor, []).append(node)

    def run(self, value, call: Callable[[GraphNode, tuple, dict], object], keep=()) -> dict:
        """Execute the graph on ``value``; ``call(node, args, kwargs)`` computes each node's outputs.
        Returns {tensor id: value} for the output and for every id in ``keep``."""
        values = {self.input_id: value}
        wanted = {self.resolve(self.output_id), *(self.resolve(t) for t in keep)}
        last_use = {}
        for node in self.nodes:
            for tensor in node.inputs:
                last_use[self.resolve(tensor)] = node.index
        view = _AliasedValues(values, self)
        for node in self.nodes:
            args, kwargs = node.arguments.fill_in(view)
            outputs = keras.tree.flatten(call(node, args, kwargs))
            for tensor, result in zip(node.outputs, outputs):
                values[self.resolve(tensor)] = result
            # Dropping values nobody reads again keeps peak memory to what the graph needs at once.
            for tensor in node.inputs:
                tensor = self.resolve(tensor)
                if last_use[tensor] == node.index and tensor not in wanted:
                    values.pop(tensor, None)
        return {t: values[t] for t in wanted}


class _AliasedValues(dict):
    """A read-only view of computed values that resolves a nested model's tensors to the outer ones."""

    def __init__(self, values: dict, graph: LayerGraph):
        super().__init__()
        self._values, self._graph = values, graph

    def __contains__(self, tensor_id) -> bool:
        return self._graph.resolve(tensor_id) in self._values

    def __getitem__(self, tensor_id):
        return self._values[self._graph.resolve(tensor_id)]

    def get(self, tensor_id, default=None):
        return self._values.get(self._graph.resolve(tensor_id), default)


def _functional_of(model, where: str):
    """The functional graph behind a Functional or a built Sequential model."""
    if isinstance(model, keras.Sequential):
        functional = getattr(model, "_functional", None)
        if functional is None:
            raise UserError(
                f"{where}: the Sequential model {model.name!r} has no input shape; build it with "
                "keras.Input(shape=(H, W, C)) as its first layer"
            )
        return functional
    if not hasattr(model, "_nodes_by_depth") or not getattr(model, "_is_graph_network", True):
        raise UserError(
            f"{where}: the model {model.name!r} ({type(model).__name__}) is a subclassed keras.Model; "
            "bnserve folds Sequential and functional models, whose layer graph can be read"
        )
    return model


def _ordered_nodes(functional) -> list:
    nodes = []
    for depth in sorted(functional._nodes_by_depth, reverse=True):
        nodes.extend(
            node
            for node in functional._nodes_by_depth[depth]
            if node.operation is not None and not node.is_input
        )
    return nodes


def layer_graph(model, where: str) -> LayerGraph:
    """``model`` flattened (nested models inlined); refused unless it has exactly one input and one output."""
    functional = _functional_of(model, where)
    if len(functional.inputs) != 1:
        raise UserError(
            f"{where}: the model has {len(functional.inputs)} inputs "
            f"({', '.join(t.name for t in functional.inputs)}); bnserve serves models with one image input"
        )
    if len(functional.outputs) != 1:
        raise UserError(
            f"{where}: the model has {len(functional.outputs)} outputs; bnserve serves models with one "
            "output (the logits or the probabilities)"
        )
    graph = LayerGraph(
        id(functional.inputs[0]), tuple(functional.inputs[0].shape), id(functional.outputs[0]), []
    )
    inlined: set[int] = set()
    _append_nodes(functional, graph, inlined, where)
    graph.index()
    return graph


def _append_nodes(functional, graph: LayerGraph, inlined: set[int], where: str) -> None:
    for node in _ordered_nodes(functional):
        operation = node.operation
        if isinstance(operation, keras.Model):
            inner = _functional_of(operation, where)
            if id(inner) in inlined:
                raise UserError(
                    f"{where}: the nested model {operation.name!r} is called more than once; bnserve "
                    "folds a nested model that is called once"
                )
            inlined.add(id(inner))
            if len(inner.inputs) != len(node.input_tensors) or len(inner.outputs) != len(
                node.outputs
            ):
                raise UserError(
                    f"{where}: the nested model {operation.name!r} is called with "
                    f"{len(node.input_tensors)} inputs for its {len(inner.inputs)}"
                )
            for inner_input, outer in zip(inner.inputs, node.input_tensors):
                graph.aliases[id(inner_input)] = id(outer)
            for inner_output, outer in zip(inner.outputs, node.outputs):
                graph.aliases[id(outer)] = id(inner_output)
            _append_nodes(inner, graph, inlined, where)
            continue
        graph.nodes.append(
            GraphNode(
                len(graph.nodes),
                operation,
                node.arguments,
                tuple(id(t) for t in node.input_tensors),
                tuple(id(t) for t in node.outputs),
                tuple(tuple(t.shape) for t in node.input_tensors),
                tuple(tuple(t.shape) for t in node.outputs),
            )
        )
