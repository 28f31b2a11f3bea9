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


# --- every output through the one object -------------------------------------------------------

# What writes to disk. Calls on an object named ``output`` (``output.write_text``), or given a
# path taken from one (``save_pretrained(output.folder)``), go through the output object.
_WRITE_HELPERS = {"atomic_write_text", "atomic_write_json", "append_jsonl", "make_folder"}
_WRITE_METHODS = {
    "write_text",
    "write_bytes",
    "mkdir",
    "touch",
    "save_pretrained",
    "save_to_disk",
    "to_parquet",
    "to_json",
    "to_csv",
    "save",
    "rename",
    "symlink_to",
    "unlink",
    "rmdir",
}
_WRITE_FUNCTIONS = {
    ("os", name) for name in ("open", "replace", "rename", "makedirs", "remove", "unlink")
} | {("shutil", name) for name in ("copy", "copy2", "copyfile", "copytree", "move", "rmtree")}
_WRITE_FUNCTIONS |= {("json", "dump"), ("tempfile", "mkdtemp"), ("tempfile", "mkstemp")}

# Writes outside runtime that are not an output, or whose path an output object handed out, by
# module:function, with why. A new write anywhere else fails the test below.
WRITES_ALLOWED = {
    "stic.data.formats:write_stic_pairs": "writes the path convert's output object claimed",
    "stic.data.formats:_write_rows": "writes the path convert's output object claimed",
    "stic.data.formats:write_trl_dataset": "stages a data set beside the claimed path, renames it",
    "stic.demo.run:write_eval_split": "renders images into the demo output's subfolder",
    "stic.demo.run:write_unlabeled": "renders images into the demo output's subfolder",
    "stic.demo.run:write_stage2_data": "renders images into the demo output's subfolder",
    "stic.demo.base_model:build_base_model": "saves the model into the output's staging folder",
    "stic.modeling.backends:vllm_model_folder": "a temporary copy for vLLM, deleted after use",
    "stic.modeling.judge:JudgeClient._remember": "the judge cache: keyed, append-only, shared",
    "stic.stages.bench:DescriptionCache.add": "the description cache: keyed, append-only, shared",
    "stic.stages.rounds:_copy_adapter": "copies the chosen round into the output's staging folder",
    "stic.stages.training:*": "the trainer's checkpoints inside the stage's own output folder",
    "stic.tools.export:*": "saves into the export output's staging folder",
    "stic.tools.report:_jpeg_data_uri": "a JPEG into memory, not a file",
}


def _mentions_output(node: ast.AST) -> bool:
    return any(
        isinstance(n, ast.Name)
        and "output" in n.id
        or isinstance(n, ast.Attribute)
        and n.attr == "output"
        for n in ast.walk(node)
    )


def _write_call(node: ast.Call) -> str | None:
    func = node.func
    if isinstance(func, ast.Name):
        if func.id in _WRITE_HELPERS:
            return func.id
        if func.id == "open":
            mode = node.args[1] if len(node.args) > 1 else None
            mode = next((k.value for k in node.keywords if k.arg == "mode"), mode)
            if isinstance(mode, ast.Constant) and set(str(mode.value)) & set("wax+"):
                return "open for writing"
        return None
    if not isinstance(func, ast.Attribute):
        return None
    if isinstance(func.value, ast.Name) and (func.value.id, func.attr) in _WRITE_FUNCTIONS:
        return f"{func.value.id}.{func.attr}"
    if func.attr in _WRITE_METHODS and func.attr != "replace":
        if _mentions_output(func.value) or any(_mentions_output(a) for a in node.args):
            return None  # through the output object
        return f".{func.attr}"
    return None


def writes_of(path: Path, module: str) -> list[tuple[str, str, int]]:
    """``(module:function, call, line)`` of every write in the module outside an output object."""
    found = []

    def visit(node: ast.AST, scope: list[str]) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                visit(child, [*scope, child.name])
                continue
            if isinstance(child, ast.Call) and (call := _write_call(child)):
                found.append((f"{module}:{'.'.join(scope)}", call, child.lineno))
            visit(child, scope)

    visit(ast.parse(path.read_text(encoding="utf-8")), [])
    return found


def _allowed(where: str) -> bool:
    module = where.split(":")[0]
    return where in WRITES_ALLOWED or f"{module}:*" in WRITES_ALLOWED


def test_no_module_outside_runtime_writes_an_output_but_through_the_output_object():
    unlisted = [
        f"{where} line {line}: {call}"
        for module, path in modules()
        if part_of(module) not in ("runtime", "testing")  # testing: fixtures for the tests
        for where, call, line in writes_of(path, module)
        if not _allowed(where)
    ]
    assert not unlisted, "writes outside the output object:\n" + "\n".join(unlisted)


def test_every_allowed_write_is_still_there():
    # An entry whose write went away must go too, or it would excuse a later one.
    seen = {where for module, path in modules() for where, _, _ in writes_of(path, module)}
    seen |= {where.split(":")[0] + ":*" for where in seen}
    assert set(WRITES_ALLOWED) <= seen, set(WRITES_ALLOWED) - seen


def test_the_write_checker_sees_a_write_around_the_object(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "def f(path, output):\n"
        "    path.write_text('x')\n"
        "    output.write_text('y')\n"
        "    with open(path, 'w') as f:\n        pass\n"
        "    save(model.save_pretrained(output.folder))\n"
    )
    found = writes_of(bad, "stic.tools.bad")
    assert [(w, c) for w, c, _ in found] == [
        ("stic.tools.bad:f", ".write_text"),
        ("stic.tools.bad:f", "open for writing"),
    ]
