"""The shape of the code: no first-party import cycles (imports inside functions count too), rooms import
only downwards, no module over the size limit. Computed from the source with `ast`; nothing is imported."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("train", "export", "runtime", "bench")
MAX_LINES = 400
# train's rooms, lowest first: a module may import its own room and the rooms before it, never later ones
ROOMS = ["train.core", "train.data", "train.experts", "train.eval", "train.tasks"]
# metrics import nothing above train.data, so every room may use them (the AE logs its PSNR while training)
SHARED = {"train.eval.metrics"}


def modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            if "results" in path.parts:
                continue
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = path
    return out


def imports(path: Path, known: set[str]) -> set[str]:
    """First-party modules `path` imports anywhere in the file (module level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            while name and name not in known:          # `from pkg import module` or an attribute of a module
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(path, set(mods)) - {name} for name, path in mods.items()}


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(g.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (cycle := visit(m)):
                return cycle
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(g):
        if n not in state and (cycle := visit(n)):
            return cycle
    return None


def test_the_graph_sees_function_level_imports():
    g = graph()
    assert "train.eval.ae" in g["train.evaluate"]
    assert "bench.eager" in g["bench.cases"]          # a lazy import (keeps torch out of onnxruntime processes)


def test_no_first_party_import_cycle():
    assert find_cycle(graph()) is None, f"import cycle: {' -> '.join(find_cycle(graph()))}"


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def room(name: str) -> int | None:
    return next((i for i, r in enumerate(ROOMS) if name == r or name.startswith(r + ".")), None)


def test_rooms_import_only_downwards():
    g = graph()
    wrong = [(a, b) for a, deps in g.items() if room(a) is not None
             for b in deps if room(b) is not None and room(b) > room(a) and b not in SHARED]
    assert not wrong, f"imports from a later room: {wrong}"
    assert all(room(b) <= ROOMS.index("train.data") for m in SHARED for b in g[m] if room(b) is not None)


def test_runtime_does_not_import_train_or_export():
    wrong = [(a, b) for a, deps in graph().items() if a.startswith("runtime")
             for b in deps if b.startswith(("train", "export", "bench"))]
    assert not wrong


def test_no_module_over_the_size_limit():
    big = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines: {big}"
