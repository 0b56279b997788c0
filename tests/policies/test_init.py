"""The package surface: pure (stdlib and itself only) and exporting the whole model."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import policies
from policies import model

PACKAGE = Path(policies.__file__).parent


def test_policies_imports_only_the_standard_library_and_itself() -> None:
    for path in sorted(PACKAGE.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                roots = [node.module.split(".")[0]]
            else:
                continue
            for root in roots:
                assert root == "policies" or root in sys.stdlib_module_names, (path.name, root)


def test_package_exports_the_model_and_the_api() -> None:
    tree = ast.parse(Path(model.__file__).read_text(encoding="utf-8"))
    defined = {n.name for n in tree.body if isinstance(n, ast.ClassDef)}
    defined |= {
        t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets
        if isinstance(t, ast.Name)
    }  # fmt: skip
    assert defined >= {"Attempt", "ClassState", "Policy", "TokenFailure", "ClassId"}
    assert defined <= set(policies.__all__)
    for name in policies.__all__:
        assert hasattr(policies, name), name
    for name in ("evaluate", "explain", "load_policy", "load_policy_text", "policy_to_dict",
                 "PolicyError", "PolicyHolder", "PRESETS", "weakened_checks",
                 "current_window", "next_start"):  # fmt: skip
        assert name in policies.__all__
