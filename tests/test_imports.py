"""Imports point down: nothing in common/ forms an import cycle, building a network loads neither the curvature nor
the statistics code, and the README lists the common/ modules each script needs as the import graph has them."""
import ast
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ("dqn_classification_mdp.py", "adam_instability_mnist.py", "brownian_vs_gd.py", "falsification.py",
           "interventions_sweep.py", "ddqn_atari_layernorm.py")


def imported_modules(path, package="common"):
    """The ``package`` modules a file imports anywhere (also inside functions), as names like ``common.runtime.run``."""
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith(package + ".")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == package:
                found |= {f"{package}.{alias.name}" for alias in node.names}
            elif node.module.startswith(package + "."):
                found.add(node.module)
    return found


def import_graph(package_dir, package="common"):
    """``{module: modules it imports}`` over the ``.py`` files of ``package_dir``."""
    modules = [name[:-3] for name in os.listdir(package_dir) if name.endswith(".py") and name != "__init__.py"]
    return {f"{package}.{m}": imported_modules(os.path.join(package_dir, m + ".py"), package) for m in modules}


def find_cycle(graph):
    """An import cycle ``[a, b, ..., a]`` of ``graph``, or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
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


def modules_needed(script, root=ROOT):
    """The ``common/`` modules a copy of ``script`` needs (what it imports, transitively, through scripts too)."""
    graph = import_graph(os.path.join(root, "common"))
    roots, scripts, todo = set(), set(), [script]
    while todo:  # a sweep imports dqn_classification_mdp.py
        name = todo.pop()
        scripts.add(name)
        path = os.path.join(root, name)
        roots |= imported_modules(path)
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.Import):
                todo += [f"{a.name}.py" for a in node.names if f"{a.name}.py" in set(SCRIPTS) - scripts]
    return sorted(m.split(".", 1)[1] for m in closure(graph, roots))


def test_common_has_no_import_cycle():
    graph = import_graph(os.path.join(ROOT, "common"))
    assert len(graph) > 10
    assert find_cycle(graph) is None, find_cycle(graph)


def test_a_cycle_is_found(tmp_path):
    package = tmp_path / "common"
    package.mkdir()
    (package / "a.py").write_text("from common.b import f\n")
    (package / "b.py").write_text("def f():\n    from common import c\n")
    (package / "c.py").write_text("import common.a\n")
    (package / "d.py").write_text("from common.a import f\n")
    assert find_cycle(import_graph(str(package))) == ["common.a", "common.b", "common.c", "common.a"]
    (package / "c.py").write_text("import os\n")
    assert find_cycle(import_graph(str(package))) is None


def test_building_a_network_loads_neither_curvature_nor_statistics():
    graph = import_graph(os.path.join(ROOT, "common"))
    assert not closure(graph, ["common.science.networks"]) & {"common.science.hessian", "common.science.stats", "common.science.grad_cov"}
    assert "common.science.stats" in closure(graph, ["common.science.interventions"])  # the closure does follow imports
    code = "import sys, common.science.networks; print(sorted(m for m in sys.modules if m.startswith('common')))"
    loaded = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "['common', 'common.science.networks']"


def test_the_readme_lists_the_modules_each_script_needs():
    readme = open(os.path.join(ROOT, "README.md")).read()
    for script in SCRIPTS:
        line = re.search(rf"^\| `{re.escape(script)}` \| (\d+) \| (.*) \|$", readme, re.MULTILINE)
        assert line, f"README.md lacks the copy-cost row of {script}"
        needed = modules_needed(script)
        assert int(line.group(1)) == len(needed) and line.group(2) == ", ".join(needed), (script, needed)



if __name__ == "__main__":  # print the README's table
    for script in SCRIPTS:
        needed = modules_needed(script)
        print(f"| `{script}` | {len(needed)} | {', '.join(needed)} |")
