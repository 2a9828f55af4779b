"""Row selection over manifest columns: a small, safe boolean expression language.

    audio_rms_db > -50 and scene_cuts == 0 and duplicate_of is null
    -0.1 <= av_sync_lag_s <= 0.1 or not (motion_energy < 1)
    source in ('s3://corpus/a.mp4', 's3://corpus/b.mp4')

The text is parsed with Python's `ast` (never evaluated): only column names, numbers,
strings, true/false, comparisons (< <= > >= == !=, chains like `a < x < b`), `in`/`not in` a
list of constants, `is null` / `is not null`, and `and`, `or`, `not` with parentheses are
accepted. It is checked against the manifest's schema before anything runs (unknown columns,
comparisons of mismatched types), and compiled to a pyarrow.compute expression that selects
the rows of a Table. A comparison with a null value is neither true nor false, so rows where a
compared column is null are dropped unless the expression asks `is null` about it.
"""

from __future__ import annotations

import ast
import difflib
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.shard_format import manifest_schema, read_manifest


class FilterError(ValueError):
    """A filter expression that cannot be used; the message says why and what is allowed."""


@dataclass(frozen=True)
class Selection:
    """A checked filter expression."""

    text: str
    expression: pc.Expression
    columns: tuple[str, ...]
    """The columns the expression reads, in order of first use."""

    def apply(self, table: pa.Table) -> pa.Table:
        """The rows of `table` for which the expression is true."""
        return table.filter(self.expression)


_COMPARISONS = {
    ast.Lt: lambda a, b: a < b,
    ast.LtE: lambda a, b: a <= b,
    ast.Gt: lambda a, b: a > b,
    ast.GtE: lambda a, b: a >= b,
    ast.Eq: lambda a, b: a == b,
    ast.NotEq: lambda a, b: a != b,
}
_NULL_NAMES = {"null", "None"}
_BOOLEAN_NAMES = {"true": True, "false": False, "True": True, "False": False}


def _kind(data_type: pa.DataType) -> str:
    if pa.types.is_boolean(data_type):
        return "boolean"
    if pa.types.is_integer(data_type) or pa.types.is_floating(data_type) or pa.types.is_decimal(data_type):
        return "number"
    if pa.types.is_string(data_type) or pa.types.is_large_string(data_type):
        return "string"
    return str(data_type)


