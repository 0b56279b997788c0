"""Every option of every subcommand says what it does and what happens without it."""

from __future__ import annotations

import argparse
import subprocess
import sys

from gateway.cli import build_parser, subcommands


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions  # noqa: SLF001 - argparse has no public walk
            if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))  # noqa: SLF001
            and a.help != argparse.SUPPRESS]


def test_every_option_has_help_and_its_default() -> None:
    parser = build_parser()
    commands = subcommands(parser)
    assert {"serve", "demo", "init", "user add", "audit tail", "evidence verify"} <= set(commands)
    missing, no_default = [], []
    for name, sub in commands.items():
        assert sub.description, f"{name}: no description"
        formatter = sub._get_formatter()  # noqa: SLF001
        for action in _options(sub):
            label = f"{name} {'/'.join(action.option_strings) or action.dest}"
            if not (action.help or "").strip():
                missing.append(label)
                continue
            takes_value = action.nargs != 0
            if action.option_strings and takes_value and not action.required:
                shown = formatter._expand_help(action)  # noqa: SLF001
                if "default" not in shown:
                    no_default.append(label)
    assert not missing, f"options without help: {missing}"
    assert not no_default, f"options whose help names no default: {no_default}"


def test_help_names_the_data_folder_and_what_tail_does() -> None:
    serve = subprocess.run([sys.executable, "-m", "gateway.cli", "serve", "--help"],
                           capture_output=True, text=True, timeout=60, check=True).stdout
    assert "./classguard-data" in serve and "--tls-cert" in serve
    tail = subprocess.run([sys.executable, "-m", "gateway.cli", "audit", "tail", "--help"],
                          capture_output=True, text=True, timeout=60, check=True).stdout
    assert "until interrupted" in " ".join(tail.split())


def test_readme_lists_the_test_programs_and_installs_no_unpublished_name() -> None:
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    run = (repo / ".ci" / "run").read_text()
    line = next(ln for ln in run.splitlines() if ln.startswith("APT_PACKAGES="))
    packages = line.split('"')[1].split()
    readme = (repo / "README.md").read_text()
    assert all(f"`{p}`" in readme for p in packages), packages
    assert "## One-server HTTPS" in readme and "--tls-cert" in readme
    # the project is not on PyPI: the guides install the checkout or a built wheel
    for doc in (repo / "docs" / "operations.md",
                repo / "deploy" / "systemd" / "classguard.service", repo / "README.md"):
        text = doc.read_text()
        assert "pip install classguard" not in text, doc
    assert "pip install ." in (repo / "docs" / "operations.md").read_text()
