"""Every command README.md and docs/*.md show exists as written.

Commands come from fenced shell blocks (backslash continuations joined, `# or: slmops ...`
in a comment included) and from inline code in the prose. Each `slmops ...` is parsed by
the real parser (`slmops.cli.main.build_parser()`, abbreviations off so a shortened flag
does not pass for the real one): a fenced command must parse whole; an inline mention may
leave out what is required (`slmops synth` in a sentence) but may name no verb or flag
that does not exist. `python -m slmops.<module>` must name a module with a `__main__`
(its `parse_args` parses a fenced command's arguments), and `make TARGET` a target of the
Makefile. The README's stage sections name flags of one command each in their prose
(`--max-queue` under "The predictor" is `slmops serve --max-queue`): those flags must
exist too. Documentation placeholders (`<dataset-uri>`, `FILE`, `...`) stay as they are:
they are only values, which argparse does not look into, except where listed below.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import io
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from slmops.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_FENCES = {"bash", "sh", "shell", "console"}
SLMOPS = {"slmops", ".venv/bin/slmops"}
PYTHON = {"python", "python3", ".venv/bin/python"}
OPERATORS = {"|", "||", "&&", ";", "&", ">", ">>", "<", "2>", "2>&1"}  # a command ends at these
ELLIPSES = {"...", "…"}  # "some value here" in prose; dropped, so the flag before them has no value

# Shorthands that are not one command; each is checked as the commands it stands for.
EXPANSIONS = {
    "slmops pipeline validate FILE | get RUN_ID | schema": [
        "slmops pipeline validate FILE",
        "slmops pipeline get RUN_ID",
        "slmops pipeline schema",
    ],
}
# Inline mentions that are not commands of that program, with the reason.
NOT_COMMANDS: dict[str, str] = {}

# README sections whose prose names the flags of one command (a span may name another
# command explicitly: `synth --top-logprobs`, `slmops convert --adapter`).
SECTION_COMMANDS = {
    "Synthesis": "synth",
    "The predictor": "serve",
    "Conversion": "convert",
    "Evaluation": "bench",
    "Training methods": "train",
}
# Flags those sections name that are not the section command's, with the reason.
OTHER_FLAGS: dict[tuple[str, str], str] = {}


@dataclass(frozen=True)
class Mention:
    """A command as the docs write it: where, the text, and whether it stands in a fenced block."""

    file: str
    line: int
    text: str
    fenced: bool

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.text}"


def doc_lines(path: Path) -> Iterator[tuple[int, str, bool]]:
    """(line number, line, inside a shell fence) for every line; fence markers and the bodies of
    other fences (YAML, Python, output) read as blank lines, so prose paragraphs end there."""
    fence: str | None = None
    for number, line in enumerate(path.read_text().splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("```"):
            fence = None if fence is not None else stripped[3:].strip().lower()
            yield number, "", False
        elif fence is None:
            yield number, line, False
        elif fence in SHELL_FENCES:
            yield number, line, True
        else:
            yield number, "", False


def shell_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Logical lines of the shell blocks: continuations joined, a leading `$ ` dropped."""
    pending, start = "", 0
    for number, line, fenced in doc_lines(path):
        if not fenced:
            continue
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        text = (pending + line).strip()
        pending = ""
        if text:
            yield start, text.removeprefix("$ ")


def inline_spans(path: Path) -> Iterator[tuple[int, str, str]]:
    """(line number, code, README section) of every inline code span in the prose."""
    section, paragraph, first = "", [], 0
    for number, line, fenced in [*doc_lines(path), (0, "", False)]:
        if fenced or not line.strip() or line.startswith("#"):
            text = "\n".join(paragraph)
            for match in re.finditer(r"`([^`]+)`", text):
                yield first + text.count("\n", 0, match.start()), " ".join(match.group(1).split()), section
            paragraph = []
            if line.startswith("#"):
                section = line.lstrip("#").strip()
            continue
        if not paragraph:
            first = number
        paragraph.append(line)


