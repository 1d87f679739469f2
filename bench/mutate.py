"""Targeted mutation testing: does some test fail when one rule of a module is broken?

Usage::

    scripts/with-postgres.sh .venv/bin/python -m bench.mutate functions/core/llm/upstreams.py \\
        tests/core/llm/test_upstreams.py tests/core/llm/test_client_routing.py

Each mutant changes one thing in the module (a comparison flipped, ``and``/``or`` swapped,
one operand of a condition or a comprehension's filter dropped, a ``not`` removed, an
integer constant moved by one, ``True``/``False`` swapped, ``+``/``-`` swapped, one
statement deleted) and runs the given test files on it (``-x``, fastest first: put the
quick ones first). A mutant no test kills is reported with its line, so a person can tell a
missing test from an equivalent mutant. Log calls are not mutated (no test should pin a log
line's wording), nor docstrings.

The mutants are written into a private copy of the committed tree (``git archive HEAD``),
never into the working tree: other people's tests keep importing the real modules, and a
mutated file cannot be left behind even if this script is killed. The copy is removed at the
end unless ``--keep`` is given.
"""

from __future__ import annotations

import argparse
import ast
import copy
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Plugins no mutated module's tests need; loading them costs seconds per run.
PYTEST_ARGS = [
    "-x",
    "-q",
    "-n",
    "0",
    "-p",
    "no:cacheprovider",
    "-p",
    "no:faker",
    "-p",
    "no:schemathesis",
    "-p",
    "no:hypothesispytest",
    "--no-header",
    "--tb=no",
]

_FLIPPED_COMPARISONS: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
}
_SWAPPED_OPERATORS: dict[type[ast.operator], type[ast.operator]] = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.Div,
}


@dataclass(frozen=True)
class Mutant:
    line: int
    what: str
    source: str


def _is_log_call(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Call)
        and isinstance(node.value.func, ast.Attribute)
        and isinstance(node.value.func.value, ast.Name)
        and node.value.func.value.id in {"log", "logger"}
    )


def _is_docstring(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    )


def _skipped(tree: ast.Module) -> set[int]:
    """ids of nodes inside log calls, docstrings and annotations (never mutated)."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        roots: list[ast.AST] = []
        if _is_log_call(node) or _is_docstring(node):
            roots.append(node)
        if isinstance(node, ast.AnnAssign | ast.arg) and node.annotation is not None:
            roots.append(node.annotation)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.returns:
            roots.append(node.returns)
        for root in roots:
            skipped.update(id(child) for child in ast.walk(root))
    return skipped


def _edits(node: ast.AST) -> Iterator[tuple[str, ast.AST | None]]:
    """(description, replacement) for one node; None as replacement deletes a statement."""
    if isinstance(node, ast.Compare) and len(node.ops) == 1:
        flipped = _FLIPPED_COMPARISONS.get(type(node.ops[0]))
        if flipped is not None:
            compare = copy.copy(node)
            compare.ops = [flipped()]
            yield f"{type(node.ops[0]).__name__} -> {flipped.__name__}", compare
    elif isinstance(node, ast.BoolOp):
        other = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        yield (
            f"{type(node.op).__name__} -> {type(other).__name__}",
            ast.BoolOp(op=other, values=node.values),
        )
        for i in range(len(node.values)):
            kept = node.values[:i] + node.values[i + 1 :]
            replacement = kept[0] if len(kept) == 1 else ast.BoolOp(op=node.op, values=kept)
            yield f"drop operand {i + 1} of {type(node.op).__name__}", replacement
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        yield "drop not", node.operand
    elif isinstance(node, ast.Constant) and isinstance(node.value, bool):
        yield f"{node.value} -> {not node.value}", ast.Constant(not node.value)
    elif isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        yield f"{node.value!r} -> {node.value + 1!r}", ast.Constant(node.value + 1)
    elif isinstance(node, ast.BinOp | ast.AugAssign):
        swapped = _SWAPPED_OPERATORS.get(type(node.op))
        if swapped is not None:
            operation = copy.copy(node)
            operation.op = swapped()
            yield f"{type(node.op).__name__} -> {swapped.__name__}", operation
    elif isinstance(node, ast.comprehension) and node.ifs:
        unfiltered = copy.copy(node)
        unfiltered.ifs = []
        yield "drop comprehension filter", unfiltered
    if isinstance(node, ast.stmt) and not isinstance(
        node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Import | ast.ImportFrom
    ):
        yield f"delete {type(node).__name__}", None


class _Replace(ast.NodeTransformer):
    def __init__(self, target: ast.AST, replacement: ast.AST | None) -> None:
        self.target = target
        self.replacement = replacement

    def visit(self, node: ast.AST) -> ast.AST | None:
        if node is self.target:
            if self.replacement is None:
                return ast.Pass()
            return self.replacement
        visited: ast.AST | None = super().visit(node)
        return visited


def mutants(source: str) -> Iterator[Mutant]:
    tree = ast.parse(source)
    skipped = _skipped(tree)
    in_function: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for stmt in node.body:
                in_function.update(id(child) for child in ast.walk(stmt))
    for node in list(ast.walk(tree)):
        if id(node) in skipped or id(node) not in in_function:
            continue
        for what, replacement in _edits(node):
            mutated = copy.deepcopy(tree)
            # deepcopy keeps walk order, so the n-th node of the copy is the target.
            index = next(i for i, n in enumerate(ast.walk(tree)) if n is node)
            target = next(n for i, n in enumerate(ast.walk(mutated)) if i == index)
            new = _replace_in_copy(target, replacement, node)
            rewritten = _Replace(target, new).visit(mutated)
            if rewritten is None:
                continue
            try:
                text = ast.unparse(ast.fix_missing_locations(rewritten))
            except (AttributeError, TypeError, ValueError):
                continue
            yield Mutant(getattr(node, "lineno", 0), what, text)


def _replace_in_copy(
    target: ast.AST, replacement: ast.AST | None, original: ast.AST
) -> ast.AST | None:
    """The replacement rebuilt from the copy's own children (so it sits in the copy)."""
    if replacement is None:
        return None
    mapping = dict(zip(ast.walk(original), ast.walk(target), strict=True))
    if replacement in mapping:
        return mapping[replacement]
    remapped: ast.AST = _Remap(mapping).visit(copy.copy(replacement))
    return remapped


