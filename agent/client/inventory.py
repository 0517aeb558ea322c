"""`relctl --agents-file FILE`: the agents of a Prometheus file_sd targets file, so the list
Prometheus scrapes is the list a rollout walks, in the file's order.

A file_sd file is a list of groups, each ``{"targets": ["HOST:PORT", ...], "labels": {...}}``;
its targets are the agents' /metrics addresses. The agent to ask is the target's host with the
agent's gRPC port: ``--agent-port``, or a group's ``relctl_agent`` label (a port, or a whole
``HOST:PORT``/``unix:PATH`` address). ``--selector LABEL=VALUE`` keeps the groups whose labels
match every selector.

JSON is read with the standard library. YAML is read by a small reader of the shapes file_sd
files have (block and flow lists and maps of plain or quoted scalars): the client stays free
of a YAML library, and anything beyond those shapes is refused with a hint to use JSON.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .status import CliError, ExitCode

AGENT_LABEL = "relctl_agent"
# A group's own operator token file and CA: one leaked token is then one group's, not the
# fleet's (relative paths are taken from the inventory file's directory).
TOKEN_LABEL = "relctl_token_file"
CA_LABEL = "relctl_ca"


def inventory_agents(path: str, selectors: Sequence[str], agent_port: int | None) -> list[str]:
    """The agents of ``path`` whose groups match ``selectors``, in file order, without
    duplicates; a CliError (usage) naming the file and the problem otherwise."""
    return list(inventory_targets(path, selectors, agent_port))


def inventory_targets(path: str, selectors: Sequence[str], agent_port: int | None
                      ) -> dict[str, dict[str, str]]:
    """:func:`inventory_agents` with each agent's credentials from its group's labels:
    ``{agent: {"token_file": ..., "ca": ...}}`` (only the labels given), in file order."""
    wanted = [_selector(s) for s in selectors]
    groups = _groups(path)
    base = Path(path).parent
    agents: dict[str, dict[str, str]] = {}
    for i, group in enumerate(groups):
        labels = group["labels"]
        if not all(labels.get(k) == v for k, v in wanted):
            continue
        credentials = {key: str(base / labels[label]) for key, label in
                       (("token_file", TOKEN_LABEL), ("ca", CA_LABEL)) if labels.get(label)}
        for target in group["targets"]:
            agents.setdefault(_agent(path, i, target, labels.get(AGENT_LABEL), agent_port),
                              credentials)
    if not agents:
        which = f" matching {', '.join(selectors)}" if selectors else ""
        raise CliError(f"{path}: no targets{which}; check the file and --selector", ExitCode.USAGE)
    return agents


def _selector(text: str) -> tuple[str, str]:
    label, eq, value = text.partition("=")
    if not eq or not label:
        raise CliError(f"--selector {text!r} is not LABEL=VALUE (e.g. --selector env=prod)",
                       ExitCode.USAGE)
    return label, value


def _agent(path: str, index: int, target: str, label: str | None, port: int | None) -> str:
    host = target.rpartition(":")[0] if ":" in target else target
    if label:
        if label.startswith("unix:") or ":" in label:
            return label
        if label.isdigit():
            return f"{host}:{label}"
        raise CliError(f"{path}: group {index}: {AGENT_LABEL} {label!r} is not a port or an "
                       "address (HOST:PORT or unix:PATH)", ExitCode.USAGE)
    if port is None:
        raise CliError(f"{path}: target {target} names its /metrics port, not the agent's: give "
                       f"--agent-port PORT, or a {AGENT_LABEL} label in its group",
                       ExitCode.USAGE)
    return f"{host}:{port}"


def _groups(path: str) -> list[dict[str, Any]]:
    try:
        text = Path(path).read_text("utf-8")
    except OSError as exc:
        raise CliError(f"--agents-file {path}: {exc.strerror or exc}", ExitCode.USAGE) from None
    try:
        raw = (json.loads(text) if text.lstrip()[:1] in ("[", "{")
               else read_yaml_subset(text))
    except ValueError as exc:
        raise CliError(f"{path}: not a file_sd targets file: {exc}", ExitCode.USAGE) from None
    if not isinstance(raw, list):
        raise CliError(f"{path}: a file_sd file is a list of groups (- targets: [...])",
                       ExitCode.USAGE)
    groups = []
    for i, group in enumerate(raw):
        targets = group.get("targets") if isinstance(group, dict) else None
        labels = group.get("labels", {}) if isinstance(group, dict) else None
        if (not isinstance(targets, list) or not all(isinstance(t, str) and t for t in targets)
                or not isinstance(labels, dict)
                or not all(isinstance(v, str) for v in labels.values())):
            raise CliError(f"{path}: group {i} is not {{targets: [HOST:PORT, ...], labels: "
                           "{NAME: VALUE}}", ExitCode.USAGE)
        groups.append({"targets": targets, "labels": labels})
    return groups


# --- the YAML that file_sd files are written in ---------------------------------------------

# "key: value" or "key:" (a quoted key may hold colons; "host:9568" alone is a scalar).
_KEY = re.compile(r"""('[^']*'|"[^"]*"|[^'"\[{\s-][^:]*?|-[^\s][^:]*?)\s*:(?:\s+(.*))?""")


