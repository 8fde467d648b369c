import numpy as np
import pytest
import yaml

from nasprune.errors import ConfigError, SpaceError
from nasprune.registry import BUILTIN_DIR, list_spaces, load_space
from nasprune.space import parse_space

TINY = {
    "name": "tiny",
    "family": "graph",
    "model": "nasprune.models.resnet_mnist:resnet_mnist",
    "dataset": "mnist5k",
    "input_shape": [1, 28, 28],
    "num_classes": 10,
    "graph_digest": "405ef8208343cf7e",
    "groups": {
        "stem_conv": {"widths": [8]},
        "stages.0.0.conv2": {"widths": [8, 16]},
        "stages.0.1.conv1": {"widths": [8, 16], "within": "stages.0.1"},
    },
    "sequences": {"stages.0.1-2": {"blocks": ["stages.0.1", "stages.0.2"], "depths": [0, 1]}},
}


def _with(**changes):
    return {**TINY, **changes}


def test_builtin_spaces_are_registered():
    assert {"resnet_mnist", "mlp_digits"} <= set(list_spaces())


def test_size_counts_distinct_architectures():
    sp = parse_space(TINY)
    # depth 0: stem(1) * stream(2); depth 1: stem(1) * stream(2) * block 1's width(2) -> 2 + 4
    assert sp.size == 6
    rng = np.random.default_rng(0)
    seen = {sp.sample(rng).key() for _ in range(400)}
    assert len(seen) == 6


def test_unknown_key_in_yaml_is_named(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump(_with(groups={"stem_conv": {"widths": [8, 16], "widht": 3}})))
    with pytest.raises(SpaceError, match=r"groups\.stem_conv\.widht: unknown field"):
        load_space(f)


def test_top_level_typo_is_named():
    with pytest.raises(SpaceError, match="sequence.*unknown field"):
        parse_space(_with(sequence={}))


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"num_classes": 0}, "num_classes"),
        ({"input_shape": [1, -28, 28]}, "input_shape.1"),
        ({"groups": {"stem_conv": {"widths": [0]}}}, r"groups\.stem_conv\.widths\.0"),
        ({"groups": {"stem_conv": {"widths": [12, 16]}}}, "channel_divisor"),
        ({"groups": {"stem_conv": {"widths": []}}}, "widths"),
        ({"sequences": {"s": {"blocks": ["a"], "depths": [0, 2]}}}, "exceed"),
        ({"graph_digest": "xyz"}, "graph_digest"),
        ({"model": "torch.nn:Linear;rm -rf"}, "model"),
        ({"family": "transformer"}, "family"),
    ],
)
def test_invalid_space_values_name_the_field(change, field):
    with pytest.raises(SpaceError, match=field):
        parse_space(_with(**change))


@pytest.mark.parametrize(("family", "builtin"), [("resnet", "resnet_mnist"), ("mlp", "mlp_digits")])
def test_a_space_in_the_retired_family_schema_says_what_to_change(tmp_path, family, builtin):
    """Spaces users wrote for the hand-written families (before spaces were derived from graphs)."""
    f = tmp_path / "old.yaml"
    f.write_text(f"name: old\nfamily: {family}\ndataset: x\ninput_shape: [64]\nnum_classes: 10\nstages: []\n")
    with pytest.raises(SpaceError) as e:
        load_space(f)
    msg = str(e.value)
    assert f"'family: {family}'" in msg and "nasprune model inspect" in msg and "--save" in msg
    assert f"nasprune.models.{builtin}:{builtin}" in msg and "groups" in msg and "sequences" in msg


def test_builtin_space_files_are_plain_derived_spaces():
    """Adding a family is one model file plus one YAML: the built-ins are graph spaces of plain models."""
    for name in ("resnet_mnist", "mlp_digits"):
        data = yaml.safe_load((BUILTIN_DIR / f"{name}.yaml").read_text())
        assert data["family"] == "graph" and data["model"] == f"nasprune.models.{name}:{name}"


def test_missing_space_file_and_unknown_name():
    with pytest.raises(SpaceError, match="does not exist"):
        load_space("/nonexistent/space.yaml")
    with pytest.raises(SpaceError, match=r"unknown search space 'nope' \(available: .*resnet_mnist"):
        load_space("nope")


def test_config_validation_names_field_and_allowed_values():
    sp = load_space("resnet_mnist")
    good = sp.largest()
    stream = "stages.1.0.conv2"
    with pytest.raises(ConfigError, match=rf"widths\.{stream}: 40 is not allowed \(allowed: \[16, 32, 48, 64\]\)"):
        sp.config(good.depths, {**good.widths, stream: 40})
    with pytest.raises(ConfigError, match=r"depths\.stages\.2\.1-2: 4 is not allowed \(allowed: \[0, 1, 2\]\)"):
        sp.config({**good.depths, "stages.2.1-2": 4}, good.widths)
    with pytest.raises(ConfigError, match=r"widths\.stages\.0\.0\.conv1: -16 is not allowed"):
        sp.config(good.depths, {**good.widths, "stages.0.0.conv1": -16})
    with pytest.raises(ConfigError, match=r"widths\.stage9\.out: no such layer"):
        sp.config(good.depths, {**good.widths, "stage9.out": 16})
    with pytest.raises(ConfigError, match=r"depths\.stages\.1\.1-2: missing"):
        sp.config({"stages.0.1-2": 1, "stages.2.1-2": 1}, good.widths)
    with pytest.raises(ConfigError, match=r"unknown config field"):
        sp.parse_config({**good.model_dump(), "extra": 1})
    with pytest.raises(ConfigError, match=r"is not allowed"):
        sp.config(good.depths, {**good.widths, "stem_conv": "16"})


def test_inactive_widths_are_dropped_and_key_is_stable():
    sp = load_space("resnet_mnist")
    big = sp.largest()
    shallow = {**big.depths, "stages.0.1-2": 1}
    a = sp.config(shallow, big.widths)
    assert "stages.0.2.conv1" not in a.widths
    b = sp.config(shallow, {k: v for k, v in big.widths.items() if k != "stages.0.2.conv1"})
    assert a == b and a.key() == b.key()
    assert a.key() != big.key()
    assert sp.parse_config(a.model_dump()).key() == a.key()


def test_uniform_scaling_is_monotone_in_width():
    sp = load_space("resnet_mnist")
    small, big = sp.uniform(0.5), sp.uniform(1.0)
    assert big == sp.largest()
    assert all(small.widths[k] <= big.widths[k] for k in small.widths)
