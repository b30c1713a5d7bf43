"""The CLI shell: lazy imports, help for every command, exit codes, --debug."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO

HEAVY = ("pandas", "pyarrow", "pynvml", "duckdb", "httpx", "numpy", "vllm")


def test_help_imports_nothing_heavy():
    code = (
        "import sys; from gpuaudit.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"


def test_import_gpuaudit_needs_no_driver_or_vllm():
    r = subprocess.run(
        [sys.executable, "-c", "import gpuaudit, sys; print('vllm' in sys.modules)"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert r.returncode == 0 and r.stdout.strip() == "False"


def test_every_command_has_help_and_is_in_the_readme(cli):
    import typer.main

    from gpuaudit.cli import app

    readme = (REPO / "README.md").read_text()
    group = typer.main.get_command(app)
    names = sorted(group.commands)  # type: ignore[attr-defined]
    assert {"sample", "run", "import", "report", "check", "simulate", "recommend", "demo"} <= set(names)
    for name in names:
        r = cli(name, "--help")
        assert r.returncode == 0 and "Usage:" in r.stdout, name
        assert f"gpuaudit {name}" in readme, f"README does not document `gpuaudit {name}`"


def test_version_and_unknown_command(cli):
    r = cli("--version")
    assert r.returncode == 0 and r.stdout.startswith("gpuaudit ")
    r = cli("frobnicate")
    assert r.returncode == 2 and "No such command" in r.stderr


def test_data_error_has_no_traceback_unless_debug(cli, tmp_path):
    missing = tmp_path / "nope"
    r = cli("report", str(missing))
    assert r.returncode == 3 and r.stderr.startswith("error: ") and str(missing) in r.stderr
    assert "Traceback" not in r.stderr
    r = cli("--debug", "report", str(missing))
    assert r.returncode == 3 and "Traceback" in r.stderr
