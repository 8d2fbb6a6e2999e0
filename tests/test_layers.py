"""The layers the folders show: the library never imports the command line."""

import ast
from pathlib import Path

import pcdm

PACKAGE = Path(pcdm.__file__).parent


def imported_modules(path: Path) -> set[str]:
    """Absolute names of the pcdm modules a file imports (relative imports resolved)."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if path.name == "__init__.py":
        module = module.removesuffix(".__init__")
        package = module
    else:
        package = module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            found.add(prefix)
            found.update(f"{prefix}.{alias.name}" for alias in node.names)
    return {name for name in found if name == "pcdm" or name.startswith("pcdm.")}


def test_the_import_resolver_sees_relative_imports():
    cli = imported_modules(PACKAGE / "cli" / "__init__.py")
    assert "pcdm.cli.train" in cli and "pcdm.checkpoint" in cli
    assert "pcdm.codec.api" in imported_modules(PACKAGE / "cli" / "codec.py")
    assert "pcdm.model" in imported_modules(PACKAGE / "codec" / "bitswap.py")


def test_library_never_imports_the_cli():
    library = [p for p in PACKAGE.rglob("*.py") if "cli" not in p.relative_to(PACKAGE).parts]
    library = [p for p in library if p.name != "__main__.py"]  # `python -m pcdm` is a CLI entry point
    assert len(library) > 20
    offenders = {
        str(p.relative_to(PACKAGE)): sorted(m for m in imported_modules(p) if m.startswith("pcdm.cli"))
        for p in library
    }
    assert {k: v for k, v in offenders.items() if v} == {}
