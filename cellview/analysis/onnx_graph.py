"""Graph surgery: expose what a GAP + linear classifier computes before its logits.

A tile classifier that ends in global average pooling and one linear layer (EfficientNet,
ResNet, MobileNet heads; CellView's own exports) already computes, for every tile:

- ``features`` (N, C): the pooled penultimate features (the input of the linear layer), what the
  out-of-domain score reads;
- ``feature_map`` (N, C, h, w): the last convolutional feature map (the input of the pooling);
- ``cam`` (N, K, h, w): the class activation map of every class, ``W · feature_map + b`` at each
  position (Zhou et al., 2016). Its spatial mean is exactly the logit, so the map is the model's
  own decision spread over the patch, not an approximation.

``add_explain_outputs`` adds these as graph outputs after ``logits`` without touching any node
that computes the logits, so WSInfer-style use of the first output is unchanged and the logits
stay bit-identical. ONNX Runtime computes every node on each run whatever is fetched; the added
nodes (a cast or identity per output, one 1×1 convolution with K filters) cost well under 1 % of
the network. Needs the ``onnx`` package (the ``train`` or ``test`` extra); inference never imports
this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cellview.base.errors import ModelError

EXPLAIN_OUTPUTS = ("features", "feature_map", "cam")
"""Output names added after the logits, in this order."""

_PASS_THROUGH = ("Flatten", "Reshape", "Squeeze", "Identity", "Dropout")


@dataclass(frozen=True)
class LinearHead:
    """Where a GAP + linear head sits in a graph, and its effective weights."""

    logits: str  # the graph's first output
    features: str  # tensor fed to the linear layer (N, C)
    feature_map: str  # tensor fed to the global pooling (N, C, h, w)
    weight: np.ndarray  # (K, C) float32, alpha and transposition applied: logits = features @ weight.T + bias
    bias: np.ndarray  # (K,) float32
    float16: bool  # the feature map is half precision (an FP16 copy of the model)


def _producers(graph: Any) -> dict[str, Any]:
    return {out: node for node in graph.node for out in node.output}


def _initializers(graph: Any) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    out = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:  # constants folded into Constant nodes count too
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    out[node.output[0]] = numpy_helper.to_array(attr.t)
    return out


def _attr(node: Any, name: str, default: Any) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def find_linear_head(model: Any) -> LinearHead:
    """Locate ``GlobalAveragePool → (Flatten) → Gemm`` (or MatMul + Add) behind the first output.

    Raises ModelError naming what was found instead when the graph has another shape.
    """
    graph = model.graph
    prod = _producers(graph)
    consts = _initializers(graph)
    logits = graph.output[0].name
    name = f"{logits!r} (the first output)"
    node = prod.get(logits)
    while node is not None and node.op_type in ("Cast", "Identity"):  # an FP16 copy casts its output
        node = prod.get(node.input[0])
    if node is None:
        raise ModelError(f"The graph's first output {name} is not computed by any node.")
    bias = None
    if node.op_type == "Gemm":
        x, w_name = node.input[0], node.input[1]
        if w_name not in consts:
            raise ModelError(f"The linear layer before {name} has no constant weights.")
        w = consts[w_name].astype(np.float32)
        if _attr(node, "transA", 0):
            raise ModelError(f"The linear layer before {name} transposes its input; not supported.")
        w = w if _attr(node, "transB", 0) else w.T
        w = w * np.float32(_attr(node, "alpha", 1.0))
        if len(node.input) > 2 and node.input[2]:
            if node.input[2] not in consts:
                raise ModelError(f"The linear layer before {name} has no constant bias.")
            bias = np.broadcast_to(consts[node.input[2]].astype(np.float32).reshape(-1), (w.shape[0],))
            bias = bias * np.float32(_attr(node, "beta", 1.0))
    elif node.op_type == "Add":
        a, b = node.input
        mm, b_name = (prod.get(a), b) if b in consts else (prod.get(b), a)
        if mm is None or mm.op_type != "MatMul" or b_name not in consts:
            raise ModelError(f"{name} is not computed by a linear layer (found Add of {a}, {b}).")
        x, w_name = mm.input
        if w_name not in consts:
            raise ModelError(f"The linear layer before {name} has no constant weights.")
        w = consts[w_name].astype(np.float32).T
        bias = consts[b_name].astype(np.float32).reshape(-1)
    elif node.op_type == "MatMul":
        x, w_name = node.input
        if w_name not in consts:
            raise ModelError(f"The linear layer before {name} has no constant weights.")
        w = consts[w_name].astype(np.float32).T
    else:
        raise ModelError(f"{name} is computed by {node.op_type}, not by a linear layer on pooled features; "
                         "only GAP + linear heads can expose features and class activation maps.")
    if w.ndim != 2:
        raise ModelError(f"The linear layer before {name} has {w.ndim}-D weights.")
    bias = np.zeros(w.shape[0], np.float32) if bias is None else np.ascontiguousarray(bias, dtype=np.float32)
    features = x
    pool = prod.get(x)
    while pool is not None and pool.op_type in _PASS_THROUGH:
        pool = prod.get(pool.input[0])
    if pool is None:
        raise ModelError(f"Nothing computes the input of the linear layer before {name}.")
    if pool.op_type == "ReduceMean":
        axes = _attr(pool, "axes", None)
        if axes is None and len(pool.input) > 1:
            axes = consts.get(pool.input[1])
        if axes is None or sorted(int(a) for a in np.asarray(axes).reshape(-1)) not in ([2, 3], [-2, -1]):
            raise ModelError(f"The pooling before {name} averages over axes {axes}, not the spatial axes (2, 3).")
    elif pool.op_type != "GlobalAveragePool":
        raise ModelError(f"The linear layer before {name} reads {pool.op_type}, not global average pooling; "
                         "class activation maps are exact only for GAP + linear heads.")
    fmap = pool.input[0]
    float16 = _elem_type(graph, fmap) == 10  # TensorProto.FLOAT16
    return LinearHead(logits, features, fmap, np.ascontiguousarray(w), bias, float16)


def replace_linear_head(model: Any, weight: np.ndarray, bias: np.ndarray) -> Any:
    """A copy of ``model`` whose linear head computes ``features @ weight.T + bias`` (shapes unchanged).

    Only the head's constants change (and the class activation maps' ``cam_weight`` / ``cam_bias``,
    which copy them), each in its own dtype, so everything before the features stays byte-identical:
    this is how ``cellview adapt`` gives a lab its own head without touching the network. The head's
    constants must not be shared with another node.
    """
    import onnx
    from onnx import numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    head = find_linear_head(out)
    weight = np.asarray(weight, np.float32)
    bias = np.asarray(bias, np.float32).reshape(-1)
    if weight.shape != head.weight.shape or bias.shape != head.bias.shape:
        raise ModelError(f"A new head must have the shape of the old one: weights {head.weight.shape}, "
                         f"bias {head.bias.shape}; got {weight.shape}, {bias.shape}.")
    graph = out.graph
    prod = _producers(graph)
    node = prod[head.logits]
    while node.op_type in ("Cast", "Identity"):
        node = prod[node.input[0]]
    values: dict[str, np.ndarray] = {}
    if node.op_type == "Gemm":
        alpha = np.float32(_attr(node, "alpha", 1.0))
        beta = np.float32(_attr(node, "beta", 1.0))
        values[node.input[1]] = (weight if _attr(node, "transB", 0) else weight.T) / alpha
        if len(node.input) > 2 and node.input[2]:
            values[node.input[2]] = bias / beta
        elif np.any(bias):
            raise ModelError("The model's linear head has no bias to hold the new one.")
    else:  # MatMul (+ Add)
        mm = node if node.op_type == "MatMul" else next(prod[i] for i in node.input if i in prod)
        values[mm.input[1]] = weight.T
        if node.op_type == "Add":
            values[next(i for i in node.input if i not in prod)] = bias
        elif np.any(bias):
            raise ModelError("The model's linear head has no bias to hold the new one.")
    users = [n for n in graph.node for i in n.input if i in values]
    if len(users) != len(values):
        raise ModelError("The model's linear head shares its constants with other nodes; cannot replace it.")
    k, c = weight.shape
    values.setdefault("cam_weight", weight.reshape(k, c, 1, 1))
    values.setdefault("cam_bias", bias)
    done = set()
    for init in graph.initializer:
        if init.name in values:
            old = numpy_helper.to_array(init)
            new = values[init.name].reshape(old.shape).astype(old.dtype)
            init.CopyFrom(numpy_helper.from_array(new, init.name))
            done.add(init.name)
    missing = [n for n in values if n not in done and n not in ("cam_weight", "cam_bias")]
    if missing:
        raise ModelError(f"The model's linear head keeps its constant {missing[0]!r} outside the initializers.")
    return out


def head_node_names(model: Any) -> list[str]:
    """Nodes that compute the logits and the maps from the last feature map: the pooling, the pass-through
    nodes after it, the linear layer and the explain taps (``cellview_*``).

    A quantised copy keeps these in float: the head's weights stay the ones ``find_linear_head`` reads
    (a head trained later can replace them in place), the pooled features are not rounded to 8 bits
    and the class activation maps stay exact (their spatial mean is the logit).
    """
    head = find_linear_head(model)
    prod = _producers(model.graph)
    names: list[str] = []
    node = prod.get(head.logits)
    while node is not None and node.op_type in ("Cast", "Identity", "Gemm", "MatMul", "Add"):
        names.append(node.name)
        if node.op_type in ("Gemm", "MatMul"):
            break
        node = prod.get(node.input[0]) if node.op_type != "Add" else next(
            (prod[i] for i in node.input if i in prod and prod[i].op_type == "MatMul"), None)
    node = prod.get(head.features)
    while node is not None and node.op_type in (*_PASS_THROUGH, "GlobalAveragePool", "ReduceMean", "Cast"):
        names.append(node.name)
        if node.op_type in ("GlobalAveragePool", "ReduceMean"):
            break
        node = prod.get(node.input[0])
    names += [n.name for n in model.graph.node if n.name.startswith("cellview_")]
    return list(dict.fromkeys(n for n in names if n))


def _elem_type(graph: Any, tensor: str) -> int | None:
    from onnx import shape_inference

    for vi in [*graph.value_info, *graph.output, *graph.input]:
        if vi.name == tensor:
            return vi.type.tensor_type.elem_type
    inferred = shape_inference.infer_shapes(_model_of(graph)).graph
    for vi in inferred.value_info:
        if vi.name == tensor:
            return vi.type.tensor_type.elem_type
    return None


def _model_of(graph: Any) -> Any:
    from onnx import helper

    return helper.make_model(graph)


def output_names(model: Any) -> list[str]:
    return [o.name for o in model.graph.output]


def add_explain_outputs(model: Any) -> Any:
    """A copy of ``model`` with ``features``, ``feature_map`` and ``cam`` outputs after the logits.

    A model that has them already is returned unchanged (a copy).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    have = output_names(out)
    if all(n in have for n in EXPLAIN_OUTPUTS):
        return out
    if any(n in have for n in EXPLAIN_OUTPUTS):
        raise ModelError(f"The model has some but not all of the outputs {', '.join(EXPLAIN_OUTPUTS)}: {have}.")
    taken = {t for n in out.graph.node for t in (*n.input, *n.output)} | {i.name for i in out.graph.initializer}
    clash = [n for n in (*EXPLAIN_OUTPUTS, "cam_weight", "cam_bias") if n in taken]
    clash += sorted(n for n in taken if n.startswith("cellview_"))
    if clash:
        raise ModelError(f"The model already uses the tensor name {clash[0]!r}; cannot add the explain outputs.")
    head = find_linear_head(out)
    g = out.graph
    k, c = head.weight.shape
    if head.float16:
        _add_float16_taps(out, head)
    else:
        g.node.append(helper.make_node("Identity", [head.features], ["features"], name="cellview_features"))
        g.node.append(helper.make_node("Identity", [head.feature_map], ["feature_map"], name="cellview_feature_map"))
    g.initializer.append(numpy_helper.from_array(head.weight.reshape(k, c, 1, 1).astype(np.float32), "cam_weight"))
    g.initializer.append(numpy_helper.from_array(head.bias.astype(np.float32), "cam_bias"))
    g.node.append(helper.make_node("Conv", ["feature_map", "cam_weight", "cam_bias"], ["cam"], name="cellview_cam",
                                   kernel_shape=[1, 1]))
    batch = _batch_dim(g)
    g.output.append(helper.make_tensor_value_info("features", TensorProto.FLOAT, [batch, c]))
    g.output.append(helper.make_tensor_value_info("feature_map", TensorProto.FLOAT, [batch, c, "h", "w"]))
    g.output.append(helper.make_tensor_value_info("cam", TensorProto.FLOAT, [batch, k, "h", "w"]))
    out.producer_name = (out.producer_name + "+cellview-explain").lstrip("+")
    onnx.checker.check_model(out)
    return out


