"""Machine-readable and CI views of a :class:`~moediag.checks.CheckReport`.

Every format is one function ``(report) -> str`` in :data:`RENDERERS`, chosen by :class:`OutputFormat`
(the mapping is exhaustive; a test loops over every member). ``table`` imports rich lazily.
"""

from __future__ import annotations

import enum
import json
import xml.etree.ElementTree as ET
from collections.abc import Callable

from moediag.checks import CheckReport, RuleOutcome
from moediag.render.check_cells import outcome_cells


class OutputFormat(str, enum.Enum):
    TABLE = "table"
    JSON = "json"
    JUNIT = "junit"
    MARKDOWN = "markdown"
    GITHUB = "github"


def render_table(report: CheckReport) -> str:
    from moediag.render.terminal.check_table import check_table_text

    return check_table_text(report)


def render_json(report: CheckReport) -> str:
    return json.dumps(report.to_dict(), indent=2, allow_nan=False) + "\n"


def _details(outcome: RuleOutcome) -> str:
    return "\n".join(r.message() for r in outcome.results)


def render_junit(report: CheckReport) -> str:
    """JUnit XML: one testsuite, one testcase per rule (failure / skipped carry each layer's message)."""
    failures = len(report.failed)
    skipped = sum(1 for o in report.outcomes if o.status == "skip")
    suites = ET.Element(
        "testsuites",
        name="moediag check",
        tests=str(len(report.outcomes)),
        failures=str(failures),
        errors="0",
        skipped=str(skipped),
    )
    suite = ET.SubElement(
        suites,
        "testsuite",
        name=f"moediag check {report.path or ''}".strip(),
        tests=str(len(report.outcomes)),
        failures=str(failures),
        errors="0",
        skipped=str(skipped),
        timestamp=report.created,
    )
    for outcome in report.outcomes:
        case = ET.SubElement(suite, "testcase", classname="moediag.check", name=outcome.name, time="0")
        if outcome.status == "fail":
            first = outcome.failures[0]
            node = ET.SubElement(case, "failure", message=first.message(), type=outcome.name)
            node.text = "\n".join(r.message() for r in outcome.failures)
        elif outcome.status == "skip":
            ET.SubElement(case, "skipped", message=outcome.reason or "skipped")
        ET.SubElement(case, "system-out").text = _details(outcome)
    ET.indent(suites)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(report: CheckReport) -> str:
    icon = {"pass": "pass", "FAIL": "**FAIL**", "skip": "skip"}
    lines = [
        f"### moediag check: {report.status.upper()}",
        "",
        _md(report.verdict()),
        "",
        "| rule | scope | value | threshold | status | detail |",
        "|---|---|--:|--:|---|---|",
    ]
    for outcome in report.outcomes:
        scope, value, threshold, word, detail = outcome_cells(outcome)
        lines.append(
            f"| `{outcome.name}` | {scope} | {_md(value)} | {_md(threshold)} | {icon[word]} | {_md(detail)} |"
        )
    if report.disabled:
        lines += ["", f"Off: {', '.join(f'`{n}`' for n in report.disabled)}"]
    return "\n".join(lines) + "\n"


def _gh_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _gh_prop(text: str) -> str:
    return _gh_data(text).replace(":", "%3A").replace(",", "%2C")


def render_github(report: CheckReport) -> str:
    """GitHub Actions workflow commands: ``::error`` per failure, ``::warning`` per skipped rule, a notice."""
    where = f"file={_gh_prop(report.path)}," if report.path else ""
    lines = []
    for outcome in report.outcomes:
        if outcome.status == "fail":
            for result in outcome.failures:
                lines.append(
                    f"::error {where}title={_gh_prop('moediag check ' + outcome.name)}::"
                    f"{_gh_data(result.message())}"
                )
        elif outcome.status == "skip":
            lines.append(
                f"::warning {where}title={_gh_prop('moediag check ' + outcome.name)}::"
                f"{_gh_data(outcome.reason or 'skipped')}"
            )
    lines.append(f"::notice title=moediag check::{_gh_data(report.verdict())}")
    return "\n".join(lines) + "\n"


RENDERERS: dict[OutputFormat, Callable[[CheckReport], str]] = {
    OutputFormat.TABLE: render_table,
    OutputFormat.JSON: render_json,
    OutputFormat.JUNIT: render_junit,
    OutputFormat.MARKDOWN: render_markdown,
    OutputFormat.GITHUB: render_github,
}


def render(report: CheckReport, fmt: OutputFormat | str) -> str:
    return RENDERERS[OutputFormat(fmt)](report)
