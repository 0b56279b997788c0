"""Where Lua and Redis key names live: every Lua script of gateway/ and audit/ is a
``.lua`` file in a ``lua/`` folder, loaded with ``Script.load`` and run by
audit/scripts.py, the one place that sends EVALSHA and handles NOSCRIPT; every key name
of the gateway is built in gateway/stores/keys.py.

These read the source (the AST), so they also see code no test happens to run."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("gateway", "audit")
RUNNER = ROOT / "audit" / "scripts.py"
KEYS = ROOT / "gateway" / "stores" / "keys.py"

# redis-py's ways of running or loading a script behind the runner's back.
SCRIPT_METHODS = frozenset({"register_script", "eval", "eval_ro", "evalsha", "evalsha_ro",
                            "script_load", "fcall", "fcall_ro"})
SCRIPT_COMMANDS = frozenset({"EVAL", "EVAL_RO", "EVALSHA", "EVALSHA_RO", "SCRIPT",
                             "FCALL", "FCALL_RO", "FUNCTION"})
LUA_CALL = re.compile(r"redis\.p?call\s*\(")
# A name that holds the deployment's key prefix (Settings.redis_prefix).
PREFIX_NAME = re.compile(r"(^|\.)(_?p|_?prefix|redis_prefix)$")
# What follows the prefix in a key name: a word or a hash tag, then a colon.
KEY_HEAD = re.compile(r"^(\{[\w:]+\}|[A-Za-z_]\w*):")


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.what}"


def python_files() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def lua_files() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("lua/*.lua"))


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def script_findings(source: str, where: str) -> list[Finding]:
    """Inline Lua, and scripts run or loaded other than through audit/scripts.py."""
    out: list[Finding] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and LUA_CALL.search(node.value):
            out.append(Finding(where, node.lineno, "inline Lua (redis.call in a string)"))
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        if node.func.attr in SCRIPT_METHODS:
            out.append(Finding(where, node.lineno, f".{node.func.attr}(...)"))
        if node.func.attr in ("execute_command", "pipeline") and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str) \
                    and first.value.upper() in SCRIPT_COMMANDS:
                out.append(Finding(where, node.lineno, f"{first.value} sent directly"))
    return out


def _str_arg(node: ast.expr) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) \
        else None


def loaded_scripts(source: str, where: str) -> tuple[set[tuple[str, str]], list[Finding]]:
    """The ``(package, file name)`` of every ``Script.load(...)`` (and its ``libs``); a
    call whose names are not string literals is a finding (it could not be checked)."""
    loaded: set[tuple[str, str]] = set()
    problems: list[Finding] = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "load" and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "Script"):
            continue
        package = _str_arg(node.args[0]) if node.args else None
        name = _str_arg(node.args[1]) if len(node.args) > 1 else None
        if package is None or name is None:
            problems.append(Finding(where, node.lineno, "Script.load without literal names"))
            continue
        loaded.add((package, name))
        for kw in node.keywords:
            if kw.arg != "libs":
                continue
            if not isinstance(kw.value, (ast.Tuple, ast.List)):
                problems.append(Finding(where, node.lineno, "libs is not a literal tuple"))
                continue
            for item in kw.value.elts:
                lib = _str_arg(item)
                if lib is None:
                    problems.append(Finding(where, node.lineno, "a lib name is not literal"))
                else:
                    loaded.add((package, lib))
    return loaded, problems


def _text_head(node: ast.expr) -> str:
    """The literal text a string expression starts with ('' when it is not literal)."""
    if isinstance(node, ast.JoinedStr) and node.values:
        node = node.values[0]
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) \
        else ""


def key_name_findings(source: str, where: str) -> list[Finding]:
    """Strings that start with the key prefix followed by literal text (a key name):
    ``f"{prefix}staff:..."`` or ``prefix + "mfa:"``."""
    out: list[Finding] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.JoinedStr) and len(node.values) >= 2:
            head, nxt = node.values[0], node.values[1]
            if isinstance(head, ast.FormattedValue) and isinstance(nxt, ast.Constant) \
                    and KEY_HEAD.match(str(nxt.value)) \
                    and PREFIX_NAME.search(ast.unparse(head.value)):
                out.append(Finding(where, node.lineno, f"key name {ast.unparse(node)}"))
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add) \
                and PREFIX_NAME.search(ast.unparse(node.left)) \
                and KEY_HEAD.match(_text_head(node.right)):
            out.append(Finding(where, node.lineno, f"key name {ast.unparse(node)}"))
    return out


# --- the checks themselves find what they look for ------------------------------------


def test_the_scan_finds_inline_lua_and_direct_script_calls() -> None:
    source = '''
SCRIPT = """
return redis.call('GET', KEYS[1])
"""
async def f(redis, fast):
    s = redis.register_script(SCRIPT)
    await redis.eval("return 1", 0)
    await redis.evalsha("abc", 0)
    await fast.execute_command("EVALSHA", "abc", 0)
    await redis.get("k")
'''
    found = [f.what for f in script_findings(source, "x.py")]
    assert found == ["inline Lua (redis.call in a string)", ".register_script(...)",
                     ".eval(...)", ".evalsha(...)", "EVALSHA sent directly"]


def test_the_scan_reads_script_loads_and_key_names() -> None:
    source = '''
A = Script.load("gateway.stores", "gcra", libs=("lib_gcra",))
B = Script.load(PKG, "x")
def k(self, prefix, u):
    return f"{prefix}mfa:{u}", self._p + "staff:", f"{self.p}{{notify}}:due", f"{u}:x"
def not_keys(prefix, value):
    return f"{prefix}.{value}", prefix + ":", f"{prefix}{value}"
'''
    loaded, problems = loaded_scripts(source, "x.py")
    assert loaded == {("gateway.stores", "gcra"), ("gateway.stores", "lib_gcra")}
    assert [p.line for p in problems] == [3]
    assert len(key_name_findings(source, "x.py")) == 3


# --- the code ------------------------------------------------------------------------------


def test_no_inline_lua_and_no_script_call_outside_the_runner() -> None:
    findings = [f for path in python_files() if path != RUNNER
                for f in script_findings(path.read_text(encoding="utf-8"), _rel(path))]
    assert not findings, "Lua belongs in a lua/*.lua file run by audit/scripts.py:\n" + \
        "\n".join(map(str, findings))


def test_every_lua_file_is_loaded_and_every_load_has_its_file() -> None:
    loaded: set[tuple[str, str]] = set()
    problems: list[Finding] = []
    for path in python_files():
        got, bad = loaded_scripts(path.read_text(encoding="utf-8"), _rel(path))
        loaded |= got
        problems += bad
    assert not problems, "\n".join(map(str, problems))
    on_disk = {(".".join(p.parent.parent.relative_to(ROOT).parts), p.stem)
               for p in lua_files()}
    assert on_disk, "no .lua file found"
    assert not on_disk - loaded, f"Lua files no module loads: {sorted(on_disk - loaded)}"
    assert not loaded - on_disk, f"loaded but missing: {sorted(loaded - on_disk)}"


def test_lua_files_are_package_data() -> None:
    """The wheel ships every folder of scripts (pyproject.toml package-data)."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    for folder in sorted({p.parent for p in lua_files()}):
        package, rest = folder.relative_to(ROOT).parts[0], folder.relative_to(ROOT).parts[1:]
        pattern = "/".join((*rest, "*.lua"))
        assert re.search(rf'^{package} = \[.*"{re.escape(pattern)}"', text, re.M), \
            f"{pattern} missing from [tool.setuptools.package-data] {package}"


def test_gateway_key_names_are_built_in_keys_py() -> None:
    findings = [f for path in sorted((ROOT / "gateway").rglob("*.py")) if path != KEYS
                for f in key_name_findings(path.read_text(encoding="utf-8"), _rel(path))]
    assert not findings, "name Redis keys in gateway/stores/keys.py:\n" + \
        "\n".join(map(str, findings))
