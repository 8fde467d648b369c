"""int8 static quantization of exported models with onnxruntime, and scoring quantized models.

The format is QDQ (QuantizeLinear/DequantizeLinear pairs that onnxruntime fuses into integer
kernels when it loads the model), signed int8 weights quantized per output channel, activation
ranges calibrated on the dataset's calibration split through a
:class:`onnxruntime.quantization.CalibrationDataReader`. ``reduce_range`` stays off: it is for CPUs
without VNNI.

Activations are *unsigned* int8 by default (U8S8), not the signed S8S8 that onnxruntime's docs
recommend for x86: measured here (onnxruntime 1.31, AVX-512 VNNI), S8S8 QDQ left 12 of the 20 convs
of a resnet_mnist subnet unfused (DequantizeLinear -> float Conv -> QuantizeLinear, plus layout
transposes) and ran the subnet 1.7-3x *slower* than fp32, while U8S8 fused every conv and add into
QLinearConv/QLinearAdd and ran it ~1.5x faster (``docs/int8.md``). ``activations="s8"`` gives S8S8.

The calibration method is chosen by measured accuracy (``benchmarks/int8.py``, ``docs/int8.md``):
:data:`DEFAULT_CALIBRATION`.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import onnx

from nasprune.onnxrt import make_session

Precision = Literal["fp32", "int8"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "int8")
Calibration = Literal["minmax", "entropy", "percentile"]
CALIBRATIONS: tuple[Calibration, ...] = ("minmax", "entropy", "percentile")
DEFAULT_CALIBRATION: Calibration = "minmax"
"""MinMax: on six trained subnets of mlp_digits and resnet_mnist it scored as well as Entropy and
Percentile (all three within one validation image, see ``docs/int8.md``), and it is the one of the
three whose ranges do not depend on histogram settings."""

Activations = Literal["u8", "s8"]
DEFAULT_ACTIVATIONS: Activations = "u8"

CALIB_SAMPLES = 256
CALIB_BATCH = 32

log = logging.getLogger(__name__)


class ArrayReader:
    """A ``CalibrationDataReader`` over arrays of inputs: batches of ``batch`` rows for ``input_name``
    (or, given a dict, for every input it names).

    onnxruntime's calibrators call :meth:`get_next` until it returns None; :meth:`rewind` starts over
    (a reader serves one calibration).
    """

    def __init__(self, x: np.ndarray | dict[str, np.ndarray], input_name: str = "input", batch: int = CALIB_BATCH):
        xs = x if isinstance(x, dict) else {input_name: x}
        self.xs = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in xs.items()}
        self.n = min(len(v) for v in self.xs.values())
        if self.n == 0:
            raise ValueError("calibration needs at least one input")
        self.batch = batch
        self._it = self._batches()

    def _batches(self) -> Iterator[dict[str, np.ndarray]]:
        for i in range(0, self.n, self.batch):
            yield {k: v[i : i + self.batch] for k, v in self.xs.items()}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = self._batches()


def _reader(x, input_name: str, batch: int):
    """:class:`ArrayReader` registered as onnxruntime's reader type (imported lazily: a heavy module)."""
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(ArrayReader, CalibrationDataReader):
        pass

    return _Reader(x, input_name, batch)


def calibration_inputs(dataset, n: int = CALIB_SAMPLES, split: str = "calib") -> np.ndarray:
    """The first ``n`` inputs of the dataset's calibration split, as float32 numpy (N, *input shape)."""
    x, _ = dataset.tensors(split)
    return x[:n].numpy().astype(np.float32)


def _method(name: Calibration):
    from onnxruntime.quantization import CalibrationMethod

    table = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
             "percentile": CalibrationMethod.Percentile}  # fmt: skip
    if name not in table:
        raise ValueError(f"unknown calibration method {name!r}; allowed: {', '.join(CALIBRATIONS)}")
    return table[name]