def read_yaml_subset(text: str) -> Any:
    """Block lists and maps nested by indentation, flow ``[a, b]`` and ``{k: v}`` of scalars,
    plain or quoted scalars, comments; ValueError naming the line for anything else."""
    lines: list[tuple[int, int, str]] = []  # (line number, indent, content)
    for number, raw in enumerate(text.splitlines(), 1):
        content = _strip_comment(raw).rstrip()
        if not content.strip() or content.strip() == "---":
            continue
        if "\t" in raw[:len(raw) - len(raw.lstrip())]:
            raise ValueError(f"line {number}: tabs in indentation")
        lines.append((number, len(content) - len(content.lstrip()), content.strip()))
    if not lines:
        return []
    if len(lines) == 1 and lines[0][2][:1] in ("[", "{"):
        return _flow(lines[0][2], lines[0][0])
    value, rest = _block(lines, 0, lines[0][1])
    if rest != len(lines):
        raise ValueError(f"line {lines[rest][0]}: unexpected indentation; use JSON for this file")
    return value


def _strip_comment(line: str) -> str:
    quote = ""
    for i, ch in enumerate(line):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def _block(lines: list[tuple[int, int, str]], i: int, indent: int) -> tuple[Any, int]:
    if lines[i][2].startswith("- ") or lines[i][2] == "-":
        items: list[Any] = []
        while i < len(lines) and lines[i][1] == indent and lines[i][2].startswith("-"):
            number, _, content = lines[i]
            rest = content[1:].strip()
            if not rest:
                if i + 1 >= len(lines) or lines[i + 1][1] <= indent:
                    raise ValueError(f"line {number}: an empty list item")
                value, i = _block(lines, i + 1, lines[i + 1][1])
            elif _KEY.fullmatch(rest):
                # "- key: value" opens a map whose keys sit two columns in.
                inner = indent + 2
                lines[i] = (number, inner, rest)
                value, i = _block(lines, i, inner)
            else:
                value, i = _flow(rest, number), i + 1
            items.append(value)
        return items, i
    mapping: dict[str, Any] = {}
    while i < len(lines) and lines[i][1] == indent:
        number, _, content = lines[i]
        match = _KEY.fullmatch(content)
        if match is None:
            raise ValueError(f"line {number}: expected KEY: VALUE; use JSON for this file")
        key = _scalar(match.group(1), number)
        rest = (match.group(2) or "").strip()
        if rest:
            mapping[key], i = _flow(rest, number), i + 1
        elif i + 1 < len(lines) and lines[i + 1][1] > indent:
            mapping[key], i = _block(lines, i + 1, lines[i + 1][1])
        elif i + 1 < len(lines) and lines[i + 1][1] == indent and lines[i + 1][2].startswith("-"):
            mapping[key], i = _block(lines, i + 1, indent)  # a list not indented under its key
        else:
            mapping[key], i = None, i + 1
    return mapping, i


def _flow(text: str, number: int) -> Any:
    if text.startswith("[") or text.startswith("{"):
        closing = "]" if text[0] == "[" else "}"
        if not text.endswith(closing):
            raise ValueError(f"line {number}: a flow {text[0]}...{closing} must end on its line")
        parts = [p.strip() for p in _split_flow(text[1:-1], number) if p.strip()]
        if closing == "]":
            return [_scalar(p, number) for p in parts]
        out = {}
        for part in parts:
            key, colon, value = part.partition(":")
            if not colon:
                raise ValueError(f"line {number}: {part!r} is not KEY: VALUE")
            out[_scalar(key.strip(), number)] = _scalar(value.strip(), number)
        return out
    return _scalar(text, number)


def _split_flow(text: str, number: int) -> list[str]:
    parts, current, quote = [], "", ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[]{}":
            raise ValueError(f"line {number}: nested flow collections; use JSON for this file")
        elif ch == ",":
            parts.append(current)
            current = ""
            continue
        current += ch
    if quote:
        raise ValueError(f"line {number}: an unclosed quote")
    return [*parts, current]


def _scalar(text: str, number: int) -> str:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        body = text[1:-1]
        return body.replace("''", "'") if text[0] == "'" else json.loads(text)
    if text and text[0] in "&*!|>%@`[{":
        raise ValueError(f"line {number}: {text!r} needs a YAML feature this reader does not "
                         "have; use JSON for this file")
    return text
