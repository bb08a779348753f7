"""The per-layer table (issue 15, item 3): shapes, density, dense and effective MACs,
checked against forward hooks on the model; records, DataFrame, markdown, JSON."""

import json
import math
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import topo_pai  # noqa: E402
from topo_pai.summary import COLUMNS  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent.parent))
import own_models  # noqa: E402

SHAPE = (3, 8, 8)


def hooked_shapes(model, shape):
    """``{layer: (in shape, out shape)}`` of one sample, seen by forward hooks."""
    seen = {}
    handles = [m.register_forward_hook(
        lambda mod, i, o, name=name: seen.__setitem__(name, (tuple(i[0].shape[1:]),
                                                             tuple(o.shape[1:]))))
        for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    with torch.no_grad():
        model.eval()(torch.zeros(1, *shape))
    for h in handles:
        h.remove()
    return seen


@pytest.fixture
def setup():
    torch.manual_seed(0)
    model = own_models.ResDepthNet()
    gen = torch.Generator().manual_seed(2)
    masks = {f"{n}.weight": torch.rand(m.weight.shape, generator=gen) < 0.3
             for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    return model, masks, topo_pai.from_torch(model, masks, SHAPE)


@pytest.mark.parametrize("res", ["channel", "neuron"])
def test_rows_against_forward_hooks(setup, res):
    model, masks, topo = setup
    s = topo.summary(res)
    shapes = hooked_shapes(model, SHAPE)
    assert all(tuple(r) == COLUMNS for r in s.rows)
    assert s.rows[0]["in_shape"] is None and s.rows[0]["out_shape"] == SHAPE
    assert s.rows[0]["density"] is None and s.rows[0]["macs"] == 0
    for row in s.rows[1:]:
        name = row["name"]
        w = model.get_submodule(name).weight
        assert (row["in_shape"], row["out_shape"]) == shapes[name]
        positions = math.prod(shapes[name][1][1:])
        assert row["macs"] == w.numel() * positions
        assert row["density"] == pytest.approx(int(masks[f"{name}.weight"].sum()) / w.numel())
        assert row["effective_macs"] == row["effective_params"] * positions
    assert s.totals["macs"] == topo_pai.from_torch(model, {}, SHAPE).effective_flops()
    assert s.totals["effective_macs"] == topo.effective_flops(res)
    assert s.totals["effective_macs"] < s.totals["macs"]


def test_dataframe(setup):
    _, _, topo = setup
    s = topo.summary()
    pd = pytest.importorskip("pandas")
    df = s.to_dataframe()
    assert isinstance(df, pd.DataFrame) and list(df.index) == [r["name"] for r in s.rows]
    assert list(df.columns) == list(COLUMNS[1:])
    assert int(df.loc["c1", "macs"]) == s.rows[[r["name"] for r in s.rows].index("c1")]["macs"]


def test_dataframe_without_pandas(setup, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas now fails
    with pytest.raises(ImportError, match="pip install pandas.*to_records"):
        setup[2].summary().to_dataframe()


def test_markdown_and_json(setup):
    model, masks, topo = setup
    s = topo.summary()
    md = s.to_markdown().splitlines()
    table = [line for line in md if line.startswith("|")]
    assert len(table) == len(s.rows) + 2
    assert len({line.count("|") for line in table}) == 1
    assert md[-1].startswith("totals (channel resolution)") and "effective MACs" in md[-1]
    assert "| c2 | Conv2d | 6x6x3x3 | 6x8x8 -> 6x8x8 |" in s.to_markdown()
    back = json.loads(s.to_json())
    assert back["resolution"] == "channel" and back["rows"][1]["in_shape"] == [3, 8, 8]
    assert back["totals"]["macs"] == s.totals["macs"]
    dead = topo.with_masks({k: torch.zeros_like(v) for k, v in masks.items()}).summary()
    text = dead.to_json(indent=None)
    back = json.loads(text)  # strict JSON: no bare -Infinity
    assert "Infinity" not in text and back["totals"]["log10_paths"] == "-inf"
    assert float(back["rows"][2]["log10_in_paths"]) == -math.inf
    assert np.isclose(float(json.loads(s.to_json())["totals"]["log10_paths"]),
                      s.totals["log10_paths"])
