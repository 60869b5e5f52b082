"""JUnit XML for `stockaj-rules test --junit FILE`, so CI systems show each fixture as a test."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from engine.errors import SourceProblem
from engine.harness import FixtureResult
from engine.secrets import Masker


def write_junit(
    path: Path, results: list[FixtureResult], problems: list[SourceProblem], masker: Masker
) -> None:
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
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)
