"""The layout the architecture page describes: no import cycles between the pack's modules (module
level), no catch-all module names, core and kernels comfy-free, and every folder documented."""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("cli", "core", "kernels", "compat", "tools", "nodes")


def _modules():
    for pkg in PACKAGES:
        for f in sorted(os.listdir(os.path.join(ROOT, pkg))):
            if f.endswith(".py"):
                yield f"{pkg}.{f[:-3]}".removesuffix(".__init__"), os.path.join(ROOT, pkg, f)


def _imports(name, path, module_level=True):
    tree = ast.parse(open(path).read())
    nodes = tree.body if module_level else ast.walk(tree)
    out = set()
    base = name.split(".") if path.endswith("__init__.py") else name.split(".")[:-1]
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.level:
            parts = base[: len(base) - (node.level - 1)] if node.level > 1 else list(base)
            target = ".".join(parts + ([node.module] if node.module else []))
            for alias in node.names:
                full = f"{target}.{alias.name}"
                out.add(full if full.replace(".", "/") + ".py" in _FILES else target)
    return {t for t in out if t in _NAMES}


_ALL = dict(_modules())
_NAMES = set(_ALL)
_FILES = {n.replace(".", "/") + ".py" for n in _ALL}


def test_no_import_cycles():
    graph = {n: _imports(n, p) for n, p in _ALL.items()}
    state = {}

    def visit(n, stack):
        state[n] = "open"
        for m in graph[n]:
            if state.get(m) == "open":
                raise AssertionError("import cycle: " + " -> ".join(stack + [n, m]))
            if m not in state:
                visit(m, stack + [n])
        state[n] = "done"
    for n in graph:
        if n not in state:
            visit(n, [])


def test_core_and_kernels_never_import_comfy_nodes_or_compat():
    for n, p in _ALL.items():
        if n.split(".")[0] not in ("core", "kernels", "tools", "cli"):
            continue
        tree = ast.parse(open(p).read())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            assert not any(x == "comfy" or x.startswith(("comfy.", "folder_paths", "nodes")) for x in names), (n, names)
        assert not (_imports(n, p, module_level=False) & {m for m in _NAMES if m.startswith(("nodes", "compat"))}), n


def test_no_catch_all_module_names_and_every_folder_documented():
    assert not [n for n in _NAMES if n.rsplit(".", 1)[-1] in ("more", "misc", "utils", "helpers", "cli_more", "stuff")]
    arch = open(os.path.join(ROOT, "ARCHITECTURE.md")).read()
    readme = open(os.path.join(ROOT, "README.md")).read()
    for pkg in PACKAGES + ("web", "example_workflows", "benchmarks", "scripts"):
        assert f"`{pkg}/`" in arch and f"`{pkg}/`" in readme, pkg
    for n in _NAMES:  # every module is named on the architecture page
        leaf = n.rsplit(".", 1)[-1]
        if leaf not in PACKAGES:
            assert f"`{leaf}" in arch or f"{leaf}`" in arch or f"`{n.replace('.', '/')}" in arch, n
