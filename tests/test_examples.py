"""Every file under examples/ is exercised: YAML parses, the policy and config files load with the
real loaders, and every `gpuaudit …` command line in the CI workflow, the systemd unit and the
Kubernetes DaemonSet parses against the real typer app (so flags stay valid as the CLI evolves)."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml
from typer.exceptions import TyperException

from gpuaudit.check import evaluate
from gpuaudit.check_policy import load_policy
from gpuaudit.cli import app
from gpuaudit.config import load_config
from gpuaudit.pricing import load_pricing

REPO = Path(__file__).parent.parent
EXAMPLES = REPO / "examples"
WORKFLOW = EXAMPLES / "github-actions" / "gpu-regression.yml"
UNIT = EXAMPLES / "systemd" / "gpuaudit-sampler.service"
DAEMONSET = EXAMPLES / "kubernetes" / "daemonset.yaml"
YAML_FILES = sorted(p for p in EXAMPLES.rglob("*") if p.suffix in (".yaml", ".yml"))
CLI = typer.main.get_command(app)


def test_expected_examples_exist():
    names = {p.relative_to(EXAMPLES).as_posix() for p in EXAMPLES.rglob("*") if p.is_file()}
    assert {
        "gpuaudit.yaml",
        "pricing.yaml",
        "policy.yaml",
        "github-actions/gpu-regression.yml",
        "systemd/gpuaudit-sampler.service",
        "kubernetes/daemonset.yaml",
    } <= names


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: p.relative_to(EXAMPLES).as_posix())
def test_every_yaml_parses(path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs and all(isinstance(d, dict) for d in docs)


# --------------------------------------------------------------------------- gpuaudit command lines


def gpuaudit_invocations(text: str) -> list[list[str]]:
    """Every `gpuaudit …` command in shell text: continuations joined, cut at redirections/pipes."""
    commands = []
    for line in text.replace("\\\n", " ").splitlines():
        tokens = shlex.split(line, comments=True)
        for i, token in enumerate(tokens):
            if token == "gpuaudit" or token.endswith("/gpuaudit"):
                args = []
                for t in tokens[i + 1 :]:
                    if t in ("|", "||", "&&", ";") or t.startswith((">", "<", "2>")):
                        break
                    args.append(t)
                commands.append(args)
                break
    return commands


def parse_with_cli(args: list[str]) -> Any:
    """Parse ARGS with the real click command that typer builds (unknown flags, bad choices and
    missing values raise a UsageError), without running it."""
    assert args, "bare `gpuaudit`"
    sub = CLI.commands.get(args[0])  # type: ignore[attr-defined]
    assert sub is not None, f"`gpuaudit {args[0]}` is not a gpuaudit command"
    return sub.make_context(args[0], list(args[1:]))


def option_names(args: list[str]) -> list[str]:
    names = []
    for a in args:
        if a == "--":
            break
        if a.startswith("--"):
            names.append(a.split("=", 1)[0])
    return names


def assert_valid_command(args: list[str]) -> Any:
    ctx = parse_with_cli(args)
    known = {o for p in ctx.command.params for o in (*p.opts, *p.secondary_opts)}
    unknown = [n for n in option_names(args) if n not in known]
    assert not unknown, f"gpuaudit {args[0]}: unknown flags {unknown}"
    return ctx


def workflow_commands() -> list[list[str]]:
    doc = yaml.safe_load(WORKFLOW.read_text())
    return [
        c
        for job in doc["jobs"].values()
        for step in job["steps"]
        if "run" in step
        for c in gpuaudit_invocations(step["run"])
    ]


def test_workflow_structure():
    doc = yaml.safe_load(WORKFLOW.read_text())
    (job,) = doc["jobs"].values()
    assert "self-hosted" in job["runs-on"] and "gpu" in job["runs-on"]
    runs = "\n".join(s.get("run", "") for s in job["steps"])
    assert "vllm serve" in runs and "$GITHUB_STEP_SUMMARY" in runs
    uploads = [s for s in job["steps"] if str(s.get("uses", "")).startswith("actions/upload-artifact@")]
    assert uploads and uploads[0]["if"] == "${{ always() }}"
    paths = uploads[0]["with"]["path"].split()
    assert "report.html" in paths and "junit.xml" in paths


def test_workflow_gpuaudit_commands_are_real():
    commands = workflow_commands()
    by_name = {}
    for args in commands:
        ctx = assert_valid_command(args)
        by_name.setdefault(args[0], []).append(ctx)
    assert set(by_name) >= {"run", "report", "check"}
    (run,) = by_name["run"]
    assert run.params["vllm"] == ["http://127.0.0.1:8000"]
    load_test = run.params["cmd"]
    assert load_test[:3] == ["vllm", "bench", "serve"]  # the load test runs after `--`
    # The load test lasts long enough to give even one GPU the policy's min_gpu_hours.
    duration_s = float(load_test[load_test.index("--num-prompts") + 1]) / float(
        load_test[load_test.index("--request-rate") + 1]
    )
    assert duration_s / 3600 >= load_policy(REPO / "examples" / "policy.yaml").min_gpu_hours
    (check,) = by_name["check"]
    assert check.params["policy"] == Path("examples/policy.yaml")
    assert check.params["junit"] == Path("junit.xml") and str(check.params["fmt"]) == "markdown"
    assert check.params["baseline"] is not None
    assert (REPO / check.params["policy"]).is_file()
    assert any(c.params.get("fmt") is not None and str(c.params["fmt"]) == "html" for c in by_name["report"])
    # The check line appends the Markdown verdict to the job summary.
    doc = yaml.safe_load(WORKFLOW.read_text())
    scripts = [step["run"] for job in doc["jobs"].values() for step in job["steps"] if "run" in step]
    check_line = next(
        line
        for script in scripts
        for line in script.replace("\\\n", " ").splitlines()
        if "gpuaudit check" in line
    )
    assert re.search(r'>>\s*"\$GITHUB_STEP_SUMMARY"', check_line)


@pytest.mark.parametrize(
    "bad",
    [
        ["check", "d", "--policy", "p.yaml", "--junitt", "j.xml"],
        ["check", "d", "--policy", "p", "--format", "xml"],
        ["sampel", "--out", "x"],
        ["sample", "--out"],
    ],
)
def test_the_command_validator_rejects_bad_lines(bad):
    """Negative control: the validator used above does fail on invalid command lines."""
    with pytest.raises((TyperException, AssertionError)):  # click's UsageError (vendored by typer)
        assert_valid_command(bad)


def systemd_unit(text: str) -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        assert current is not None and _, f"not a key=value line: {raw!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_systemd_unit_is_hardened_and_runs_a_real_command():
    unit = systemd_unit(UNIT.read_text())
    service = unit["Service"]

    def one(key: str) -> str:
        (value,) = service[key]
        return value

    assert one("DynamicUser") == "yes" or "User" in service
    assert one("ProtectSystem") == "strict" and one("NoNewPrivileges") == "yes"
    assert one("StateDirectory") == "gpuaudit" and one("Restart") == "on-failure"
    assert one("DevicePolicy") == "closed" and any("nvidia" in d for d in service["DeviceAllow"])
    assert service.get("PrivateDevices", ["no"]) == ["no"]  # would hide /dev/nvidia*
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]
    (args,) = gpuaudit_invocations(one("ExecStart"))
    ctx = assert_valid_command(args)
    assert args[0] == "sample" and str(ctx.params["out"]).startswith("/var/lib/gpuaudit/")
    assert ctx.params["vllm"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("typo", [False, True])
def test_systemd_analyze_verifies_the_unit(tmp_path, typo):
    """systemd's own parser accepts every directive (with a typo as the negative control)."""
    text = UNIT.read_text().replace("/opt/gpuaudit/bin/gpuaudit", f"{sys.executable} -m gpuaudit")
    if typo:
        text = text.replace("NoNewPrivileges=yes", "NoNewPrivilege=yes")
    unit = tmp_path / "gpuaudit-sampler.service"
    unit.write_text(text)
    cmd = ["systemd-analyze", "verify", str(unit)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    problems = (proc.stdout + proc.stderr).strip()
    if typo:
        assert "Unknown key 'NoNewPrivilege'" in problems
    else:
        assert proc.returncode == 0 and problems == "", problems


def daemonset() -> dict:
    docs = [d for d in yaml.safe_load_all(DAEMONSET.read_text()) if d]
    (ds,) = [d for d in docs if d["kind"] == "DaemonSet"]
    return ds


def test_daemonset_samples_every_gpu_node():
    ds = daemonset()
    pod = ds["spec"]["template"]["spec"]
    assert (
        ds["spec"]["selector"]["matchLabels"].items() <= ds["spec"]["template"]["metadata"]["labels"].items()
    )
    assert pod["runtimeClassName"] == "nvidia" and pod["nodeSelector"]
    (container,) = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["NVIDIA_VISIBLE_DEVICES"]["value"] == "all"
    limits = container["resources"]["limits"]
    assert limits["cpu"] and limits["memory"] and "nvidia.com/gpu" not in limits  # reserves no GPU
    host_paths = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    data_volume = next(name for name, path in host_paths.items() if path == "/var/lib/gpuaudit")
    # Kubernetes expands $(VAR) from env in args; do the same before parsing.
    expand = {"NODE_IP": "10.0.0.7", "NODE_NAME": "gpu-node-7"}
    args = [re.sub(r"\$\((\w+)\)", lambda m: expand[m.group(1)], a) for a in container["args"]]
    assert container["command"] == ["gpuaudit"]
    ctx = assert_valid_command(args)
    assert args[0] == "sample" and str(ctx.params["out"]).startswith(mounts[data_volume])
    assert ctx.params["vllm"] == ["http://10.0.0.7:8000"]  # the vLLM pod on this node
    assert all(e["valueFrom"]["fieldRef"] for n, e in env.items() if n in expand)


# --------------------------------------------------------------------------- policy and config files


def test_policy_example_loads_and_evaluates():
    policy = load_policy(EXAMPLES / "policy.yaml")
    assert policy.needs_baseline and len(policy.rules) >= 5
    assert {r.scope for r in policy.rules} == {"totals", "gpus", "engines"}
    data = REPO / "tests" / "data" / "check"
    current, baseline = (json.loads((data / n).read_text()) for n in ("current.json", "baseline.json"))
    outcome = evaluate(policy, current, baseline)  # every metric it names exists in the report contract
    assert outcome.exit_code == 1


def test_pricing_example_loads_with_the_pricing_loader():
    pricing = load_pricing(EXAMPLES / "pricing.yaml")
    # First match wins: the PCIe SKU has its own price before the H100 family rule.
    assert pricing.price_for("NVIDIA H100 PCIe") == 2.86
    assert pricing.price_for("NVIDIA H100 80GB HBM3") == 2.49
    assert pricing.price_for("NVIDIA A100-SXM4-40GB") == 1.48
    assert pricing.price_for("Tesla T4") == 2.00  # default_usd_per_gpu_hour
    assert all(rule.source for rule in pricing.rules if rule.pattern != "*")


def test_config_example_loads_with_the_config_loader():
    config = load_config(EXAMPLES / "gpuaudit.yaml")
    assert config.thresholds.idle_util_pct == 5 and config.thresholds.held_mem_frac == 0.05
    assert [r.pattern for r in config.price_rules][:2] == ["*H100*PCIe*", "*H100*"]
    assert config.engine_gpu_map["gpu-node-1|http://127.0.0.1:8000/metrics"][0].startswith("GPU-")
    assert any("*" in key for key in config.engine_gpu_map)  # a model-name glob mapping


def test_policy_required_rules_match_the_workflow_model():
    """A `required: true` rule whose `where` misses the model the workflow serves would fail CI."""
    model = yaml.safe_load(WORKFLOW.read_text())["jobs"]["gpu-regression"]["env"]["MODEL"]
    engine = {"host": "ci-gpu-runner", "model": model, "endpoint": "http://127.0.0.1:8000/metrics"}
    required = [r for r in load_policy(EXAMPLES / "policy.yaml").rules if r.required]
    assert required
    for rule in required:
        assert rule.scope == "engines"
        assert all(any(fnmatch.fnmatchcase(engine[k], g) for g in globs) for k, globs in rule.where), (
            rule.path
        )
