#!/usr/bin/env python3
"""Prints the dependency edges between modules of src/ and the cycles among them.

    scripts/module-graph.py            # top-level modules (bookkeeping -> pipeline, ...)
    scripts/module-graph.py sink       # the files of one module (sink::apply -> sink::replica)

An edge A -> B means some production code of A names `crate::B...` (or `super::`/`self::`
paths that resolve into B); `//` comments and `#[cfg(test)] mod tests` are left out. A
cycle is a strongly connected component of more than one module.
"""

import pathlib
import re
import sys

SRC = pathlib.Path(__file__).resolve().parent.parent / "src"
PATH = re.compile(r"\b(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)*)(::\{([^;]*?)\})?")


def module_of(file):
    parts = list(file.relative_to(SRC).with_suffix("").parts)
    if parts[-1] in ("mod", "lib", "main"):
        parts.pop()
    return parts


def production_text(file):
    text = file.read_text()
    cut = re.search(r"#\[cfg\(test\)\]\s*mod \w+\s*\{", text)
    if cut:
        text = text[: cut.start()]
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("//"))


def targets(module, text):
    """Absolute module paths named in `text`, written in the module `module`."""
    for match in PATH.finditer(text):
        head, rest, group = match.group(1), match.group(2), match.group(4)
        base = {"crate": [], "super": module[:-1], "self": module}[head]
        rest = [p for p in rest.split("::") if p]
        while rest[:1] == ["super"]:  # `super::super::x`
            base, rest = base[:-1], rest[1:]
        path = base + rest
        if group is None:
            yield path
        else:
            for item in re.split(r"[,{}\s]+", group):
                item = item.split("::")[0]
                if item and item != "self":
                    yield path + [item]
                elif item == "self":
                    yield path


def main():
    scope = sys.argv[1].split("::") if len(sys.argv) > 1 else []
    depth = len(scope) + 1
    names = set()
    edges = set()
    for file in sorted(SRC.rglob("*.rs")):
        module = module_of(file)
        if module[: len(scope)] != scope or len(module) < depth:
            continue
        source = "::".join(module[:depth])
        names.add(source)
        for path in targets(module, production_text(file)):
            if path[: len(scope)] != scope or len(path) < depth:
                continue
            target = "::".join(path[:depth])
            if target != source and (SRC.joinpath(*path[:depth]).is_dir()
                                     or SRC.joinpath(*path[:depth]).with_suffix(".rs").exists()):
                names.add(target)
                edges.add((source, target))
    for a, b in sorted(edges):
        print(f"{a} -> {b}")
    cycles = [c for c in components(sorted(names), edges) if len(c) > 1]
    print(f"{len(edges)} edges; cycles: {len(cycles)}")
    for cycle in cycles:
        inner = sorted((a, b) for a, b in edges if a in cycle and b in cycle)
        print("  cycle: " + ", ".join(f"{a} -> {b}" for a, b in inner))
    return 0


def components(nodes, edges):
    """Tarjan's strongly connected components."""
    out = {n: [b for a, b in edges if a == n] for n in nodes}
    index, low, stack, on, result = {}, {}, [], set(), []

    def visit(n):
        index[n] = low[n] = len(index)
        stack.append(n)
        on.add(n)
        for m in out[n]:
            if m not in index:
                visit(m)
                low[n] = min(low[n], low[m])
            elif m in on:
                low[n] = min(low[n], index[m])
        if low[n] == index[n]:
            component = set()
            while True:
                m = stack.pop()
                on.discard(m)
                component.add(m)
                if m == n:
                    break
            result.append(component)

    for n in nodes:
        if n not in index:
            visit(n)
    return result


if __name__ == "__main__":
    sys.exit(main())
