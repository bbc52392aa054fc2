"""The manual cannot drift from the CLI: every option `--help` lists is on its command's docs
page, every `--option` a page names for a command exists, and every relative link resolves.

The options are read from the click command objects (not from the help text); hidden
options (deprecated aliases such as ``degrade --config``) need not be documented but may be
named. An option is attributed to a command by the nearest ``refsr CMD`` (or
``refsr_cli CMD``, or a code span starting with ``CMD --``) before it in the same code line or
code span; otherwise to the page's own command(s). Code lines and spans of other programs
(``python``, ``accelerate launch`` without ``refsr_cli``, ``torchrun``, ``sbatch``, ...) are
not checked.
"""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from refsr_cli.main import SUBCOMMANDS, cli

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
MARKDOWN = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]

# command (as typed after `refsr`) -> its docs page
PAGES = {
    "degrade": "degrade.md",
    "index-refs": "index-refs.md",
    "match": "match.md",
    "train autoencoder": "train.md",
    "train diffusion": "train.md",
    "train matcher": "train.md",
    "sample": "sample.md",
    "evaluate": "evaluate.md",
    "demo": "demo.md",
}

# spellings a command still reads outside click (refsr_cli.train.legacy_args: `train --stage S --data D`)
LEGACY = {f"train {stage}": {"--stage", "--data"} for stage in ("autoencoder", "diffusion", "matcher")}

OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9]*(?:-[a-z0-9]+)*(?![\w-])")
COMMAND = re.compile(r"\brefsr(?:_cli)?\s+(train\s+(?:autoencoder|diffusion|matcher)\b|"
                     + "|".join(re.escape(n) for n in sorted(SUBCOMMANDS, key=len, reverse=True)) + r")(?![\w.-])")
LEADING_COMMAND = re.compile(r"^\s*(train\s+(?:autoencoder|diffusion|matcher)\b|"
                             + "|".join(re.escape(n) for n in sorted(SUBCOMMANDS, key=len, reverse=True)) + r")\s+--")
FOREIGN = re.compile(r"\bpython\b|\.py\b|\baccelerate\b|\btorchrun\b|\bsbatch\b|#SBATCH|\bsrun\b|\bpip\b|"
                     r"huggingface-cli|\bpytest\b|\bgit\b")


def _commands() -> dict[str, click.Command]:
    """Every leaf command by the words typed after `refsr` (train's stages as `train STAGE`)."""
    ctx = click.Context(cli)
    found = {}
    for name in SUBCOMMANDS:
        command = cli.get_command(ctx, name)
        if isinstance(command, click.Group):
            for stage, sub in command.commands.items():
                found[f"{name} {stage}"] = sub
        else:
            found[name] = command
    return found


COMMANDS = _commands()
GLOBAL_OPTIONS = {"--help", *(o for p in cli.params for o in p.opts + p.secondary_opts if o.startswith("--"))}


def _long_names(command: click.Command, hidden: bool) -> set[str]:
    return {o for p in command.params if isinstance(p, click.Option) and (hidden or not p.hidden)
            for o in p.opts + p.secondary_opts if o.startswith("--")}


def _normalise(name: str) -> str:
    name = re.sub(r"\s+", " ", name.strip())
    return name


def _segments(text: str):
    """(kind, text) pieces of a markdown page: 'code' for each logical line of a fenced block
    (backslash continuations joined) and each inline code span, 'prose' for the rest."""
    in_fence, pending, prose = False, "", []
    for line in [*text.splitlines(), "```"]:
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
            # a code span may run over a line break: split the prose between fences as a whole
            for i, part in enumerate(" ".join(prose).split("`")):
                yield ("code" if i % 2 else "prose"), part
            prose = []
            continue
        if in_fence:
            pending += line.rstrip()
            if pending.endswith("\\"):
                pending = pending[:-1] + " "
                continue
            yield "code", pending
            pending = ""
            continue
        prose.append(line)