class _Remap(ast.NodeTransformer):
    def __init__(self, mapping: dict[ast.AST, ast.AST]) -> None:
        self.mapping = mapping

    def generic_visit(self, node: ast.AST) -> ast.AST:
        for field, value in ast.iter_fields(node):
            if isinstance(value, list):
                setattr(node, field, [self.mapping.get(v, v) for v in value])
            elif isinstance(value, ast.AST):
                setattr(node, field, self.mapping.get(value, value))
        return node


def run_tests(copy_root: Path, tests: list[str], timeout_s: float) -> str:
    """'killed', 'survived' or 'timeout'; the run is its own process group, killed whole."""
    command = [str(ROOT / ".venv/bin/python"), "-m", "pytest", *PYTEST_ARGS, *tests]
    with subprocess.Popen(
        command,
        cwd=copy_root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    ) as process:
        try:
            code = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return "timeout"
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    return "survived" if code == 0 else "killed"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("module", help="path of the module to mutate, from the repository root")
    parser.add_argument("tests", nargs="+", help="test files to run on each mutant, fastest first")
    parser.add_argument("--lines", help="only mutate these lines, e.g. 120-180")
    parser.add_argument(
        "--overlay",
        nargs="*",
        default=[],
        help="files copied from the working tree over the committed ones (new tests)",
    )
    parser.add_argument(
        "--survivors-of",
        help="only the mutants an earlier run's output reports as SURVIVED (a re-check)",
    )
    parser.add_argument(
        "--sample", type=int, help="test a random sample of this many mutants (seeded)"
    )
    parser.add_argument("--seed", type=int, default=18)
    parser.add_argument("--keep", action="store_true", help="keep the private copy")
    args = parser.parse_args()
    # A SIGTERM unwinds like Ctrl-C: the running tests' group is killed, the copy removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    copy_root = Path(tempfile.mkdtemp(prefix="switchboard-mutate-"))
    try:
        archive = subprocess.run(
            ["git", "archive", "HEAD"], cwd=ROOT, check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(copy_root)], input=archive, check=True)
        for path in args.overlay:
            (copy_root / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ROOT / path, copy_root / path)
        target = copy_root / args.module
        original = target.read_text()
        started = time.monotonic()
        if run_tests(copy_root, args.tests, timeout_s=1800) != "survived":
            print("the tests fail on the unmutated module; fix that first", file=sys.stderr)
            return 2
        baseline = time.monotonic() - started
        timeout_s = 3 * baseline + 30
        low, high = 0, 10**9
        if args.lines:
            low, high = (int(n) for n in args.lines.split("-"))
        selected = [m for m in mutants(original) if low <= m.line <= high]
        if args.sample is not None and args.sample < len(selected):
            selected = sorted(
                random.Random(args.seed).sample(selected, args.sample), key=lambda m: m.line
            )
        if args.survivors_of:
            earlier = Path(args.survivors_of).read_text().splitlines()
            wanted = {
                line.split(": ", 2)[0].removeprefix("SURVIVED ") + ": " + line.split(": ", 2)[1]
                for line in earlier
                if line.startswith("SURVIVED ")
            }
            selected = [m for m in selected if f"line {m.line}: {m.what}" in wanted]
        print(f"{args.module}: {len(selected)} mutants, baseline {baseline:.1f}s", flush=True)
        results: dict[str, int] = {"killed": 0, "survived": 0, "timeout": 0}
        lines = original.splitlines()
        for n, mutant in enumerate(selected, 1):
            try:
                target.write_text(mutant.source)
                outcome = run_tests(copy_root, args.tests, timeout_s)
            finally:
                target.write_text(original)
            results[outcome] += 1
            if outcome == "survived":
                code = lines[mutant.line - 1].strip() if mutant.line else ""
                print(f"SURVIVED line {mutant.line}: {mutant.what}: {code}", flush=True)
            if n % 10 == 0:
                print(f"  {n}/{len(selected)} {results}", flush=True)
        killed = results["killed"] + results["timeout"]
        print(
            f"{args.module}: {killed}/{len(selected)} killed "
            f"({100 * killed / max(1, len(selected)):.0f}%), {results}"
        )
        return 0
    finally:
        if args.keep:
            print(f"copy kept in {copy_root}")
        else:
            shutil.rmtree(copy_root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
