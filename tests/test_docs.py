"""The commands of the README and docs/ are true: every ``nasprune`` line parses with today's CLI, and the
README's quick start runs as written (the slow steps given tiny settings)."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


SHELL = {"", "bash", "sh", "shell", "console"}


def command_blocks(source: Path | str) -> list[str]:
    """The shell blocks of Markdown (```bash, ```sh, ```console and plain ``` fences), fences paired in order."""
    text = source.read_text() if isinstance(source, Path) else source
    blocks, lang, lines = [], None, []
    for line in text.splitlines():
        fence = re.match(r"^\s*```(\S*)", line)
        if fence and lang is None:
            lang, lines = fence.group(1), []
        elif fence:
            if lang in SHELL:
                blocks.append("\n".join(lines) + "\n")
            lang = None
        elif lang is not None:
            lines.append(line)
    return blocks


def commands(block: str) -> list[str]:
    """Its commands: continuations joined, and a quoted string that runs over lines kept whole."""
    out, buf = [], ""
    for line in block.replace("\\\n", " ").splitlines():
        buf = f"{buf} {line.strip()}" if buf else line.strip()
        try:
            shlex.split(buf, comments=True)
        except ValueError:  # an open quote: the command goes on
            continue
        if buf:
            out.append(buf)
        buf = ""
    return out + ([buf] if buf else [])


def nasprune_argv(line: str) -> list[str] | None:
    """The arguments of a line that runs ``nasprune`` (``.venv/bin/nasprune``, ``nasprune``), else None."""
    try:
        words = shlex.split(line, comments=True)
    except ValueError:
        return None
    if words[:1] == ["$"]:  # a shell prompt, as in a transcript
        words = words[1:]
    while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # VAR=value before the command
        words = words[1:]
    if not words or not (words[0] == "nasprune" or words[0].endswith("/nasprune")):
        return None
    ends = [i for i, w in enumerate(words) if w in {"&", "&&", "|", "||", ";", ">", ">>", "2>&1"}]
    return words[1 : ends[0] if ends else None]  # the command itself, not what the shell does with it


def _documented() -> list[tuple[str, str]]:
    found = []
    for path in DOCS:
        for block in command_blocks(path):
            for line in commands(block):
                if nasprune_argv(line) is not None:
                    found.append((f"{path.relative_to(ROOT)}", line))
    return found


def test_the_docs_have_commands_to_check():
    found = _documented()
    assert len(found) > 60, found  # the parser below sees the blocks, not nothing
    assert {p for p, _ in found} >= {"README.md", "docs/graph.md", "docs/api.md", "docs/deploy.md"}


@pytest.mark.parametrize(("path", "line"), _documented(), ids=lambda v: v if "/" not in v else None)
def test_every_documented_command_parses_with_the_cli(path, line):
    """Flags that exist, with values of the right type, for every command in the README and docs/: a renamed
    or removed flag (train --device, submit --n-trials, search -o DIR) fails here, naming the file."""
    from nasprune.cli import build_parser

    argv = nasprune_argv(line)
    if "--help" in argv or "-h" in argv or not argv:
        return
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.suppress(SystemExit):
        args = build_parser().parse_args(argv)
        if getattr(args, "command", None) == "search" and args.output is not None:
            from nasprune.cli.search import _check_output

            _check_output(args)  # -o is a file: a folder there is the old meaning
        err.write("")
        return
    pytest.fail(f"{path}: '{line}' does not parse: {err.getvalue().strip().splitlines()[-1:]}")


QUICK_START_MODEL = """import torch.nn as nn


def make_model(num_classes=10):
    def block(i, o):
        return nn.Sequential(nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU())

    return nn.Sequential(block(3, 16), nn.MaxPool2d(2), block(16, 32), nn.MaxPool2d(2), block(32, 64),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes))
