import numpy as np
import pytest

from nasprune.errors import ConfigError, SpaceError
from nasprune.registry import list_spaces, load_space
from nasprune.space import parse_space

RESNET = {
    "name": "tiny",
    "family": "resnet",
    "dataset": "mnist5k",
    "input_shape": [1, 28, 28],
    "num_classes": 10,
    "stem_widths": [8],
    "stages": [{"depths": [1, 2], "stride": 2, "out_widths": [8, 16], "mid_widths": [8, 16]}],
}


def _with(**changes):
    data = {**RESNET, **changes}
    return data


def test_builtin_spaces_are_registered():
    assert {"resnet_mnist", "mlp_digits"} <= set(list_spaces())


def test_size_counts_distinct_architectures():
    sp = parse_space(RESNET)
    # depth 1: out(2) * mid(2); depth 2: out(2) * mid(2)^2 -> (4 + 8) * stem(1)
    assert sp.size == 12
    rng = np.random.default_rng(0)
    seen = {sp.sample(rng).key() for _ in range(400)}
    assert len(seen) == 12


def test_unknown_key_in_yaml_is_named(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text(
        "name: bad\nfamily: mlp\ndataset: digits\ninput_shape: [64]\nnum_classes: 10\n"
        "stages:\n  - {depths: [1], widths: [16], widht: 3}\n"
    )
    with pytest.raises(SpaceError, match=r"stages\.0\.mlp\.widht|stages\.0\.widht"):
        load_space(f)


def test_top_level_typo_is_named():
    with pytest.raises(SpaceError, match="stem_width.*unknown field"):
        parse_space(_with(stem_width=[8]))


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"num_classes": 0}, "num_classes"),
        ({"input_shape": [1, -28, 28]}, "input_shape.1"),
        ({"stem_widths": [0]}, "stem_widths.0"),
        ({"stem_widths": [12]}, "channel_divisor"),
        ({"stages": [{"depths": [0], "out_widths": [8], "mid_widths": [8]}]}, "depths.0"),
        ({"stages": [{"depths": [1], "out_widths": [], "mid_widths": [8]}]}, "out_widths"),
        ({"family": "transformer"}, "family"),
    ],
)
def test_invalid_space_values_name_the_field(change, field):
    with pytest.raises(SpaceError, match=field):
        parse_space(_with(**change))


def test_missing_space_file_and_unknown_name():
    with pytest.raises(SpaceError, match="does not exist"):
        load_space("/nonexistent/space.yaml")
    with pytest.raises(SpaceError, match=r"unknown search space 'nope' \(available: .*resnet_mnist"):
        load_space("nope")


def test_config_validation_names_field_and_allowed_values():
    sp = load_space("resnet_mnist")
    good = sp.largest()
    with pytest.raises(ConfigError, match=r"widths\.stage1\.out: 40 is not allowed \(allowed: \[16, 32, 48, 64\]\)"):
        sp.config(good.depths, {**good.widths, "stage1.out": 40})
    with pytest.raises(ConfigError, match=r"depths\.stage2: 4 is not allowed \(allowed: \[1, 2, 3\]\)"):
        sp.config({**good.depths, "stage2": 4}, good.widths)
    with pytest.raises(ConfigError, match=r"depths\.stage0: 0 is not allowed"):
        sp.config({**good.depths, "stage0": 0}, good.widths)
    with pytest.raises(ConfigError, match=r"widths\.stage0\.block0\.mid: -16 is not allowed"):
        sp.config(good.depths, {**good.widths, "stage0.block0.mid": -16})
    with pytest.raises(ConfigError, match=r"widths\.stage9\.out: no such layer"):
        sp.config(good.depths, {**good.widths, "stage9.out": 16})
    with pytest.raises(ConfigError, match=r"depths\.stage1: missing"):
        sp.config({"stage0": 1, "stage2": 1}, good.widths)
    with pytest.raises(ConfigError, match=r"unknown config field"):
        sp.parse_config({**good.model_dump(), "extra": 1})
    with pytest.raises(ConfigError, match=r"is not allowed"):
        sp.config(good.depths, {**good.widths, "stem": "16"})


def test_inactive_widths_are_dropped_and_key_is_stable():
    sp = load_space("resnet_mnist")
    big = sp.largest()
    shallow = {**big.depths, "stage0": 1}
    a = sp.config(shallow, big.widths)
    assert "stage0.block2.mid" not in a.widths
    b = sp.config(shallow, {k: v for k, v in big.widths.items() if k != "stage0.block2.mid"})
    assert a == b and a.key() == b.key()
    assert a.key() != big.key()
    assert sp.parse_config(a.model_dump()).key() == a.key()


def test_uniform_scaling_is_monotone_in_width():
    sp = load_space("resnet_mnist")
    small, big = sp.uniform(0.5), sp.uniform(1.0)
    assert big == sp.largest()
    assert all(small.widths[k] <= big.widths[k] for k in small.widths)
