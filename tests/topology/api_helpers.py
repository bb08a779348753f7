"""Helpers of the core API tests (tests/topology/test_*.py, split from test_api.py):
the float64 probe ``probe`` and the models and masks several tests share.

Expected values come from closed forms derived from the written semantics
(see the module docstring of ``topo_pai.topology``) or from ``probe`` below,
a float64 torch re-implementation of those semantics for ``nn.Sequential``
chains that shares no code with ``topo_pai``:

* neuron resolution: weights are replaced by their 0/1 masks, biases dropped,
  activations/norms are identities and every pool is a *sum* over its window,
  so the network output summed over units is the number of paths from the
  all-ones input; autograd's gradients are the backward counts, and an
  unpruned weight is effective iff its gradient is positive;
* channel resolution: a conv is the (O, C) matrix of per-kernel tap counts,
  pools are identities and a flatten repeats channel ``c`` over its ``H*W``
  features.
"""

from __future__ import annotations

import math
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402


RES = ("channel", "neuron")


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

def prunable_names(model) -> list[str]:
    return [f"{n}.weight" for n, m in model.named_modules()
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]


def weight_shape(model, name):
    mod = model.get_submodule(name.rsplit(".", 1)[0])
    w = getattr(mod, "weight_orig", None)
    return tuple((w if w is not None else mod.weight).shape)


def random_masks(model, density=0.5, seed=0, keep_nonempty=True) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name in prunable_names(model):
        m = (torch.rand(weight_shape(model, name), generator=g) < density).float()
        if keep_nonempty and m.sum() == 0:
            m.view(-1)[0] = 1.0
        out[name] = m
    return out


def dense_masks(model):
    return {n: torch.ones(weight_shape(model, n)) for n in prunable_names(model)}


def _window_sum(x, pool_fn):
    """Sum over the windows of any pool, read off torch: output unit q covers
    input position p iff ``pool_fn`` of the one-hot image e_p is positive at q
    (max pools pad with -inf, so padding never covers anything)."""
    spatial = tuple(x.shape[2:])
    n = int(np.prod(spatial))
    basis = torch.eye(n, dtype=torch.float64).reshape((n, 1) + spatial)
    cover = pool_fn(basis)  # (n_in, 1, *out)
    out_sp = tuple(cover.shape[2:])
    A = (cover.reshape(n, -1) > 0).to(torch.float64).T  # (n_out, n_in)
    y = x.reshape(x.shape[0], x.shape[1], n) @ A.T
    return y.reshape(x.shape[:2] + out_sp)


def _sum_pool(x, mod):
    """Sum pooling with the geometry of a Max/Avg pool module (zero padding adds nothing)."""
    if isinstance(mod, (nn.MaxPool1d, nn.MaxPool2d)):
        return _window_sum(x, mod)
    one_d = isinstance(mod, (nn.MaxPool1d, nn.AvgPool1d))
    if one_d:
        x = x.unsqueeze(2)
    k = mod.kernel_size if not one_d else (1, _first(mod.kernel_size))
    s = mod.stride if not one_d else (1, _first(mod.stride))
    p = mod.padding if not one_d else (0, _first(mod.padding))
    y = F.avg_pool2d(x, k, s, p, ceil_mode=mod.ceil_mode, count_include_pad=True,
                     divisor_override=1)
    return y.squeeze(2) if one_d else y


def _adaptive_sum(x, output_size):
    """Sum over the windows of torch's adaptive pooling."""
    pool = F.adaptive_avg_pool1d if x.dim() == 3 else F.adaptive_avg_pool2d
    return _window_sum(x, lambda b: pool(b, output_size))


def _first(v):
    return v[0] if isinstance(v, (tuple, list)) else v


def probe(model: nn.Sequential, masks: dict, input_shape: tuple) -> dict:
    """Independent float64 oracle for an ``nn.Sequential`` chain (see module doc).

    Returns ``{res: dict(count, eff_nodes, eff_masks, fwd, bwd)}`` where fwd/bwd
    are per node group (input, then each layer) float arrays.
    """
    dd = torch.float64
    xn = torch.ones((1,) + tuple(input_shape), dtype=dd, requires_grad=True)
    xc = torch.ones(input_shape[0], dtype=dd, requires_grad=True)
    groups_n, groups_c = [xn], [xc]
    wn_all, wc_all, mask_all = {}, {}, {}
    hn, hc = xn, xc
    for name, mod in model.named_children():
        if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            pname = f"{name}.weight"
            m = torch.as_tensor(masks.get(pname, torch.ones(weight_shape(model, pname)))).to(dd)
            mask_all[pname] = m
            wn = m.clone().requires_grad_(True)
            wc = m.clone().requires_grad_(True)
            wn_all[pname], wc_all[pname] = wn, wc
            if isinstance(mod, nn.Linear):
                hn = F.linear(hn, wn)
                hc = wc @ hc
            else:
                conv = F.conv1d if isinstance(mod, nn.Conv1d) else F.conv2d
                hn = conv(hn, wn, None, mod.stride, mod.padding, mod.dilation, mod.groups)
                O, I = m.shape[:2]
                G = mod.groups
                taps = wc.sum(dim=tuple(range(2, wc.dim())))  # (O, I) multiplicities
                rows = []
                for o in range(O):
                    g = o // (O // G)
                    rows.append(torch.cat([torch.zeros(g * I, dtype=dd), taps[o],
                                           torch.zeros((G - g - 1) * I, dtype=dd)]))
                hc = torch.stack(rows) @ hc
            hn.retain_grad()
            hc.retain_grad()
            groups_n.append(hn)
            groups_c.append(hc)
        elif isinstance(mod, (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d)):
            hn = _sum_pool(hn, mod)
        elif isinstance(mod, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d,
                              nn.AdaptiveMaxPool2d)):
            hn = _adaptive_sum(hn, mod.output_size)
        elif isinstance(mod, nn.Flatten):
            hw = int(np.prod(hn.shape[2:])) if hn.dim() > 2 else 1
            hc = hc.repeat_interleave(hw)
            hn = torch.flatten(hn, 1)
        elif isinstance(mod, (nn.ReLU, nn.BatchNorm1d, nn.BatchNorm2d, nn.Dropout, nn.Identity)):
            pass
        else:  # pragma: no cover - test bug
            raise TypeError(mod)
    out = {}
    for res, y, groups, ws in (("neuron", hn, groups_n, wn_all), ("channel", hc, groups_c, wc_all)):
        total = y.sum()
        total.backward()
        fwd = [g.detach().reshape(g.shape[1:] if res == "neuron" else g.shape).numpy().copy()
               for g in groups]
        bwd = [g.grad.reshape(g.shape[1:] if res == "neuron" else g.shape).numpy().copy()
               for g in groups]
        eff_nodes = sum(int(((f > 0) & (b > 0)).sum()) for f, b in zip(fwd, bwd))
        eff_masks = {k: ((w.grad > 0) & (mask_all[k] > 0)).numpy() for k, w in ws.items()}
        out[res] = dict(count=float(total.detach()), eff_nodes=eff_nodes, eff_masks=eff_masks,
                        fwd=fwd, bwd=bwd)
    return out


