"""JUnit XML for `stockaj-rules test --junit FILE`, so CI systems show each fixture as a test.

The report replaces an empty file or an earlier report of this command (CI runs the
tests again and again), never any other file, and never writes through a symbolic link
(engine/cli/output_files.py).
"""

from __future__ import annotations

import io
import re
import xml.etree.ElementTree as ET
from pathlib import Path

from engine.cli.output_files import write_for_command
from engine.errors import SourceProblem
from engine.language.harness import FixtureResult
from engine.secrets import Masker

# How every report of this module starts: ElementTree writes the name attribute first.
_OWN_REPORT = re.compile(rb"\s*(<\?xml[^>]*\?>\s*)?<testsuite name=\"stockaj-rules\"")


def write_junit(
    path: Path, results: list[FixtureResult], problems: list[SourceProblem], masker: Masker
) -> str | None:
    """Write the report at `path`; None when written, else the line saying why not."""
    failures = sum(1 for r in results if not r.passed)
    suite = ET.Element(
        "testsuite",
        name="stockaj-rules",
        tests=str(len(results) + len(problems)),
        failures=str(failures),
        errors=str(len(problems)),
    )
    for result in results:
        case = ET.SubElement(suite, "testcase", classname=result.fixture.file, name=result.fixture.name)
        if result.failures:
            lines = []
            for failure in result.failures:
                lines.append(failure.message)
                if failure.expected is not None:
                    lines.append(f"  expected: {failure.expected}")
                if failure.actual is not None:
                    lines.append(f"  actual:   {failure.actual}")
            text = masker.mask("\n".join(lines))
            failure_element = ET.SubElement(case, "failure", message=text.splitlines()[0])
            failure_element.text = text
    for problem in problems:
        case = ET.SubElement(suite, "testcase", classname=problem.path, name=f"line {problem.line}")
        ET.SubElement(case, "error", message=masker.mask(str(problem)))
    document = io.BytesIO()
    ET.ElementTree(suite).write(document, encoding="utf-8", xml_declaration=True)
    return write_for_command(
        "the JUnit report", path, document.getvalue(), option="--junit", replace=_not_own_report
    )


def _not_own_report(path: Path) -> str | None:
    """None when `path` may be replaced: it is empty, or a report this module wrote."""
    with path.open("rb") as file:
        start = file.read(4096)
    if not start.strip() or _OWN_REPORT.match(start):
        return None
    return "already exists and is not a JUnit report of stockaj-rules"
