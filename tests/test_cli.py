"""The CLI as users run it: a real subprocess, exit codes, one-line errors (never a traceback). Where a test
runs several commands, one goes through ``python -m nasprune`` and the rest through ``nasprune.cli.main`` in
this process (the same code after the interpreter's start, without its ~4 s of imports each)."""

import json
import subprocess
import sys

import onnx


def run(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "nasprune", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def in_process(capsys, *args) -> subprocess.CompletedProcess:
    """``nasprune ARGS`` run by ``nasprune.cli.main`` here, its exit code and output as ``run`` gives them."""
    from nasprune.cli import main

    try:
        code = main(list(args))
    except SystemExit as e:  # argparse's own errors
        code = e.code
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out.out, out.err)


def test_spaces_list_and_show(capsys):
    r = run("spaces", "list")
    assert r.returncode == 0, r.stderr
    assert "resnet_mnist" in r.stdout and "mlp_digits" in r.stdout
    r = in_process(capsys, "spaces", "show", "resnet_mnist")
    assert r.returncode == 0, r.stderr
    assert "stages.2.2.conv1" in r.stdout and "largest" in r.stdout and "75,866,112" in r.stdout


def test_export_config_file(tmp_path):
    cfg = {"depths": {"blocks.0-2": 2}, "widths": {"stem.0": 32, "blocks.0.fc1": 16, "blocks.1.fc1": 24}}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    r = run(
        "export",
        "--space",
        "mlp_digits",
        "--config",
        str(tmp_path / "cfg.json"),
        "--untrained",
        "-o",
        str(tmp_path / "m.onnx"),
    )
    assert r.returncode == 0, r.stderr
    model = onnx.load(str(tmp_path / "m.onnx"))
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["nasprune.config"])["widths"] == cfg["widths"]


def test_errors_are_one_line_and_nonzero(tmp_path, capsys):
    cases = [
        (("spaces", "show", "nope"), "unknown search space 'nope'"),
        (
            (
                "export",
                "--space",
                "mlp_digits",
                "--config",
                '{"depths": {"blocks.0-2": 9}, "widths": {}}',
                "-o",
                str(tmp_path / "x.onnx"),
            ),
            "depths.blocks.0-2: 9 is not allowed (allowed: [0, 1, 2, 3])",
        ),
        (
            ("export", "--space", "mlp_digits", "--config", str(tmp_path / "missing.json"), "-o", "x.onnx"),
            "does not exist",
        ),
        (("export", "--space", "mlp_digits", "--config", "{not json", "-o", "x.onnx"), "not valid JSON"),
        (
            ("search", "--space", "mlp_digits", "--budget-ms", "1", "--trials", "0", "--finetune-epochs", "-3"),
            "--trials: Input should be greater than or equal to 1; --finetune-epochs: Input should be greater",
        ),
    ]
    for i, (args, needle) in enumerate(cases):
        r = run(*args) if i == 0 else in_process(capsys, *args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert needle in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1


def _subparsers(parser, path=()):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from _subparsers(sub, (*path, name))


def test_every_command_has_a_description():
    from nasprune.cli import build_parser

    commands = dict(_subparsers(build_parser()))
    assert {("lut", "show"), ("lut", "list"), ("lut", "predict"), ("pareto",), ("trials",)} <= set(commands)
    missing = [" ".join(path) for path, p in commands.items() if not (p.description or "").strip()]
    assert not missing, f"commands without a description: {missing}"


def test_progress_off_a_terminal_is_plain_lines_every_few_seconds():
    import io

    from nasprune.progress import LineProgress, progress_bar

    assert isinstance(progress_bar(10, "x", file=io.StringIO()), LineProgress)  # not a terminal
    out = io.StringIO()
    bar = LineProgress(1000, "preparing supernet", "trial", out, every_s=3600)  # no line due from the clock
    bar.set_description("searching")
    for i in range(1000):
        bar.n = i + 1
        bar.set_postfix_str(f"best in budget {i / 1000:.2%}")
        bar.refresh()  # every trial asks; a line is written at most every every_s
    bar.set_description("verifying")
    bar.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert lines[0].startswith("searching: 0/1000 trials") and lines[-1].startswith("verifying: 1000/1000 trials")
    assert len(lines) == 2, lines  # one per stage change; the 1000 refreshes wrote none


def test_pareto_reads_a_local_search_job(tmp_path, capsys):
    from nasprune.cli import main
    from nasprune.search.job import SearchJob, SearchResult
    from tests.service.fakes import candidate

    job_id = "0123456789abcdef0123456789abcdef"
    best, other = candidate(1, 0.9, 0.008, measured=0.0085), candidate(2, 0.95, 0.012)
    res = SearchResult(
        job=SearchJob(space="mlp_digits", latency_budget_ms=0.01), n_trials=7, pareto=[best, other], recommended=best
    )
    (tmp_path / "jobs" / job_id).mkdir(parents=True)
    (tmp_path / "jobs" / job_id / "result.json").write_text(res.model_dump_json())
    assert main(["pareto", job_id, "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "recommended: 0000000000000001 (trial 1) accuracy 90.00%, measured 0.0085 ms <= 0.01 ms" in out
    assert "7 trials; budget 0.01 ms" in out and "(* recommended; ! over the budget)" in out
    assert main(["pareto", job_id, "--json", "--data-dir", str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out)["recommended_id"] == "0000000000000001"


def test_old_flag_spellings_are_refused_naming_the_new_one(tmp_path, capsys):
    """One meaning per flag: -o is the file a command writes, --device a latency table's device, --trials the
    trial count; the old spellings stop the command before anything runs and say what to type instead."""
    import pytest

    from nasprune.cli import main

    cases = [
        (["submit", "--space", "mlp_digits", "--budget-ms", "1", "--n-trials", "3"], "--n-trials is now --trials"),
        (["train", "--space", "mlp_digits", "--device", "cuda"], "--device is now --torch-device (cpu, cuda or auto)"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and message in err and "Traceback" not in err, err
    for o in (str(tmp_path), "out/", "out"):
        rc = main(["search", "--space", "mlp_digits", "--budget-ms", "1", "-o", o, "--data-dir", str(tmp_path)])
        err = capsys.readouterr().err
        assert rc == 2 and f"-o/--output {o.rstrip('/')}: names the model file now (e.g. -o model.onnx)" in err, err
        assert "the job's folder (pareto.json, the plot, the candidates) is --output-dir DIR" in err
    assert not (tmp_path / "jobs").exists()