_UNARY_ACTIVATIONS = ("Clip", "Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Elu", "Selu")


def _add_float16_taps(model: Any, head: LinearHead) -> None:
    """``features`` and ``feature_map`` of an FP16 graph, read without perturbing its logits.

    On the CPU, ONNX Runtime runs FP16 graphs by inserting casts around nodes it has no FP16
    kernel for and then removing redundant cast pairs; a new consumer of the pooled or activated
    tensor changes which pairs go and so the logits' rounding (by ~1e-4). Tapping the pooling's
    output and the activation's *input* (replaying the activation in float32) leaves that
    untouched, so the FP16 logits stay bit-identical too.
    """
    from onnx import TensorProto, helper, numpy_helper

    g = model.graph
    prod = _producers(g)
    consts = _initializers(g)
    to_f32 = {"to": TensorProto.FLOAT}
    pool = next(n for n in g.node if head.feature_map in n.input and n.op_type in ("GlobalAveragePool", "ReduceMean"))
    g.node.append(helper.make_node("Cast", [pool.output[0]], ["cellview_pooled_f32"], name="cellview_pooled", **to_f32))
    g.node.append(helper.make_node("Flatten", ["cellview_pooled_f32"], ["features"], name="cellview_features", axis=1))
    act = prod.get(head.feature_map)
    if act is not None and act.op_type in _UNARY_ACTIVATIONS and all(i in consts for i in act.input[1:] if i):
        g.node.append(helper.make_node("Cast", [act.input[0]], ["cellview_preact_f32"], name="cellview_preact",
                                       **to_f32))
        extra = []
        for j, name in enumerate(act.input[1:]):
            if not name:
                extra.append("")
                continue
            const = f"cellview_act_input_{j}"
            g.initializer.append(numpy_helper.from_array(consts[name].astype(np.float32), const))
            extra.append(const)
        attrs = {a.name: helper.get_attribute_value(a) for a in act.attribute}
        g.node.append(helper.make_node(act.op_type, ["cellview_preact_f32", *extra], ["feature_map"],
                                       name="cellview_feature_map", **attrs))
    else:
        g.node.append(helper.make_node("Cast", [head.feature_map], ["feature_map"], name="cellview_feature_map",
                                       **to_f32))


def _batch_dim(graph: Any) -> str | int:
    dim = graph.output[0].type.tensor_type.shape.dim
    if dim and dim[0].HasField("dim_value"):
        return int(dim[0].dim_value)
    return dim[0].dim_param if dim and dim[0].dim_param else "batch"


def upgrade_onnx_file(src: Path, dst: Path | None = None) -> Path:
    """Add the explain outputs to an ``.onnx`` file (in place when ``dst`` is None), written atomically."""
    import onnx

    from cellview.base.files import atomic_write_bytes

    src = Path(src)
    try:
        model = onnx.load(str(src))
    except Exception as exc:  # noqa: BLE001 - onnx raises DecodeError, OSError, ...
        raise ModelError(f"Cannot read {src} as an ONNX model.", str(exc)) from exc
    upgraded = add_explain_outputs(model)
    dst = Path(dst) if dst is not None else src
    atomic_write_bytes(dst, upgraded.SerializeToString())
    return dst
