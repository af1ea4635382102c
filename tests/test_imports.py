"""Imports point down, over the whole tree (scripts, common/, benchmarks/, tests/): no import cycle anywhere, and no
module imports a layer above its own. The layers, bottom up:

    common/errors.py   the leaf every layer may import
    common/science/    what a researcher reads and copies; imports only the leaf and itself
    common/runtime/    the run machinery; may import the science. Its entry point, cli, is imported only by scripts
    common/analysis/   reading finished runs; may import the science and the run machinery
    everything else    scripts, benchmarks, tests: may import anything

Building a network loads neither the curvature nor the statistics code, and the README lists the common/ modules
each script needs as the import graph has them."""
import ast
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ("dqn_classification_mdp.py", "adam_instability_mnist.py", "brownian_vs_gd.py", "falsification.py",
           "interventions_sweep.py", "ddqn_atari_layernorm.py")
LAYERS = ("common.errors", "common.science", "common.runtime", "common.analysis")  # bottom up; the rest on top
ENTRY_POINT = "common.runtime.cli"
SKIP_DIRS = {".git", ".venv", "runs", "__pycache__", "docs", "slurm", "shared"}


def tree_modules(root=ROOT):
    """``{dotted name: path}`` of every .py file of the tree (``common/science/probe.py`` -> ``common.science.probe``,
    a package's ``__init__.py`` -> the package)."""
    modules = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith("."))
        for name in files:
            if name.endswith(".py"):
                parts = os.path.relpath(os.path.join(folder, name), root)[:-3].split(os.sep)
                modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = os.path.join(folder, name)
    return modules


def imports_of(path, modules, root=ROOT):
    """The tree's modules that the file at ``path`` imports anywhere (also inside functions). A bare name resolves
    to a module beside the file first where the folder is a script folder (benchmarks and tests put theirs on
    sys.path), then to the root's; inside the ``common`` package it is an installed package (``import minatar``)."""
    here = os.path.relpath(os.path.dirname(path), root).replace(os.sep, ".")
    beside = here != "." and here.split(".")[0] != "common"
    prefixes = [f"{here}." if beside else "", ""]

    def resolve(name):
        return next((prefix + name for prefix in prefixes if prefix + name in modules), None)

    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            found |= {resolve(alias.name) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            base = resolve(node.module)
            found |= {resolve(f"{node.module}.{alias.name}") or base for alias in node.names}
    return found - {None}


def import_graph(root=ROOT):
    """``{module: the tree's modules it imports}`` over the whole tree."""
    modules = tree_modules(root)
    return {name: imports_of(path, modules, root) for name, path in modules.items()}


def layer(module):
    """The index of ``module``'s layer in LAYERS; scripts, benchmarks and tests above them all."""
    return next((k for k, top in enumerate(LAYERS) if module == top or module.startswith(top + ".")), len(LAYERS))


def upward_imports(graph):
    """``[(importer, imported)]`` where a module imports a layer above its own, or a module of common/ imports the
    entry point."""
    return sorted((a, b) for a, targets in graph.items() for b in targets
                  if layer(b) > layer(a) or (b == ENTRY_POINT and a.startswith("common.") and a != b))


def find_cycle(graph):
    """An import cycle ``[a, b, ..., a]`` of ``graph``, or None. A package and its own modules are not a cycle."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if node.startswith(nxt + "."):  # `from common.science import probe` inside common.science
                continue
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def closure(graph, roots):
    """Every module reachable from ``roots``, the roots included."""
    seen, todo = set(), list(roots)
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(graph.get(module, ()))
    return seen


def modules_needed(script, graph=None):
    """The ``common/`` modules a copy of ``script`` needs, as paths under common/ without .py (``runtime/run``):
    what it imports, transitively, through other scripts too (a sweep imports dqn_classification_mdp.py)."""
    graph = graph or import_graph()
    needed = closure(graph, [script[:-3]])
    return sorted((m.split(".", 1)[1].replace(".", "/") for m in needed
                   if m.startswith("common.") and m not in LAYERS[1:]), key=lambda m: (layer(f"common.{m}"), m))


def readme_row(script, graph=None):
    needed = modules_needed(script, graph)
    cells = [", ".join(m.split("/")[-1] for m in needed if m.startswith(top + "/") or m == top)
             for top in ("errors", "science", "runtime", "analysis")]
    return f"| `{script}` | {len(needed)} | " + " | ".join(cells[1:]) + " |"


def test_the_tree_has_no_import_cycle():
    graph = import_graph()
    assert {"dqn_classification_mdp", "interventions_plots", "benchmarks.bench_seeds", "common.science.probe",
            "common.runtime.run", "common.analysis.results"} <= set(graph)
    assert find_cycle(graph) is None, find_cycle(graph)


def test_imports_point_down():
    graph = import_graph()
    assert upward_imports(graph) == []
    assert all(layer(m) == 1 for m in graph if m.startswith("common.science"))  # the layers are read from folders


def test_a_cycle_and_an_upward_import_are_found(tmp_path):
    for folder, name, text in (("common", "__init__.py", ""), ("common", "errors.py", ""),
                               ("common/science", "__init__.py", ""),
                               ("common/science", "a.py", "from common.science import b\nfrom common import errors\n"),
                               ("common/science", "b.py", "def f():\n    from common.runtime.run import Run\n"),
                               ("common/runtime", "__init__.py", ""),
                               ("common/runtime", "run.py", "import common.science.a\n"),
                               ("common/runtime", "cli.py", "from common.runtime import run\n"),
                               ("", "plots.py", "from sweep import X\n"),
                               ("", "sweep.py", "def analyze():\n    from plots import fig6_runs\n")):
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
        (tmp_path / folder / name).write_text(text)
    graph = import_graph(str(tmp_path))
    assert graph["common.science.a"] == {"common.science.b", "common.errors"}
    assert find_cycle(graph) == ["common.runtime.run", "common.science.a", "common.science.b", "common.runtime.run"]
    assert upward_imports(graph) == [("common.science.b", "common.runtime.run")]
    (tmp_path / "common/science/b.py").write_text("")
    assert find_cycle(graph := import_graph(str(tmp_path))) == ["plots", "sweep", "plots"]
    assert upward_imports(graph) == []
    (tmp_path / "common/runtime/run.py").write_text("from common.runtime import cli\n")  # the entry point
    assert upward_imports(import_graph(str(tmp_path))) == [("common.runtime.run", "common.runtime.cli")]


def test_building_a_network_loads_neither_curvature_nor_statistics():
    graph = import_graph()
    science = {"common.science.hessian", "common.science.stats", "common.science.grad_cov"}
    assert not closure(graph, ["common.science.networks"]) & science
    assert "common.science.stats" in closure(graph, ["common.science.interventions"])  # the closure follows imports
    code = "import sys, common.science.networks; print(sorted(m for m in sys.modules if m.startswith('common')))"
    loaded = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "['common', 'common.science', 'common.science.networks']"


def test_the_readme_lists_the_modules_each_script_needs():
    readme, graph = open(os.path.join(ROOT, "README.md")).read(), import_graph()
    for script in SCRIPTS:
        line = re.search(rf"^\| `{re.escape(script)}` \|.*\|$", readme, re.MULTILINE)
        assert line, f"README.md lacks the copy-cost row of {script}"
        assert line.group(0) == readme_row(script, graph), (line.group(0), readme_row(script, graph))
    assert all("errors" in modules_needed(script, graph) for script in SCRIPTS)  # the table's header says so


if __name__ == "__main__":  # print the README's table
    for script in SCRIPTS:
        print(readme_row(script))
