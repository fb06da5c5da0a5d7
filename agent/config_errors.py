"""How config problems are found and reported without being fooled by the document: the
value shown in an error line is bounded, and a document whose aliases expand too far is
refused before anything walks it."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from agent.errors import ConfigError


def _strip_union_tags(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """Drop the discriminator tag pydantic puts after a list index (``sources.0.camera``)."""
    out: list[Any] = []
    for i, part in enumerate(loc):
        if i > 0 and isinstance(loc[i - 1], int) and part in ("camera", "mqtt"):
            continue
        out.append(part)
    return tuple(out)


def format_errors(exc: ValidationError, raw: Any) -> list[str]:
    lines = []
    for err in exc.errors():
        loc = _strip_union_tags(err["loc"])
        key = ".".join(str(p) for p in loc) or "(root)"
        value = _lookup(raw, loc)
        shown = "(missing)" if err["type"] == "missing" else \
            "(hidden)" if _secret_key(loc) else _shown(value)
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "literal_error" and isinstance(value, int | float) \
                and f"'{value}'" in msg:
            msg = f"a number here; write it as a string: {loc[-1]}: \"{value}\""
        lines.append(f"{key}: {shown}: {msg}")
    return lines


def _secret_key(loc: tuple[Any, ...]) -> bool:
    """A key whose value must never be printed (a password typed into the YAML)."""
    last = str(loc[-1]).lower() if loc else ""
    return any(w in last for w in ("password", "secret", "token")) and \
        not last.endswith(("_env", "_file"))


def _shown(value: Any, limit: int = 80) -> str:
    """The offending value for an error line: bounded in depth and width, so that a huge or
    self-referencing value costs no more to print than a small one."""
    text = _bounded_repr(value, depth=3)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _bounded_repr(value: Any, depth: int, width: int = 4) -> str:
    if isinstance(value, dict):
        if depth <= 0:
            return "{...}"
        items = [f"{_bounded_repr(k, depth - 1)}: {_bounded_repr(v, depth - 1)}"
                 for k, v in list(value.items())[:width]]
        return "{" + ", ".join(items + ["..."] * (len(value) > width)) + "}"
    if isinstance(value, list):
        if depth <= 0:
            return "[...]"
        items = [_bounded_repr(v, depth - 1) for v in value[:width]]
        return "[" + ", ".join(items + ["..."] * (len(value) > width)) + "]"
    if isinstance(value, str) and len(value) > 60:
        return repr(value[:60]) + "..."
    if isinstance(value, bytes) and len(value) > 60:
        return repr(value[:60]) + "..."
    return repr(value)


def _lookup(raw: Any, loc: tuple[Any, ...]) -> Any:
    node = raw
    for part in loc:
        in_dict = isinstance(node, dict) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and part < len(node)
        if in_dict or in_list:
            node = node[part]
        else:
            return None
    return node


def shown_text(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def check_expanded_size(raw: Any, where: str, limit: int) -> None:
    """Refuse a document whose aliases expand past ``limit`` values (a "billion
    laughs" bomb: PyYAML shares aliased nodes, but validating walks every expanded copy) or
    refer to themselves. Linear in the distinct nodes: each one's expanded size is memoized."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: Any) -> int:
        if not isinstance(node, (dict, list)):
            return 1
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise ConfigError([f"{where}: an alias refers to itself"])
        open_nodes.add(key)
        children = list(node.keys()) + list(node.values()) if isinstance(node, dict) else node
        total = 1
        for child in children:
            total += size(child)
            if total > limit:
                raise ConfigError([f"{where}: expands to more than {limit} values "
                                   f"through aliases"])
        open_nodes.discard(key)
        sizes[key] = total
        return total

    try:
        size(raw)
    except RecursionError as exc:
        raise ConfigError([f"{where}: nested too deeply"]) from exc
