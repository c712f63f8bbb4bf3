"""What the benchmark scripts share: replacing their own section of ``docs/benchmarks.md``."""

from __future__ import annotations

import os


def replace_section(path: str, section: str) -> None:
    """Puts ``section`` (markdown whose first line is its ``## `` heading) into ``path``.

    The old section (from that heading to the next ``## `` heading or the end) is replaced;
    without one, the section is appended. Other sections stay as they are.
    """
    heading = section.split("\n", 1)[0]
    if not heading.startswith("## "):
        raise ValueError(f"a section starts with its '## ' heading, got {heading!r}")
    text = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
    start = text.find(heading + "\n")
    body = section.rstrip("\n") + "\n"
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + body
    else:
        end = text.find("\n## ", start + len(heading))
        rest = "" if end < 0 else text[end + 1 :]
        text = text[:start] + body + ("\n" + rest if rest else "")
    with open(path, "w") as f:
        f.write(text)