def mentions(programs: set[str]) -> list[Mention]:
    """Every command of these programs the docs show, fenced and inline."""
    found: list[Mention] = []
    for path in DOCS:
        name = path.relative_to(ROOT).as_posix()
        for number, text in shell_lines(path):
            command, _, comment = text.partition(" #")
            for part in [command, *re.findall(r"\bor: (\S.*)", comment)]:
                if part.split(" ", 1)[0] in programs:
                    found.append(Mention(name, number, part.strip(), True))
        for number, code, _ in inline_spans(path):
            if code.split(" ", 1)[0] in programs and code not in NOT_COMMANDS:
                found.append(Mention(name, number, code, False))
    return found


def variants(text: str) -> list[list[str]]:
    """The words of a documented command up to a shell operator, optional brackets opened
    (`[--device cuda]` is checked as `--device cuda`) and ellipses dropped; one list per
    alternative of a bracketed `[--require-report URI | --force]`."""
    out: list[list[str]] = [[]]
    group: list[str] = []
    depth = 0
    for word in shlex.split(text, comments=True):
        if word in OPERATORS and not depth:
            break
        opens, closes = len(word) - len(word.lstrip("[")), len(word) - len(word.rstrip("]"))
        depth += opens
        word = word.strip("[]") if word not in ("[", "]") else ""
        if word and word not in ELLIPSES:
            group.append(word)
        depth -= closes
        if not depth:  # a group (or a lone word) ends: each of its alternatives extends every variant
            choices = [[]]
            for part in group:
                choices.append([]) if part == "|" else choices[-1].append(part)
            out = [head + choice for head in out for choice in choices]
            group = []
    return out


def argv(text: str) -> list[str]:
    """A documented command's words, the first alternative of each `[A | B]`."""
    return variants(text)[0]


def _parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                yield from _parsers(child)


def slmops_parser(relaxed: bool) -> argparse.ArgumentParser:
    """The real parser, abbreviations off; relaxed: nothing required (a mention in prose)."""
    parser = build_parser()
    for each in _parsers(parser):
        each.allow_abbrev = False
        if relaxed:
            for item in [*each._actions, *each._mutually_exclusive_groups]:
                item.required = False
    return parser


