"""JUnit XML for `gpuaudit check --junit FILE`: one ``<testcase>`` per rule and item.

The layout is the common Ant/Jenkins one (``junit-10.xsd``), which GitHub test-report actions,
GitLab ``artifacts:reports:junit`` and Jenkins read: ``<testsuites>`` → ``<testsuite>`` with
``<properties>`` → ``<testcase>`` holding ``<failure>`` (a violated rule), ``<error>`` (a value
that is null in the report) or ``<skipped>`` (no match, no baseline item).
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import tempfile
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path

from gpuaudit import __version__
from gpuaudit.check import CheckOutcome, CheckResult, fmt_number
from gpuaudit.errors import ConfigError
from gpuaudit.render.check_text import delta_text

# Characters XML 1.0 cannot carry at all (even escaped): replaced, so any model name is safe.
_XML_INVALID = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_text(text: str) -> str:
    return _XML_INVALID.sub("\ufffd", text)


def _details(result: CheckResult) -> str:
    lines = [
        f"rule: {result.rule.path} {result.rule.label}",
        f"item: {result.item}",
        f"value: {fmt_number(result.value)}",
        f"limit: {result.rule.limit_text}",
        f"baseline: {fmt_number(result.baseline)}",
        f"delta: {delta_text(result)}",
        f"verdict: {result.verdict}",
    ]
    lines += [f"{c.kind}: {c.message}" for c in result.checks]
    return xml_text("\n".join(lines) + "\n")


def _testcase(parent: ET.Element, result: CheckResult) -> None:
    rule = result.rule
    name = f"{rule.path} {rule.label} {rule.limit_text} [{result.item}]"
    case = ET.SubElement(
        parent,
        "testcase",
        {
            "name": xml_text(name),
            "classname": f"gpuaudit.check.{rule.scope}.{xml_text(rule.metric)}",
            "time": "0",
        },
    )
    message = xml_text(result.message)
    child = {"fail": "failure", "no_data": "error", "no_match": "skipped", "skipped": "skipped"}.get(
        result.verdict
    )
    if child is None:
        ET.SubElement(case, "system-out").text = _details(result)
        return
    failed = [c.kind for c in result.checks if c.ok is False]
    kind = failed[0] if failed else ("required" if result.verdict == "fail" else result.verdict)
    element = ET.SubElement(case, child, {"message": message, "type": f"gpuaudit.check.{kind}"})
    element.text = _details(result)


def junit_xml(
    outcome: CheckOutcome,
    *,
    elapsed_s: float = 0.0,
    timestamp: datetime | None = None,
    hostname: str | None = None,
) -> bytes:
    """The JUnit XML document (UTF-8 bytes with an XML declaration)."""
    tests, failures, errors = len(outcome.results), outcome.count("fail"), outcome.count("no_data")
    skipped = outcome.count("no_match") + outcome.count("skipped")
    time_s = f"{max(elapsed_s, 0.0):.3f}"
    root = ET.Element(
        "testsuites",
        {
            "name": "gpuaudit check",
            "tests": str(tests),
            "failures": str(failures),
            "errors": str(errors),
            "time": time_s,
        },
    )
    stamp = (timestamp or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")
    suite = ET.SubElement(
        root,
        "testsuite",
        {
            "name": xml_text(f"gpuaudit check {outcome.policy_source}"),
            "tests": str(tests),
            "failures": str(failures),
            "errors": str(errors),
            "skipped": str(skipped),
            "time": time_s,
            "timestamp": stamp,
            "hostname": xml_text(hostname or socket.gethostname()),
        },
    )
    props = ET.SubElement(suite, "properties")
    for name, value in (
        ("policy", outcome.policy_source),
        ("report", outcome.report_source),
        ("baseline", outcome.baseline_source or ""),
        ("simulated", str(outcome.simulated).lower()),
        ("gpuaudit_version", __version__),
    ):
        ET.SubElement(props, "property", {"name": name, "value": xml_text(value)})
    for result in outcome.results:
        _testcase(suite, result)
    ET.SubElement(suite, "system-out").text = xml_text(outcome.summary + "\n")
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def check_writable(path: Path) -> None:
    """Fail early (exit 2), before any work, when ``path`` cannot be written."""
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise ConfigError(f"--junit {path}: is a directory; give a file name such as junit.xml")
    if not parent.is_dir():
        raise ConfigError(f"--junit {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise ConfigError(f"--junit {path}: directory {parent} is not writable")


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync it, then rename it into place:
    a reader sees the old file or the whole new one, never half of it."""
    check_writable(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise ConfigError(f"--junit {path}: cannot write: {exc.strerror or exc}") from exc
        raise


def write_junit(path: Path, outcome: CheckOutcome, *, elapsed_s: float = 0.0) -> None:
    write_atomic(path, junit_xml(outcome, elapsed_s=elapsed_s))
