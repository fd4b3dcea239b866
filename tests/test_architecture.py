"""The layers stay layers: no import cycle, the API never imports the workers' code, no module reaches into
another's private names, and an API worker built by create_app has loaded no model or OpenAI client."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

from conftest import server_env

ROOT = Path(__file__).resolve().parent.parent
SOURCES = {"wardrobe": ROOT / "src" / "wardrobe", "tasks": ROOT / "tasks"}
# What only the workers may load: the models, the OpenAI SDK, and the workers' own code.
WORKER_ONLY = ("openai", "onnxruntime", "openvino", "rembg", "tasks")


def _modules() -> dict[str, Path]:
    found = {}
    for top, folder in SOURCES.items():
        # A C source builds the extension module of its name (the profiler's native clock).
        for path in [*folder.rglob("*.py"), *folder.rglob("*.c")]:
            parts = [top, *path.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(module: str, path: Path) -> list[tuple[str, str, int]]:
    """(imported module, imported name or '', line) for every import in the file, lazy ones included."""
    if path.suffix != ".py":
        return []
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, "", node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                if submodule in MODULES:  # `from package import module`: an edge to the module itself
                    found.append((submodule, "", node.lineno))
                else:
                    found.append((base, alias.name, node.lineno))
    return found


def _graph() -> dict[str, set[str]]:
    return {
        module: {target for target, _, _ in _imports(module, path) if target in MODULES and target != module}
        for module, path in MODULES.items()
    }


def test_no_import_cycle():
    graph, state, cycles = _graph(), {}, []

    def visit(module: str, trail: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                cycles.append(" -> ".join([*trail[trail.index(target) :], target]))
            elif target not in state:
                visit(target, [*trail, target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_api_package_never_imports_the_workers_code():
    offending = [
        f"{MODULES[module].relative_to(ROOT)}:{line} imports {target}"
        for module in MODULES
        if module.startswith("wardrobe")
        for target, _, line in _imports(module, MODULES[module])
        if target == "tasks" or target.startswith("tasks.")
    ]
    assert not offending, "\n".join(offending)


def test_no_module_imports_another_packages_private_names():
    offending = []
    for module, path in MODULES.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for target, name, line in _imports(module, path):
            private = name.startswith("_") or target.rpartition(".")[2].startswith("_")
            home = target if name else target.rpartition(".")[0]
            if private and target in {*MODULES, *(m.rpartition(".")[0] for m in MODULES)} and home != package:
                offending.append(f"{path.relative_to(ROOT)}:{line} imports {target} {name}".strip())
    assert not offending, "\n".join(offending)


def test_an_api_worker_loads_no_model_openai_or_worker_code(tmp_path):
    # In a fresh interpreter, as gunicorn's worker would: build the whole app, then look at what got imported.
    script = (
        "import json, sys\n"
        "from wardrobe.app import create_app\n"
        "from wardrobe.config import Config\n"
        f"app = create_app(Config.from_env({json.dumps(server_env(tmp_path))}))\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert "wardrobe.web.resources.items" in loaded  # the app really was built
    unwanted = [m for m in loaded if m.split(".")[0] in WORKER_ONLY]
    assert not unwanted, f"the API imported {unwanted}"
