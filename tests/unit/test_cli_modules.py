"""The CLI is command modules around one kit: each module adds its group of subcommands, `main`
registers every module, the modules use the kit and not each other, and the choices come from the
contracts."""

from __future__ import annotations

import argparse
import ast
import importlib
from pathlib import Path

import pytest

from slmops.api.v1 import conversion_pb2, training_pb2
from slmops.cli import main

CLI = Path(main.__file__).resolve().parent
COMMAND_MODULES = sorted(path.stem for path in CLI.glob("*_commands.py"))
# What a command module may import from the CLI: the kit, the clients, progress lines, the stack machinery.
KIT = {"slmops.cli.common", "slmops.cli.client", "slmops.cli.progress", "slmops.cli.stack"}
COMMANDS = {"up", "down", "status", "lineage", "get", "cancel", "logs", "watch", "list", "serve", "synth", "train",
            "convert", "deploy", "promote", "rollback", "bench", "pipeline"}  # fmt: skip


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def _added_by(module_name: str) -> set[str]:
    module = importlib.import_module(f"slmops.cli.{module_name}")
    parser = argparse.ArgumentParser()
    module.add_commands(parser.add_subparsers())
    return set(_commands(parser))


def test_every_command_module_adds_its_group_and_main_registers_every_one():
    assert {m.__name__.rsplit(".", 1)[1] for m in main.COMMAND_MODULES} == set(COMMAND_MODULES)
    groups = {name: _added_by(name) for name in COMMAND_MODULES}
    assert all(groups.values()), groups
    assert groups["train_commands"] == {"train"} and groups["stack_commands"] == {"up", "down", "status"}
    assert groups["serving_commands"] == {"serve", "deploy", "promote", "rollback"}
    registered = _commands(main.build_parser())
    assert set(registered) == COMMANDS == set().union(*groups.values())
    pipeline = _commands(registered["pipeline"])
    assert set(pipeline) == {"run", "validate", "get", "schema"}


@pytest.mark.parametrize("name", [*COMMAND_MODULES, "common", "main"])
def test_cli_modules_use_the_kit_and_not_each_other(name):
    tree = ast.parse((CLI / f"{name}.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("slmops.cli"):
            imported |= {
                f"slmops.cli.{a.name}" if node.module == "slmops.cli" else node.module for a in node.names
            }
        elif isinstance(node, ast.Import):
            imported |= {a.name for a in node.names if a.name.startswith("slmops.cli")}
    if name == "main":
        assert imported == {f"slmops.cli.{m}" for m in COMMAND_MODULES}
    elif name == "common":
        assert imported <= KIT - {"slmops.cli.common"}, imported
    else:
        assert "slmops.cli.common" in imported and imported <= KIT, imported


def _choices(command: str, flag: str) -> list[str]:
    parser = _commands(main.build_parser())[command]
    (action,) = [a for a in parser._actions if flag in a.option_strings]
    return list(action.choices)


def test_the_choices_are_the_contracts_enum_names():
    names = [
        name.lower() for name in training_pb2.TrainingMethod.keys() if name != "TRAINING_METHOD_UNSPECIFIED"
    ]
    assert _choices("train", "--method") == names
    assert "multi_adapter" in names and "sft_distill" in names
    assert _choices("convert", "--precision") == ["int4", "int8", "fp16", "fp32", "bf16"]
    assert _choices("convert", "--precision") == [
        n.lower() for n in conversion_pb2.Precision.keys() if n != "PRECISION_UNSPECIFIED"
    ]
    assert _choices("convert", "--execution-provider") == ["cpu", "cuda", "dml"]


def test_search_names_are_the_ones_the_training_service_checks():
    from slmops.core.search_space import SEARCHABLE
    from slmops.training.recipes.sections import SEARCHABLE as checked

    assert checked is SEARCHABLE and "learning_rate" in SEARCHABLE
    parser = main.build_parser()
    spec_flags = ["train", "--base", "b", "--dataset", "d"]
    for name in SEARCHABLE:
        args = parser.parse_args([*spec_flags, "--search", f"{name}=choice:1,2"])
        assert args.search[0].name == name
