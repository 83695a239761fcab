"""Typed fields of the JSON files users give: one check and one wording for every reader."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rsis.errors import UserError

# What a message calls each JSON type; ``float`` stands for any JSON number.
KIND_NAMES: dict[type, str] = {
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "a list",
    dict: "an object",
}


def holds(value: object, kind: type) -> bool:
    """Whether ``value`` is of ``kind``: a ``float`` field takes an integer too, and true or
    false is never taken for a number."""
    if isinstance(value, bool):
        return False
    return isinstance(value, (int, float) if kind is float else kind)


def field_value(
    section: Mapping[str, Any],
    name: str,
    kind: type,
    where: str,
    advice: str,
    *,
    label: str | None = None,
) -> Any:
    """``section[name]`` when it holds a value of ``kind`` (a key of ``KIND_NAMES``).

    Args:
        where: the file (and entry) for the message, e.g. ``refs(unc).p, ref 5``.
        advice: what to do, e.g. ``download it again``.
        label: the field as the message names it (default ``name``), e.g. ``metrics.overall_iou``.

    Raises:
        UserError: one line, ``<where>: field '<label>' is <value or missing>, expected <kind>;
            <advice>``.
    """
    value = section.get(name)
    if not holds(value, kind):
        found = f"{value!r:.40}" if name in section else "missing"
        raise UserError(
            f"{where}: field {(label or name)!r} is {found}, expected {KIND_NAMES[kind]}; {advice}"
        )
    return value


def check_fields(
    section: Mapping[str, Any], kinds: Mapping[str, type], where: str, advice: str, prefix: str = ""
) -> None:
    """``field_value`` for each field of ``kinds``, labelled ``<prefix><name>``."""
    for name, kind in kinds.items():
        field_value(section, name, kind, where, advice, label=f"{prefix}{name}")