"""


def _images_zip(path: Path, classes: int = 4, per_class: int = 60) -> Path:
    import zipfile

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    with zipfile.ZipFile(path, "w") as z:
        for c in range(classes):
            for i in range(per_class):  # a class is a colour, plus noise: learnable in one epoch
                pixels = np.clip(rng.normal(60 * c, 25, (32, 32, 3)), 0, 255).astype(np.uint8)
                buf = io.BytesIO()
                Image.fromarray(pixels).save(buf, "PNG")
                z.writestr(f"class{c}/{i}.png", buf.getvalue())
    return path


@pytest.mark.slow
def test_the_readme_quick_start_runs_as_written(tmp_path, monkeypatch):
    """The five steps of the README in a shell, in the folder of a user's model file, with a zip of images.
    Before steps 4 and 5 the latency table is measured with tiny settings and, before 5, a one-epoch supernet
    trained; step 5 runs 4 trials without fine-tuning. Every other word is the README's."""
    import torch
    from safetensors.torch import load_file

    block = (ROOT / "README.md").read_text().split("## Prune your own model in five steps", 1)[1]
    steps = commands(command_blocks(block)[0])
    steps = [s for s in steps if not s.startswith("#")]
    assert [s.split()[:2] for s in steps] == [
        [".venv/bin/python", "-c"], [".venv/bin/nasprune", "data"], [".venv/bin/nasprune", "model"],
        [".venv/bin/nasprune", "prune"], [".venv/bin/nasprune", "search"],
    ]  # fmt: skip
    (tmp_path / "mymodel.py").write_text(QUICK_START_MODEL.replace("num_classes=10", "num_classes=4"))
    sys.path.insert(0, str(tmp_path))
    try:
        from mymodel import make_model  # the user's trained model, saved the usual way

        torch.save(make_model().state_dict(), tmp_path / "mymodel.pt")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("mymodel", None)
    _images_zip(tmp_path / "pets.zip")
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parent.parent)
    root = tmp_path / ".nasprune"  # the default data dir of a command run here
    monkeypatch.chdir(tmp_path)  # where the user's model file lies, for the steps done in this process too
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("NASPRUNE_DATA_DIR", None)

    def run(command: str, ok: tuple[int, ...] = (0,)) -> str:
        r = subprocess.run(command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert r.returncode in ok, f"{command}\n{r.stdout}\n{r.stderr}"
        return r.stdout

    run(steps[0])
    assert set(load_file(str(tmp_path / "mymodel.safetensors"))) == set(torch.load(tmp_path / "mymodel.pt"))
    run(steps[1])
    shown = run(steps[2])
    assert "next: nasprune search --space mymodel.yaml --budget-ms" in shown and "(tier 0): nasprune prune" in shown

    from nasprune.latency import ProfileSettings, build_table, table_path
    from nasprune.registry import load_space
    from nasprune.train import TrainConfig, save_checkpoint, supernet_path, train_supernet

    space = load_space(tmp_path / "mymodel.yaml")
    assert space.dataset == "pets" and space.model == "mymodel:make_model" and space.weights_sha256
    quick = ProfileSettings(op_rounds=4, op_burst=5, e2e_rounds=4, e2e_burst=5, warmup=3)
    table = build_table(space, n_fit=4, n_validate=4, settings=quick)
    table.save(table_path(space.name, "local-cpu", root))
    budget = "0.12"
    if not table.min_latency() < 0.12 < table.max_latency():  # this machine's range: the README's budget won't do
        budget = f"{(table.min_latency() + table.max_latency()) / 2:.4f}"
    run(steps[3].replace("--budget-ms 0.12", f"--budget-ms {budget}"))
    assert (tmp_path / "model0.onnx").is_file()

    from nasprune.data import load_dataset

    cfg = TrainConfig(epochs=1, warmup_epochs=0, batch_size=32, max_shift=0)
    res = train_supernet(space, cfg, load_dataset("pets", data_dir=root), progress=False)
    save_checkpoint(res.supernet, supernet_path(space, root))
    # cut: 4 trials, no fine-tuning, no tier 0 (step 4's 'prune' just made the tier-0 model of this space)
    search = steps[4].replace("--budget-ms 0.12", f"--budget-ms {budget}")
    search += " --trials 4 --finetune-steps 0 --tier0 off"
    out = run(search, ok=(0, 1))  # 1: nothing verified within the budget on a busy machine
    assert "(* recommended" in out
    assert (tmp_path / "model.onnx").is_file() or "no candidate's measured latency is within the budget" in out
    sys.modules.pop("mymodel", None)


RUN_AS_WRITTEN = (["spaces", "list"], ["spaces", "show"], ["data", "list"], ["model", "inspect"])
"""Commands of the docs that read or derive only, so a test runs each as written (the workflows that need files
of their own, the quick start and docs/graph.md's block, have their own tests)."""


def _read_only() -> list[tuple[str, str]]:
    seen, out = set(), []
    for path, line in _documented():
        argv = nasprune_argv(line)
        own_files = any(re.search(r"mymodel|pets|cnn1d\.(yaml|safetensors)", a) for a in argv)
        if argv[:2] in RUN_AS_WRITTEN and not own_files and tuple(argv) not in seen:
            seen.add(tuple(argv))  # the same command in two files runs once
            out.append((path, line))
    return out


def _saved_by(path: str) -> dict[str, str]:
    """The files that documented commands of ``path`` write with ``--save FILE``, and the line that writes each."""
    out = {}
    for p, line in _documented():
        argv = nasprune_argv(line)
        if p == path and "--save" in argv[:-1]:
            out[argv[argv.index("--save") + 1]] = line
    return out


@pytest.mark.parametrize(("path", "line"), _read_only(), ids=lambda v: v if "/" not in v else None)
def test_the_read_only_commands_of_the_docs_run_as_written(path, line, tmp_path, monkeypatch, capsys):
    """Each in a folder of its own; a file that an earlier command of the same doc saves (``--save FILE``) is
    made by running that command first, as a reader of the doc would."""
    from nasprune.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NASPRUNE_DATA_DIR", str(tmp_path / "data"))
    saves = _saved_by(path)
    for arg in nasprune_argv(line):
        if arg in saves and saves[arg] != line:
            assert main([*nasprune_argv(saves[arg]), "--no-latency"]) == 0, saves[arg]
    rc = main(nasprune_argv(line))
    captured = capsys.readouterr()
    assert rc == 0, f"{path}: '{line}' exited {rc}: {captured.err}"
    assert "Traceback" not in captured.err


SERVICE_COMMANDS = {"submit", "jobs", "pareto", "trials", "fetch", "devices", "models", "cancel"}


def test_the_service_commands_of_the_docs_run_against_a_real_server(tmp_path, monkeypatch, capsys):
    """Every line of the README and docs/ that talks to a service (submit, model upload, models, jobs, pareto,
    trials, fetch, cancel, devices) run as written against a server on loopback (a stand-in search that returns
    at once): JOB_ID/JOB and MODEL_ID/m_3c1f... replaced by the ids the earlier lines printed, --url added; then
    the README's curl lines. Skipped: the lines of a users-mode server (--url of their own) and the upload of a
    table built on another device."""
    import numpy as np
    from safetensors.torch import save_file

    from nasprune.cli import main
    from nasprune.client import Client
    from nasprune.graph import build_model
    from nasprune.settings import Settings
    from tests.service.fakes import instant_runner
    from tests.service.server import running

    found = [(p, nasprune_argv(line)) for p, line in _documented()]
    argvs = [
        (p, a) for p, a in found
        if (a[0] in SERVICE_COMMANDS or a[:2] == ["model", "upload"]) and "--url" not in a and "table.json" not in a
    ]  # fmt: skip
    assert len(argvs) >= 20 and {p for p, _ in argvs} >= {"README.md", "docs/api.md", "docs/int8.md"}, argvs
    monkeypatch.chdir(tmp_path)
    _images_zip(tmp_path / "pets.zip", classes=10, per_class=30)
    model = build_model("torchvision:resnet18", {"num_classes": 10})
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    with running(Settings(data_dir=tmp_path / "server", poll_s=0.05), instant_runner) as (client, _):
        url = str(client.base_url).rstrip("/")
        with Client(url) as c:
            c.upload_dataset("pets", tmp_path / "pets.zip", "images", size="32,32", mode="RGB", calib=50)
            rng = np.random.default_rng(0)  # the README's my_digits, as 'data add ... --url' would put it there
            x, y = rng.normal(size=(300, 64)).astype(np.float32), np.repeat(np.arange(10), 30)
            np.savez(tmp_path / "digits.npz", x=x, y=y)
            c.upload_dataset("my_digits", tmp_path / "digits.npz", "npz", calib=50)
        ids: dict[str, str] = {}
        pending = list(argvs)
        while pending:
            path, argv = pending.pop(0)
            needs = {"JOB_ID", "JOB", "MODEL_ID", "m_3c1f..."} & set(argv)
            if any(ids.get(k) is None for k in needs):
                pending.append((path, argv))  # after the line that prints that id
                continue
            argv = [ids.get(a, a) for a in argv] + ["--url", url]
            rc = main(argv)
            out = capsys.readouterr()
            if argv[0] == "cancel":  # the stand-in job has finished: refused, saying so
                assert rc == 2 and "already succeeded" in out.err, out.err
                continue
            assert rc == 0, f"{path}: nasprune {' '.join(argv)}: {out.err}"
            if argv[0] == "submit":
                ids["JOB_ID"] = ids["JOB"] = out.out.splitlines()[0]
            if argv[:2] == ["model", "upload"]:
                ids["MODEL_ID"] = ids["m_3c1f..."] = re.search(r"^model (m_[0-9a-f]{16})", out.out, re.M)[1]
        _run_readme_curl_lines(url, tmp_path)
    assert (tmp_path / "model.onnx").is_file()  # fetched and --wait -o'd


def _run_readme_curl_lines(url: str, cwd: Path) -> None:
    """The README's curl lines, as written but for the server's address (and --fail, so an HTTP error fails)."""
    import json
    import shutil

    import httpx

    from tests.service.server import wait_for

    if shutil.which("curl") is None:
        return  # the CLI lines went through the same routes
    ids: dict[str, str] = {}
    for block in command_blocks(ROOT / "README.md"):
        for line in commands(block):
            if not line.startswith("curl "):
                continue
            line = line.replace("localhost:8000", url).split("   #", 1)[0]
            for k, v in ids.items():
                line = line.replace(k, v)
            r = subprocess.run(line + " --fail --silent --show-error", shell=True, cwd=cwd, capture_output=True,
                               text=True, timeout=60)  # fmt: skip
            assert r.returncode == 0, f"{line}: {r.stderr}"
            if "-X POST" in line and "/v1/jobs" in line:
                ids["JOB_ID"] = json.loads(r.stdout)["id"]
                with httpx.Client(base_url=url, timeout=10) as h:  # the stand-in search is quick; wait all the same
                    wait_for(h, ids["JOB_ID"], ("succeeded",))
    assert "JOB_ID" in ids


def test_the_curl_lines_of_docs_api_run_against_a_real_server(tmp_path, monkeypatch):
    """docs/api.md's curl lines in a shell with $API and $JOB set, against a loopback server (stand-in search),
    the files they send made first; each must answer below 400 (cancelling the finished job: 409, as the
    table of errors says). Its error example is the server's answer, word for word."""
    import json
    import shutil

    import httpx
    import numpy as np
    from safetensors.torch import save_file

    from nasprune.client import Client
    from nasprune.graph import build_model
    from nasprune.settings import Settings
    from tests.service.fakes import instant_runner
    from tests.service.server import running, wait_for

    if shutil.which("curl") is None:
        pytest.skip("curl is not installed; the service commands test covers the routes through the CLI")
    text = (ROOT / "docs" / "api.md").read_text()
    lines = [line for block in command_blocks(ROOT / "docs" / "api.md") for line in commands(block)]
    curls = [line.split("   #", 1)[0].strip() for line in lines if line.startswith("curl ")]
    curls.sort(key=lambda line: "/v1/datasets?" not in line)  # the data first: jobs further up train on it
    assert len(curls) >= 15, curls
    _images_zip(tmp_path / "pets.zip", classes=10, per_class=30)  # the 10 classes its model upload declares
    model = build_model("torchvision:resnet18", {"num_classes": 10})
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    with running(Settings(data_dir=tmp_path / "server", poll_s=0.05), instant_runner) as (client, _):
        url = str(client.base_url).rstrip("/")
        example = json.loads(text.split("```json\n", 1)[1].split("```", 1)[0])
        answer = client.post("/v1/jobs", json={"space": "imagenet", "latency_budget_ms": 1.0}).json()
        assert answer["detail"] == example["detail"] and answer["code"] == example["code"]
        rng = np.random.default_rng(0)
        np.savez(
            tmp_path / "digits.npz", x=rng.normal(size=(300, 64)).astype(np.float32), y=np.repeat(np.arange(10), 30)
        )
        with Client(url) as c:
            c.upload_dataset("my_digits", tmp_path / "digits.npz", "npz", calib=50)
        env = {**os.environ, "API": url}
        ran, skipped = 0, []
        for line in curls:
            files = re.findall(r"@(\S+)", line)
            if any(not (tmp_path / f).is_file() for f in files):
                skipped.append(line)  # a table built on another device
                continue
            line = line.replace("m_3c1f...", env.get("MODEL", "")).replace("3f9a0c1d2b4e5f60", env.get("CAND", ""))
            r = subprocess.run(f"{line} -w '\\n%{{http_code}}'", shell=True, cwd=tmp_path, env=env,
                               capture_output=True, text=True, timeout=60)  # fmt: skip
            body, _, code = r.stdout.rpartition("\n")
            expected = (409,) if "/cancel" in line else tuple(range(200, 400))
            assert r.returncode == 0 and int(code) in expected, f"{line}: {code} {body} {r.stderr}"
            ran += 1
            if "-X POST" in line and line.split("-H")[0].rstrip().endswith("/v1/jobs"):
                env["JOB"] = json.loads(body)["id"]
                with httpx.Client(base_url=url, timeout=10) as h:
                    wait_for(h, env["JOB"], ("succeeded",))
                    env["CAND"] = h.get(f"/v1/jobs/{env['JOB']}/pareto").json()["recommended_id"]  # a front's id
            if "/v1/models?" in line:
                env["MODEL"] = json.loads(body)["id"]
    assert ran >= 15 and len(skipped) <= 1, skipped


TINY = {  # the slow local commands, given tiny settings (appended to the line as written)
    ("train",): ["--epochs", "1", "--warmup-epochs", "0", "--n-random", "0"],
    ("lut", "build"): ["--fit", "3", "--validate", "2", "--op-rounds", "3"],
    ("search",): ["--finetune-steps", "0"],  # it finds the supernet the train line cached
}


@pytest.mark.slow
def test_the_local_commands_of_the_readmes_use_block_run_with_tiny_settings(tmp_path, monkeypatch, capsys):
    """The README's 'Use' block, as written, in a fresh folder: spaces, train, lut build/show, search, pareto of
    that search, export. Tiny settings are appended to the slow ones (TINY; the search's --trials cut to 4); left
    out: Ray Train workers, tier 0 on weights the user has, and the long-running servers (serve, dashboard).
    About 2 minutes on 2 cores: train 38 s, lut build 36 s, search 40 s, spaces show 9 s."""
    from nasprune.cli import main

    block = (ROOT / "README.md").read_text().split("## Use\n", 1)[1]
    argvs = [a for a in map(nasprune_argv, commands(command_blocks(block)[0])) if a]
    local = argvs[: next(i for i, a in enumerate(argvs) if a[0] == "serve")]  # the service's half comes after
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NASPRUNE_DATA_DIR", raising=False)
    ran, job_id = [], None
    for argv in local:
        if "--workers" in argv or "trained.safetensors" in argv or (argv[0] == "pareto" and job_id is None):
            continue
        argv = [job_id if a == "JOB_ID" else a for a in argv]
        if argv[0] == "search":
            argv[argv.index("--trials") + 1] = "4"
        argv += next((extra for key, extra in TINY.items() if tuple(argv[: len(key)]) == key), [])
        rc = main(argv)
        out = capsys.readouterr()
        assert rc == 0 or (argv[0] == "search" and rc == 1), f"nasprune {' '.join(argv)}: {out.err}"
        if argv[0] == "search":
            job_id = re.search(r"^job ([0-9a-f]{32}):", out.out, re.M)[1]
        ran.append(argv[:2])
    assert [a[0] for a in ran] == ["spaces", "spaces", "train", "lut", "lut", "search", "pareto", "export"], ran
    assert (tmp_path / "small.onnx").is_file()


def _commands_by_path() -> dict[tuple[str, ...], object]:
    import argparse

    from nasprune.cli import build_parser

    def walk(parser, path=()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield (*path, name), sub
                    yield from walk(sub, (*path, name))

    return dict(walk(build_parser()))


def _live_flags(parser) -> set[str]:
    from nasprune.cli._common import _Retired

    return {s for a in parser._actions if not isinstance(a, _Retired) for s in a.option_strings}


def test_flags_named_in_the_docs_prose_and_in_help_texts_exist():
    """`nasprune CMD --flag` in the prose of README/docs, and every --flag a --help text names, is a flag of
    today's CLI (not an old spelling, which only stays to be refused)."""
    commands = _commands_by_path()
    everywhere = set().union(*(_live_flags(p) for p in commands.values()))
    wrong, checked = [], 0
    for path in DOCS:
        for span in re.findall(r"`((?:\.venv/bin/)?nasprune [^`]+)`", path.read_text()):
            words = span.replace("\n", " ").split()[1:]
            cmd: tuple[str, ...] = ()
            while words and (*cmd, words[0]) in commands:
                cmd, words = (*cmd, words[0]), words[1:]
            if not cmd:
                continue
            flags = {w.split("=")[0] for w in words if re.fullmatch(r"--[a-z][a-z0-9-]*(=\S*)?", w)}
            checked += len(flags)
            wrong += [f"{path.name}: `{span}`: {f}" for f in flags - _live_flags(commands[cmd])]
    for cmd, parser in commands.items():
        named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", parser.format_help()))
        wrong += [f"nasprune {' '.join(cmd)} --help: {f}" for f in named - everywhere - {"--backend-store-uri"}]
    assert checked > 25 and not wrong, (checked, "\n".join(wrong))
