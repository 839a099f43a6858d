"""MkDocs hook: the CLI and config references, generated at build time from the code itself.

- `<!-- mocolab:cli -->` becomes every command's `--help`, from the argparse parser `mocolab.cli.parser()`.
- `<!-- mocolab:config GROUP_CLASS -->` becomes a table of every key of a config dataclass (`Config`:
  the pretraining groups; `TransferConfig`: detect / segment): its default (from an instance), its
  range (the messages of the validation checks that name the key) and its meaning (the comments beside
  and above the field in the source, read with `tokenize`).

Run directly (`python docs/hooks/reference.py`) it prints both, for a look without mkdocs.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import io
import os
import re
import tokenize
from dataclasses import fields, is_dataclass

GROUP_KEY = re.compile(r"\b(model|moco|data|optim|run|task)\.([A-Za-z_]+)\b")


# --- CLI ---------------------------------------------------------------------------------------------

def _subparsers(p: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) of every sub-command, in the order `mocolab --help` lists them."""
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            return [(name, helps.get(name, ""), sp) for name, sp in action.choices.items()]
    return []


def cli_markdown() -> str:
    from mocolab.cli import parser

    os.environ["COLUMNS"] = "110"  # argparse wraps at the terminal's width: fixed, so the page is stable
    p = parser()
    subs = _subparsers(p)
    out = ["| command | what it does |", "| --- | --- |"]
    out += [f"| [`mocolab {name}`](#mocolab-{name}) | {text} |" for name, text, _ in subs]
    out += ["", "## mocolab", "", "```text", p.format_help().rstrip(), "```", ""]
    for name, text, sp in subs:
        out += [f"## mocolab {name}", "", text + ("." if text and not text.endswith(".") else ""), "",
                "```text", sp.format_help().rstrip(), "```", ""]
    return "\n".join(out)


# --- config ------------------------------------------------------------------------------------------

def _field_comments(cls: type) -> dict[str, str]:
    """{field: meaning}: the comment block right above a field plus the comment at the end of its line."""
    lines, first = inspect.getsourcelines(cls)
    src = "".join(lines)
    comments: dict[int, str] = {}  # line (1-based within the class source) -> comment text
    code_lines: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
        elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER):
            code_lines.update(range(tok.start[0], tok.end[0] + 1))
    tree = ast.parse(inspect.cleandoc("\n" + src) if src.startswith(" ") else src)
    meanings = {}
    for node in tree.body[0].body:
        if not isinstance(node, ast.AnnAssign):
            continue
        above, line = [], node.lineno - 1
        while line in comments and line not in code_lines:  # a comment-only line directly above
            above.insert(0, comments[line])
            line -= 1
        beside = [comments[n] for n in range(node.lineno, node.end_lineno + 1) if n in comments]
        meanings[node.target.id] = " ".join(above + beside)
    return meanings


def _check_messages(module) -> dict[str, list[str]]:
    """{'group.key': [messages]}: every string in `module` that names a key and says what it must be
    (the validation checks), f-strings evaluated against the module's constants where they can be."""
    tree = ast.parse(inspect.getsource(module))
    found: dict[str, list[str]] = {}
    inner = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}  # f-string parts
    for node in ast.walk(tree):
        if id(node) in inner:
            continue
        if isinstance(node, ast.JoinedStr):
            parts = []
            for v in node.values:
                if isinstance(v, ast.Constant):
                    parts.append(str(v.value))
                else:
                    try:
                        parts.append(str(eval(compile(ast.Expression(v.value), "<check>", "eval"), vars(module))))
                    except Exception:  # names a runtime value (self.x): shown as a placeholder
                        parts.append("…")
            text = "".join(parts)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value
        else:
            continue
        if "\n" in text or len(text) > 300 or not re.search(r"\b(must|needs|applies)\b", text):  # not a docstring
            continue
        for group, name in GROUP_KEY.findall(text):
            found.setdefault(f"{group}.{name}", [])
            if text not in found[f"{group}.{name}"]:
                found[f"{group}.{name}"].append(text)
    return found


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def config_markdown(name: str) -> str:
    """The tables of a config class (`Config` or `TransferConfig`): one per group."""
    import importlib
    import pkgutil

    import mocolab.config as base
    import mocolab.methods as methods
    import mocolab.transfer.config as transfer

    cls = {"Config": base.Config, "TransferConfig": transfer.TransferConfig}[name]
    modules = [base, transfer] + [importlib.import_module(f"mocolab.methods.{m.name}")
                                  for m in pkgutil.iter_modules(methods.__path__)]  # each method's own rules
    checks: dict[str, list[str]] = {}
    for module in modules:
        for key, messages in _check_messages(module).items():
            checks.setdefault(key, []).extend(m for m in messages if m not in checks[key])
    instance = cls()
    out = []
    for group_field in fields(cls):
        group = getattr(instance, group_field.name)
        assert is_dataclass(group)
        meanings = _field_comments(type(group))
        out += [f"### `{group_field.name}`", "", f"`{type(group).__name__}`"
                + (f": {inspect.getdoc(type(group)).splitlines()[0]}" if type(group).__doc__ else ""), "",
                "| key | type | default | range | meaning |", "| --- | --- | --- | --- | --- |"]
        for f in fields(group):
            key = f"{group_field.name}.{f.name}"
            default = getattr(group, f.name)
            rng = "<br>".join(_cell(m) for m in checks.get(key, [])) or ""
            typ = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
            out.append(f"| `{key}` | `{typ}` | `{default!r}` | {rng} | {_cell(meanings.get(f.name, ''))} |")
        out.append("")
    return "\n".join(out)


# --- the hook ----------------------------------------------------------------------------------------

def on_page_markdown(markdown: str, page, config, files) -> str:
    if "<!-- mocolab:cli -->" in markdown:
        markdown = markdown.replace("<!-- mocolab:cli -->", cli_markdown())
    for name in re.findall(r"<!-- mocolab:config (\w+) -->", markdown):
        markdown = markdown.replace(f"<!-- mocolab:config {name} -->", config_markdown(name))
    return markdown


if __name__ == "__main__":
    print(cli_markdown())
    print(config_markdown("Config"))
    print(config_markdown("TransferConfig"))
