"""Print the requirements of boxwatch and the given extras, one a line, from pyproject.toml.

The image build installs these first, in their own layer, so that a change to the source does
not reinstall every dependency. Self-references such as ``boxwatch[gpu,containers]`` (used by the
``all`` extra) are expanded.

    python3 requirements.py pyproject.toml all > requirements.txt
"""

from __future__ import annotations

import re
import sys
import tomllib

SELF_REFERENCE = re.compile(r"^\s*([A-Za-z0-9_.-]+)\s*\[([^\]]*)\]\s*$")


def requirements(pyproject: dict, extras: list[str]) -> list[str]:
    """The base dependencies plus those of ``extras``, self-references expanded, in order, unique."""
    project = pyproject["project"]
    name = project["name"]
    optional = project.get("optional-dependencies", {})
    result: list[str] = list(project.get("dependencies", []))
    seen: set[str] = set()
    pending = [e.strip() for e in extras if e.strip()]
    while pending:
        extra = pending.pop(0)
        if extra in seen:
            continue
        if extra not in optional:
            raise SystemExit(f"pyproject.toml: unknown extra {extra!r}; extras are: {', '.join(optional)}")
        seen.add(extra)
        for requirement in optional[extra]:
            match = SELF_REFERENCE.match(requirement)
            if match and match.group(1).lower() == name.lower():
                pending.extend(e.strip() for e in match.group(2).split(","))
            else:
                result.append(requirement)
    return list(dict.fromkeys(result))


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[1], "rb") as f:
        pyproject = tomllib.load(f)
    for line in requirements(pyproject, argv[2].split(",")):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
