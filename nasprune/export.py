"""ONNX export that checks itself: export, ``onnx.checker``, onnxruntime parity, metadata.

The file is a single self-contained ``.onnx`` (no external-data sidecar) with a dynamic batch axis
(and, where the caller names them, dynamic sequence dims), input ``input`` and output ``logits``; a
token model (a space's ``input_kind: tokens``) takes ``input_ids`` and ``attention_mask`` instead, with
a dynamic sequence length.
Metadata (``metadata_props``) records the space, the subnet key and config, params and MACs, plus
anything the caller adds (accuracy, latencies).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from nasprune._quiet import quiet_export
from nasprune.errors import ExportError
from nasprune.graph.inputs import PackedTokens, example_inputs, input_names, onnx_inputs
from nasprune.graph.supernet import GraphSupernet, extract
from nasprune.onnxrt import make_session
from nasprune.space import SubnetConfig

OPSET = 18
META_PREFIX = "nasprune."


@dataclass
class ExportResult:
    path: Path
    max_abs_diff: float
    export_seconds: float
    metadata: dict[str, str] = field(default_factory=dict)


# torch.export traces through process-wide state (dynamo's mode stacks): two exports in two threads
# at once fail ("Trying to pop empty mode stack"), so one export runs at a time per process.
_EXPORT_LOCK = threading.Lock()


def _torch_export(
    model: nn.Module,
    sample: torch.Tensor | tuple[torch.Tensor, ...],
    path: Path,
    sequence_dims: tuple[int, ...] = (),
    input_kind: str = "tensor",
) -> None:
    """``torch.onnx.export`` as is: with ``verbose=False`` it prints nothing.

    Exports run in the service's worker threads, so ``sys.stdout`` is left alone (``redirect_stdout``
    swaps it for every thread, and two exports at once could restore each other's: a discarded buffer
    would stay ``sys.stdout``). Warnings and log records go where the application sends them, except
    two notices the exporter gives torch's own developers (``nasprune._quiet.quiet_export``), ignored
    inside the lock, so no two exports swap the warning filters at once.
    """
    samples = sample if isinstance(sample, tuple) else (sample,)
    dims = {0: torch.export.Dim("batch", min=1, max=4096)} | {
        d: torch.export.Dim(f"sequence{d}", min=2, max=samples[0].shape[d]) for d in sequence_dims
    }  # every input shares them (token ids and their mask)
    with _EXPORT_LOCK, quiet_export():
        torch.onnx.export(
            model,
            samples,
            str(path),
            dynamo=True,
            external_data=False,
            optimize=True,
            verbose=False,
            opset_version=OPSET,
            input_names=input_names(input_kind),
            output_names=["logits"],
            dynamic_shapes=tuple(dict(dims) for _ in samples),
        )


def check_parity(
    path: str | Path,
    model: nn.Module,
    input_shape: tuple[int, ...],
    batch_sizes: tuple[int, ...] = (1, 7),
    atol: float = 1e-4,
    seed: int = 0,
    sequence_dims: tuple[int, ...] = (),
    input_kind: str = "tensor",
) -> float:
    """Max |onnxruntime - torch| over random inputs at each batch size (and, for each of the input's
    ``sequence_dims``, a shorter length too); raises above ``atol``. ``model`` reads the inputs of
    ``input_kind`` (:func:`nasprune.graph.inputs.example_inputs`), the file what the export gave it."""
    sess = make_session(path)
    gen = torch.Generator().manual_seed(seed)
    worst = 0.0
    model = model.eval()
    shapes = [(b, *input_shape) for b in batch_sizes]
    if sequence_dims:
        short = [max(2, n // 2) if d in sequence_dims else n for d, n in enumerate(input_shape, start=1)]
        shapes += [(b, *short) for b in batch_sizes]
    for shape in shapes:
        where = f"batch {shape[0]}" + (f", input {shape}" if sequence_dims else "")
        xs = example_inputs(shape[1:], shape[0], input_kind, gen)
        with torch.no_grad():
            ref = model(*xs).numpy()
        feed = zip(input_names(input_kind), onnx_inputs(xs, input_kind), strict=True)
        (got,) = sess.run(None, {n: x.numpy() for n, x in feed})
        if got.shape != ref.shape:
            raise ExportError(f"{path}: onnxruntime output shape {got.shape} != torch {ref.shape} at {where}")
        diff = float(np.max(np.abs(got - ref)))
        worst = max(worst, diff)
        if not diff <= atol:
            raise ExportError(
                f"{path}: onnxruntime and torch outputs differ by {diff:.3g} at {where} (tolerance {atol:g})"
            )
    return worst


def export_model(
    model: nn.Module,
    input_shape: tuple[int, ...],
    path: str | Path,
    metadata: dict[str, object] | None = None,
    atol: float = 1e-4,
    sequence_dims: tuple[int, ...] = (),
    input_kind: str = "tensor",
) -> ExportResult:
    """Export a plain torch model to ONNX, check it and stamp ``metadata`` into it. ``sequence_dims``:
    dims of the input (1 is the first after the batch) whose size may vary up to the given shape's.
    ``input_kind`` (:data:`nasprune.space.INPUT_KINDS`): ``tokens`` for a model of ``(batch, 2, L)`` token
    ids and masks (``input_shape`` ``(2, L)``); the file then takes ``input_ids`` and ``attention_mask``,
    ``(batch, L)`` int64, with the batch and the sequence length dynamic."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    exported, sample = model, example_inputs(input_shape, 1, input_kind)
    if input_kind == "tokens":  # the file takes the ids and the mask apart, each (batch, L), L dynamic
        exported, sample, sequence_dims = PackedTokens(model).eval(), onnx_inputs(sample, input_kind), (1,)
    t0 = time.perf_counter()
    try:
        _torch_export(exported, sample, path, sequence_dims, input_kind)
    except Exception as e:  # the exporter raises many types; report them as one named error
        raise ExportError(f"torch.onnx.export failed for {path.name}: {type(e).__name__}: {e}") from e
    seconds = time.perf_counter() - t0
    proto = onnx.load(str(path))
    if input_kind == "tokens":  # what a caller tokenises to, and what timing feeds it
        metadata = {"input_kind": input_kind, "max_length": input_shape[-1], **(metadata or {})}
    meta = _prefixed(metadata or {})
    write_metadata(proto, meta)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"{path}: onnx.checker rejected the model: {e}") from None
    onnx.save(proto, str(path))
    if input_kind == "tokens":
        sequence_dims = (2,)  # of the model's (batch, 2, L) input
    diff = check_parity(path, model, input_shape, atol=atol, sequence_dims=sequence_dims, input_kind=input_kind)
    return ExportResult(path, diff, seconds, meta)


