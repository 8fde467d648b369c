"""int8 latency tables: the same keys as fp32, each unit and subnet quantized before it is timed."""

from __future__ import annotations

import json

import pytest

from nasprune.errors import LatencyTableError
from nasprune.latency import LatencyTable, build_table, get_table, table_path
from nasprune.latency.ops import all_ops
from tests.latency.conftest import FAST


@pytest.fixture(scope="module")
def int8_table(tiny_resnet):
    return build_table(tiny_resnet, n_fit=6, n_validate=3, settings=FAST, precision="int8")


@pytest.mark.slow
def test_int8_table_has_the_same_keys_its_own_error_and_predicts(int8_table, resnet_table, tiny_resnet):
    assert int8_table.precision == "int8" and resnet_table.precision == "fp32"
    assert {e.op for e in int8_table.entries} == set(all_ops(tiny_resnet)) == {e.op for e in resnet_table.entries}
    assert int8_table.error is not None and int8_table.error.n == 3
    assert int8_table.correction.fit_subnets == 6
    # its entries were measured on quantized graphs, not copied from the fp32 table
    assert [e.median_ms for e in int8_table.entries] != [e.median_ms for e in resnet_table.entries]
    for cfg in (tiny_resnet.smallest(), tiny_resnet.largest()):
        assert int8_table.predict(cfg) > 0


@pytest.mark.slow
def test_files_by_precision_and_old_tables_load_as_fp32(int8_table, resnet_table, tiny_resnet, tmp_path):
    int8_table.save(table_path(tiny_resnet.name, "board", tmp_path, precision="int8"))
    raw = json.loads(resnet_table.to_json())
    raw.pop("precision")  # a file written before tables had a precision
    old = table_path(tiny_resnet.name, "board", tmp_path)
    old.write_text(json.dumps(raw))
    assert old.name == f"{tiny_resnet.name}__board.json"
    assert LatencyTable.load(old).precision == "fp32"
    assert get_table(tiny_resnet, "board", tmp_path, precision="int8") == int8_table
    assert get_table(tiny_resnet, "board", tmp_path).predict(tiny_resnet.largest()) == resnet_table.predict(
        tiny_resnet.largest()
    )
    # a table file of the wrong precision under the int8 name is refused, saying what it holds
    table_path(tiny_resnet.name, "board", tmp_path, precision="int8").write_text(json.dumps(raw))
    with pytest.raises(LatencyTableError, match="holds fp32 latencies, not int8"):
        get_table(tiny_resnet, "board", tmp_path, precision="int8")
    with pytest.raises(LatencyTableError, match="unknown precision 'fp16'"):
        get_table(tiny_resnet, "board", tmp_path, precision="fp16")
