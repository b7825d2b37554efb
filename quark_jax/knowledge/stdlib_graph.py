"""The knowledge graph of Python source read with ``ast``: the standard library (both corpus splits), or any
set of files (a package written by a test).

Entities: ``module`` (``json.decoder``), ``class`` (``json.decoder.JSONDecoder``), ``function`` (module-level,
``json.dumps``), ``method`` (a def directly in a class body, ``json.decoder.JSONDecoder.decode``), ``docstring``
(``doc:<qualname>``), and ``external`` (a name referred to but not defined in the files: ``builtins.dict``,
``sys``, ``_json.make_scanner``). Defs nested inside functions are not entities; their calls count for the
enclosing function. Each defined entity's attributes hold ``path``, ``line`` and ``split``.

Relations, and how each is resolved (best-effort, without running or type-checking the code):

* ``contains``: module -> its classes and functions, class -> its methods and nested classes. A package
  contains its submodules (``json`` -> ``json.decoder``).
* ``imports``: module -> module, for every ``import``/``from ... import`` anywhere in the file; relative
  imports are resolved against the package; ``from pkg import sub`` points at ``pkg.sub`` when that is a
  module, else at ``pkg``.
* ``inherits``: class -> base, the base expression resolved like a call target (below); a base that does not
  resolve (``namedtuple(...)``) is kept as written (``ast.unparse``).
* ``calls``: function or method -> callee, one per distinct callee. ``f()`` resolves through the function's
  own imports, the module's definitions and imports, then builtins (``builtins.len``); a name assigned or
  passed as a parameter in the function is a local and does not resolve. ``a.b.c()`` resolves ``a`` the same
  way and appends the attributes. ``self.m()`` / ``cls.m()`` look ``m`` up in the class and then its
  resolved bases (depth-first, in base order); ``super().m()`` starts at the bases. ``x.m()`` where ``x`` was
  assigned a class instance (``x = Cls(...)``, in the function or at module level) looks ``m`` up in
  ``Cls``. Every resolved name is made canonical through re-exports (``json.JSONDecoder`` ->
  ``json.decoder.JSONDecoder``, ``os.path.join`` -> ``posixpath.join``). Calls that do not resolve (on
  arguments, locals, call results, subscripts) are dropped and counted in the build report.
* ``documented-by``: entity -> ``doc:<qualname>`` for every module, class and def with a docstring, the
  id retrieval uses for docstring passages.

Each relation's provenance is the file's path (relative to the library root) and the line of its first
occurrence.
"""

from __future__ import annotations

import ast
import builtins
import collections
import dataclasses
import fcntl
import hashlib
import os
import pathlib
import tempfile
from collections.abc import Iterable, Sequence

from quark_jax.data import corpus
from quark_jax.data.splits import SPLITS, split_of
from quark_jax.knowledge.store import SCHEMA_VERSION, KnowledgeGraph, Provenance

_BUILTINS = frozenset(dir(builtins))
_DEF = (ast.FunctionDef, ast.AsyncFunctionDef)
_MAX_ALIAS_STEPS = 8


@dataclasses.dataclass(frozen=True)
class BuildReport:
    """What a build added: entities per type, relations per type, and what it could not use."""

    entities: dict[str, int]
    relations: dict[str, int]
    calls_unresolved: int
    files_unparsable: int


def module_name(relpath: str) -> str:
    """'json/decoder.py' -> 'json.decoder'; 'json/__init__.py' -> 'json'."""
    parts = relpath[: -len(".py")].split("/")
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


@dataclasses.dataclass
class _Module:
    name: str
    relpath: str
    split: str
    tree: ast.Module
    is_package: bool
    bindings: dict[str, str] = dataclasses.field(default_factory=dict)  # local name -> dotted target
    instances: dict[str, ast.expr] = dataclasses.field(default_factory=dict)  # var -> the class it was made from


@dataclasses.dataclass
class _Class:
    module: _Module
    bases: list[ast.expr]
    methods: set[str]
    resolved_bases: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class _Function:
    qualname: str
    module: _Module
    node: ast.FunctionDef | ast.AsyncFunctionDef
    owner: str | None  # the class of a method
    # Filled by _scan: what the body holds, nested defs included.
    imports: list[ast.Import | ast.ImportFrom] = dataclasses.field(default_factory=list)
    locals: set[str] = dataclasses.field(default_factory=set)
    instances: dict[str, ast.expr] = dataclasses.field(default_factory=dict)
    calls: list[ast.Call] = dataclasses.field(default_factory=list)