def _mentions(text: str, default: tuple[str, ...]):
    """(commands, option) for every `--option` in ``text``; commands is a tuple of command names
    the option must belong to (any of them), or () for an option of another program."""
    for kind, segment in _segments(text):
        starts = [(m.start(), _normalise(m.group(1))) for m in COMMAND.finditer(segment)]
        leading = LEADING_COMMAND.match(segment) if kind == "code" else None
        if leading and not starts:
            starts = [(0, _normalise(leading.group(1)))]
        foreign = kind == "code" and not starts and FOREIGN.search(segment)
        for m in OPTION.finditer(segment):
            before = [name for pos, name in starts if pos <= m.start()]
            if before:
                yield _expand(before[-1]), m.group(0)
            elif foreign:
                continue
            elif starts and FOREIGN.search(segment[:starts[0][0]]):
                continue  # e.g. the options of `accelerate launch` before `-m refsr_cli train ...`
            else:
                yield default, m.group(0)


def _expand(name: str) -> tuple[str, ...]:
    """`train` alone stands for every stage."""
    if name == "train":
        return tuple(n for n in COMMANDS if n.startswith("train "))
    return (name,)


def _page_commands(page: Path) -> tuple[str, ...]:
    own = tuple(n for n, p in PAGES.items() if page.parent == DOCS and page.name == p)
    return own or tuple(COMMANDS)  # README, formats, cluster, ...: any command


def test_every_command_has_a_page():
    assert set(COMMANDS) == set(PAGES), "a subcommand without a docs page (add it to PAGES and docs/)"
    for page in set(PAGES.values()):
        assert (DOCS / page).is_file(), page


@pytest.mark.parametrize("name", sorted(PAGES))
def test_every_option_of_help_is_on_the_commands_page(name):
    page = DOCS / PAGES[name]
    text = page.read_text(encoding="utf-8")
    mentioned = set(OPTION.findall(text))
    missing = sorted(_long_names(COMMANDS[name], hidden=False) - mentioned)
    assert not missing, f"`refsr {name} --help` lists {missing}, which {page.relative_to(ROOT)} never mentions"


@pytest.mark.parametrize("page", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_option_a_page_names_exists(page):
    text = page.read_text(encoding="utf-8")
    wrong = []
    for commands, option in _mentions(text, _page_commands(page)):
        known = set(GLOBAL_OPTIONS)
        for name in commands:
            known |= _long_names(COMMANDS[name], hidden=True) | LEGACY.get(name, set())
        if option not in known:
            wrong.append(f"{option} (refsr {' | '.join(commands) if len(commands) < 4 else 'any command'})")
    assert not wrong, f"{page.relative_to(ROOT)} names options that do not exist: {sorted(set(wrong))}"


LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors of a markdown page."""
    anchors, seen, in_fence = set(), {}, False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
        m = None if in_fence else re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            slug = re.sub(r"[^\w\- ]", "", m.group(1).lower()).replace(" ", "-")
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


@pytest.mark.parametrize("page", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(target)
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(f"{target} (no such heading)")
    assert not broken, f"{page.relative_to(ROOT)}: broken links {broken}"


def test_the_checks_catch_drift():
    """The attribution rules themselves: another command's option, an unknown option, a foreign program."""
    text = ("`refsr sample --tile 64`, `train --degrade-on-the-fly`, `--no-such-option`\n"
            "```\naccelerate launch --num_processes 8 --mixed_precision bf16 -m refsr_cli train diffusion --kind ldm\n"
            "python scripts/bench_degrade.py --devices cuda\n```\n")
    got = list(_mentions(text, ("degrade",)))
    assert (("sample",), "--tile") in got
    assert (("train diffusion",), "--kind") in got
    assert _expand("train") in [c for c, o in got if o == "--degrade-on-the-fly"]
    assert (("degrade",), "--no-such-option") in got
    assert not any(o == "--devices" for _, o in got)