def _constant_kind(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    return "number" if isinstance(value, int | float) else "string"


class _Compiler:
    """Turns the parsed tree into a pyarrow expression, checking names and types on the way."""

    def __init__(self, text: str, schema: pa.Schema) -> None:
        self.text = text
        self.schema = schema
        self.used: list[str] = []

    def fail(self, problem: str) -> FilterError:
        return FilterError(f"filter {self.text!r}: {problem}")

    def column(self, name: str) -> tuple[pc.Expression, str]:
        if name not in self.schema.names:
            close = difflib.get_close_matches(name, self.schema.names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise self.fail(f"unknown column {name!r}{hint}; known columns: {', '.join(self.schema.names)}")
        if name not in self.used:
            self.used.append(name)
        return pc.field(name), _kind(self.schema.field(name).type)

    def operand(self, node: ast.expr) -> tuple[pc.Expression, str]:
        """A column or a constant, with its kind."""
        value = self.constant(node)
        if value is not _NOT_CONSTANT:
            return pc.scalar(value), _constant_kind(value)
        if isinstance(node, ast.Name):
            return self.column(node.id)
        raise self.fail(f"{ast.unparse(node)!r} is not a column name, number or string")

    def constant(self, node: ast.expr) -> object:
        if isinstance(node, ast.Constant) and isinstance(node.value, bool | int | float | str):
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            value = self.constant(node.operand)
            if isinstance(value, int | float) and not isinstance(value, bool):
                return -value if isinstance(node.op, ast.USub) else value
        if isinstance(node, ast.Name) and node.id in _BOOLEAN_NAMES:
            return _BOOLEAN_NAMES[node.id]
        return _NOT_CONSTANT

    def boolean(self, node: ast.expr) -> pc.Expression:
        """Any node that must give true/false/null per row."""
        if isinstance(node, ast.BoolOp):
            parts = [self.boolean(value) for value in node.values]
            combined = parts[0]
            for part in parts[1:]:
                combined = combined & part if isinstance(node.op, ast.And) else combined | part
            return combined
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            return ~self.boolean(node.operand)
        if isinstance(node, ast.Compare):
            return self.comparison(node)
        expression, kind = self.operand(node)
        if kind != "boolean":
            raise self.fail(f"{ast.unparse(node)!r} is a {kind}, not a condition; compare it with something")
        return expression

    def comparison(self, node: ast.Compare) -> pc.Expression:
        conditions = []
        left = node.left
        for operator, right in zip(node.ops, node.comparators, strict=True):
            conditions.append(self.pair(left, operator, right))
            left = right
        combined = conditions[0]
        for condition in conditions[1:]:
            combined = combined & condition
        return combined

    def pair(self, left: ast.expr, operator: ast.cmpop, right: ast.expr) -> pc.Expression:
        if isinstance(operator, ast.Is | ast.IsNot):
            if not (isinstance(right, ast.Name | ast.Constant) and _is_null(right)):
                raise self.fail("`is` / `is not` only test for null: write `column is null` or `column is not null`")
            expression, _ = self.column_of(left, "is null")
            return expression.is_null() if isinstance(operator, ast.Is) else expression.is_valid()
        if _is_null(right) or _is_null(left):
            raise self.fail("compare with null using `is null` or `is not null`, not ==, != or <")
        if isinstance(operator, ast.In | ast.NotIn):
            expression, kind = self.column_of(left, "in")
            values = self.constant_list(right, kind)
            member = expression.isin(values)
            return member if isinstance(operator, ast.In) else ~member
        if type(operator) not in _COMPARISONS:
            raise self.fail(f"operator {type(operator).__name__} is not allowed")
        (a, kind_a), (b, kind_b) = self.operand(left), self.operand(right)
        for kind in (kind_a, kind_b):
            if kind not in ("number", "string", "boolean"):
                raise self.fail(f"columns of type {kind} can only be tested with `is null` / `is not null`")
        if kind_a != kind_b:
            raise self.fail(f"cannot compare a {kind_a} with a {kind_b}: {ast.unparse(left)} vs {ast.unparse(right)}")
        return _COMPARISONS[type(operator)](a, b)

    def column_of(self, node: ast.expr, operation: str) -> tuple[pc.Expression, str]:
        if not isinstance(node, ast.Name) or node.id in _NULL_NAMES | set(_BOOLEAN_NAMES):
            raise self.fail(f"`{operation}` needs a column name on its left, got {ast.unparse(node)!r}")
        return self.column(node.id)

    def constant_list(self, node: ast.expr, kind: str) -> list:
        if not isinstance(node, ast.Tuple | ast.List):
            raise self.fail("`in` needs a list of constants, e.g. x in (1, 2) or s in ('a', 'b')")
        values = [self.constant(element) for element in node.elts]
        if any(value is _NOT_CONSTANT for value in values):
            raise self.fail("`in` lists may hold only numbers, strings and true/false")
        if any(_constant_kind(value) != kind for value in values):
            raise self.fail(f"`in` list for a {kind} column holds values of another type")
        return values


_NOT_CONSTANT = object()


def _is_null(node: ast.expr) -> bool:
    return (isinstance(node, ast.Name) and node.id in _NULL_NAMES) or (
        isinstance(node, ast.Constant) and node.value is None
    )


def parse_filter(text: str, schema: pa.Schema) -> Selection:
    """Check `text` against `schema` and compile it; FilterError (a ValueError) if it is not a
    valid expression over the schema's columns."""
    if not text or not text.strip():
        raise FilterError("filter expression is empty")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as error:
        raise FilterError(f"filter {text!r} is not a valid expression: {error.msg} at column {error.offset}") from error
    compiler = _Compiler(text, schema)
    expression = compiler.boolean(tree.body)
    return Selection(text=text, expression=expression, columns=tuple(compiler.used))


def select_rows(table: pa.Table, text: str) -> pa.Table:
    """The rows of `table` that satisfy the filter expression `text`."""
    return parse_filter(text, table.schema).apply(table)


class KeySet:
    """The keys of selected clips, as a sorted array of 64-bit digests: a training worker holds
    8 bytes per kept clip (80 MB for 10^7 clips) instead of a set of strings."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = np.unique(np.fromiter((_key_digest(key) for key in keys), dtype=np.uint64))

    def __len__(self) -> int:
        return len(self._digests)

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        digest = np.uint64(_key_digest(key))
        index = int(np.searchsorted(self._digests, digest))
        return index < len(self._digests) and self._digests[index] == digest


def _key_digest(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "little")


@dataclass(frozen=True)
class ManifestSelection:
    """The clips of a dataset that a filter keeps."""

    expression: str
    keys: KeySet
    manifest_clips: int

    @property
    def kept_clips(self) -> int:
        return len(self.keys)


def select_manifest(data_uri: str, text: str) -> ManifestSelection:
    """Apply the filter `text` to the dataset's manifest. FilterError for a bad expression or an
    unknown column (naming the known ones), FileNotFoundError when the dataset has no manifest."""
    selection = parse_filter(text, manifest_schema(data_uri))
    manifest = read_manifest(data_uri, columns=list(dict.fromkeys(["key", *selection.columns])))
    kept = selection.apply(manifest).column("key")
    return ManifestSelection(text, KeySet(kept.to_pylist()), manifest.num_rows)