def _prefixed(metadata: dict[str, object]) -> dict[str, str]:
    return {f"{META_PREFIX}{k}": v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}


def write_metadata(proto: onnx.ModelProto, meta: dict[str, str]) -> None:
    existing = {p.key: p for p in proto.metadata_props}
    for k, v in meta.items():
        if k in existing:
            existing[k].value = v
        else:
            proto.metadata_props.add(key=k, value=v)


def stamp_metadata(path: str | Path, metadata: dict[str, object]) -> None:
    """Add ``nasprune.*`` metadata to an exported file in place (e.g. a latency measured later)."""
    proto = onnx.load(str(path))
    write_metadata(proto, _prefixed(metadata))
    onnx.save(proto, str(path))


def subnet_metadata(supernet: GraphSupernet, cfg: SubnetConfig) -> dict[str, object]:
    return {
        "space": supernet.space.name,
        "space_digest": supernet.space.digest(),
        "subnet_key": cfg.key(),
        "config": cfg.to_json(),
        "params": supernet.num_params(cfg),
        "macs": supernet.macs(cfg),
    }


def export_subnet(
    supernet: GraphSupernet,
    cfg: SubnetConfig | dict,
    path: str | Path,
    extra_metadata: dict[str, object] | None = None,
    atol: float = 1e-4,
    model: nn.Module | None = None,
    sequence_dims: tuple[int, ...] = (),
) -> ExportResult:
    """Extract the subnet ``cfg`` (physically smaller tensors) and export it with checks and metadata.

    ``model`` is the already extracted subnet when the caller has one; by default it is extracted
    here *with the supernet's shared BatchNorm statistics*, which belong to no single subnet: a small
    subnet exported that way can score near chance (one class for every image) although the search
    scored it well. To export what the search scored, pass the subnet with its BatchNorm
    recalibrated, ``model=Evaluator(supernet, dataset, checkpoint_id).subnet(cfg)``
    (:class:`nasprune.evaluate.Evaluator`), as ``nasprune export`` and the search do.
    """
    cfg = supernet.space.parse_config(cfg)
    model = (model if model is not None else extract(supernet, cfg)).eval()
    meta = {**subnet_metadata(supernet, cfg), **(extra_metadata or {})}
    space = supernet.space
    return export_model(model, tuple(space.input_shape), path, meta, atol=atol, sequence_dims=sequence_dims,
                        input_kind=space.input_kind)  # fmt: skip


def read_metadata(path: str | Path) -> dict[str, str]:
    """The ``nasprune.*`` metadata of an exported model, without the prefix."""
    proto = onnx.load(str(path), load_external_data=False)
    return {p.key[len(META_PREFIX) :]: p.value for p in proto.metadata_props if p.key.startswith(META_PREFIX)}
