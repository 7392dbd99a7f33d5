"""Starting the command line: --help and argument errors without torch, and Ctrl-C at any moment as one line.

The Ctrl-C tests send a real SIGINT to a real ``attncluster`` process, in both of its forms: the console script
(``from attncluster.cli import main; sys.exit(main())``, what pip's generated script runs) and ``python -m
attncluster``. A moment inside start-up is reached exactly with an audit hook that signals the process when a given
module starts being imported; later moments (torch being loaded, training under way) are watched from outside.
"""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from attncluster.cli import VERBS

CONSOLE_SCRIPT = "import sys; from attncluster.cli import main; sys.exit(main())"
DASH_M = "import runpy; runpy.run_module('attncluster', run_name='__main__', alter_sys=True)"  # what -m does


def _env():
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("WORLD_SIZE", None)
    return env


def test_help_and_argument_errors_never_import_torch_or_numpy():
    """For every verb of the table: --help, an unknown option and (where the verb has required arguments) no
    arguments at all, each in a fresh process, leave torch and numpy unimported."""
    code = textwrap.dedent("""
        import json, sys
        from attncluster.cli import VERBS, build_parser, main

        def attempt(argv):
            try:
                status = main(argv)
            except SystemExit as e:
                status = e.code
            heavy = sorted(m for m in ("torch", "numpy") if m in sys.modules)
            return {"argv": argv, "status": status, "heavy": heavy}

        sub = next(a for a in build_parser()._actions if a.dest == "command").choices
        results = [attempt(["--help"]), attempt([]), attempt(["no-such-verb"])]
        for verb in VERBS:
            results.append(attempt([verb, "--help"]))
            results.append(attempt([verb, "--no-such-option"]))
            if any(a.required for a in sub[verb]._actions):
                results.append(attempt([verb]))
        print(json.dumps(results))
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=120)
    assert p.returncode == 0, p.stderr
    import json

    results = json.loads(p.stdout.strip().splitlines()[-1])
    assert len(results) >= 3 + 2 * len(VERBS)
    for r in results:
        assert r["heavy"] == [], r
        assert r["status"] == (0 if "--help" in r["argv"] else 2), r
    assert "Traceback" not in p.stderr
    errors = [line for line in p.stderr.splitlines() if line.strip()]
    assert errors and all(line.startswith("error: ") for line in errors), errors


# ---- Ctrl-C -----------------------------------------------------------------------------------------------------

def _interrupt_at(event: str, target: str, form: str, *argv: str) -> subprocess.CompletedProcess:
    """Run attncluster ``argv``; SIGINT the process at the first audit ``event`` ("import": a module name, "open":
    a file being read, e.g. a module's source or its cached bytecode) naming ``target``."""
    code = textwrap.dedent(f"""
        import os, signal, sys
        fired = []

        def hook(event, args):
            if event == {event!r} and not fired and {target!r} in str(args[0]).replace("__pycache__/", ""):
                fired.append(1)
                os.kill(os.getpid(), signal.SIGINT)

        sys.addaudithook(hook)
        sys.argv = ["attncluster", *{list(argv)!r}]
    """) + form
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=120)


def _assert_interrupted(p, *needles):
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert p.returncode == 130, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr, p.stderr
    assert len(lines) == 1 and lines[0].startswith("interrupted: "), p.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


@pytest.mark.parametrize("form", [CONSOLE_SCRIPT, DASH_M], ids=["console-script", "python-m"])
@pytest.mark.parametrize("event, target", [("import", "argparse"), ("import", "attncluster.cli.common"),
                                           ("open", "attncluster/cli/eval.")])
def test_ctrl_c_during_start_up_is_one_line(event, target, form):
    """While the command-line module itself is imported (argparse, common) and while the parser is built (a verb's
    module is read): one line, exit 130."""
    p = _interrupt_at(event, target, form, "eval", "--weights", "x.pt")
    _assert_interrupted(p, "stopped while starting")


def _popen(form: str, *argv: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "attncluster"] if form == "python-m" else [sys.executable, "-c", CONSOLE_SCRIPT]
    return subprocess.Popen([*cmd, *map(str, argv)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env())


def _wait_for(p: subprocess.Popen, ready, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if p.poll() is not None:
            raise AssertionError(f"exited ({p.returncode}) before {what}: {p.stderr.read()}")
        if time.monotonic() > deadline:
            p.kill()
            raise AssertionError(f"no {what} within {timeout} s")
        time.sleep(0.002)


def _maps_hold(pid: int, needle: str) -> bool:
    try:
        with open(f"/proc/{pid}/maps") as f:
            return needle in f.read()
    except OSError:
        return False


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="watches /proc/PID/maps (Linux)")
@pytest.mark.parametrize("form", ["console-script", "python-m"])
def test_ctrl_c_while_torch_is_being_imported_is_one_line(form, tmp_path):
    p = _popen(form, "eval", "--weights", tmp_path / "missing.pt", "--config", "quickstart")
    _wait_for(p, lambda: _maps_hold(p.pid, "libtorch"), "torch import")  # torch's library is mapped: mid-import
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    _assert_interrupted(subprocess.CompletedProcess(p.args, p.returncode, "", err), "evaluation stopped")


def test_ctrl_c_during_training_is_one_line(tiny_data, tmp_path):
    from conftest import tiny_overrides

    run_dir = tmp_path / "run"
    args = ["train", "--config", "quickstart", "--run-dir", run_dir, "--device", "cpu"]
    for o in tiny_overrides(tiny_data, **{"train.epochs": 1000, "data.num_workers": 1}):
        args += ["-o", o]
    p = _popen("console-script", *args)
    first = p.stdout.readline()  # the first progress line: the model is built, data is being read
    assert first, p.stderr.read()
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    _assert_interrupted(subprocess.CompletedProcess(p.args, p.returncode, "", err), "training stopped")
