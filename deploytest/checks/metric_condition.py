"""The condition language of ``metric`` checks: a safe expression over ``result``, parsed and evaluated.

Pure: no eval, no names but ``result``, ``abs``, ``min`` and ``max``.
"""

from __future__ import annotations

import ast
import math
from typing import Any

_ALLOWED = (ast.Expression, ast.Compare, ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.USub,
            ast.UAdd, ast.BinOp, ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Name, ast.Load, ast.Constant,
            ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Eq, ast.NotEq, ast.Call)
_FUNCTIONS = {"abs": abs, "min": min, "max": max}


def parse_condition(text: str) -> ast.Expression:
    """``result < 0.05 and result >= 0``: comparisons, and/or/not, + - * /, numbers, ``result``,
    ``abs``, ``min``, ``max``. Nothing else is accepted (no attribute, no other name, no eval).

    :raises ValueError: naming what is not allowed.
    """
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as error:
        raise ValueError(f"not an expression ({error.msg})") from None
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED):
            raise ValueError(f"{type(node).__name__} is not allowed")
        if isinstance(node, ast.Name) and node.id != "result" and node.id not in _FUNCTIONS:
            raise ValueError(f"unknown name {node.id!r} (only result, abs, min, max)")
        if isinstance(node, ast.Call) and (not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS
                                           or node.keywords):
            raise ValueError("only abs(), min() and max() may be called")
        if isinstance(node, ast.Constant) and (isinstance(node.value, bool)
                                               or not isinstance(node.value, (int, float))):
            raise ValueError(f"only numbers, got {node.value!r}")
    return tree


def evaluate_condition(tree: ast.Expression, result: float) -> bool:
    """The condition's truth for ``result``."""

    def value(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return value(node.body)
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            return result if node.id == "result" else _FUNCTIONS[node.id]
        if isinstance(node, ast.UnaryOp):
            operand = value(node.operand)
            return not operand if isinstance(node.op, ast.Not) else (-operand if isinstance(node.op, ast.USub)
                                                                       else +operand)
        if isinstance(node, ast.BoolOp):
            items = [value(v) for v in node.values]
            return all(items) if isinstance(node.op, ast.And) else any(items)
        if isinstance(node, ast.BinOp):
            left, right = value(node.left), value(node.right)
            if isinstance(node.op, ast.Add):
                return left + right
            if isinstance(node.op, ast.Sub):
                return left - right
            if isinstance(node.op, ast.Mult):
                return left * right
            return left / right if right else math.inf
        if isinstance(node, ast.Compare):
            left = value(node.left)
            for op, comparator in zip(node.ops, node.comparators):
                right = value(comparator)
                ok = {ast.Lt: left < right, ast.LtE: left <= right, ast.Gt: left > right,
                      ast.GtE: left >= right, ast.Eq: left == right, ast.NotEq: left != right}[type(op)]
                if not ok:
                    return False
                left = right
            return True
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            function: Any = _FUNCTIONS[node.func.id]
            return function(*[value(a) for a in node.args])
        raise ValueError(type(node).__name__)

    return bool(value(tree))
