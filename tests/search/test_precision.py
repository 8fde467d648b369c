"""Precision in the search: int8 candidates (onnxruntime static QDQ) scored on the quantized model."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from nasprune.data import load_dataset
from nasprune.evaluate import Evaluator
from nasprune.export import read_metadata
from nasprune.latency import ProfileSettings, build_table, table_path
from nasprune.paths import job_files
from nasprune.quantize import is_qdq, split_accuracy
from nasprune.registry import load_space
from nasprune.search import precision
from nasprune.search.job import JobContext, SearchJob
from nasprune.search.pareto import is_dominated, pareto_records
from nasprune.search.runner import run_job
from nasprune.search.study import TrialRecord, load_trials
from nasprune.train import load_checkpoint, supernet_path
from tests.search.conftest import SPACE


@pytest.fixture(scope="module")
def int8_table(prepared):
    root, _ = prepared
    settings = ProfileSettings(op_rounds=4, op_burst=5, e2e_rounds=4, e2e_burst=10, warmup=5)
    table = build_table(load_space(SPACE), n_fit=6, n_validate=3, settings=settings, precision="int8")
    table.save(table_path(SPACE, "local-cpu", root, precision="int8"))
    return table


def test_precisions_field_is_validated():
    job = SearchJob(space=SPACE, latency_budget_ms=1, precisions=["fp32", "int8", "int8"])
    assert job.precisions == ["fp32", "int8"] and SearchJob(space=SPACE, latency_budget_ms=1).precisions == ["fp32"]
    with pytest.raises(ValueError, match="must include 'fp32'"):
        SearchJob(space=SPACE, latency_budget_ms=1, precisions=["int8"])
    with pytest.raises(ValueError, match="fp16"):
        SearchJob(space=SPACE, latency_budget_ms=1, precisions=["fp32", "fp16"])


def test_int8_candidate_is_scored_on_the_quantized_model_and_delivered_as_scored(prepared, tmp_path):
    root, _ = prepared
    space = load_space(SPACE)
    ds = load_dataset(space.dataset)
    supernet = load_checkpoint(supernet_path(space, root))
    ev = Evaluator(supernet, ds)
    scorer = precision.Int8Scorer(supernet, ev, tmp_path / "int8")
    cfg = space.uniform(0.5)
    acc = scorer.accuracy(cfg)
    assert scorer.quantized == 1 and scorer.accuracy(cfg) == acc and scorer.quantized == 1  # cached
    assert json.loads((tmp_path / "int8" / "scores.json").read_text())[cfg.key()]["val"] == acc
    assert abs(acc - ev.accuracy(cfg, "val")) <= 0.05  # int8 of a trained subnet, not a broken model
    rec = TrialRecord(number=precision.INT8_NUMBER_OFFSET + 3, subnet_key=precision.candidate_id(cfg.key(), "int8"),
                      config=cfg.model_dump(), accuracy=acc, latency_ms=0.01, params=1, macs=1, feasible=True,
                      precision="int8")  # fmt: skip
    assert rec.subnet_key != cfg.key() and len(rec.subnet_key) == 16
    # the delivery path: the float export quantized in place is the model the search scored
    from nasprune.export import export_subnet

    path = tmp_path / "models" / f"{rec.subnet_key}.onnx"
    export_subnet(supernet, cfg, path, {"accuracy": acc}, model=ev.subnet(cfg))
    precision.deliver(path, rec, ds)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    meta = read_metadata(path)
    assert is_qdq(path) and meta["precision"] == "int8" and meta["calibration"] == "minmax"
    assert meta["subnet_key"] == cfg.key() and float(meta["accuracy"]) == acc
    assert split_accuracy(path, ds, "val") == acc
    per = precision.per_example(ev, rec, tmp_path / "int8")
    assert per.accuracy == pytest.approx(acc) and per.loss.shape == per.correct.shape


@pytest.mark.slow
def test_search_with_both_precisions_states_precision_everywhere(prepared, int8_table, budget, tmp_path):
    root, table = prepared
    job = SearchJob(space=SPACE, latency_budget_ms=budget, n_trials=10, seed=3, precisions=["fp32", "int8"],
                    finetune_epochs=0)  # fmt: skip
    out = tmp_path / "job"
    res = run_job(job, JobContext(job_id="prec", storage_url=f"sqlite:///{tmp_path / 't.db'}", output_dir=out,
                                  data_dir=root))  # fmt: skip
    assert res.pareto and all(c.precision in ("fp32", "int8") for c in res.pareto)
    assert all(c.trial_number < res.n_trials for c in res.pareto)
    pts = [(c.accuracy, c.latency_ms) for c in res.pareto]
    assert not any(is_dominated(p, pts) for p in pts)
    for c in res.pareto:
        if c.precision == "int8":
            assert c.calibration == "minmax" and c.fp32_accuracy is not None
            assert c.latency_ms == pytest.approx(int8_table.predict(table.space.parse_config(c.config)))
    # every architecture quantized was within budget at int8 when it was chosen
    scores = out / "int8" / "scores.json"
    scored = json.loads(scores.read_text()) if scores.exists() else {}
    configs = {t.subnet_key: t.config for t in load_trials(f"sqlite:///{tmp_path / 't.db'}", "prec")}
    assert set(scored) <= set(configs)
    assert all(int8_table.predict(table.space.parse_config(configs[k])) <= budget for k in scored)
    assert res.recommended is not None
    meta = read_metadata(out / "model.onnx")
    assert meta["precision"] == res.recommended.precision
    assert is_qdq(out / "model.onnx") == (res.recommended.precision == "int8")
    on_disk = json.loads((out / "pareto.json").read_text())
    assert all("precision" in c for c in on_disk["pareto"])


def test_expand_front_gate_uses_fp32_accuracy_and_int8_latency(prepared, int8_table, tmp_path):
    """Only architectures whose (fp32 accuracy, int8 latency) is not dominated are quantized."""
    root, table = prepared
    space = load_space(SPACE)
    ds = load_dataset(space.dataset)
    supernet = load_checkpoint(supernet_path(space, root))
    ev = Evaluator(supernet, ds)
    rng = np.random.default_rng(0)
    cfgs = list({c.key(): c for c in (space.sample(rng) for _ in range(6))}.values())
    trials = [
        TrialRecord(number=i, subnet_key=c.key(), config=c.model_dump(), accuracy=ev.accuracy(c, "val"),
                    latency_ms=table.predict(c), params=supernet.num_params(c), macs=supernet.macs(c), feasible=True)
        for i, c in enumerate(cfgs)
    ]  # fmt: skip
    budget = max(int8_table.predict(c) for c in cfgs) + 1
    job = SearchJob(space=SPACE, latency_budget_ms=budget, precisions=["fp32", "int8"])
    front = pareto_records(trials)
    scorer = precision.Int8Scorer(supernet, ev, tmp_path / "int8")
    joint = precision.expand_front(front, trials, job, int8_table, scorer)
    pts = [(r.accuracy, r.latency_ms) for r in front]
    for t in trials:
        lat8 = int8_table.predict(space.parse_config(t.config))
        if is_dominated((t.accuracy, lat8), pts):  # could not reach even the fp32 front: never quantized
            assert t.subnet_key not in scorer.scores
    assert all(r.precision == "int8" for r in joint if r.number >= precision.INT8_NUMBER_OFFSET)
    jp = [(r.accuracy, r.latency_ms) for r in joint]
    assert not any(is_dominated(p, jp) for p in jp)


def test_the_budget_floor_is_the_fastest_subnet_at_any_precision(prepared, int8_table):
    """A job with int8 candidates may ask for less than the fastest fp32 subnet: the floor is the fastest
    predicted latency over both tables, and a budget below it is refused naming both precisions."""
    from nasprune.errors import BudgetError
    from nasprune.search.runner import check_budget

    _, fp32 = prepared
    floor = min(fp32.min_latency(), int8_table.min_latency())
    job = SearchJob(space=SPACE, latency_budget_ms=floor, precisions=["fp32", "int8"])
    assert check_budget(job, fp32, int8_table) == floor
    fp32_only = job.model_copy(update={"precisions": ["fp32"], "latency_budget_ms": fp32.min_latency()})
    assert check_budget(fp32_only, fp32) == fp32.min_latency()
    if floor < fp32.min_latency():  # int8 reaches below fp32 (usually): that budget is refused to fp32 alone
        with pytest.raises(BudgetError, match=r"predicted at fp32\); the smallest achievable budget"):
            check_budget(job.model_copy(update={"precisions": ["fp32"]}), fp32)
    with pytest.raises(BudgetError, match=r"predicted at fp32 or int8\); the smallest achievable budget"):
        check_budget(job.model_copy(update={"latency_budget_ms": floor * 0.99}), fp32, int8_table)


def test_int8_simulation_models_what_onnxruntime_runs(tmp_path):
    """Quantization-aware fine-tuning trains under a simulation of onnxruntime's static int8 model: its
    weights are exactly the int8 model's dequantized weights, its first input is quantized with the
    same scale and zero point, its outputs are closer to the int8 model's than the float model's are
    (intermediate ranges differ a little: the simulation observes its own quantized activations), and
    taking the simulation out leaves the plain float model with its parameters."""
    import torch
    from onnx import numpy_helper

    from nasprune.export import export_model
    from nasprune.finetune import Int8Simulation
    from nasprune.latency.timing import make_session
    from nasprune.quantize import quantize_model

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(),
        torch.nn.Linear(8 * 4 * 4, 5),
    ).eval()  # fmt: skip
    names = [n for n, _ in model.named_parameters()]
    x = torch.randn(64, 1, 8, 8)
    export_model(model, (1, 8, 8), tmp_path / "f.onnx")
    quantize_model(tmp_path / "f.onnx", tmp_path / "q.onnx", x.numpy())
    (q,) = make_session(tmp_path / "q.onnx").run(None, {"input": x.numpy()})
    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(tmp_path / "q.onnx")).graph.initializer}
    with torch.no_grad():
        flt = model(x)
        sim = Int8Simulation(model)
        model.train()(x)  # the first batch sets each input's range: the data the calibration saw
        simulated = model.eval()(x)
        for i in (0, 2, 5):
            w8 = next(v for k, v in inits.items() if k.startswith(f"{i}.weight") and k.endswith("quantized"))
            scale = inits[f"{i}.weight_scale"].reshape(-1, *[1] * (w8.ndim - 1))
            assert np.array_equal(model[i].weight.numpy(), (w8.astype(np.float32) * scale).astype(np.float32))
        (first,) = model[0]._forward_pre_hooks.values()
        scale = (first.hi - first.lo) / 255
        assert scale == pytest.approx(float(inits["input_scale"]), rel=1e-6)
        assert round(-first.lo / scale) == int(inits["input_zero_point"])
    err_sim = float((simulated - torch.from_numpy(q)).abs().mean())
    err_flt = float((flt - torch.from_numpy(q)).abs().mean())
    assert err_sim < err_flt, (err_sim, err_flt)
    sim.remove()
    assert sorted(n for n, _ in model.named_parameters()) == sorted(names)
    with torch.no_grad():
        assert torch.equal(model(x), flt)  # the float weights are untouched by the simulation itself


def test_an_int8_recommendation_is_fine_tuned_then_quantized_again(prepared, tmp_path):
    """An int8 recommendation is fine-tuned (quantization-aware when it lost more than ``qat_min_drop``
    to quantization, in float otherwise), quantized as the search quantized it, scored as int8, and
    delivered only when it scores at least as well: the accuracy it states is the delivered file's."""
    from nasprune.export import export_subnet
    from nasprune.search.job import Candidate
    from nasprune.search.recover import finetune_candidate, pick_delivered, quantization_aware

    root, _ = prepared
    space = load_space(SPACE)
    ds = load_dataset(space.dataset)
    supernet = load_checkpoint(supernet_path(space, root))
    ev = Evaluator(supernet, ds)
    cfg = space.uniform(0.5)
    cid = precision.candidate_id(cfg.key(), "int8")
    job = SearchJob(space=SPACE, latency_budget_ms=1, precisions=["fp32", "int8"], finetune_epochs=2,
                    qat_min_drop=0.005)  # fmt: skip
    for qat, min_drop in ((True, 0.005), (False, None)):
        out = tmp_path / f"job-{qat}"
        scorer = precision.Int8Scorer(supernet, ev, out / "int8")
        acc = scorer.accuracy(cfg, "val")
        rec = Candidate(candidate_id=cid, trial_number=1, precision="int8", calibration="minmax",
                        fp32_accuracy=acc + 0.01, config=cfg.model_dump(), accuracy=acc, latency_ms=0.01, params=1,
                        macs=1, feasible=True, test_accuracy=scorer.accuracy(cfg, "test"))  # fmt: skip
        this = job.model_copy(update={"qat_min_drop": min_drop})
        assert quantization_aware(rec, this) is qat
        path = out / "models" / f"{cid}.onnx"
        export_subnet(supernet, cfg, path, {"accuracy": acc}, model=ev.subnet(cfg))
        precision.deliver(path, rec, ds)
        (out / "model.onnx").write_bytes(path.read_bytes())
        finetune_candidate(rec, this, supernet, ev, job_files(out), steps=40)
        assert pick_delivered([rec], job_files(out)) is rec and rec.finetune_steps == 40
        assert rec.inherited_accuracy == acc and rec.finetuned_accuracy is not None
        delivered = out / "model.onnx"
        meta = read_metadata(delivered)
        assert is_qdq(delivered) and meta["precision"] == "int8" and meta["calibration"] == "minmax"
        assert split_accuracy(delivered, ds, "val") == rec.accuracy  # what it states is what it scores
        if rec.finetuned_accuracy >= acc:
            assert rec.delivered == "fine-tuned" and meta["delivered"] == "fine-tuned"
            assert meta["finetune"].startswith("quantization-aware" if qat else "in float")
            assert rec.accuracy == rec.finetuned_accuracy
        else:
            assert rec.delivered == "inherited" and rec.accuracy == acc
            assert not (out / "models" / f"{cid}.finetuned.onnx").exists()
        assert not (out / "models" / f"{cid}.finetuned.fp32.onnx").exists()
    # only an int8 candidate that lost more than qat_min_drop is fine-tuned quantization-aware
    assert not quantization_aware(rec.model_copy(update={"fp32_accuracy": rec.inherited_accuracy + 0.004}), job)
    assert not quantization_aware(rec.model_copy(update={"precision": "fp32"}), job)
