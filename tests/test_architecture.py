"""The house rules of the package, checked on its source with `ast` (docs/architecture.md): one
dependency direction between layers, no import cycle, no import of dlnlab hidden in a function, no
module over 500 lines, no function over 80 or class over 300 lines, no private name imported from another
module, a docstring on every public function, method and class."""
import ast
import importlib
from pathlib import Path

import dlnlab

PACKAGE = Path(dlnlab.__file__).resolve().parent
# Each layer may import only from itself and the layers before it.
LAYERS = ["linalg runfolder", "model losses", "theory", "tasks", "recording", "train steps", "experiments", "analysis", "cli __main__"]
LAYER_OF = {name: n for n, names in enumerate(LAYERS) for name in names.split()}


def modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = ast.parse(path.read_text(), filename=str(path))
    return out


def dlnlab_imports(tree: ast.Module, toplevel_only: bool) -> list[tuple[str, int]]:
    nodes = tree.body if toplevel_only else list(ast.walk(tree))
    found = []
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "dlnlab":
            found += [(node.module, node.lineno)]
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "dlnlab"]
    return found


def layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYER_OF.get(parts[1]) if len(parts) > 1 else None


def test_every_module_has_a_layer():
    assert [m for m in modules() if m != "dlnlab" and layer(m) is None] == []


def test_no_dlnlab_import_inside_a_function():
    hidden = []
    for name, tree in modules().items():
        top = set(dlnlab_imports(tree, toplevel_only=True))
        hidden += [f"{name}:{line} imports {m}" for m, line in dlnlab_imports(tree, False) if (m, line) not in top]
    assert hidden == []


def test_imports_go_down_the_layers():
    upward = []
    for name, tree in modules().items():
        if name == "dlnlab":  # the public API gathers every layer
            continue
        for target, line in dlnlab_imports(tree, toplevel_only=True):
            if layer(target) is None or layer(target) > layer(name):
                upward.append(f"{name}:{line} imports {target}")
    assert upward == []


def test_no_import_cycle():
    graph = {name: {t for t, _ in dlnlab_imports(tree, True)} for name, tree in modules().items() if name != "dlnlab"}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt in graph and nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_no_module_over_500_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 500}
    assert long == {}


def test_the_public_api_is_importable_from_the_top():
    for name in ("DeepLinearNet", "compose", "run", "classify", "load_run", "load_runs", "load_events",
                 "summarize", "Hook"):
        assert name in dlnlab.__all__ and getattr(dlnlab, name) is not None


# Item 8 of the house rules (docs/architecture.md, "Conventions"): short functions and classes, no
# private name borrowed from another module, a docstring on every public function, method and class.
MAX_FUNCTION_LINES, MAX_CLASS_LINES = 80, 300


def definitions(tree: ast.Module, public_api: bool = False):
    """Every function and class in `tree`, with the dotted name it has inside its module. With
    `public_api`, only what a user can reach: no function nested in a function, no private name."""
    def walk(body, prefix, in_function):
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = prefix + node.name
                hidden = in_function or node.name.startswith("_")
                if not (public_api and hidden):
                    yield name, node
                if not (public_api and hidden):
                    is_function = not isinstance(node, ast.ClassDef)
                    yield from walk(node.body, name + ".", in_function or is_function)
            elif isinstance(node, (ast.If, ast.Try, ast.With)):
                yield from walk(node.body, prefix, in_function)
    yield from walk(tree.body, "", False)


def test_no_function_over_80_lines():
    long = [f"{mod}.{name}: {node.end_lineno - node.lineno + 1} lines"
            for mod, tree in modules().items() for name, node in definitions(tree)
            if not isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert long == []


def test_no_class_over_300_lines():
    long = [f"{mod}.{name}: {node.end_lineno - node.lineno + 1} lines"
            for mod, tree in modules().items() for name, node in definitions(tree)
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > MAX_CLASS_LINES]
    assert long == []


def test_no_private_name_imported_from_another_module():
    borrowed = [f"{mod}:{node.lineno} imports {node.module}.{alias.name}"
                for mod, tree in modules().items() for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "dlnlab"
                for alias in node.names if alias.name.startswith("_")]
    assert borrowed == []


def inherits_a_docstring(module: str, qualname: str) -> bool:
    """Whether the method `qualname` (Class.method) overrides a documented method of a base class, so
    that `help()` shows the base's docstring for it."""
    cls_name, attr = qualname.rsplit(".", 1)
    cls = importlib.import_module(module)
    for part in cls_name.split("."):
        cls = getattr(cls, part)
    return any(getattr(vars(base).get(attr), "__doc__", None) for base in cls.__mro__[1:])


def test_every_public_function_method_and_class_has_a_docstring():
    missing = []
    for mod, tree in modules().items():
        for name, node in definitions(tree, public_api=True):
            if ast.get_docstring(node):
                continue
            in_class = "." in name and not isinstance(node, ast.ClassDef)
            if in_class and inherits_a_docstring(mod, name):
                continue
            missing.append(f"{mod}.{name}")
    assert missing == []
