"""Tier 0 (nasprune.search.tier0): importance, the knapsack against brute force, the repair, `nasprune prune`.

On the session's trained mlp_digits supernet and its measured table (``prepared``, tests/search/conftest.py):
its space has 3,200 subnets, few enough to enumerate.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F

from nasprune.cli import main
from nasprune.data import load_dataset
from nasprune.evaluate import recalibrate_bn
from nasprune.export import read_metadata
from nasprune.graph.supernet import extract
from nasprune.latency import table_path
from nasprune.registry import load_space
from nasprune.search.tier0 import Knapsack, Tier0, Values, estimate, prune_to_budget, reconstruct
from nasprune.search.tier0.importance import measure_choices
from nasprune.train import load_checkpoint, supernet_path
from tests.search.conftest import SPACE, assert_verified_or_too_busy


@pytest.fixture(scope="module")
def trained(prepared):
    root, table = prepared
    space = load_space(SPACE)
    return load_checkpoint(supernet_path(space, root), space), space, table, load_dataset("digits")


@pytest.fixture(scope="module")
def plain(trained):
    """A plain mlp_digits trained alone (a user's model, not a supernet): Adam, 15 epochs, a few seconds."""
    from nasprune.graph import build_model

    _, space, _, ds = trained
    torch.manual_seed(0)
    model = build_model(space.model, space.model_kwargs)
    opt = torch.optim.Adam(model.parameters(), 3e-3, weight_decay=1e-4)
    for epoch in range(15):
        model.train()
        for x, y in ds.loader("train", 64, shuffle=True, seed=epoch):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def every_config(trained):
    _, space, table, _ = trained
    cfgs = []
    for depths in itertools.product(*space.depth_choices().values()):
        d = dict(zip(space.depth_choices(), depths, strict=True))
        active = space.active_layers(d)
        for widths in itertools.product(*(space.groups[g].widths for g in active)):
            cfgs.append(space.config(d, dict(zip(active, widths, strict=True))))
    assert len(cfgs) == space.size
    return cfgs, np.array([table.predict(c) for c in cfgs])


# -- importance --------------------------------------------------------------------------------------------------


def _readers(supernet, group: str):
    """(layer, column offset) of every conv/linear that reads the group (its channels as input columns)."""
    a = supernet.analysis
    for use in a.layers.values():
        if use.kind in ("conv1d", "conv2d", "linear") and not use.depthwise:
            off = 0
            for seg in use.in_layout:
                if a.var_group.get(a.var_root[seg.var]) == group:
                    yield supernet._module(use.path), off
                off += seg.features


def test_mask_gradients_match_finite_differences(trained):
    """The per-channel and per-block gradients are the derivatives of the summed loss with respect to
    scaling the channel in every reader's input, and to scaling the block's residual branch."""
    import copy

    from nasprune.search.tier0.importance import _mask_gradients

    net = copy.deepcopy(trained[0]).eval().double()
    x, y = trained[3].tensors("calib")
    x, y = x[:64].double(), y[:64]
    grads = _mask_gradients(net, x, y, batch_size=32)

    def loss() -> float:
        with torch.no_grad():
            return float(F.cross_entropy(net(x), y, reduction="sum"))

    eps = 1e-5

    def scaled_channel(group: str, channel: int, m: float) -> float:
        with torch.no_grad():
            for layer, off in _readers(net, group):
                layer.weight[:, off + channel] *= m
            value = loss()
            for layer, off in _readers(net, group):
                layer.weight[:, off + channel] /= m
        return value

    for group, channel in (("stem.0", 5), ("blocks.1.fc1", 3)):
        numeric = (scaled_channel(group, channel, 1 + eps) - scaled_channel(group, channel, 1 - eps)) / (2 * eps)
        assert float(grads[group][:, channel].sum()) == pytest.approx(numeric, rel=1e-4, abs=1e-8)
    block = net.body.get_submodule("blocks.2")
    forward = block.forward
    values = []
    for m in (1 + eps, 1 - eps):
        block.forward = lambda t, m=m: t + m * (forward(t) - t)
        values.append(loss())
    block.forward = forward
    assert float(grads["blocks.2"].sum()) == pytest.approx((values[0] - values[1]) / (2 * eps), rel=1e-4, abs=1e-8)


def test_importance_sorts_channels_and_keeps_the_important_ones(trained, plain):
    _, space, _, ds = trained
    t0 = Tier0(plain, space, None, ds, importance="fisher", values="estimate")
    x, _ = ds.tensors("val")
    with torch.no_grad():
        before = plain(x)
    scores = estimate(t0.supernet, *ds.tensors("calib"), kind="fisher")
    assert set(scores.blocks) == {b for seq in space.sequences.values() for b in seq.blocks}
    assert all(v >= 0 for v in scores.blocks.values())
    perms = t0.supernet.reorder_channels(scores.channels)
    sorted_scores = scores.permuted(perms)
    with torch.no_grad():
        assert torch.allclose(t0.supernet.eval()(x), before, atol=1e-4)  # reordering keeps the function
    for g in space.groups:
        s = sorted_scores.channels[g]
        assert torch.all(s[:-1] >= s[1:]), g  # the first w channels are the w most important
    from nasprune.elastic.modules import ElasticModule

    assert not any(isinstance(m, ElasticModule) for m in plain.modules())  # copied, not converted


def test_channels_nothing_reads_score_zero_and_sort_last(trained, plain):
    """A channel whose readers ignore it (their input columns zeroed) cannot change the loss: its Fisher
    and Taylor scores are exactly 0, sorting puts it last, and removing it changes no output."""
    import copy

    _, space, _, ds = trained
    model = copy.deepcopy(plain)
    dead = {"stem.0": list(range(3, 128, 8)), "blocks.0.fc1": [3, 7, 11, 19, 30, 41, 52, 60]}  # 16 and 8
    readers = {"stem.0": ["blocks.0.fc1", "blocks.1.fc1", "blocks.2.fc1", "fc"], "blocks.0.fc1": ["blocks.0.fc2"]}
    with torch.no_grad():
        for g, channels in dead.items():
            for path in readers[g]:
                model.get_submodule(path).weight[:, channels] = 0
    for kind in ("fisher", "taylor"):
        t0 = Tier0(model, space, None, ds, importance=kind, values="estimate")
        scores = estimate(t0.supernet, *ds.tensors("calib"), kind=kind)
        for g, channels in dead.items():
            assert torch.all(scores.channels[g][channels] == 0), (kind, g)
            assert (scores.channels[g] > 0).sum() > len(scores.channels[g]) // 2, (kind, g)
        t0.supernet.reorder_channels(scores.channels)
        largest = space.largest()
        cfg = space.config(largest.depths, {**largest.widths, "blocks.0.fc1": 56, "stem.0": 112})
        x, _ = ds.tensors("calib")
        with torch.no_grad():
            assert torch.allclose(extract(t0.supernet, cfg).eval()(x), model(x), atol=1e-4), kind


def test_measured_choice_values_are_monotone(trained):
    supernet, space, _, ds = trained
    values = measure_choices(supernet, *ds.tensors("calib"))
    for g, group in space.groups.items():
        v = [values.groups[g][w] for w in group.widths]
        assert v[-1] == 0 and all(a >= b >= 0 for a, b in itertools.pairwise(v)), g
    for s, seq in space.sequences.items():
        v = [values.sequences[s][d] for d in seq.depths]
        assert v[-1] == 0 and all(a >= b >= 0 for a, b in itertools.pairwise(v)), s
    assert values.groups["stem.0"][16] > 0  # a quarter of the stream's width costs something


def test_measured_choice_values_in_batches_agree_with_one_batch(trained, monkeypatch):
    """Large inputs are recalibrated and evaluated in batches: the same values, up to how BatchNorm
    averages batch variances."""
    from nasprune.search.tier0 import importance

    supernet, space, _, ds = trained
    one = measure_choices(supernet, *ds.tensors("calib"))
    monkeypatch.setattr(importance, "ONE_BATCH_FLOATS", 0)
    batched = measure_choices(supernet, *ds.tensors("calib"), batch_size=64)
    for g in space.groups:
        for w, v in one.groups[g].items():
            assert batched.groups[g][w] == pytest.approx(v, rel=0.1, abs=0.02), (g, w)


# -- the knapsack ------------------------------------------------------------------------------------------------


def _random_values(space, rng) -> Values:
    def decreasing(choices):
        v = np.cumsum(rng.exponential(1.0, len(choices))[::-1])[::-1]
        return {c: float(x - v[-1]) for c, x in zip(sorted(choices), v, strict=True)}

    return Values({g: decreasing(grp.widths) for g, grp in space.groups.items()},
                  {s: decreasing(seq.depths) for s, seq in space.sequences.items()})  # fmt: skip


def test_knapsack_factors_reproduce_the_table(trained, every_config):
    _, space, table, _ = trained
    cfgs, preds = every_config
    ks = Knapsack(space, table, _random_values(space, np.random.default_rng(0)))
    c = table.correction
    for cfg, pred in list(zip(cfgs, preds, strict=True))[::97]:
        lin, weights = ks.unit_cost(cfg)
        cache = c.cache_ms_per_mweight * max(0.0, weights - c.cache_free_weights) / 1e6
        assert c.intercept_ms + lin + cache == pytest.approx(pred, rel=1e-9, abs=1e-12)


def test_knapsack_against_brute_force(trained, every_config):
    """Over random monotone values and budgets across the range, the knapsack's config is within the
    budget and (nearly always) the least lossy one there is: brute force over all 3,200 subnets."""
    _, space, table, _ = trained
    cfgs, preds = every_config
    rng = np.random.default_rng(1)
    gaps = []
    for _ in range(6):
        values = _random_values(space, rng)
        ks = Knapsack(space, table, values)
        losses = np.array([values.loss(space, c) for c in cfgs])
        for q in (0.03, 0.2, 0.5, 0.8):
            budget = float(np.quantile(preds, q))
            choice = ks.solve(budget)
            assert choice.predicted_ms <= budget and table.predict(choice.config) == choice.predicted_ms
            assert choice.loss == pytest.approx(values.loss(space, choice.config))
            best = losses[preds <= budget].min()
            assert choice.loss >= best - 1e-9
            gaps.append((choice.loss - best) / best)
    gaps = np.array(gaps)
    assert (gaps < 1e-9).mean() >= 0.9, gaps  # 238 of 240 exact in a larger run (docs/tier0.md)
    assert gaps.mean() < 0.05, gaps


def test_knapsack_largest_when_it_fits_and_refuses_below_the_fastest(trained):
    from nasprune.errors import BudgetError

    _, space, table, _ = trained
    ks = Knapsack(space, table, _random_values(space, np.random.default_rng(2)))
    assert ks.solve(table.max_latency() * 1.01).config == space.largest()
    with pytest.raises(BudgetError, match="smallest achievable budget"):
        ks.solve(table.min_latency() * 0.5)


# -- repair ------------------------------------------------------------------------------------------------------


def _layer_io(model, layer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    got = {}
    h = layer.register_forward_hook(lambda _m, args, out: got.update(i=args[0], o=out))
    with torch.no_grad():
        model.eval()(x)
    h.remove()
    return got["i"], got["o"]


def test_reconstruction_error_falls_and_the_repaired_layer_matches_the_original_better(trained):
    supernet, space, _, ds = trained
    xc, _ = ds.tensors("calib")
    xv, _ = ds.tensors("val")
    cfg = space.config({"blocks.0-2": 3}, {"stem.0": 64, "blocks.0.fc1": 24, "blocks.1.fc1": 24, "blocks.2.fc1": 24})
    plain = extract(supernet, cfg).eval()
    recalibrate_bn(plain, [xc])
    repaired = extract(supernet, cfg).eval()
    fits = reconstruct(repaired, supernet, cfg, xc)
    pruned_inputs = {f"blocks.{i}.fc{j}" for i in range(3) for j in (1, 2)} | {"fc"}
    assert {f.path for f in fits} == pruned_inputs | {"stem.0"}  # every layer by default
    for f in fits:
        assert f.error_after <= f.error_before, f
        if f.path in pruned_inputs:
            assert f.error_after < 0.5 * f.error_before, f
    assert [f.path for f in reconstruct(extract(supernet, cfg), supernet, cfg, xc, all_layers=False)] == [
        f.path for f in fits if f.path in pruned_inputs
    ]
    # on held-out images: the first refitted layer, fed the same inputs as the unrepaired one, is closer
    # to the original layer's output; and so are the logits
    first = next(f.path for f in fits if f.path in pruned_inputs)
    inputs, original = _layer_io(supernet, supernet._module(first), xv)
    width = repaired.get_submodule(first).out_features
    target = original[:, :width]
    layer_in = inputs[:, : repaired.get_submodule(first).in_features]
    with torch.no_grad():
        err_repaired = (repaired.get_submodule(first)(layer_in) - target).pow(2).mean()
        err_plain = (plain.get_submodule(first)(layer_in) - target).pow(2).mean()
        assert err_repaired < err_plain
        logits = supernet.eval()(xv)
        assert (repaired(xv) - logits).pow(2).mean() < (plain(xv) - logits).pow(2).mean()


def test_reconstruction_is_bounded_by_its_settings(trained):
    supernet, space, _, ds = trained
    xc, _ = ds.tensors("calib")
    cfg = space.config({"blocks.0-2": 1}, {"stem.0": 32, "blocks.0.fc1": 16})
    model = extract(supernet, cfg).eval()
    fits = reconstruct(model, supernet, cfg, xc, max_rows=50)
    assert fits and all(f.rows <= 50 for f in fits)
    assert reconstruct(extract(supernet, cfg), supernet, cfg, xc, max_features=8) == []  # every layer too wide


# -- the whole pass ----------------------------------------------------------------------------------------------


def test_prune_to_budget_gives_a_plain_model_within_the_predicted_budget(trained, budget):
    supernet, space, table, ds = trained
    budget = min(budget, table.predict(space.largest()) * 0.9)
    res = prune_to_budget(supernet, space, table, ds, budget, reorder=False)  # a trained supernet: keep its order
    assert res.predicted_ms <= budget and res.repair == "ls" and res.importance == "fisher"
    from nasprune.elastic.modules import ElasticModule

    assert not any(isinstance(m, ElasticModule) for m in res.model.modules())
    x, _ = ds.tensors("val")
    with torch.no_grad():
        assert res.model(x).shape == (len(x), 10)
    for step in ("importance_s", "values_s", "knapsack_s", "bn_s", "ls_s", "total_s"):
        assert res.timings[step] >= 0, step
    assert res.layers and all(f.error_after <= f.error_before for f in res.layers)


# -- the command -------------------------------------------------------------------------------------------------


def test_cli_prune_delivers_a_checked_measured_tier0_model(prepared, budget, tmp_path, capsys):
    root, table = prepared
    out = tmp_path / "model.onnx"
    rc = main(["prune", "--space", SPACE, "--budget-ms", f"{budget:.6f}", "--data-dir", str(root), "-o", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    meta = read_metadata(out)
    assert meta["tier"] == "0" and meta["delivered"] == "tier 0"
    cfg = load_space(SPACE).parse_config(json.loads(meta["config"]))
    assert table.predict(cfg) <= budget
    assert 0 <= float(meta["accuracy"]) <= 1 and 0 <= float(meta["test_accuracy"]) <= 1
    assert meta["dataset"] == "digits" and "normalization" in meta
    rec = {k: json.loads(meta[k]) if k in meta else None for k in ("verified", "measured_latency_ms")}
    rec["unverified_reason"] = meta.get("unverified_reason")
    rec["latency_ms"] = float(meta["predicted_latency_ms"])
    assert_verified_or_too_busy(rec, budget)
    assert "tier 0 model: validation" in text and "wrote" in text


def test_cli_prune_refuses_an_impossible_budget_before_any_work(prepared, tmp_path, capsys):
    root, table = prepared
    out = tmp_path / "model.onnx"
    rc = main(["prune", "--space", SPACE, "--budget-ms", f"{table.min_latency() / 2:.6f}", "--data-dir", str(root),
               "-o", str(out)])  # fmt: skip
    captured = capsys.readouterr()
    assert rc == 2 and "--budget-ms" in captured.err and f"{table.min_latency():.4f} ms" in captured.err
    assert "scoring" not in captured.out and not out.exists()


def test_cli_prune_names_the_flag_it_needs(tmp_path, capsys):
    args = ["prune", "--space", SPACE, "--data-dir", str(tmp_path), "-o", str(tmp_path / "m.onnx")]
    rc = main([*args, "--budget-ms", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "--weights" in err and len(err.strip().splitlines()) == 1
    rc = main([*args, "--budget-ms", "-1"])
    assert rc == 2 and "--budget-ms" in capsys.readouterr().err


# -- tier 0 in a job ---------------------------------------------------------------------------------------------


def _quick():
    """Verification with fewer timing rounds: these tests are about the job's flow, not the timing."""
    from nasprune.search.runner import VerifySettings

    return VerifySettings(rounds=10, burst=10, warmup=5)


def _job_ctx(root, job_id, tmp_path, seen, **kw):
    from nasprune.search.job import JobContext

    return JobContext(job_id=job_id, storage_url=f"sqlite:///{tmp_path / 'trials.db'}", output_dir=tmp_path / job_id,
                      data_dir=root, on_progress=seen.append, **kw)  # fmt: skip


def test_a_tier0_only_job_delivers_the_tier0_model_and_logs_its_own_mlflow_run(
    prepared, budget, shared_mlflow, tmp_path
):
    import httpx

    from nasprune.search.job import SearchJob
    from nasprune.search.runner import run_job

    root, _ = prepared
    seen: list = []
    srv = shared_mlflow  # other tests log there too: the tier-0 run is found under this job's run
    job = SearchJob(space=SPACE, latency_budget_ms=budget, tier0="only", n_trials=5)
    res = run_job(job, _job_ctx(root, "t0only", tmp_path, seen, tracking_uri=srv.url), verify=_quick())
    assert res.n_trials == 0 and res.pareto == [] and res.tier0 is not None and res.tracking_error is None
    t0 = res.tier0
    assert t0.tier == 0 and t0.trial_number == -1 and t0.latency_ms <= budget
    assert_verified_or_too_busy(t0, budget)
    assert res.recommended == t0  # verified (or too busy to tell): what the job delivers
    out = tmp_path / "t0only"
    meta = read_metadata(out / "model.onnx")
    assert meta["tier"] == "0" and float(meta["accuracy"]) == pytest.approx(t0.accuracy)
    assert (out / "models" / f"{t0.candidate_id}.onnx").read_bytes() == (out / "model.onnx").read_bytes()
    stages = [p.stage for p in seen]
    assert "tier 0" in stages and "training supernet" not in stages and "searching" not in stages
    assert seen[-1].stage == "done" and seen[-1].tier0 == t0
    # its own MLflow run under the job's, with its figures and its ONNX file
    api, parent_tag = f"{srv.url}/api/2.0/mlflow", "mlflow.parentRunId"
    exp = httpx.get(f"{api}/experiments/get-by-name", params={"experiment_name": f"nasprune/{SPACE}"}).json()
    runs = httpx.post(f"{api}/runs/search", json={"experiment_ids": [exp["experiment"]["experiment_id"]]}).json()
    tags_of = {r["info"]["run_id"]: {t["key"]: t["value"] for t in r["data"]["tags"]} for r in runs["runs"]}
    (job_run,) = [i for i, t in tags_of.items() if t.get("nasprune.job_id") == "t0only"]
    (run,) = [r for r in runs["runs"] if r["info"]["run_name"] == "tier-0"
              and tags_of[r["info"]["run_id"]].get(parent_tag) == job_run]  # fmt: skip
    tags = tags_of[run["info"]["run_id"]]
    metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
    assert tags["nasprune.tier"] == "0" and run["info"]["status"] == "FINISHED"
    assert metrics["val_accuracy"] == pytest.approx(t0.accuracy)
    assert metrics["test_accuracy"] == pytest.approx(t0.test_accuracy)
    parent = next(r for r in runs["runs"] if r["info"]["run_id"] == tags["mlflow.parentRunId"])
    assert {m["key"]: m["value"] for m in parent["data"]["metrics"]}["recommended_tier"] == 0
    files = httpx.get(f"{api}/artifacts/list", params={"run_id": run["info"]["run_id"], "path": "model"}).json()
    assert [f["path"] for f in files["files"]] == [f"model/{t0.candidate_id}.onnx"]


def test_a_tier0_only_job_is_refused_without_trained_weights(tmp_path):
    from nasprune.errors import ConfigError
    from nasprune.search.job import SearchJob
    from nasprune.search.runner import run_job

    job = SearchJob(space=SPACE, latency_budget_ms=1.0, tier0="only")
    from nasprune.search.tier0.job import source_of

    source, why = source_of(job, load_space(SPACE), tmp_path)
    assert source is None and "names none" in why and "POST /v1/models" in why
    assert source_of(job.model_copy(update={"tier0": "off"}), load_space(SPACE), tmp_path)[0] is None
    with pytest.raises(ConfigError, match="tier0 'only'"):
        run_job(job, _job_ctx(tmp_path, "refused", tmp_path, []))


def test_a_job_on_trained_weights_delivers_tier0_first_and_the_better_of_both_tiers(prepared, plain, budget, tmp_path):
    """A space that names trained weights: tier 0 is reported before the supernet is prepared, and the job
    delivers the more accurate verified model of the two tiers (model.onnx is that one's file)."""
    import shutil

    from safetensors.torch import save_file

    from nasprune.graph.models import file_sha256
    from nasprune.search.job import SearchJob
    from nasprune.search.runner import run_job
    from nasprune.train import TrainConfig, save_checkpoint, train_supernet

    root, _ = prepared
    data = tmp_path / "data"
    shutil.copytree(root, data)
    weights = tmp_path / "plain.safetensors"
    save_file({k: v.contiguous() for k, v in plain.state_dict().items()}, str(weights))
    space = load_space(SPACE).model_copy(update={"weights": str(weights), "weights_sha256": file_sha256(weights)})
    path = tmp_path / "space.yaml"
    space.save(path)
    # the supernet of these weights, trained briefly here (the job would train it with the default recipe)
    res = train_supernet(space, TrainConfig(epochs=3, warmup_epochs=1, batch_size=64, max_shift=0), progress=False)
    save_checkpoint(res.supernet, supernet_path(space, data))
    seen: list = []
    job = SearchJob(space=str(path), latency_budget_ms=budget, n_trials=6, finetune_steps=0, seed=1)
    table_file = table_path(SPACE, "local-cpu", data)
    before = table_file.read_bytes()
    result = run_job(job, _job_ctx(data, "tiers", tmp_path, seen), verify=_quick())
    assert table_file.read_bytes() == before  # the weights are new, the architecture is not: the same table
    stages = [p.stage for p in seen]
    first = next(i for i, p in enumerate(seen) if p.tier0 is not None)
    assert seen[first].stage == "tier 0" and first < stages.index("preparing supernet")
    assert all(p.tier0 == result.tier0 for p in seen[first:])  # every later report carries it
    t0, rec = result.tier0, result.recommended
    assert t0 is not None and t0.tier == 0 and result.n_trials == 6 and rec is not None
    usable = t0.verified or t0.measured_latency_ms is None  # verified, or too busy to tell (as the search's)
    if rec.tier == 0:
        assert rec == t0 and usable
    else:
        assert rec.accuracy >= t0.accuracy or not usable
    meta = read_metadata(tmp_path / "tiers" / "model.onnx")
    assert (meta.get("tier") == "0") == (rec.tier == 0)
    # resumed: tier 0 is read back, not pruned again
    again: list = []
    resumed = run_job(job, _job_ctx(data, "tiers", tmp_path, again), verify=_quick())
    assert resumed.tier0 == t0 and not any("scoring channels" in p.message for p in again)


def test_the_job_delivers_the_more_accurate_usable_tier():
    from nasprune.search.job import Candidate, SearchJob
    from nasprune.search.tier0.job import best_of_tiers

    job = SearchJob(space=SPACE, latency_budget_ms=1.0)
    base = {"config": {}, "params": 1, "macs": 1, "feasible": True, "latency_ms": 0.9}

    def cand(acc, tier=1, **kw):
        return Candidate(candidate_id="0" * 16, trial_number=-1 if tier == 0 else 3, tier=tier, accuracy=acc,
                         **{**base, **kw})  # fmt: skip

    searched = cand(0.90, verified=True, measured_latency_ms=0.95)
    better0 = cand(0.91, tier=0, verified=True, measured_latency_ms=0.8)
    assert best_of_tiers(searched, better0, job) is better0
    assert best_of_tiers(searched, cand(0.90, tier=0, verified=True, measured_latency_ms=0.8), job) is searched  # tie
    over = cand(0.99, tier=0, verified=False, measured_latency_ms=1.2, unverified_reason="measured over")
    assert best_of_tiers(searched, over, job) is searched and best_of_tiers(None, over, job) is None
    busy = cand(0.95, tier=0, verified=False, unverified_reason="too busy")  # not measured, predicted within
    assert best_of_tiers(searched, busy, job) is busy and best_of_tiers(searched, None, job) is searched
