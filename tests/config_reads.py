"""Test helper: which config keys the code reads, found by walking its syntax trees.

    reads = config_reads.find_reads(files, schema)      # {"train.lr", "seed", ...}
    unread = config_reads.unread_keys(files, schema)    # schema keys nothing reads

A read is a Load of `<config>.<group>.<key>` (or `<config>.<key>` for a top-level key),
where `<config>` is any expression this helper knows holds the config and a group may be
reached through an alias; matching leaf names anywhere (`.size`, `.seed`, `.k`) would
count `image.size` as a read of `preprocess.size`. The config is:
  - a name `config` or `cfg`, an attribute `<x>.config` (run.config, self.config), a call
    `<config>.copy_and_resolve_references()`/`.copy()`, a call of a function named
    `*_config` other than `from_config` (base_config(), load.sized_config(config, n)),
    `<flag>.value` of a `config_flags.DEFINE_config_file` flag (launch.py);
  - a name bound to one of those in the same function (`c = run.config`;
    `c, ds = run.config, run.ds`).
A group is `<config>.<group>` or `<config>["group"]`, a sub-group (`data.phantoms`), a
name bound to one (`t = config.train`), or a parameter of a function that some call
passes a group to (`make_augment_params(config.augment)` -> `aug` in its body; matched
by the function's name, methods skipping self/cls). Keys of a group are read as
`<group>.<key>`, `<group>.get("key")`, `<group>["key"]`, `getattr(<group>, "key")`, and
`getattr(<group>, k)` with k running over a module-level tuple of strings
(`for k in TRIAL_KEYS`) or over `dataclasses.fields(cls)` (the enclosing class's fields).
Storing a key (configs/*.py set them) is not reading it; nor is writing the whole config
or a group out (`config.to_dict()`, `config.augment.to_dict()` into a cache key).
"""

from __future__ import annotations

import ast
from pathlib import Path

CONFIG, FLAG = ("config",), ("flag",)


def schema_keys(config, prefix="", leaves=("multipliers",)) -> dict[str, set[str]]:
    """{group path ("" for top level, "data", "data.phantoms"): its leaf keys}; the
    ConfigDicts named in `leaves` count as one key (augment.multipliers: class -> n)."""
    out = {prefix: set()}
    for k, v in config.items():
        if hasattr(v, "items") and k not in leaves:
            out.update(schema_keys(v, f"{prefix}.{k}" if prefix else k, leaves))
        else:
            out[prefix].add(k)
    return out


def _parents(tree):
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            child.parent = node


def _scope_of(node):
    while not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Module, ast.Lambda)):
        node = node.parent
    return node


def _class_of(node):
    """The class a node is written in, or None."""
    while not isinstance(node, ast.Module):
        node = node.parent
        if isinstance(node, ast.ClassDef):
            return node
    return None


