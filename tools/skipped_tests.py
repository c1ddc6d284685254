#!/usr/bin/env python3
"""Lists the tests ctest skipped, each with its reason, from ctest's JUnit files:

    python3 tools/skipped_tests.py build/release/junit.xml ...

A GoogleTest case's reason is the line after its "Skipped" line; a script's, the line it printed
with SKIPPED (or its last line)."""
import sys
import xml.etree.ElementTree as ET


def reason(out):
    lines = [l for l in (out or "").splitlines() if l.strip()]
    for i, line in enumerate(lines):
        if line.rstrip().endswith(": Skipped") and i + 1 < len(lines):
            return lines[i + 1].strip()
    for line in lines:
        if "SKIPPED" in line and not line.startswith("[  SKIPPED ]"):
            return line.strip()
    return lines[-1].strip() if lines else "(no output)"


count = 0
for path in sys.argv[1:]:
    for case in ET.parse(path).getroot().iter("testcase"):
        if case.find("skipped") is None:
            continue
        out = case.find("system-out")
        print(f"  skipped: {case.get('name')}: {reason(out.text if out is not None else '')}")
        count += 1
print(f"{count} test(s) skipped")
