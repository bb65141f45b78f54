"""Values as the issuing tasks receive them: the batch's label in the UI, templated params.

Pure and free of Airflow: the operators, the DAG arguments and their tests share them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def batch_label(order_ids: Sequence[str]) -> str:
    """How a mapped instance is named in the UI: its first and last order and its size."""
    if not order_ids:
        return "empty batch"
    if len(order_ids) == 1:
        # Never a bare order id: a numeric one would be rendered as a number, not a label.
        return f"{order_ids[0]} (1)"
    return f"{order_ids[0]} … {order_ids[-1]} ({len(order_ids)})"


def as_list(value: Any) -> list:
    if value is None:
        return []
    if isinstance(value, dict):
        return [value]
    return list(value)


def as_bool(value: Any) -> bool:
    # A templated param arrives as a string ("True"/"false") when rendered from Jinja.
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes", "on"}
    return bool(value)
