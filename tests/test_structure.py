"""The package's structure: its layers (``LAYERS``), no import cycle anywhere in ``asynccorr/`` (imports
inside functions count), results read without matplotlib, and links in the docs that resolve."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "asynccorr"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the ``asynccorr`` modules it imports, at any depth of its source."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets.add(node.module)
                targets.update(f"{node.module}.{a.name}" for a in node.names)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path ``a -> b -> ... -> a``, or None (iterative three-colour DFS)."""
    colour = dict.fromkeys(graph, 0)  # 0 unvisited, 1 on the stack, 2 done
    for root in sorted(graph):
        if colour[root]:
            continue
        stack = [(root, iter(sorted(graph[root])))]
        colour[root] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                colour[node] = 2
                stack.pop()
            elif colour[child] == 1:
                path = [n for n, _ in stack]
                return path[path.index(child):] + [child]
            elif colour[child] == 0:
                colour[child] = 1
                stack.append((child, iter(sorted(graph[child]))))
    return None


def test_the_cycle_finder_finds_a_cycle_and_accepts_a_tree():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_module_of_the_package_imports_itself_through_others():
    graph = import_graph()
    assert "asynccorr.backends.protocol" in graph and graph["asynccorr.backends.sequential"]  # the graph is read
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


# The layers, bottom up: a module may import its own layer and the layers below, never one above.
LAYERS = (
    ("asynccorr", "asynccorr.errors"),  # the package's version and its user-facing error
    ("asynccorr.envs",),  # the task: vehicles and the path
    ("asynccorr.schemes",),  # the schemes' registry and the corrections
    ("asynccorr.config",),  # one experiment's settings, validated against the registries below
    ("asynccorr.compile",),  # compiled programs and the compilation cache
    ("asynccorr.learners",),  # the learner interface, GPI, A3C, networks, evaluation, building them
    ("asynccorr.backends",),  # what trains a run: the protocol, the update rule, roles, sim, mp, ray
    ("asynccorr.runs",),  # a run on disk: files, locks, checkpoints, one run, reading back, summaries
    ("asynccorr.studies",),  # many runs: compare, regimes, calibration, clusters
    ("asynccorr.figures",),  # matplotlib: an experiment's figures, a study's heat maps
    ("asynccorr.api",),  # the Python API
    ("asynccorr.cli", "asynccorr.__main__"),  # the command line
)


def layer_of(module: str) -> int:
    """The index in ``LAYERS`` of the longest prefix that names the module (or its package)."""
    best = max(((len(prefix), i) for i, prefixes in enumerate(LAYERS) for prefix in prefixes
                if module == prefix or module.startswith(prefix + ".")), default=None)
    assert best is not None, f"{module} is in no layer: add its folder to LAYERS"
    return best[1]


def test_every_module_belongs_to_a_layer_and_imports_no_layer_above_its_own():
    graph = import_graph()
    upward = [f"{source} (layer {layer_of(source)}) imports {target} (layer {layer_of(target)})"
              for source, targets in graph.items() for target in targets if layer_of(target) > layer_of(source)]
    assert not upward, "\n".join(upward)


def test_the_layer_check_flags_an_import_from_above():
    assert layer_of("asynccorr.learners.gpi") < layer_of("asynccorr.backends.sim") < layer_of("asynccorr.cli")
    assert layer_of("asynccorr.errors") == layer_of("asynccorr") == 0


def test_reading_results_and_writing_summaries_do_not_import_matplotlib(tmp_path):
    import subprocess
    import sys

    run = tmp_path / "paper" / "async-seed0"
    run.mkdir(parents=True)
    (run / "metrics.csv").write_text("iteration,policy_loss\n1,3.0\n2,2.5\n")
    code = ("import sys; from asynccorr import api; from asynccorr.runs import summary; "
            f"res = api.load({str(run.parent)!r}); assert res.runs[0].rows == 2; "
            "summary.write_summary(res.folder, [], 't'); assert 'matplotlib' not in sys.modules, 'matplotlib'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent, check=False)
    assert done.returncode == 0, done.stderr


MARKDOWN_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def test_every_link_in_the_readme_and_docs_points_inside_the_repository_at_something_there():
    root = PACKAGE.parent
    pages = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    assert len(pages) > 1
    broken = []
    for page in pages:
        for target in MARKDOWN_LINK.findall(page.read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue  # a web address or an anchor of the same page
            path = (page.parent / target.split("#")[0]).resolve()
            if not path.is_relative_to(root) or not path.exists():
                broken.append(f"{page.relative_to(root)}: {target}")
    assert not broken, "\n".join(broken)
