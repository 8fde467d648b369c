import pytest
import torch

from nasprune.elastic.supernet import extract
from nasprune.errors import ExportError
from nasprune.export import check_parity, export_subnet
from nasprune.registry import create_supernet


def test_parity_check_catches_a_wrong_model(tmp_path):
    net = create_supernet("mlp_digits").eval()
    cfg = net.space.smallest()
    res = export_subnet(net, cfg, tmp_path / "m.onnx")
    other = extract(net, cfg)
    with torch.no_grad():
        other.fc.bias.add_(1.0)
    with pytest.raises(ExportError, match=r"differ by .* at batch 1 \(tolerance 0.0001\)"):
        check_parity(res.path, other, net.space.input_shape)


def test_export_rejects_invalid_config(tmp_path):
    net = create_supernet("mlp_digits")
    from nasprune.errors import ConfigError

    with pytest.raises(ConfigError, match=r"widths\.stem\.0: 7 is not allowed"):
        export_subnet(net, {"depths": {"blocks.0-2": 0}, "widths": {"stem.0": 7}}, tmp_path / "x.onnx")
