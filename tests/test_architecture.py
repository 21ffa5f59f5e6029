"""The import graph, parsed from the source (ast): no cycle among retrieval modules, and layers
that point one way: preprocess <- dialogbert's model modules <- retrieval <- bot <- orchestration
(dialogbert/cli.py with commands.py, demo.py, mybot.py with mybot_report.py, audit.py may import everything; only they
and the tests import them). Every import counts, those inside functions too."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("preprocess", "dialogbert", "retrieval", "bot")
ORCHESTRATION = {"dialogbert.cli", "dialogbert.commands", "dialogbert.demo", "dialogbert.mybot", "dialogbert.mybot_input",
                 "dialogbert.mybot_report", "dialogbert.audit"}
LAYER = {"preprocess": 0, "dialogbert": 1, "retrieval": 2, "bot": 3}  # orchestration: 4

# Upstream -> downstream imports not removed yet, each named with why it is there. Empty is the goal.
EXCEPTIONS: dict[tuple[str, str], str] = {}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``name`` imports (``from a import b`` counts a.b when that is a module)."""
    out = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imports(m, p, set(mods)) for m, p in mods.items()}


def layer(mod: str) -> int:
    return 4 if mod in ORCHESTRATION else LAYER[mod.split(".")[0]]


def test_the_graph_is_read_from_the_source():
    g = graph()
    assert "retrieval.ranking.serving" in g["retrieval.ranker"]
    assert "retrieval.index" in g["retrieval.ranking.build"]
    assert "retrieval.ranker" in g["dialogbert.commands"]  # an import inside a function (index_stage) counts


def test_no_import_cycle_among_retrieval_modules():
    g = {m: {t for t in ts if t.startswith("retrieval")} for m, ts in graph().items() if m.startswith("retrieval")}
    # a package imports what its __init__ names; that is no cycle of the modules' own code
    cycles, state = [], {}

    def visit(m, path):
        state[m] = "open"
        for t in sorted(g.get(m, ())):
            if t == m.rpartition(".")[0] and m.startswith(t + "."):
                continue  # a module importing its own package's __init__ (which imports it) is Python's normal case
            if state.get(t) == "open":
                cycles.append(path[path.index(t):] + [t])
            elif t not in state:
                visit(t, path + [t])
        state[m] = "done"
    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_layers_point_one_way():
    wrong = []
    for m, targets in graph().items():
        for t in targets:
            if layer(t) > layer(m) and (m, t) not in EXCEPTIONS:
                wrong.append(f"{m} -> {t}")
    assert not wrong, "upstream modules import downstream ones: " + ", ".join(sorted(wrong))


def test_the_index_knows_nothing_of_the_ranker():
    g = graph()
    ranker_side = {m for m in g if m.startswith(("retrieval.ranking", "retrieval.features"))} | {
        "retrieval.ranker", "retrieval.ngram", "retrieval.use", "retrieval.towers"}
    assert not g["retrieval.index"] & ranker_side
