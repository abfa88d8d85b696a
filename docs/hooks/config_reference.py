"""The configuration reference page, generated from `conf/` (an mkdocs hook, and what
`tests/test_docs.py` checks): every key of every config file with its default and the comment that
describes it (the comment on its line, or the comment lines right above it)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

CONF = Path(__file__).resolve().parents[2] / "conf"
PLACEHOLDER = "<!-- config-reference -->"
KEY = re.compile(r"^(?P<indent>\s*)(?P<key>[A-Za-z_+][\w@/.+-]*):(?P<rest>.*)$")


@dataclass
class Key:
    """One key of one config file: its dotted path in the composed config, its default as written,
    and its description (empty when it has none)."""

    file: Path
    path: str
    default: str
    description: str
    leaf: bool


def package_prefix(file: Path, text: str) -> str:
    """Where a file's keys land in the composed config (its group, or its `# @package`)."""
    group = file.parent.relative_to(CONF).as_posix()
    found = re.search(r"#\s*@package\s+(\S+)", text)
    if found:
        package = found.group(1)
        return "" if package == "_global_" else package.replace("_group_", group).replace("/", ".") + "."
    return "" if group == "." else group.replace("/", ".") + "."


def split_comment(rest: str) -> tuple[str, str]:
    """A line's value and its inline comment (a `#` outside quotes)."""
    quote = None
    for i, char in enumerate(rest):
        if char in "'\"" and quote in (None, char):
            quote = None if quote else char
        elif char == "#" and quote is None and (i == 0 or rest[i - 1] in " \t"):
            return rest[:i].strip(), rest[i + 1 :].strip()
    return rest.strip(), ""


def comment_above(lines: list[str], index: int) -> str:
    """The comment lines right above line `index` (none when a blank line or a key intervenes)."""
    found = []
    i = index - 1
    while i >= 0 and lines[i].strip().startswith("#") and "@package" not in lines[i]:
        found.append(lines[i].strip().lstrip("#").strip())
        i -= 1
    return " ".join(reversed(found))


def file_keys(file: Path) -> list[Key]:
    """Every key of one config file, but its `defaults` list."""
    text = file.read_text()
    lines, prefix, stack, keys = text.splitlines(), package_prefix(file, text), [], []
    for index, line in enumerate(lines):
        match = KEY.match(line)
        if not match:
            continue
        indent = len(match.group("indent"))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match.group("key")))
        if stack[0][1] == "defaults":
            continue
        value, inline = split_comment(match.group("rest"))
        nested = index + 1 < len(lines) and not value and _deeper(lines[index + 1], indent)
        path = prefix + ".".join(k for _, k in stack)
        description = inline or comment_above(lines, index)
        keys.append(Key(file, path, value, description, not nested))
    return keys


def _deeper(line: str, indent: int) -> bool:
    """Whether a line is indented under a key of `indent` (a nested mapping or list)."""
    return bool(line.strip()) and len(line) - len(line.lstrip()) > indent


def all_keys() -> list[Key]:
    """Every key of every file of `conf/`, files in sorted order."""
    return [key for file in sorted(CONF.rglob("*.yaml")) for key in file_keys(file)]


def undocumented() -> list[str]:
    """`file: key` of every leaf key without a description here or for the same key elsewhere
    (an experiment's override inherits the description of the key it sets)."""
    keys = all_keys()
    described = {key.path for key in keys if key.description}
    return [
        f"{key.file.relative_to(CONF)}: {key.path}"
        for key in keys
        if key.leaf and key.path not in described
    ]


def reference() -> str:
    """The page's tables: one section per config file, a row per key."""
    keys, out = all_keys(), []
    described = {}
    for key in keys:
        if key.description:
            described.setdefault(key.path, key.description)
    for file in sorted({key.file for key in keys}):
        rows = [key for key in keys if key.file == file]
        out += [f"### `{file.relative_to(CONF).as_posix()}`", "", "| key | default | what it does |"]
        out.append("|---|---|---|")
        for key in rows:
            default = key.default.replace("|", "\\|") or ("(mapping)" if not key.leaf else "")
            text = (key.description or described.get(key.path, "")).replace("|", "\\|")
            out.append(f"| `{key.path}` | `{default}` | {text} |" if default else f"| `{key.path}` | | {text} |")
        out.append("")
    return "\n".join(out)


def on_page_markdown(markdown: str, page, **kwargs) -> str:
    """mkdocs hook: fill the configuration page's placeholder."""
    return markdown.replace(PLACEHOLDER, reference()) if PLACEHOLDER in markdown else markdown
