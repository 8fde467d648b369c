"""The torch.export front end of the graph analysis: an exported program as an fx graph in the
vocabulary the analysis reads (``torch.fx``'s), for models fx cannot trace.

``torch.export`` records ATen ops with the model's parameters lifted to inputs. This module turns
them back: ``aten.linear`` / ``aten.layer_norm`` / ``aten.embedding`` / ``aten.conv{1,2}d`` whose
weight is the parameter of an ``nn.Linear`` / ``nn.LayerNorm`` / ``nn.Embedding`` / ``nn.Conv{1,2}d``
of the model (the op is that module's own forward, by its ``nn_module_stack``) become ``call_module``
nodes of that module; the other parameters, buffers and constants ``get_attr`` nodes; views,
transposes, element-wise ops, ``scaled_dot_product_attention``, indexing and reductions the torch
functions and methods the fx walker knows (``aten.view(x, [b, s, -1, d])`` is ``x.view(b, s, -1, d)``).
Every other op stays an ATen op, which the analysis does not know and freezes with its name. Each
node keeps the ``nn_module_stack`` export recorded (for skippable blocks). The analysis then runs
on this graph exactly as on an fx trace: there is one analysis, two ways to get its graph.
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

aten = torch.ops.aten

_MODULE_OPS: dict[object, tuple[type[nn.Module], ...]] = {
    aten.linear.default: (nn.Linear,),
    aten.layer_norm.default: (nn.LayerNorm,),
    aten.embedding.default: (nn.Embedding,),
    aten.conv1d.default: (nn.Conv1d,),
    aten.conv2d.default: (nn.Conv2d,),
}
"""ATen op -> the module types whose forward is that op (weight: argument 1; ``embedding``: 0, ``layer_norm``: 2)."""

_FUNCTIONS: dict[object, object] = {
    aten.add.Tensor: operator.add,
    aten.sub.Tensor: operator.sub,
    aten.mul.Tensor: operator.mul,
    aten.div.Tensor: operator.truediv,
    aten.relu.default: torch.relu,
    aten.tanh.default: torch.tanh,
    aten.sigmoid.default: torch.sigmoid,
    aten.gelu.default: F.gelu,
    aten.silu.default: F.silu,
    aten.dropout.default: F.dropout,
    aten.clone.default: torch.clone,
    aten.mean.dim: torch.mean,
    aten.sum.dim_IntList: torch.sum,
    aten.scaled_dot_product_attention.default: F.scaled_dot_product_attention,
}  # fmt: skip
_METHODS = {
    aten.view.default: "view",
    aten.reshape.default: "reshape",
    aten.transpose.int: "transpose",
    aten.permute.default: "permute",
    aten.sym_size.int: "size",
}
_DROPPED = {aten._assert_tensor_metadata.default}  # checks with no result
_SDPA_KEYWORDS = ("scale", "enable_gqa")  # keyword-only in F.scaled_dot_product_attention (args 6 and 7)
_FULL = 2**62


def export_graph(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> fx.GraphModule:
    """``model`` exported with ``inputs`` (every dim static) and rewritten for the analysis; its
    ``call_module`` nodes name the model's own modules. Raises what ``torch.export`` raises."""
    ep = torch.export.export(model, tuple(inputs), strict=False)
    sig = ep.graph_signature
    tensors = {**sig.inputs_to_parameters, **sig.inputs_to_buffers}
    constants = dict(sig.inputs_to_lifted_tensor_constants)
    owned: dict[str, tuple[str, nn.Module]] = {}  # weight FQN -> (module path, module)
    kinds = tuple(t for ts in _MODULE_OPS.values() for t in ts)
    for path, m in model.named_modules():
        if isinstance(m, kinds) and getattr(m, "weight", None) is not None:
            owned[f"{path}.weight" if path else "weight"] = (path, m)
    state = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    g = fx.Graph()
    env: dict[fx.Node, object] = {}
    root: dict[str, object] = {}
    lifted: dict[str, fx.Node] = {}

    def attr(node: fx.Node) -> fx.Node:
        if node.name not in lifted:
            if node.name in constants:
                target = f"_lifted_{node.name}"
                root[target] = ep.constants[constants[node.name]]
            else:
                target = tensors[node.name]
                root[target] = state[target] if target in state else ep.state_dict[target]
            lifted[node.name] = g.get_attr(target)
        return lifted[node.name]

    def arg(a):
        def one(n: fx.Node):
            v = env[n]
            return attr(n) if v is None else v

        return fx.node.map_arg(a, one)

    for node in ep.graph.nodes:
        if node.op == "placeholder":
            if node.name in tensors or node.name in constants:
                env[node] = None  # a get_attr where an op uses it
            else:
                env[node] = g.placeholder(node.name)
            continue
        if node.op == "output":
            outs = arg(node.args[0])
            g.output(outs[0] if isinstance(outs, list | tuple) and len(outs) == 1 else outs)
            continue
        t = node.target
        stack = dict(node.meta.get("nn_module_stack") or {})
        new = None
        if t in _DROPPED and not node.users:
            continue
        if t in _MODULE_OPS:
            w = node.args[{aten.embedding.default: 0, aten.layer_norm.default: 2}.get(t, 1)]
            path, m = owned.get(tensors.get(w.name, ""), ("", None)) if isinstance(w, fx.Node) else ("", None)
            last = next(reversed(stack.values()))[0] if stack else None
            if m is not None and isinstance(m, _MODULE_OPS[t]) and last == path and _is_forward_of(t, node, m, tensors):
                x = node.args[1] if t is aten.embedding.default else node.args[0]
                new = g.call_module(path, (arg(x),))
                root[path] = m
                stack = {k: v for k, v in stack.items() if v[0] != path}
        elif t is aten.slice.Tensor and _whole(node):
            env[node] = env[node.args[0]] if env[node.args[0]] is not None else attr(node.args[0])
            continue
        elif t is aten.select.int:
            rank = len(node.args[0].meta["val"].shape)
            dim = node.args[1] % rank
            new = g.call_function(operator.getitem, (arg(node.args[0]), (slice(None),) * dim + (node.args[2],)))
        elif t in _METHODS:
            new = g.call_method(_METHODS[t], arg(tuple(node.args)), arg(dict(node.kwargs)))
        elif t in _FUNCTIONS:
            args, kwargs = list(node.args), dict(node.kwargs)
            if t is aten.scaled_dot_product_attention.default:
                for i, k in enumerate(_SDPA_KEYWORDS, start=6):
                    if len(args) > i:
                        kwargs[k] = args[i]
                args = args[:6]
            if t is aten.add.Tensor and kwargs.pop("alpha", 1) != 1:
                args, kwargs = list(node.args), dict(node.kwargs)
                new = g.call_function(t, arg(tuple(args)), arg(kwargs))
            else:
                new = g.call_function(_FUNCTIONS[t], arg(tuple(args)), arg(kwargs))
        if new is None:
            new = g.call_function(t, arg(tuple(node.args)), arg(dict(node.kwargs)))
        if stack:
            new.meta["nn_module_stack"] = stack
        env[node] = new
    g.lint()
    return fx.GraphModule(root, g, class_name=type(model).__name__)