def seq_with_head(body: list[nn.Module], input_shape, n_out: int, flatten=True) -> nn.Sequential:
    """``nn.Sequential(*body, Flatten(), Linear(features, n_out))``, features from a forward."""
    mods = list(body) + ([nn.Flatten()] if flatten else [])
    with torch.no_grad():
        feat = nn.Sequential(*mods)(torch.zeros((1,) + tuple(input_shape))).shape[1]
    return nn.Sequential(*mods, nn.Linear(feat, n_out)).eval()


def assert_matches_probe(topo, model, masks, input_shape):
    p = probe(model, masks, input_shape)
    for res in RES:
        want = p[res]
        assert want["count"] < 2 ** 52  # float64 counts are exact integers here
        pc = topo.count_paths(res)
        assert pc.exact == int(want["count"]), res
        if want["count"] > 0:
            assert math.isclose(pc.log10, math.log10(want["count"]), rel_tol=1e-12, abs_tol=1e-12)
        else:
            assert pc.log10 == -math.inf
        assert topo.effective_nodes(res) == want["eff_nodes"], res
        eff = topo.effective_masks(res)
        for k, m in want["eff_masks"].items():
            assert np.array_equal(eff[k].numpy(), m), (res, k)
        assert topo.effective_params(res) == sum(int(m.sum()) for m in want["eff_masks"].values())
        fc, bc = topo.forward_counts(res), topo.backward_counts(res)
        for name, f, b in zip(topo.group_names, want["fwd"], want["bwd"]):
            np.testing.assert_array_equal(fc[name].to_float(), f, err_msg=f"{res} fwd {name}")
            np.testing.assert_array_equal(bc[name].to_float(), b, err_msg=f"{res} bwd {name}")


def log10_int(n: int) -> float:
    s = str(n)
    head = 17
    if len(s) <= head:
        return math.log10(n)
    return math.log10(int(s[:head])) + (len(s) - head)


def all_queries(topo) -> dict:
    """Every scalar and per-weight answer, both resolutions, for equality checks."""
    out = {}
    for res in RES:
        pc = topo.count_paths(res)
        out[res] = dict(
            exact=pc.exact, log10=pc.log10, nodes=topo.effective_nodes(res),
            params=topo.effective_params(res),
            masks={k: v.numpy().copy() for k, v in topo.effective_masks(res).items()},
            fwd={k: v.to_float().copy() for k, v in topo.forward_counts(res).items()},
            bwd={k: v.to_float().copy() for k, v in topo.backward_counts(res).items()},
        )
    out["n_params"] = topo.n_params
    out["n_unpruned"] = topo.n_unpruned
    return out


def assert_same_answers(a: dict, b: dict):
    assert a["n_params"] == b["n_params"]
    assert a["n_unpruned"] == b["n_unpruned"]
    for res in RES:
        x, y = a[res], b[res]
        assert x["exact"] == y["exact"], res
        assert x["log10"] == y["log10"] or (math.isnan(x["log10"]) and math.isnan(y["log10"]))
        assert x["nodes"] == y["nodes"] and x["params"] == y["params"], res
        assert x["masks"].keys() == y["masks"].keys()
        for k in x["masks"]:
            assert np.array_equal(x["masks"][k], y["masks"][k]), (res, k)
        for key in ("fwd", "bwd"):
            assert x[key].keys() == y[key].keys()
            for k in x[key]:
                np.testing.assert_array_equal(x[key][k], y[key][k])


# ---------------------------------------------------------------------------
# models used in several tests
# ---------------------------------------------------------------------------

def small_cnn(seed=0):
    """conv -> BN -> ReLU -> maxpool -> conv -> flatten -> linear, on (2, 6, 6)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(3, 4, 2), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 2 * 2, 3),
    )


SMALL_CNN_SHAPE = (2, 6, 6)
