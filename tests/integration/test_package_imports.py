"""The package's modules import each other without a cycle, and each imports on its own.

The graph is read from each module's top-level imports (those inside a function run later, when
everything is loaded); a cycle there is what makes an import order matter."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import wechat_nontax

PACKAGE = Path(wechat_nontax.__file__).parent


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _top_level_imports(path: Path, modules: dict[str, Path]) -> set[str]:
    imported = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.If):  # `if TYPE_CHECKING:` imports never run
            continue
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                imported.add(full if full in modules else node.module)
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
    return {name for name in imported if name in modules}


def test_no_module_of_the_package_imports_itself_back():
    modules = _modules()
    graph = {name: _top_level_imports(path, modules) for name, path in modules.items()}
    cycles = []

    def visit(name: str, path: list[str], done: set[str]) -> None:
        for target in sorted(graph[name]):
            if target in path:
                cycles.append([*path[path.index(target) :], target])
            elif target not in done:
                visit(target, [*path, target], done)
        done.add(name)

    done: set[str] = set()
    for name in sorted(graph):
        if name not in done:
            visit(name, [name], done)
    assert cycles == []
    # The rooms are there, each a package.
    rooms = {"wechat", "store", "issuing", "requests", "ui", "cli"}
    assert {f"wechat_nontax.{room}" for room in rooms} <= set(modules)


def _outside_imports(modules: dict[str, Path]) -> set[str]:
    """What the package's modules import at their top from outside the package."""
    outside = set()
    for path in modules.values():
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                outside.add(node.module)
            elif isinstance(node, ast.Import):
                outside.update(alias.name for alias in node.names)
    return {name for name in outside if name.split(".")[0] != "wechat_nontax"}


def test_each_module_imports_alone_in_a_fresh_interpreter():
    """Each module in an interpreter where no module of the package is loaded yet: a child
    forked from one that imported only what the package imports from outside (Airflow's
    import alone takes seconds, which a new interpreter a module would pay again)."""
    modules = _modules()
    code = (
        "import importlib, os, sys, traceback\n"
        "for outside in sys.argv[2].split():\n"
        "    try:\n"
        "        importlib.import_module(outside)\n"
        "    except Exception:\n"
        "        pass  # the module that needs it fails below, with its own traceback\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'wechat_nontax']\n"
        "failed = []\n"
        "for name in sys.argv[1].split():\n"
        "    read, write = os.pipe()\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        os.close(read)\n"
        "        try:\n"
        "            importlib.import_module(name)\n"
        "            status = 0\n"
        "        except BaseException:\n"
        "            os.write(write, traceback.format_exc()[-500:].encode())\n"
        "            status = 1\n"
        "        os._exit(status)\n"
        "    os.close(write)\n"
        "    with os.fdopen(read, 'rb') as out:\n"
        "        error = out.read().decode()\n"
        "    if os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]):\n"
        "        failed.append((name, error))\n"
        "print(failed)\n"
    )
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            " ".join(sorted(modules)),
            " ".join(_outside_imports(modules)),
        ],
        capture_output=True,
        text=True,
        timeout=400,
        check=True,
    )
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout[-3000:] + done.stderr[-3000:]