class _Reader:
    """Kinds of expressions (CONFIG, FLAG, ("group", paths)) and the reads they make; a
    group kind holds several paths where calls pass different groups to one parameter."""

    def __init__(self, groups: dict[str, set[str]]):
        self.groups = groups
        self.env: dict[tuple[int, str], tuple] = {}   # (scope id, name) -> kind
        # (class or None, function, argument index or keyword) -> groups passed there
        self.param_groups: dict[tuple, set[str]] = {}
        self.reads: set[str] = set()

    def lookup(self, node, name):
        scope = _scope_of(node)
        while True:
            if (id(scope), name) in self.env:
                return self.env[(id(scope), name)]
            if isinstance(scope, ast.Module):
                return None
            scope = _scope_of(scope.parent)

    def sub(self, kind, name):
        """The kind of `<kind>.<name>` / `<kind>["name"]`."""
        if kind == FLAG and name == "value":
            return CONFIG
        if kind == CONFIG and name in self.groups:
            return ("group", (name,))
        if kind and kind[0] == "group":
            paths = tuple(f"{g}.{name}" for g in kind[1] if f"{g}.{name}" in self.groups)
            return ("group", paths) if paths else None
        return None

    def kind(self, e):
        if isinstance(e, ast.Name):
            return self.lookup(e, e.id) or (CONFIG if e.id in ("config", "cfg") else None)
        if isinstance(e, ast.Attribute):
            return CONFIG if e.attr == "config" else self.sub(self.kind(e.value), e.attr)
        if isinstance(e, ast.Subscript) and isinstance(e.slice, ast.Constant):
            return self.sub(self.kind(e.value), e.slice.value)
        if isinstance(e, ast.Call):
            f = e.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            if name == "DEFINE_config_file":
                return FLAG
            if name in ("copy_and_resolve_references", "copy") and self.kind(f.value) == CONFIG:
                return CONFIG
            if name.endswith("_config") and name != "from_config":
                return CONFIG
        return None

    def read(self, kind, key):
        if kind == CONFIG and key in self.groups[""]:
            self.reads.add(key)
        elif kind and kind[0] == "group":
            self.reads.update(f"{g}.{key}" for g in kind[1] if key in self.groups[g])

    # ------------------------------------------------------------------ bindings

    def bind(self, tree) -> bool:
        """Aliases and parameters bound to the config or a group; True if any is new."""
        before = len(self.env)
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign):
                pairs = [(t, node.value) for t in node.targets]
                if (isinstance(node.targets[0], ast.Tuple) and isinstance(node.value, ast.Tuple)
                        and len(node.targets[0].elts) == len(node.value.elts)):
                    pairs = list(zip(node.targets[0].elts, node.value.elts))
                for target, value in pairs:
                    kind = self.kind(value)
                    if isinstance(target, ast.Name) and kind:
                        self.env[(id(_scope_of(node)), target.id)] = kind
            elif isinstance(node, ast.Call):
                self._record_call(node)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self._bind_params(node)
        return len(self.env) > before

    def _record_call(self, call):
        """Groups passed to a function, keyed by its name and, for a method called as
        `Class.m(...)` or `cls.m(...)`/`self.m(...)` inside its class, the class name."""
        f = call.func
        if isinstance(f, ast.Attribute):
            callee, base = f.attr, f.value
            owner = base.attr if isinstance(base, ast.Attribute) else getattr(base, "id", "")
            if owner in ("cls", "self"):
                owner = getattr(_class_of(call), "name", None)
            owner = owner if owner and owner[0].isupper() else None
        else:
            callee, owner = getattr(f, "id", None), None
        args = [(i, a) for i, a in enumerate(call.args)]
        args += [(k.arg, k.value) for k in call.keywords if k.arg]
        for where, a in args:
            kind = self.kind(a)
            if callee and kind and kind[0] == "group":
                self.param_groups.setdefault((owner, callee, where), set()).update(kind[1])

    def _bind_params(self, fn):
        params = [a.arg for a in fn.args.posonlyargs + fn.args.args]
        decorators = {getattr(d, "id", None) for d in fn.decorator_list}
        owner = fn.parent.name if isinstance(fn.parent, ast.ClassDef) else None
        if owner and "staticmethod" not in decorators:
            params = params[1:]                      # self / cls
        names = {i: p for i, p in enumerate(params)}
        names.update({p: p for p in params + [a.arg for a in fn.args.kwonlyargs]})
        for (cls, callee, where), groups in self.param_groups.items():
            if (cls, callee) == (owner, fn.name) and where in names:
                self.env[(id(fn), names[where])] = ("group", tuple(sorted(groups)))

    # ------------------------------------------------------------------ reads

    def collect(self, tree):
        consts = {t.id: [e.value for e in n.value.elts] for n in tree.body
                  if isinstance(n, ast.Assign) and isinstance(n.value, ast.Tuple)
                  for t in n.targets if isinstance(t, ast.Name)
                  and all(isinstance(e, ast.Constant) for e in n.value.elts)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
                self.read(self.kind(node.value), node.attr)
            elif (isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load)
                  and isinstance(node.slice, ast.Constant)):
                self.read(self.kind(node.value), node.slice.value)
            elif isinstance(node, ast.Call):
                self._collect_call(node, consts)

    def _collect_call(self, call, consts):
        f = call.func
        if isinstance(f, ast.Attribute) and f.attr == "get" and call.args:
            if isinstance(call.args[0], ast.Constant):
                self.read(self.kind(f.value), call.args[0].value)
        if not (isinstance(f, ast.Name) and f.id == "getattr" and len(call.args) >= 2):
            return
        kind, key = self.kind(call.args[0]), call.args[1]
        if isinstance(key, ast.Constant):
            self.read(kind, key.value)
            return
        for k in self._comprehension_keys(call, key, consts):
            self.read(kind, k)

    def _comprehension_keys(self, node, key, consts):
        """getattr(g, k) inside `... for k in NAMES` or `... for f in fields(cls)`."""
        var = key.value.id if (isinstance(key, ast.Attribute) and key.attr == "name"
                               and isinstance(key.value, ast.Name)) else getattr(key, "id", None)
        while not isinstance(node, ast.Module):
            node = node.parent
            for gen in getattr(node, "generators", []):
                if getattr(gen.target, "id", None) != var:
                    continue
                it = gen.iter
                if isinstance(it, ast.Name) and it.id in consts:
                    return consts[it.id]
                name = getattr(getattr(it, "func", None), "attr", None) or getattr(
                    getattr(it, "func", None), "id", None)
                if name == "fields":
                    return [s.target.id for s in getattr(_class_of(node), "body", [])
                            if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)]
        return []


def find_reads(files, groups: dict[str, set[str]]) -> set[str]:
    """Keys ("group.key", "key" at the top level) that the given Python files read."""
    trees = [ast.parse(Path(p).read_text(), str(p)) for p in files]
    for t in trees:
        _parents(t)
    reader = _Reader(groups)
    while any([reader.bind(t) for t in trees]):   # aliases of aliases, groups passed on
        pass
    for t in trees:
        reader.collect(t)
    return reader.reads


def unread_keys(files, groups: dict[str, set[str]]) -> list[str]:
    reads = find_reads(files, groups)
    keys = [f"{g}.{k}" if g else k for g, ks in groups.items() for k in ks]
    return sorted(k for k in keys if k not in reads)
