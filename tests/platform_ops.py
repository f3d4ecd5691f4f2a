"""Which MindSpore primitives a compiled graph uses, and on which platforms MindSpore documents each one.

`collect_primitives(cell, *inputs)` compiles `cell` in GRAPH_MODE (compile only: nothing runs) and reads
the primitives of its FRONTEND graph: the function graph the frontend pipeline hands to the backend
(after autodiff, inlining and the device-independent optimisations; the same nodes as the `validate`
IR dump, the last frontend stage), not the backend's kernel graphs, whose expansions and fusions are
the compiling device's (here CPU's) own business. It is read in process through the executor's MindIR
proto of the compiled phase (top graph and subgraphs), so nothing is dumped to disk (a full IR dump of
the b0 train step is about 1 GB and doubles the compile time; MS_DEV_SAVE_GRAPHS is read only at import).

`documentation(name, scopes)` says where MindSpore documents a primitive and for which platforms, from
the "Supported Platforms:" section of docstrings:
1. the Primitive class of that name (mindspore.ops.<Name> first, then mindspore.ops.operations.* and
   mindspore.ops.auto_generate.*; the first class whose docstring lists platforms);
2. else the functional op the class docstring points to ("Refer to :func:`mindspore.ops.add`", "is
   equivalent to ops.add(...)"), following aliases ("Alias for :func:`mindspore.ops.cat()`");
3. else OPERATOR_FORMS: the tensor-number forms of documented ops (`x * 2.0` compiles to Muls, the
   number form of ops.mul), checked as that op;
3b. else TENSOR_METHOD_FORMS: primitives a documented Tensor method compiles to (TensorMove: Tensor.copy);
4. else a public functional op (mindspore.ops, mindspore.mint, mindspore.mint.nn.functional) that
   returns the primitive's output (`ops.matmul` returns `matmul_ext(...)`, i.e. MatMulExt's);
5. gradient primitives (nodes in a `Gradients/.../Grad_<Forward>` scope whose own docstring lists no
   platforms, e.g. BiasAddGrad, LayerNormGrad, Conv2DBackpropFilter, SoftmaxBackward) are backend
   kernels without user documentation: MindSpore registers them as the bprop of <Forward>, so they are
   checked as <Forward>'s platforms (a forward op documented for Ascend has its backward on Ascend).
   A gradient-scope node whose primitive IS documented (MatMul, Mul, ...) is checked as itself.
GRAPH_INTERNALS lists the structural nodes that are not operations at all; they are reported, not checked.
Anything else is "undocumented" and counts as not documented for Ascend.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import pkgutil
import re
from dataclasses import dataclass, field

PLATFORMS = ("Ascend", "GPU", "CPU")

# Graph-internal nodes: structure, side-effect ordering and parameter reads, not computations. They have
# no kernel of their own on any device (the backend removes or lowers them), so there is nothing to check.
GRAPH_INTERNALS = {
    "MakeTuple": "builds a tuple of outputs/inputs (graph structure)",
    "TupleGetItem": "takes an element of a multi-output node (graph structure)",
    "MakeList": "builds a list (graph structure)",
    "ListGetItem": "takes an element of a list (graph structure)",
    "Return": "the graph's output (graph structure)",
    "Depend": "orders a side effect before a use (auto-monad); no computation",
    "UpdateState": "threads the side-effect state (auto-monad); no computation",
    "Load": "reads a Parameter's current value (auto-monad); no computation",
    "StopGradient": "autodiff marker (ops.stop_gradient); identity in the forward graph",
    "Partial": "closure of a graph (graph structure)",
    "Switch": "control-flow selection of a branch graph (graph structure)",
}

# Tensor-number forms: what a functional op (and the Python operator on tensors) dispatches to in a
# graph when its other operand is a Python number, e.g. `x * 2.0` -> Muls, `x < 0.5` -> LessScalar. They
# have no documentation of their own; the functional op's covers them ("other: Tensor or Number"), so they
# are checked as the primitive of that op. Each one seen in a graph compiled from a tensor-number operator
# (MindSpore 2.10; for * and / also mindspore/ops/composite/multitype_ops/{mul,div}_impl.py).
OPERATOR_FORMS = {
    "Muls": "Mul",          # x * number  (ops.mul)
    "Divs": "Div",          # x / number  (ops.div)
    "LessScalar": "Less",   # x < number  (ops.less)
    "EqScalar": "Equal",    # x == number (ops.equal)
}

# Primitives that a documented Tensor method compiles to in a graph (mindspore/_extends/../standard_method.py:
# `copy` builds Primitive('TensorMove')). MindSpore's compiler also inserts TensorMove itself, to keep the
# value a custom `bprop` reads of a Parameter that the same graph updates; it is checked as that method.
TENSOR_METHOD_FORMS = {
    "TensorMove": "copy",
}

_GRAD_SCOPE = re.compile(r"(?:^|/)Grad_([A-Za-z0-9_]+?)(?=/|$)")


# ---------------------------------------------------------------------------------------------------
# Collection


@contextlib.contextmanager
def graph_mode():
    """MindSpore in GRAPH_MODE for the block, the previous mode restored after."""
    import mindspore as ms

    mode = ms.get_context("mode")
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        yield
    finally:
        ms.set_context(mode=mode)


def frontend_graph_nodes(cell, *inputs):
    """Compile `cell` on `inputs` in GRAPH_MODE (without running it) and return the primitives of its
    frontend graph as (primitive name, full scope name) pairs, one per node.

    Read from the executor's MindIR proto of the compiled phase, which holds the top graph and every
    subgraph (the branches of an `if` on a tensor, loops): the `anf_ir` proto holds only the top graph.
    Primitives that the graph references without a node of their own (a primitive passed as a value)
    come with the scope "<referenced as a value>".
    """
    from mindspore.graph.api import _cell_graph_executor
    from mindspore.train import mind_ir_pb2

    with graph_mode():
        cell.compile(*inputs)
    phase = cell.compile_phase
    proto = _cell_graph_executor._graph_executor.get_func_graph_proto(phase, "mind_ir", False)
    if not proto:
        raise RuntimeError(f"no compiled graph for phase {phase!r} of {type(cell).__name__}")
    model = mind_ir_pb2.ModelProto()
    model.ParseFromString(proto)
    primitives = {primitive.name: primitive.op_type for primitive in model.primitives}   # "Erf:20" -> "Erf"
    nodes = []
    for graph in (model.graph, *model.functions):
        for node in graph.node:
            # op_type "REF::Erf:20" applies a primitive; "REF::<graph>:..." calls a (sub)graph, whose own
            # nodes are listed with its function; "Constant" is a value
            reference = node.op_type[len("REF::"):] if node.op_type.startswith("REF::") else None
            if reference in primitives:
                nodes.append((primitives[reference], node.domain))
    used = {name for name, _ in nodes}
    nodes += [(name, "<referenced as a value>") for name in sorted(set(primitives.values()) - used)]
    return nodes


def collect_primitives(cell, *inputs) -> dict[str, list[str]]:
    """{primitive name: sorted full scope names of its nodes} of `cell`'s compiled frontend graph.

    The scope says where a node comes from: `Default/<attr>-<CellClass>/.../<Prim>-op<N>` for the forward
    and `Gradients/Default/.../Grad_<ForwardPrim>/<Prim>-op<N>` for what autodiff generated.
    """
    found: dict[str, set] = {}
    for name, scope in frontend_graph_nodes(cell, *inputs):
        found.setdefault(name, set()).add(scope)
    return {name: sorted(scopes) for name, scopes in sorted(found.items())}


# ---------------------------------------------------------------------------------------------------
# Documentation


def documented_platforms(doc: str | None) -> tuple[str, ...] | None:
    """The platforms of a docstring's "Supported Platforms:" section (None when it has none or names no
    platform, e.g. "Deprecated")."""
    if not doc:
        return None
    match = re.search(r"Supported Platforms:\s*\n((?:[ \t]*\S.*\n?)+)", doc)
    if not match:
        return None
    named = set(re.findall(r"``(\w+)``", match.group(1)))
    platforms = tuple(p for p in PLATFORMS if p in named)
    return platforms or None


def own_doc(obj) -> str:
    """obj's own docstring, cleaned; a class's is not inherited (PrimitiveWithInfer's names platforms)."""
    doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else getattr(obj, "__doc__", None)
    return inspect.cleandoc(doc) if isinstance(doc, str) else ""


@functools.lru_cache(maxsize=None)
def _primitive_classes() -> dict[str, list[type]]:
    """Primitive subclasses by class name: mindspore.ops' public ones first, then every module of
    mindspore.ops.operations and mindspore.ops.auto_generate."""
    import mindspore.ops as ops
    import mindspore.ops.auto_generate as auto_generate
    import mindspore.ops.operations as operations
    from mindspore.ops import Primitive

    modules = [ops, operations, auto_generate]
    for package in (operations, auto_generate):
        for info in sorted(pkgutil.walk_packages(package.__path__, package.__name__ + "."), key=lambda i: i.name):
            try:
                modules.append(importlib.import_module(info.name))
            except Exception:   # noqa: BLE001 (optional or platform-specific modules)
                continue
    classes: dict[str, list[type]] = {}
    for module in modules:
        for attr, value in vars(module).items():
            if inspect.isclass(value) and issubclass(value, Primitive) and value not in classes.get(attr, []):
                classes.setdefault(attr, []).append(value)
    return classes


def _resolve(dotted: str):
    """mindspore.ops.add / ops.add / mindspore.mint.nn.functional.relu -> the object, or None."""
    dotted = dotted.strip().rstrip("()")
    if dotted.startswith("ops."):
        dotted = "mindspore." + dotted
    if not dotted.startswith("mindspore."):
        return None
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for part in parts[cut:]:
                obj = getattr(obj, part)
        except AttributeError:
            return None
        return obj
    return None


def _referenced_functions(doc: str) -> list[str]:
    """Functional ops a docstring points to: ":func:`mindspore.ops.add`", "Alias for :func:`...`", and the
    call in an "is equivalent to" code block (`ops.add(input, other)`)."""
    refs = re.findall(r":func:`~?([\w.]+)(?:\(\))?`", doc)
    equivalent = re.search(r"is equivalent to\s*\n\s*\.\. code-block::\s*\n\s*\n\s*([\w.]+)\(", doc)
    if equivalent:
        refs.insert(0, equivalent.group(1))
    return refs


def _platforms_following_references(obj, depth: int = 3):
    """(platforms, where) from obj's docstring, or from what it refers to (up to `depth` hops)."""
    doc = own_doc(obj)
    platforms = documented_platforms(doc)
    if platforms:
        return platforms, f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', obj)}"
    if depth == 0:
        return None, None
    for ref in _referenced_functions(doc):
        target = _resolve(ref)
        if target is not None and target is not obj:
            platforms, where = _platforms_following_references(target, depth - 1)
            if platforms:
                return platforms, where
    return None, None


@functools.lru_cache(maxsize=None)
def _instance_names(name: str) -> tuple[str, ...]:
    """Module-level names under which MindSpore holds an instance of primitive `name` and the generated
    function that calls it: `matmul_ext_op = MatMulExt()` -> ("matmul_ext_op", "matmul_ext")."""
    import mindspore.ops.auto_generate.gen_ops_prim as gen_ops_prim
    from mindspore.ops import Primitive

    names = set()
    for attr, value in vars(gen_ops_prim).items():
        if isinstance(value, Primitive) and type(value).__name__ == name:
            names.add(attr)
            if attr.endswith("_op"):
                names.add(attr[:-3])
    return tuple(sorted(names))


@functools.lru_cache(maxsize=None)
def _public_functions() -> list[tuple[str, object]]:
    """(qualified name, function) of the documented functional namespaces."""
    import mindspore.mint
    import mindspore.mint.nn.functional
    import mindspore.ops

    functions = []
    for namespace in (mindspore.ops, mindspore.mint, mindspore.mint.nn.functional):
        for attr, value in sorted(vars(namespace).items()):
            if not attr.startswith("_") and inspect.isfunction(value):
                functions.append((f"{namespace.__name__}.{attr}", value))
    return functions


def _wrapping_function(name: str):
    """(platforms, where) of a documented public functional op that returns the primitive's output: its code
    says `return [module.]<instance or generated function>(...)` or `return [module.]Name(...)(...)`
    (ops.matmul: `return auto_generate.matmul_ext(input, other)`, MatMulExt). A function that merely uses
    the primitive somewhere is not its documentation."""
    names = [re.escape(n) for n in _instance_names(name)]
    returns = [rf"\breturn\s+(?:[\w.]+\.)?{re.escape(name)}\([^()]*\)\("]
    if names:
        returns.append(rf"\breturn\s+(?:[\w.]+\.)?(?:{'|'.join(names)})\(")
    pattern = re.compile("|".join(returns))
    referenced = {name, *_instance_names(name)}
    for qualified, function in _public_functions():
        if referenced.isdisjoint(function.__code__.co_names):   # cheap filter before reading the source
            continue
        try:
            source = inspect.getsource(function)
        except (OSError, TypeError):
            continue
        body = source.split('"""')[-1] if source.count('"""') >= 2 else source   # the code, not the docstring
        if pattern.search(body):
            platforms = documented_platforms(own_doc(function))
            if platforms:
                return platforms, f"{qualified} (returns {name}'s output)"
    return None, None


@functools.lru_cache(maxsize=None)
def primitive_documentation(name: str):
    """(platforms, where) documented for primitive `name` itself, by rules 1-4 of the module docstring;
    (None, None) when MindSpore documents no platforms for it."""
    classes = _primitive_classes().get(name, [])
    for cls in classes:                      # 1. the class
        platforms = documented_platforms(own_doc(cls))
        if platforms:
            return platforms, f"{cls.__module__}.{cls.__qualname__}"
    for cls in classes:                      # 2. the functional op it refers to
        platforms, where = _platforms_following_references(cls)
        if platforms:
            return platforms, f"{where} (referred to by {cls.__module__}.{cls.__qualname__})"
    if name in OPERATOR_FORMS:               # 3. operator forms (explicit, before the search of rule 4)
        platforms, where = primitive_documentation(OPERATOR_FORMS[name])
        if platforms:
            return platforms, f"as {OPERATOR_FORMS[name]}, whose tensor-number form it is: {where}"
    if name in TENSOR_METHOD_FORMS:          # 3b. the Tensor method whose graph form it is
        import mindspore as ms
        method = TENSOR_METHOD_FORMS[name]
        platforms = documented_platforms(inspect.getdoc(getattr(ms.Tensor, method)) or "")
        if platforms:
            return platforms, f"as mindspore.Tensor.{method}, whose graph form it is"
    if classes:                              # 4. a public functional op that wraps it
        platforms, where = _wrapping_function(name)
        if platforms:
            return platforms, where
    return None, None


@dataclass
class OpReport:
    """One primitive of a graph: its documented platforms, where that documentation is, its nodes' scopes."""

    name: str
    scopes: list[str]
    platforms: tuple[str, ...] | None = None
    source: str = ""
    internal: bool = False
    gradient_of: list[str] = field(default_factory=list)

    @property
    def ascend(self) -> bool:
        return self.internal or bool(self.platforms and "Ascend" in self.platforms)

    @property
    def status(self) -> str:
        if self.internal:
            return "graph-internal"
        if not self.platforms:
            return "UNDOCUMENTED"
        return " ".join(self.platforms)

    def cells(self) -> list[str]:
        """The cells its nodes come from (unique, in scope order)."""
        return list(dict.fromkeys(cell_path(scope) for scope in self.scopes))

    def line(self, max_cells: int = 2) -> str:
        cells = self.cells()
        more = f" (+{len(cells) - max_cells} more)" if len(cells) > max_cells else ""
        return (f"{self.name:<22} {self.status:<16} {len(self.scopes):>4} node(s)  [{self.source}]  "
                f"at {'; '.join(cells[:max_cells])}{more}")


def forward_ops(scopes: list[str]) -> list[str]:
    """The forward primitives whose bprop generated these nodes (Grad_<Forward> in their scopes)."""
    found = []
    for scope in scopes:
        names = _GRAD_SCOPE.findall(scope)
        if names and names[-1] not in found:
            found.append(names[-1])
    return found


def documentation(name: str, scopes: list[str]) -> OpReport:
    """The OpReport of primitive `name` whose nodes have these scopes (see the module docstring)."""
    report = OpReport(name, scopes)
    if name in GRAPH_INTERNALS:
        report.internal = True
        report.source = GRAPH_INTERNALS[name]
        return report
    platforms, where = primitive_documentation(name)
    if platforms:
        report.platforms, report.source = platforms, where
        return report
    forward = forward_ops(scopes)
    if forward and all(_GRAD_SCOPE.search(s) for s in scopes):    # 5. gradient kernels
        documented = [primitive_documentation(f) for f in forward]
        if all(p for p, _ in documented):
            common = set(PLATFORMS)
            for platforms, _ in documented:
                common &= set(platforms)
            report.platforms = tuple(p for p in PLATFORMS if p in common)
            report.gradient_of = forward
            report.source = "gradient of " + ", ".join(f"{f} ({w})" for f, (_, w) in zip(forward, documented))
            return report
    report.source = ("no platforms documented for the primitive, its functional op or (gradient) its forward op"
                     if _primitive_classes().get(name) else "no Primitive class of this name in mindspore.ops")
    return report


def document_all(primitives: dict[str, list[str]]) -> list[OpReport]:
    return [documentation(name, scopes) for name, scopes in sorted(primitives.items())]


def cell_path(scope: str) -> str:
    """`Default/network-NetWithLoss/.../drop_path-DropPath/Bernoulli-op3` -> `network.....drop_path
    (DropPath)`: the attribute path of the cell a node comes from (gradients: `grad of ...`)."""
    parts = scope.split("/")
    gradient = parts[0] == "Gradients"
    parts = [p for p in parts[:-1] if p not in ("Default", "Gradients") and not p.startswith("Grad_")]
    attrs, last_class = [], ""
    for part in parts:
        attr, _, cls = part.partition("-")
        attrs.append(attr)
        last_class = cls or last_class
    path = ".".join(attrs) or "<top>"
    text = f"{path} ({last_class})" if last_class else path
    return f"grad of {text}" if gradient else text


def cell_classes(cell) -> dict[str, str]:
    """{class name: module.qualname} of `cell` and every cell inside it (to say where a scope's cell is defined)."""
    return {type(c).__name__: f"{type(c).__module__}.{type(c).__qualname__}" for _, c in cell.cells_and_names()}


def where_used(report: OpReport, classes: dict[str, str], max_cells: int = 3) -> str:
    """`7 node(s) in DropPath (segformer.models.layers.DropPath): net.backbone.block1.1.drop_path` for a report."""
    by_class: dict[str, list[str]] = {}
    for cell in report.cells():
        name = cell.rsplit("(", 1)[-1].rstrip(")") if cell.endswith(")") else ""
        by_class.setdefault(name, []).append(cell.rsplit(" (", 1)[0])
    parts = []
    for name, paths in by_class.items():
        label = f"{name} ({classes[name]})" if name in classes else (name or "the top cell")
        more = " ..." if len(paths) > max_cells else ""
        parts.append(f"{label}: {', '.join(paths[:max_cells])}{more}")
    return f"{len(report.scopes)} node(s) in " + "; ".join(parts)


def format_table(reports: list[OpReport], title: str) -> str:
    lines = [title, f"  {'primitive':<22} {'documented for':<16} {'nodes':>4}          [documentation]  at (cells)"]
    lines += [("  " if r.ascend else "! ") + r.line() for r in reports]
    return "\n".join(lines)
