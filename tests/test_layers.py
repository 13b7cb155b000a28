"""The shape of the code: imports flow one way, and every task is declared in the catalog.

Layers, bottom to top (a module may import its own layer and those below it):

1. ``tasks/`` (pure vision code) and ``storage/`` (SQL and blobs): they import nothing else of
   Darkroom — neither knows the settings, Celery or the other;
2. ``darkroom.catalog`` (what each task is: its step in tasks/, its results in storage/), then
   ``darkroom.settings`` (validated against the catalog and the tasks' option parsers);
3. ``worker/`` (Celery, the runtime, the pipeline), then ``producer/`` (which sends messages);
4. ``darkroom.api``, ``darkroom.web`` (`darkroom serve`'s application), ``darkroom.cli`` and ``bench/`` on top.

Imports inside functions are kept for heavy or optional modules (TensorFlow, Keras, mtcnn,
Alembic's commands) — and in the CLI and the benchmark, whose commands import the stack they need
when they run so that ``darkroom --help`` stays quick.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from darkroom import catalog

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("darkroom", "worker", "producer", "tasks", "storage", "bench")

#: Which layer each module prefix is in (the longest prefix wins).
LAYERS = {
    "tasks": 0, "storage": 0,
    "darkroom.catalog": 1, "darkroom.settings": 2,
    "worker": 3, "producer": 4,
    "darkroom": 5, "darkroom.api": 5, "darkroom.web": 5, "darkroom.cli": 6, "darkroom.__main__": 7, "bench": 6,
}
#: What tasks/ and storage/ may import of Darkroom: only themselves.
SELF_ONLY = ("tasks", "storage")
#: Modules a function may import outside the CLI and the benchmark (heavy, or optional):
#: tasks.mtcnn_compiled imports TensorFlow as it loads; darkroom.api brings the worker's stack.
LAZY_OK = ("tensorflow", "keras", "mtcnn", "alembic", "h5py", "tasks.mtcnn_compiled", "darkroom.api")


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if "migrations" in path.parts:
                continue
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _project(name: str) -> str | None:
    """The project module an import names (a package's module, or the package itself)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(module: str) -> list[tuple[str, bool, int]]:
    """(imported name, inside a function, line) of every import of ``module``, leaving out those
    under ``if TYPE_CHECKING:``."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    found: list[tuple[str, bool, int]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import):
                found.extend((alias.name, in_function, child.lineno) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:  # relative: resolve against the module's package
                    base = module.split(".")
                    is_package = MODULES[module].name == "__init__.py"
                    base = base[: len(base) - child.level + (1 if is_package else 0)]
                    prefix = ".".join(base + ([child.module] if child.module else []))
                else:
                    prefix = child.module or ""
                for alias in child.names:
                    full = f"{prefix}.{alias.name}"
                    found.append((full if _project(full) == full else prefix, in_function, child.lineno))
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(tree, False)
    return found


def _layer(module: str) -> int:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[best]


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module in MODULES:
        for name, _in_function, _line in _imports(module):
            target = _project(name)
            if target and target != module:
                graph[module].add(target)
    return graph


def test_no_import_cycles():
    graph = _graph()
    # A package's __init__ importing its own modules is no cycle of concern: drop parent -> child edges.
    for module, targets in graph.items():
        graph[module] = {t for t in targets if not t.startswith(module + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                walk(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            walk(node)


def test_imports_flow_down_the_layers():
    wrong = []
    for module in MODULES:
        for name, _in_function, line in _imports(module):
            target = _project(name)
            if target is None or target == module:
                continue
            top = module.split(".")[0]
            if top in SELF_ONLY and not target.startswith(top):
                wrong.append(f"{module}:{line} imports {target} ({top}/ knows nothing else of Darkroom)")
            elif _layer(target) > _layer(module) and not target.startswith(module + "."):
                wrong.append(f"{module}:{line} imports {target}, a layer above it")
    assert not wrong, "\n".join(wrong)


def test_imports_inside_functions_are_for_heavy_modules_only():
    wrong = []
    for module in MODULES:
        if module.startswith(("darkroom.cli", "bench")) or module == "darkroom":
            continue
        for name, in_function, line in _imports(module):
            if in_function and not name.startswith(LAZY_OK):
                wrong.append(f"{module}:{line} imports {name} inside a function")
    assert not wrong, "\n".join(wrong)


def test_tasks_know_no_settings():
    """tasks/ is pure: no DARKROOM_ variable is named there (the catalog and the settings say them)."""
    named = [f"{path.relative_to(ROOT)}:{n}" for path in (ROOT / "tasks").rglob("*.py")
             for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if "DARKROOM_" in line]
    assert not named, named


def test_every_task_is_declared_once_in_the_catalog():
    """The catalog lists every task; each has a queue, a step, its results, and a Celery task."""
    from worker.app import app

    assert list(catalog.NAMES) == ["normalize", "classify", "augment", "faces", "phash"]
    for task in catalog.TASKS:
        assert task.queue in catalog.QUEUES
        assert callable(task.step) and task.results.fields
        assert app.tasks[task.celery_name].name == f"darkroom.{task.name}"
        assert catalog.routes()[task.celery_name] == {"queue": task.queue}
    # the cpu/gpu routing of the first four tasks is as it always was
    assert {t.name: t.queue for t in catalog.TASKS} == {
        "normalize": "cpu", "classify": "gpu", "augment": "cpu", "faces": "gpu", "phash": "cpu"}
    assert [t.name for t in catalog.TASKS if t.batched] == ["classify"]


def test_a_tasks_name_is_found_only_in_the_catalog_its_step_its_storage_and_its_tests():
    """`git grep phash` lands in the catalog, tasks/phash.py, its storage and tests — not in the
    worker or the producer, which read the catalog."""
    generic = [ROOT / "worker", ROOT / "producer"]
    for task in catalog.TASKS:
        hits = []
        for place in generic:
            for path in ([place] if place.is_file() else place.rglob("*.py")):
                text = path.read_text(encoding="utf-8")
                if f'"{task.name}"' in text or f"'{task.name}'" in text:
                    hits.append(str(path.relative_to(ROOT)))
        assert not hits, f"{task.name!r} is named in {hits}"
