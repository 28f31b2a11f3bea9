"""The package layout is the architecture: imports point one way, from the command line down to
the runtime (cli -> tools/pipeline -> stages -> modeling/data -> runtime), and the library never
imports the demo, the test builders, the tools or the CLI. Checked on the source, every import
(also the ones inside functions)."""

from __future__ import annotations

import ast
from pathlib import Path

import stic

SRC = Path(stic.__file__).parent

_LIBRARY = {"config", "runtime", "data", "modeling", "stages"}
# Part of the package -> the parts it may import.
ALLOWED: dict[str, set[str]] = {
    "config": {"config", "runtime"},
    "runtime": {"runtime", "config"},
    "data": {"data", "runtime", "config"},
    "modeling": {"modeling", "data", "runtime", "config"},
    "stages": _LIBRARY,
    "pipeline": _LIBRARY | {"pipeline"},
    "tools": _LIBRARY | {"tools"},
    "testing": {"testing", "modeling", "data", "runtime", "config"},
    # the demo is a front end like the CLI: it ends by writing `stic report`'s page
    "demo": _LIBRARY | {"pipeline", "tools", "testing", "demo"},
    "cli": _LIBRARY | {"pipeline", "tools", "demo", "testing", "cli", "api"},
    "api": {"config", "stages", "data", "api"},  # stic/__init__.py, the public API
}


def part_of(module: str) -> str:
    """``stic.stages.pairs`` -> ``stages``; ``stic`` itself -> ``api``; ``stic.__main__`` -> ``cli``."""
    parts = module.split(".")
    if len(parts) == 1:
        return "api"
    return "cli" if parts[1] == "__main__" else parts[1]


def imports_of(path: Path, module: str) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = module.split(".")[: -node.level]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names.append(target)
            if target == "stic":  # `from stic import x`: x may be a subpackage or module
                names += [
                    f"stic.{alias.name}"
                    for alias in node.names
                    if (SRC / alias.name).is_dir() or (SRC / f"{alias.name}.py").is_file()
                ]
    return [n for n in names if n == "stic" or n.startswith("stic.")]


def modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(SRC.rglob("*.py")):
        relative = path.relative_to(SRC.parent).with_suffix("")
        parts = list(relative.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found.append((".".join(parts), path))
    return found


def test_every_part_of_the_package_is_placed():
    parts = {part_of(module) for module, _ in modules()}
    assert parts <= set(ALLOWED), f"unplaced: {parts - set(ALLOWED)}"


def test_imports_point_one_way():
    wrong = []
    for module, path in modules():
        here = part_of(module)
        for target in imports_of(path, module):
            there = part_of(target)
            if target == "stic" and here != "api":
                # `import stic` / `from stic import __version__`: only what the API defines eagerly.
                continue
            if there not in ALLOWED[here]:
                wrong.append(f"{module} ({here}) imports {target} ({there})")
    assert not wrong, "\n".join(wrong)


def test_the_checker_sees_a_wrong_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from stic.demo import world\n")
    targets = imports_of(bad, "stic.stages.bad")
    assert "stic.demo" in targets
    assert part_of("stic.demo") not in ALLOWED["stages"]