def parse_problem(parse, words: list[str], relaxed: bool) -> str:
    """argparse's complaint about words ('' when they parse); a mention in prose may leave a
    flag's value out (`--adapter` in a sentence)."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            parse(words)
    except SystemExit as exc:
        message = err.getvalue().strip().splitlines()[-1:] or [f"exit status {exc.code}"]
        if exc.code and not (relaxed and re.search(r"expected (one|at least one) argument", message[0])):
            return message[0]
    return ""


def _expanded(mention: Mention) -> list[str]:
    return EXPANSIONS.get(mention.text, [mention.text])


def test_every_documented_slmops_command_parses():
    found = mentions(SLMOPS)
    texts = [m.text for m in found]
    # The extraction itself: the README's CLI block, continuations and brackets included.
    assert any(
        t.startswith("slmops bench --dataset held-out.jsonl") and "--min-retention-of" in t for t in texts
    )
    assert "slmops rollback student" in texts  # from a `# or:` comment
    assert len({m.file for m in found}) >= 3 and len(found) >= 40, texts
    problems = []
    strict, relaxed = slmops_parser(relaxed=False), slmops_parser(relaxed=True)
    for mention in found:
        parser = strict if mention.fenced else relaxed
        for text in _expanded(mention):
            for words in variants(text):
                problem = parse_problem(parser.parse_args, words[1:], relaxed=not mention.fenced)
                if problem:
                    problems.append(f"{mention.file}:{mention.line}: {' '.join(words)}\n    -> {problem}")
    assert not problems, "documented slmops commands the CLI refuses:\n" + "\n".join(problems)


def test_documented_flags_of_each_readme_section_exist():
    commands = {a.dest: a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)}
    verbs = commands["command"].choices
    problems, seen = [], set()
    for number, code, section in inline_spans(ROOT / "README.md"):
        verb = SECTION_COMMANDS.get(section)
        words = code.split()
        if not verb or words[0] in SLMOPS or words[0] in PYTHON or words[0] == "make":
            continue  # whole commands are checked above
        if words[0] in verbs:  # `synth --top-logprobs`: another command's flag, named with it
            verb = words[0]
        elif not words[0].startswith("--"):
            continue  # another program's command line (`olive run --config ...`) or not a command
        options = {s for a in verbs[verb]._actions for s in a.option_strings}
        for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", code):
            seen.add(section)
            if flag not in options and (section, flag) not in OTHER_FLAGS:
                problems.append(f"README.md:{number} ({section}): `{code}`: slmops {verb} has no {flag}")
    assert seen == set(SECTION_COMMANDS), seen  # every section still names flags
    assert not problems, "flags the README names that the CLI lacks:\n" + "\n".join(problems)


def test_documented_python_modules_exist_and_parse():
    found = mentions(PYTHON)
    assert any("slmops.predictor" in m.text for m in found)
    problems = []
    for mention in found:
        words = argv(mention.text)
        if words[1:2] != ["-m"] or not words[2].startswith("slmops."):
            continue
        module = words[2]
        main = f"{module}.__main__" if importlib.util.find_spec(f"{module}.__main__") else module
        if importlib.util.find_spec(module) is None:
            problems.append(f"{mention}\n    -> no module {module}")
            continue
        parse = getattr(importlib.import_module(main), "parse_args", None)
        if mention.fenced and parse is not None:
            problem = parse_problem(parse, words[3:], relaxed=False)
            if problem:
                problems.append(f"{mention}\n    -> {problem}")
    assert not problems, "documented python -m commands that do not run:\n" + "\n".join(problems)


def makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z0-9][A-Za-z0-9_.-]*)\s*:(?!=)", text, flags=re.MULTILINE))


def test_documented_make_targets_exist():
    targets = makefile_targets()
    found = mentions({"make"})
    assert {"setup", "test", "demo"} <= targets and any(m.text == "make demo" for m in found)
    problems = []
    for mention in found:
        for word in argv(mention.text)[1:]:
            if "=" not in word and not word.startswith("-") and word not in targets:
                problems.append(f"{mention}\n    -> the Makefile has no target {word!r}")
    assert not problems, "documented make targets that do not exist:\n" + "\n".join(problems)


def test_a_flag_that_does_not_exist_is_caught():
    """The check itself: an unknown flag, an unknown verb and an abbreviation are refused."""
    strict, relaxed = slmops_parser(relaxed=False), slmops_parser(relaxed=True)
    bad = "slmops bench --dataset d --target t=http://x/v1 --min-retention-off rouge_l=0.9"
    assert "unrecognized arguments: --min-retention-off" in parse_problem(
        strict.parse_args, argv(bad)[1:], False
    )
    assert "invalid choice" in parse_problem(relaxed.parse_args, ["benchmark"], True)
    assert parse_problem(strict.parse_args, argv("slmops status --set")[1:], False)  # no abbreviations
    assert (
        parse_problem(relaxed.parse_args, argv("slmops synth")[1:], True) == ""
    )  # prose may leave flags out
    assert parse_problem(strict.parse_args, argv("slmops synth")[1:], False)  # a fenced command may not
    assert argv("slmops status [--settings]   # health") == ["slmops", "status", "--settings"]
    assert variants("slmops promote s [--require-report 'a b' | --force] [--x [--y 1]]") == [
        ["slmops", "promote", "s", "--require-report", "a b", "--x", "--y", "1"],
        ["slmops", "promote", "s", "--force", "--x", "--y", "1"],
    ]
    assert argv("slmops pipeline schema > pipeline.schema.json") == ["slmops", "pipeline", "schema"]
