"""The package's import graph runs one way and has no cycle, counting imports inside functions
and importlib.import_module calls with a literal name.

Layers, lowest first; a module imports only its own layer's modules and lower layers', and
within a layer only its own room (training never imports export, export and predict never
import training):
  0 errors, recipes, hardware, fileio, contract: pure Python, no Keras or TensorFlow
  1 the model: layers, backend kernels, builder, registry, FLOPs, BatchNorm folding
  2 data, weights
  3 checkpoints, runs (reading a training run), applications
  4 training, export
  5 predict
  6 job (training, then export: what run_cifar.py and run_imagenet.py run)
  7 flags
The package never imports the benchmarks (which are not installed with it), and no module of
the repository is loaded by its file path.
"""

import ast
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("resnext_tf", "flags")
# Functions that load a Python file by its path rather than a module by its name.
PATH_LOADERS = ("spec_from_file_location", "SourceFileLoader", "run_path")


def modules():
    """{module name: path} of every module of PACKAGES."""
    found = {}
    for package in PACKAGES:
        for folder, _, files in os.walk(os.path.join(REPO, package)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    parts = os.path.relpath(path, REPO)[:-3].split(os.sep)
                    found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imported_names(tree, known):
    """The modules of `known` an import statement or import_module("...") in `tree` loads.

    `from package import module` counts as an import of the module, not of the package (its
    parent, which Python initialises first in any case); `from package import name` of the
    package.
    """
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                name = f"{node.module}.{alias.name}"
                yield name if name in known else node.module
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            yield node.args[0].value


def import_graph():
    known = modules()
    graph = {}
    for name, path in known.items():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        graph[name] = {m for m in imported_names(tree, known) if m in known and m != name}
    return graph


def find_cycle(graph):
    """A list of modules that import each other in a circle, or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for child in sorted(graph[node]):
            if state.get(child) == "open":
                return stack[stack.index(child) :] + [child]
            if child not in state and (cycle := visit(child)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


# Layers, lowest first, each a list of rooms (modules and packages named by prefix).
LAYERS = [
    [("resnext_tf.errors", "resnext_tf.recipes", "resnext_tf.hardware", "resnext_tf.fileio",
      "resnext_tf.contract")],
    [("resnext_tf", "resnext_tf.backend_ops", "resnext_tf.tf_ops", "resnext_tf.jax_ops",
      "resnext_tf.layers", "resnext_tf.resnext", "resnext_tf.registry", "resnext_tf.flops",
      "resnext_tf.fold")],
    [("resnext_tf.data",), ("resnext_tf.weights",)],
    [("resnext_tf.checkpoints", "resnext_tf.runs", "resnext_tf.applications")],
    [("resnext_tf.training",), ("resnext_tf.export",)],
    [("resnext_tf.predict",)],
    [("resnext_tf.job",)],
    [("flags",)],
]  # fmt: skip


def room(module):
    """(layer, room) of a module: the room of LAYERS whose most specific name is the module or
    a package above it."""
    matches = [
        (len(name), rank, index)
        for rank, rooms in enumerate(LAYERS)
        for index, names in enumerate(rooms)
        for name in names
        if module == name or module.startswith(name + ".")
    ]
    assert matches, f"{module} is in no room of LAYERS"
    _, rank, index = max(matches)
    return rank, index


def arrows_up(graph):
    """Imports that reach a higher layer, or another room of the same layer."""
    bad = []
    for module, imported in graph.items():
        rank, own = room(module)
        for target in imported:
            target_rank, target_room = room(target)
            if target_rank > rank or (target_rank == rank and target_room != own):
                bad.append(f"{module} -> {target}")
    return sorted(bad)


def test_no_import_cycle():
    graph = import_graph()
    assert graph["resnext_tf.job"] >= {"resnext_tf.export"}  # the graph sees the lazy imports
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_imports_run_one_way():
    assert arrows_up(import_graph()) == []


def test_the_layers_catch_an_arrow_up():
    graph = {"resnext_tf.training.trainer": {"resnext_tf.export"}, "resnext_tf.data": set()}
    assert arrows_up(graph) == ["resnext_tf.training.trainer -> resnext_tf.export"]
    assert arrows_up({"resnext_tf.export.serving": {"resnext_tf.data.decode"}}) == []


def test_the_checker_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def benchmark_imports(tree):
    """The modules of the benchmarks package that an import in `tree` loads."""
    return {
        name
        for name in imported_names(tree, {})
        if name == "benchmarks" or name.startswith("benchmarks.")
    }


def test_the_package_does_not_import_the_benchmarks():
    for name, path in modules().items():
        with open(path, encoding="utf-8") as f:
            assert not benchmark_imports(ast.parse(f.read())), name


def test_the_benchmark_import_checker_finds_imports():
    tree = ast.parse("import os\ndef f():\n    from benchmarks import timing\n")
    assert benchmark_imports(tree) == {"benchmarks"}
    assert benchmark_imports(ast.parse("import benchmarks.model_bench")) == {
        "benchmarks.model_bench"
    }


def path_loads(tree):
    """The calls in `tree` of a function that loads a file by its path."""
    return [
        node.func
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and getattr(node.func, "attr", getattr(node.func, "id", None)) in PATH_LOADERS
    ]


def test_no_module_is_loaded_by_its_path():
    folders = (*PACKAGES, "benchmarks", "tests")
    paths = [os.path.join(REPO, name) for name in os.listdir(REPO) if name.endswith(".py")]
    for folder in folders:
        for root, _, files in os.walk(os.path.join(REPO, folder)):
            paths += [os.path.join(root, name) for name in files if name.endswith(".py")]
    for path in paths:
        with open(path, encoding="utf-8") as f:
            assert not path_loads(ast.parse(f.read())), os.path.relpath(path, REPO)


def test_the_path_load_checker_finds_loads():
    code = "import importlib.util, runpy\nimportlib.util.spec_from_file_location('m', 'm.py')\n"
    assert len(path_loads(ast.parse(code + "runpy.run_path('m.py')\n"))) == 2
    assert not path_loads(ast.parse("import runpy\nrunpy.run_module('benchmarks.compare')\n"))