def _is_forward_of(t, node: fx.Node, m: nn.Module, tensors: dict[str, str]) -> bool:
    """Whether the op computes the module's own forward: its bias (and, for a LayerNorm, its shape)."""
    if t is aten.embedding.default:
        return len(node.args) < 3 or node.args[2] == (-1 if m.padding_idx is None else m.padding_idx)
    bias_at = 2 if t is not aten.layer_norm.default else 3
    b = node.args[bias_at] if len(node.args) > bias_at else None
    has_bias = getattr(m, "bias", None) is not None
    if has_bias != isinstance(b, fx.Node):
        return False
    if t is aten.layer_norm.default:
        return tuple(node.args[1]) == tuple(m.normalized_shape) and (len(node.args) < 5 or node.args[4] == m.eps)
    if t in (aten.conv1d.default, aten.conv2d.default):
        return m.padding_mode == "zeros"
    return True


def _whole(node: fx.Node) -> bool:
    """``x[:, 0:n]`` over a whole dim (a no-op slice)."""
    args = list(node.args) + [None] * (5 - len(node.args))
    _, dim, start, end, step = args[:5]
    size = node.args[0].meta["val"].shape[dim or 0]
    return start in (None, 0) and (end is None or (isinstance(end, int) and end >= size)) and step in (None, 1)
