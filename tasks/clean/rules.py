"""Rule files: reading `NNN_<name>.sql` files into `Rule`s and the checks that need no database.

The built-in rules live in tasks/sql/; a user's rules live in the folder `CleanConfig.rules_dir`.
Both use one format: the first line is `-- kind: map|filter|corpus|candidates`, the comment lines
after it describe the rule (its first sentence goes into the report), the rest is the SQL. All
rules run in the order of their number prefix, built-in and user rules mixed.

What is checked here: the file name, the kind line, that a user rule is a per-document rule
(map or filter) numbered before the corpus rules, that no two rules share a name, and that every
`getvariable(...)` names a variable the config sets. Whether the SQL parses and binds is checked
by tasks/clean/chain.py against a DuckDB connection.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

from tasks.common import StageError

SQL_DIR = Path(__file__).parent.parent / "sql"
BUILTIN_ORIGIN = "tasks/sql"  # how the report names the folder of a built-in rule
USER_ORIGIN = "rules_dir"  # and of a user rule: not its absolute path, which must not change the output
PER_DOC_KINDS = ("map", "filter")
CORPUS_KINDS = ("corpus", "candidates")

_RULE_FILE = re.compile(r"^(\d+)_([a-z][a-z0-9_]*)\.sql$")
_KIND_LINE = re.compile(r"^--\s*kind:\s*(map|filter|corpus|candidates)\s*$")
_VARIABLE = re.compile(r"getvariable\('([a-z_][a-z0-9_]*)'\)")
_ANY_GETVARIABLE = re.compile(r"getvariable\s*\(", re.IGNORECASE)


@dataclass(frozen=True)
class Rule:
    """One rule file: `NNN_<name>.sql`, whose first line says `-- kind: map|filter|corpus|candidates`."""

    name: str
    kind: str
    path: Path
    sql: str
    description: str
    variables: tuple[str, ...]
    origin: str = BUILTIN_ORIGIN

    @property
    def file(self) -> str:
        """The file as the report names it: `tasks/sql/050_pii.sql` or `rules_dir/045_lorem.sql`."""
        return f"{self.origin}/{self.path.name}"

    @property
    def order(self) -> tuple[int, str]:
        """Where the rule runs: by number prefix, then by file name."""
        return int(self.path.name.split("_", 1)[0]), self.path.name


def read_rule_file(path: Path, origin: str = BUILTIN_ORIGIN) -> Rule:
    """Parse one rule file; a StageError names the file and what is wrong with it."""
    m = _RULE_FILE.match(path.name)
    if not m:
        raise StageError(
            f"{path}: rule files are named NNN_<name>.sql, <name> in lower-case letters, digits and "
            "'_' (e.g. 045_no_lorem.sql)"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise StageError(f"{path}: cannot read the rule file ({e})") from e
    lines = text.splitlines()
    kind = _KIND_LINE.match(lines[0]) if lines else None
    if not kind:
        raise StageError(f"{path}: the first line must be '-- kind: map', 'filter', 'corpus' or 'candidates'")
    comments = []
    for line in lines[1:]:
        if not line.startswith("--"):
            break
        comments.append(line[2:].strip())
    # the first sentence ("et al. 2021" does not end one: the next sentence starts upper-case)
    description = re.split(r"\.\s+(?=[A-Z])", " ".join(comments))[0].rstrip(".") + "."
    body = "\n".join(line for line in lines if not line.lstrip().startswith("--")).strip().rstrip(";")
    if not body:
        raise StageError(f"{path}: the rule file holds no SQL (only comments)")
    variables = _VARIABLE.findall(body)
    if len(variables) != len(_ANY_GETVARIABLE.findall(body)):
        # DuckDB's getvariable() of a name nobody set is NULL, not an error: insist on names we can check
        raise StageError(
            f"{path}: getvariable() must be called with a quoted lower-case name, e.g. getvariable('min_chars')"
        )
    return Rule(
        name=m.group(2),
        kind=kind.group(1),
        path=path,
        sql=body,
        description=description,
        variables=tuple(sorted(set(variables))),
        origin=origin,
    )


@functools.lru_cache(maxsize=4)
def load_rules(sql_dir: Path = SQL_DIR) -> tuple[Rule, ...]:
    """Every rule file of `sql_dir` (the built-ins by default), in the order of its number prefix."""
    rules = sorted((read_rule_file(p) for p in sql_dir.glob("*.sql")), key=lambda r: r.order)
    names = [r.name for r in rules]
    if len(set(names)) != len(names):
        raise StageError(f"{sql_dir}: two rule files share a name: {names}")
    return tuple(rules)


def rule_names() -> list[str]:
    """The names of the built-in rules, in order."""
    return [r.name for r in load_rules()]


def load_user_rules(rules_dir: Path, builtins: tuple[Rule, ...]) -> tuple[Rule, ...]:
    """The `*.sql` rule files of a user's `rules_dir`, checked against the built-in rules."""
    if not rules_dir.is_dir():
        what = "does not exist" if not rules_dir.exists() else "is not a folder"
        raise StageError(f"{rules_dir} {what}; set rules_dir to a folder of NNN_<name>.sql files")
    try:
        paths = sorted(p for p in rules_dir.iterdir() if p.suffix == ".sql")
    except OSError as e:
        raise StageError(f"{rules_dir} cannot be read ({e})") from e
    rules = [read_rule_file(p, USER_ORIGIN) for p in paths]
    first_corpus = min((r.order for r in builtins if r.kind in CORPUS_KINDS), default=None)
    taken = {r.name: r for r in builtins}
    for r in rules:
        if r.kind not in PER_DOC_KINDS:
            raise StageError(
                f"{r.path}: a user rule is a per-document rule ('-- kind: map' or '-- kind: filter'); "
                f"kind {r.kind!r} is for the built-in dedup rules"
            )
        if first_corpus is not None and r.order > first_corpus:
            raise StageError(
                f"{r.path}: per-document rules run before the corpus rules (dedup, from "
                f"{first_corpus[1]}); number it below {first_corpus[0]:03d}"
            )
        if r.name in taken:
            raise StageError(
                f"{r.path}: the rule name {r.name!r} is taken by {taken[r.name].file}; rename the file "
                f"(switch a built-in rule off with rules={{{r.name!r}: false}} instead of replacing it)"
            )
        taken[r.name] = r
    return tuple(rules)


def check_variables(rules: list[Rule] | tuple[Rule, ...], known: set[str] | dict[str, object]) -> None:
    """Every getvariable() of the rules names one of the `known` variables."""
    for r in rules:
        missing = [v for v in r.variables if v not in known]
        if missing:
            raise StageError(f"{r.path}: reads unknown variable(s) {missing}; known: {sorted(known)}")