def quantize_model(
    src: str | Path | bytes,
    dst: str | Path,
    calib: np.ndarray | dict[str, np.ndarray],
    method: Calibration = DEFAULT_CALIBRATION,
    *,
    per_channel: bool = True,
    activations: Activations = DEFAULT_ACTIVATIONS,
    input_name: str | None = None,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Quantize the float ONNX model ``src`` (a path or serialised bytes) to ``dst``: QDQ, int8
    weights per channel, ``activations`` unsigned (u8, default) or signed (s8) int8.

    ``calib`` are the calibration inputs (an array for the first graph input, or arrays by input
    name). The quantized file keeps the
    source's ``metadata_props`` and gains ``metadata`` (already prefixed keys), is checked by
    ``onnx.checker`` and loads in onnxruntime.
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    if activations not in ("u8", "s8"):
        raise ValueError(f"unknown activation type {activations!r}; allowed: u8, s8")
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="nasprune-quant-") as tmp:
        src_path = Path(tmp) / "float.onnx"
        proto = onnx.load_from_string(src) if isinstance(src, bytes) else onnx.load(str(src))
        onnx.save(proto, str(src_path))
        name = input_name or proto.graph.input[0].name
        out = Path(tmp) / "int8.onnx"
        quantize_static(
            str(src_path),
            str(out),
            _reader(calib, name, CALIB_BATCH),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8 if activations == "u8" else QuantType.QInt8,
            weight_type=QuantType.QInt8,
            per_channel=per_channel,
            reduce_range=False,
            calibrate_method=_method(method),
            extra_options={"CalibTensorRangeSymmetric": False},
        )
        q = onnx.load(str(out))
    existing = {p.key for p in q.metadata_props}
    for p in proto.metadata_props:
        if p.key not in existing:
            q.metadata_props.add(key=p.key, value=p.value)
    for k, v in (metadata or {}).items():
        for p in q.metadata_props:
            if p.key == k:
                p.value = v
                break
        else:
            q.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(q, full_check=True)
    tmp_dst = dst.with_name(f".{dst.name}.tmp")
    onnx.save(q, str(tmp_dst))
    tmp_dst.replace(dst)
    return dst


def is_qdq(path: str | Path) -> bool:
    """Whether a model holds QuantizeLinear/DequantizeLinear pairs with 8-bit zero points."""
    proto = onnx.load(str(path))
    ops = {n.op_type for n in proto.graph.node}
    if not {"QuantizeLinear", "DequantizeLinear"} <= ops:
        return False
    zps = {i.name: i for i in proto.graph.initializer}
    return any(
        zps[n.input[2]].data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
        for n in proto.graph.node
        if n.op_type == "QuantizeLinear" and len(n.input) > 2 and n.input[2] in zps
    )


def onnx_accuracy(model: str | Path | bytes, x: np.ndarray, y: np.ndarray, batch: int = 256, threads: int = 1) -> float:
    """Top-1 accuracy of an ONNX classifier (float or quantized) run by onnxruntime on ``x``/``y``."""
    sess = make_session(model, threads)
    name = sess.get_inputs()[0].name
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y)
    correct = 0
    for i in range(0, len(x), batch):
        (logits,) = sess.run(None, {name: x[i : i + batch]})
        correct += int((np.asarray(logits).argmax(1) == y[i : i + batch]).sum())
    return correct / max(len(y), 1)


def split_accuracy(model: str | Path | bytes, dataset, split: str = "val") -> float:
    """:func:`onnx_accuracy` on a split of a :class:`nasprune.data.Dataset`."""
    x, y = dataset.tensors(split)
    return onnx_accuracy(model, x.numpy(), y.numpy())


def compare_calibrations(
    fp32_model: str | Path, dataset, methods: Sequence[Calibration] = CALIBRATIONS, split: str = "val"
) -> dict[str, float]:
    """Accuracy on ``split`` of the float model and of its quantization by each calibration method."""
    calib = calibration_inputs(dataset)
    out = {"fp32": split_accuracy(fp32_model, dataset, split)}
    with tempfile.TemporaryDirectory(prefix="nasprune-calib-") as tmp:
        for m in methods:
            q = quantize_model(fp32_model, Path(tmp) / f"{m}.onnx", calib, m)
            out[m] = split_accuracy(q, dataset, split)
    return out


def random_inputs(proto: onnx.ModelProto, n: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    """``n`` standard-normal rows for every float graph input (symbolic axes taken as 1)."""
    rng = np.random.default_rng(seed)
    out = {}
    for inp in proto.graph.input:
        dims = [d.dim_value if d.HasField("dim_value") else 1 for d in inp.type.tensor_type.shape.dim]
        out[inp.name] = rng.standard_normal((n, *dims[1:])).astype(np.float32)
    return out


def quantize_for_timing(model: str | Path | bytes, n: int = 4, seed: int = 0) -> bytes:
    """The int8 QDQ form of a model timed for its latency only (values do not change dense kernels'
    speed): calibrated on ``n`` random inputs, otherwise exactly as :func:`quantize_model` (defaults)."""
    proto = onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(str(model))
    with tempfile.TemporaryDirectory(prefix="nasprune-qtime-") as tmp:
        dst = quantize_model(proto.SerializeToString(), Path(tmp) / "q.onnx", random_inputs(proto, n, seed))
        return dst.read_bytes()
