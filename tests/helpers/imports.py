"""What a source file imports, read from its syntax tree (nothing is run)."""

import ast
from pathlib import Path


def absolute_imports(path: Path) -> list[str]:
    """Every module an ``import X`` or ``from X import ...`` (not relative) of the file names."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names