class _Builder:
    """Two passes over parsed modules: definitions, imports and containment first (so every name is known),
    then inheritance and calls resolved against them."""

    def __init__(self, modules: list[_Module]):
        self.modules = {m.name: m for m in modules}
        self.entities: dict[str, tuple[str, dict]] = {}
        self.classes: dict[str, _Class] = {}
        self.functions: list[_Function] = []
        self.edges: dict[tuple[str, str, str], Provenance] = {}
        self.calls_unresolved = 0

    # ---- pass 1 --------------------------------------------------------------------------------------------
    def define(self) -> None:
        for module in self.modules.values():
            self._entity(module.name, "module", module, module.tree)
            parent = module.name.rpartition(".")[0]
            if parent in self.modules:
                self._edge(parent, "contains", module.name, self.modules[parent], None)
            module.bindings.update(self._import_bindings(module, _top_level(module.tree.body, ast.stmt)))
            first = len(self.functions)
            self._define_body(module, module.tree.body, module.name, None)
            for node in _scan(module.tree, {id(f.node): f for f in self.functions[first:]}):
                for target in self._import_targets(module, node):
                    self._edge(module.name, "imports", target, module, node.lineno)
            for stmt in _top_level(module.tree.body, ast.Assign):
                if isinstance(stmt.value, ast.Call):
                    for target in stmt.targets:
                        if isinstance(target, ast.Name):
                            module.instances[target.id] = stmt.value.func

    def _define_body(self, module: _Module, body: list[ast.stmt], scope: str, owner: str | None) -> None:
        for node in _top_level(body, (ast.ClassDef, *_DEF)):
            qualname = f"{scope}.{node.name}"
            if owner is None and scope == module.name:
                module.bindings[node.name] = qualname
            if qualname in self.entities:  # a platform variant (if/else) of a name already defined
                continue
            self._edge(scope, "contains", qualname, module, node.lineno)
            if isinstance(node, ast.ClassDef):
                self._entity(qualname, "class", module, node)
                methods = {n.name for n in _top_level(node.body, (*_DEF, ast.ClassDef))}
                self.classes[qualname] = _Class(module, list(node.bases), methods)
                self._define_body(module, node.body, qualname, qualname)
            else:
                self._entity(qualname, "method" if owner else "function", module, node)
                self.functions.append(_Function(qualname, module, node, owner))

    def _entity(self, name: str, type_: str, module: _Module, node: ast.AST) -> None:
        line = getattr(node, "lineno", 1)
        self.entities[name] = (type_, {"path": module.relpath, "line": line, "split": module.split})
        if ast.get_docstring(node, clean=True):  # a blank docstring documents nothing
            doc = f"doc:{name}"
            self.entities[doc] = ("docstring", {"path": module.relpath, "line": line, "split": module.split})
            self._edge(name, "documented-by", doc, module, line)

    def _edge(self, subject: str, relation: str, obj: str, module: _Module, line: int | None) -> None:
        self.edges.setdefault((subject, relation, obj), Provenance(module.relpath, line))

    def _package_of(self, module: _Module, level: int) -> str:
        parts = module.name.split(".")
        if not module.is_package:
            parts = parts[:-1]
        return ".".join(parts[: len(parts) - (level - 1)] if level > 1 else parts)

    def _from_base(self, module: _Module, node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        package = self._package_of(module, node.level)
        return ".".join(p for p in (package, node.module) if p)

    def _import_targets(self, module: _Module, node: ast.Import | ast.ImportFrom) -> list[str]:
        if isinstance(node, ast.Import):
            return [alias.name for alias in node.names]
        base = self._from_base(module, node)
        targets = []
        for alias in node.names:
            sub = f"{base}.{alias.name}" if base else alias.name
            targets.append(sub if sub in self.modules else base)
        return [t for t in targets if t]

    def _import_bindings(self, module: _Module, statements: Iterable[ast.AST]) -> dict[str, str]:
        """Local name -> imported dotted name. The first import of a name wins: later ones are mostly the
        other branch of a platform test or an ``except ImportError`` fallback (``os.path`` is ``posixpath``)."""
        bindings = {}
        for node in statements:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.asname:
                        bindings.setdefault(alias.asname, alias.name)
                    else:
                        head = alias.name.split(".")[0]
                        bindings.setdefault(head, head)
            elif isinstance(node, ast.ImportFrom):
                base = self._from_base(module, node)
                for alias in node.names:
                    if alias.name != "*" and base:
                        bindings.setdefault(alias.asname or alias.name, f"{base}.{alias.name}")
        return bindings

    # ---- pass 2 --------------------------------------------------------------------------------------------
    def resolve(self) -> None:
        for qualname, cls in self.classes.items():
            for base in cls.bases:
                target = self._resolve(cls.module, base, {}, frozenset()) or ast.unparse(base)
                cls.resolved_bases.append(target)
                self._edge(qualname, "inherits", target, cls.module, base.lineno)
        for function in self.functions:
            self._calls(function)

    def _calls(self, function: _Function) -> None:
        local_imports = self._import_bindings(function.module, function.imports)
        locals_ = function.locals - local_imports.keys()
        seen = set()
        for call in function.calls:
            target = self._callee(function, call.func, local_imports, locals_, function.instances)
            if target is None:
                self.calls_unresolved += 1
            elif target not in seen:
                seen.add(target)
                self._edge(function.qualname, "calls", target, function.module, call.lineno)

    def _callee(self, function: _Function, func: ast.expr, local_imports, locals_, instances) -> str | None:
        module = function.module
        if isinstance(func, ast.Attribute):
            value = func.value
            if isinstance(value, ast.Name) and value.id in ("self", "cls") and function.owner:
                return self._method(function.owner, func.attr, skip_self=False)
            if (isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "super"
                    and function.owner):
                return self._method(function.owner, func.attr, skip_self=True)
            if isinstance(value, ast.Name) and (value.id in instances or
                                                (value.id not in locals_ and value.id in module.instances)):
                made_from = instances.get(value.id, module.instances.get(value.id))
                cls = self._resolve(module, made_from, local_imports, locals_)
                if cls in self.classes:
                    return self._method(cls, func.attr, skip_self=False)
                return None
        return self._resolve(module, func, local_imports, locals_)

    def _resolve(self, module: _Module, expr: ast.expr, local_imports: dict[str, str],
                 locals_: frozenset[str] | set[str]) -> str | None:
        """The canonical dotted name an expression refers to, or None."""
        if isinstance(expr, ast.Name):
            name = expr.id
            if name in local_imports:
                return self._canonical(local_imports[name])
            if name in locals_:
                return None
            if name in module.bindings:
                return self._canonical(module.bindings[name])
            if name in _BUILTINS:
                return f"builtins.{name}"
            return None
        if isinstance(expr, ast.Attribute):
            base = self._resolve(module, expr.value, local_imports, locals_)
            return None if base is None else self._canonical(f"{base}.{expr.attr}")
        return None

    def _canonical(self, name: str) -> str:
        """Follows re-exports: a name whose module prefix binds the next part to something else is rewritten
        (``json.JSONDecoder`` -> ``json.decoder.JSONDecoder``); members of a class are looked up through its
        bases."""
        for _ in range(_MAX_ALIAS_STEPS):
            if name in self.entities:
                return name
            parts = name.split(".")
            cut = next((i for i in range(len(parts) - 1, 0, -1) if ".".join(parts[:i]) in self.modules), 0)
            if not cut:
                return name
            module = self.modules[".".join(parts[:cut])]
            head, rest = parts[cut], parts[cut + 1:]
            defined = f"{module.name}.{head}"
            if defined in self.entities:
                if defined in self.classes and len(rest) == 1:
                    return self._method(defined, rest[0], skip_self=False) or name
                return name
            if head not in module.bindings or module.bindings[head] == defined:
                return name
            name = ".".join([module.bindings[head], *rest])
        return name

    def _method(self, cls: str, attr: str, skip_self: bool) -> str | None:
        """``cls.attr`` found in ``cls`` (unless ``skip_self``: ``super()``) or in its bases in the graph."""
        order = self._lineage(cls)
        for current in order[1:] if skip_self else order:
            if attr in self.classes[current].methods:
                return f"{current}.{attr}"
        return None

    def _lineage(self, cls: str) -> list[str]:
        """``cls`` and the classes of the graph it inherits from, depth-first in base order, each once."""
        order, stack = [], [cls]
        while stack:
            current = stack.pop()
            if current in order or current not in self.classes:
                continue
            order.append(current)
            stack.extend(reversed(self.classes[current].resolved_bases))
        return order


def _top_level(body: list[ast.stmt], kinds) -> Iterable:
    """Statements of ``kinds`` in a body, including those inside ``if``/``try`` blocks (platform variants)."""
    for stmt in body:
        if isinstance(stmt, kinds):
            yield stmt
        if isinstance(stmt, (ast.If, ast.Try)):
            for block in (stmt.body, stmt.orelse, getattr(stmt, "finalbody", []),
                          *(h.body for h in getattr(stmt, "handlers", []))):
                yield from _top_level(block, kinds)


def _scan(tree: ast.Module, functions: dict[int, _Function]) -> list[ast.Import | ast.ImportFrom]:
    """One walk over a module, in source order: returns its import statements, and fills each function entity
    (``functions``, by node id) with the imports, local names, instance assignments and calls of its body,
    nested defs and lambdas included."""
    imports = []
    stack: list[tuple[ast.AST, _Function | None]] = [(tree, None)]
    pop, push = stack.pop, stack.append
    while stack:
        node, function = pop()
        kind = type(node)
        entered = functions.get(id(node)) if kind in _DEF else None
        if entered is not None:
            function = entered
        if kind is ast.Import or kind is ast.ImportFrom:
            imports.append(node)
            if function is not None:
                function.imports.append(node)
        elif function is not None:
            if kind is ast.Call:
                function.calls.append(node)
            elif kind is ast.Name:
                if type(node.ctx) is ast.Store:
                    function.locals.add(node.id)
            elif kind is ast.arg:
                function.locals.add(node.arg)
            elif kind in _DEF or kind is ast.ClassDef:
                if entered is None:
                    function.locals.add(node.name)
            elif kind is ast.Assign and type(node.value) is ast.Call:
                for target in node.targets:
                    if type(target) is ast.Name:
                        function.instances[target.id] = node.value.func
        for field in reversed(node._fields):
            value = getattr(node, field, None)
            if isinstance(value, list):
                for child in reversed(value):
                    if isinstance(child, ast.AST):
                        push((child, function))
            elif isinstance(value, ast.AST):
                push((value, function))
    return imports


def build_graph(graph: KnowledgeGraph, files: Iterable[corpus.SourceFile]) -> BuildReport:
    """Adds the entities and relations of Python ``files`` (relative paths, '/'-separated) to ``graph`` in one
    transaction, and reports what was added."""
    modules, unparsable = [], 0
    for source in files:
        tree = corpus.parse(source)
        if tree is None:
            unparsable += 1
            continue
        modules.append(_Module(module_name(source.relpath), source.relpath, split_of(source.relpath), tree,
                               source.relpath.endswith("__init__.py")))
    builder = _Builder(modules)
    builder.define()
    builder.resolve()
    with graph.transaction():
        graph.add_entities((name, type_, attrs) for name, (type_, attrs) in sorted(builder.entities.items()))
        graph.add_relations((s, r, o, p) for (s, r, o), p in sorted(builder.edges.items()))
    relations = collections.Counter(r for _, r, _ in builder.edges)
    entities = collections.Counter(t for t, _ in builder.entities.values())
    entities["external"] = len({n for s, _, o in builder.edges for n in (s, o)} - builder.entities.keys())
    return BuildReport(dict(sorted(entities.items())), dict(sorted(relations.items())), builder.calls_unresolved,
                       unparsable)


def stdlib_sources(splits: Sequence[str] = SPLITS) -> list[corpus.SourceFile]:
    """The standard-library files of the corpus (``quark_jax.data.corpus``) in ``splits``."""
    files = []
    for split in splits:
        files.extend(corpus.stdlib_files(split))
    return sorted(files, key=lambda f: f.relpath)


def write_graph(path: str | os.PathLike, files: Iterable[corpus.SourceFile]) -> BuildReport:
    """Builds the graph of ``files`` into a new SQLite file at ``path``, atomically: it is written to a temporary
    file in the same directory and renamed over ``path`` only when complete.

    The finished file is left in rollback-journal mode, so readers (``readonly=True``) create no ``-wal`` or
    ``-shm`` files beside it (opening it for writing switches it back to WAL). Stale ``-wal``/``-shm`` files of
    a previous ``path`` are removed before the rename: SQLite would otherwise pair them with the new file. Do
    not rebuild a file another process is writing to."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)  # SQLite takes a zero-length file as an empty database
    try:
        with KnowledgeGraph(tmp) as graph:
            report = build_graph(graph, files)
            graph.execute("PRAGMA journal_mode = DELETE")
        for stale in (f"{path}-wal", f"{path}-shm"):
            if os.path.lexists(stale):
                os.unlink(stale)
        os.replace(tmp, path)
    finally:
        for leftover in (tmp, f"{tmp}-wal", f"{tmp}-shm", f"{tmp}-journal"):
            if os.path.lexists(leftover):
                os.unlink(leftover)
    return report


def _fingerprint(files: Sequence[corpus.SourceFile]) -> str:
    digest = hashlib.sha256(f"{SCHEMA_VERSION}\0".encode())
    digest.update(pathlib.Path(__file__).read_bytes())
    for source in files:
        digest.update(f"{source.relpath}\0{len(source.text)}\0".encode())
        digest.update(source.text.encode("utf-8", "surrogatepass"))
    return digest.hexdigest()[:32]


def stdlib_graph_path() -> pathlib.Path:
    """Where the cached graph of the whole standard library (both splits) lives, built if missing: a file in
    ``$QUARK_CACHE_DIR/stdlib_kg`` named by a fingerprint of the files and of this module. Processes that
    need it at once wait for one build (a lock file beside it)."""
    files = stdlib_sources()
    path = corpus.cache_dir() / "stdlib_kg" / f"{_fingerprint(files)}.sqlite"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / ".build.lock", "w") as lock:  # concurrent processes build it once
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.is_file():
            write_graph(path, files)
    return path


def open_stdlib_graph() -> KnowledgeGraph:
    """The cached standard-library graph (see :func:`stdlib_graph_path`), opened read-only."""
    return KnowledgeGraph(stdlib_graph_path(), readonly=True)
