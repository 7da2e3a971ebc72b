"""The built-in `python-docs` source: the docstrings of Python's standard library, as documents.

`python_docs_items` lists one item per standard-library .py file; `read_python_docs` yields the
docstrings of one file (module, classes, functions, nested ones too), each a document whose
path is `python-docs:<qualified name>` and whose offset is the docstring's 1-based source line.
"""

from __future__ import annotations

import ast
import io
import os
import sysconfig
import tokenize
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tasks.ingest.decode import text_value
from tasks.ingest.readers.registry import register
from tasks.ingest.records import PYTHON_DOCS, Doc, OnBytes, ReadOptions, Reject

_SKIP_STDLIB_DIRS = {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"}


def python_docs_items() -> list[dict[str, Any]]:
    """One item per standard-library .py file (sorted), test suites and site-packages excluded.

    Skipping the test packages (`test/`, `*/tests/`, `idlelib/idle_test/`) leaves about 8,800
    docstrings / 1.8 MB on CPython 3.11: real English prose about code, with little repetition.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    items = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_STDLIB_DIRS and not d.startswith("."))
        for name in sorted(filenames):
            if not name.endswith(".py"):
                continue
            path = Path(dirpath) / name
            rel = path.relative_to(root).with_suffix("")
            parts = list(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
            items.append(
                {
                    "kind": PYTHON_DOCS,
                    "source": PYTHON_DOCS,
                    "path": str(path),
                    "module": ".".join(parts),
                    "size": path.stat().st_size,
                }
            )
    items.sort(key=lambda it: it["module"])
    return items


def read_python_docs(
    item: dict[str, Any], opts: ReadOptions, on_bytes: OnBytes | None
) -> Iterator[Doc | Reject]:
    """The docstrings of one python-docs item; the whole file counts as read at the end."""
    yield from _docstrings(item)
    if on_bytes:
        on_bytes(item["size"])


def _docstrings(item: dict[str, Any]) -> Iterator[Doc | Reject]:
    """Docstrings of one stdlib module (module, classes, functions; nested ones too), in source
    order. The file is parsed with `ast`, never imported: importing `antigravity` opens a browser."""
    module, file = item["module"], item["path"]
    try:
        with open(file, "rb") as f:
            source = f.read()
        encoding, _ = tokenize.detect_encoding(io.BytesIO(source).readline)
        tree = ast.parse(source.decode(encoding), filename=file)
    except (SyntaxError, ValueError, UnicodeDecodeError, LookupError) as e:
        yield Reject(f"{PYTHON_DOCS}:{module}", getattr(e, "lineno", 0) or 0, "syntax_error", f"{file}: {e}")
        return
    except OSError as e:
        yield Reject(f"{PYTHON_DOCS}:{module}", 0, "unreadable", f"{file}: {e}")
        return

    defs = ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef

    def docs_below(node: ast.AST, qualname: str) -> Iterator[Doc | Reject]:
        # Definitions anywhere in the statement blocks below `node`: also inside `if`, `try`, ...
        for field in ("body", "orelse", "handlers", "finalbody", "cases"):
            for child in getattr(node, field, None) or ():
                if isinstance(child, defs):
                    yield from docs_of(child, f"{qualname}.{child.name}")
                elif isinstance(child, ast.stmt | ast.excepthandler | ast.match_case):
                    yield from docs_below(child, qualname)

    def docs_of(node: ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef, qualname: str):
        doc = ast.get_docstring(node)
        if doc and doc.strip():
            yield text_value(f"{PYTHON_DOCS}:{qualname}", node.body[0].lineno, doc, "docstring")
        yield from docs_below(node, qualname)

    yield from docs_of(tree, module)


register(PYTHON_DOCS, read_python_docs, offset_unit="source line (1-based) of the docstring")
