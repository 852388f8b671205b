"""The training corpus: the Python 3.11 documentation, as plain text.

Source: Debian's `python3.11-doc` package (the reStructuredText sources of docs.python.org under
/usr/share/doc/python3.11-doc/html/_sources), licensed under the PSF License Agreement (see
/usr/share/doc/python3.11-doc/copyright). The markup is reduced to prose and code examples.

Documents, not lines, are split: a document whose path hashes into the last VALID_PERCENT of the
range is held out for validation, so training never sees any part of it.
"""

import hashlib
import pathlib
import re

SOURCES = pathlib.Path("/usr/share/doc/python3.11-doc/html/_sources")
VALID_PERCENT = 5

# Directives whose whole block is markup, not prose.
DROP_BLOCKS = {
    "index", "toctree", "highlight", "module", "currentmodule", "sectionauthor", "moduleauthor",
    "testsetup", "testcleanup", "raw", "only", "include", "literalinclude", "image", "figure",
    "productionlist", "tabularcolumns", "csv-table", "list-table", "audit-event", "availability",
    "impl-detail", "opcode", "pdbcommand", "2to3fixer", "cmdoption", "envvar", "program", "option",
    "c:macro", "c:type", "c:var", "c:member", "c:function", "c:struct", "c:enumerator", "c:namespace",
}
# Directives whose argument is an API signature worth keeping as a line of its own.
SIGNATURES = {
    "function", "method", "class", "attribute", "data", "exception", "decorator", "classmethod",
    "staticmethod", "coroutinefunction", "coroutinemethod", "abstractmethod", "property",
    "decoratormethod", "describe", "term",
}
VERSION_NOTES = {"versionadded": "New in version", "versionchanged": "Changed in version",
                 "deprecated": "Deprecated since version", "deprecated-removed": "Deprecated since version"}

ROLE = re.compile(r":[a-zA-Z0-9:+-]+:`([^`]*)`")
LINK = re.compile(r"`([^`<]*?)\s*<[^>]*>`_{1,2}")
REF = re.compile(r"`([^`]+)`_{1,2}")
LITERAL = re.compile(r"``([^`]+)``")
UNDERLINE = re.compile(r"^\s*([=\-~^\"'#*+`:.])\1{2,}\s*$")
DIRECTIVE = re.compile(r"^(\s*)\.\.\s+([a-zA-Z0-9:_-]+)::\s*(.*)$")


def role_text(match: re.Match) -> str:
    text = match.group(1)
    target = re.match(r"(.*?)\s*<[^>]*>$", text)
    if target and target.group(1):
        return target.group(1)
    text = text.lstrip("!")
    if text.startswith("~"):
        text = text[1:].rsplit(".", 1)[-1]
    return text


def inline(line: str) -> str:
    line = ROLE.sub(role_text, line)
    line = LINK.sub(r"\1", line)
    line = LITERAL.sub(r"\1", line)
    line = REF.sub(r"\1", line)
    return line.replace("\\ ", "")


def clean(rst: str) -> str:
    """Markup → text: directives reduced to their signature or dropped, roles to their text."""
    out: list[str] = []
    skip_indent = None  # inside a dropped block: lines indented deeper than this are skipped
    for raw in rst.splitlines():
        indent = len(raw) - len(raw.lstrip())
        if skip_indent is not None:
            if raw.strip() and indent <= skip_indent:
                skip_indent = None
            else:
                continue
        if UNDERLINE.match(raw):
            continue
        directive = DIRECTIVE.match(raw)
        if directive:
            name, argument = directive.group(2), directive.group(3)
            if name in SIGNATURES and argument:
                out.append(" " * indent + inline(argument))
            elif name in VERSION_NOTES and argument:
                out.append(" " * indent + f"{VERSION_NOTES[name]} {argument.split()[0]}.")
            elif name in DROP_BLOCKS:
                skip_indent = indent
            continue
        stripped = raw.strip()
        if re.match(r"^\.\.(\s|$)", stripped):  # a comment or a link target: a block of its own
            skip_indent = indent
            continue
        if re.match(r"^:[a-zA-Z-]+:", stripped) and indent > 0 and not out[-1:] == [""]:
            continue  # a directive's option line
        line = inline(raw.rstrip())
        if line.strip() == "::":
            continue
        if line.endswith("::"):
            line = line[:-1] if not line.endswith(" ::") else line[:-3]
        out.append(line)
    text = "\n".join(out)
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def is_validation(relative: str) -> bool:
    digest = hashlib.sha256(relative.encode()).digest()
    return int.from_bytes(digest[:4], "big") % 100 < VALID_PERCENT


def documents() -> list[tuple[str, str]]:
    """(relative path, cleaned text) for every source document, in a fixed order."""
    if not SOURCES.is_dir():
        raise SystemExit(f"{SOURCES} not found: install the corpus with `apt-get install python3.11-doc`")
    docs = []
    for path in sorted(SOURCES.rglob("*.rst.txt")):
        relative = str(path.relative_to(SOURCES))
        if relative.startswith(("whatsnew/changelog", "genindex", "contents")):
            continue  # the changelog is issue numbers and names, not prose
        text = clean(path.read_text(encoding="utf-8", errors="replace"))
        if len(text) > 200:
            docs.append((relative, text))
    return docs


def split() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    docs = documents()
    train = [d for d in docs if not is_validation(d[0])]
    valid = [d for d in docs if is_validation(d[0])]
    return train, valid


if __name__ == "__main__":
    train, valid = split()
    for name, part in (("train", train), ("valid", valid)):
        chars = sum(len(t) for _, t in part)
        print(f"{name}: {len(part)} documents, {chars / 1e6:.2f} M characters")
    print("validation documents:", ", ".join(d for d, _ in valid))


QUESTIONS = {
    "function": ["What does {name} do?", "How do I use {name}?", "Explain the function {name}."],
    "method": ["What does the method {name} do?", "Explain {name}."],
    "class": ["What is the class {name}?", "What is {name} for?"],
    "exception": ["When is {name} raised?"],
    "term": ["What is {name}?", "What does {name} mean in Python?", "Define {name}."],
}


def questions_and_answers(relative: str, rst: str) -> list[tuple[str, str]]:
    """(question, answer) pairs from one document's API entries and glossary terms.

    The answer is the entry's signature and the first paragraph of its description: a small
    instruction set drawn from the same documents, so the chat stage sees only training text.
    """
    pairs = []
    module = ""
    lines = rst.splitlines()
    for i, raw in enumerate(lines):
        directive = DIRECTIVE.match(raw)
        if directive and directive.group(2) in ("module", "currentmodule"):
            module = directive.group(3).strip()
        glossary_term = relative == "glossary.rst.txt" and re.match(r"^   (\S.*)$", raw)
        if directive and directive.group(2) in QUESTIONS and directive.group(3):
            kind, signature = directive.group(2), inline(directive.group(3).strip())
        elif glossary_term:
            kind, signature = "term", inline(glossary_term.group(1))
        else:
            continue
        body_indent = (len(raw) - len(raw.lstrip())) + 3
        paragraph = []
        for line in lines[i + 1:]:
            if not line.strip():
                if paragraph:
                    break
                continue
            indent = len(line) - len(line.lstrip())
            if indent < body_indent or DIRECTIVE.match(line):
                break
            if not paragraph and re.match(r"^\s*:[a-zA-Z-]+:", line):
                continue  # the directive's options
            paragraph.append(inline(line.strip()))
        if not paragraph:
            continue
        name = signature.split("(")[0].strip()
        if kind != "term" and module and not name.startswith(module) and kind in ("function", "class", "exception"):
            name = f"{module}.{name}"
        template = QUESTIONS[kind][len(pairs) % len(QUESTIONS[kind])]
        answer = " ".join(paragraph)
        if kind != "term":
            answer = f"{signature}: {answer}"
        pairs.append((template.format(name=name), answer))
    return pairs


def chat_pairs(train_paths: set[str]) -> list[tuple[str, str]]:
    """Question/answer pairs from the training documents only."""
    pairs = []
    for path in sorted(SOURCES.rglob("*.rst.txt")):
        relative = str(path.relative_to(SOURCES))
        if relative in train_paths:
            pairs.extend(questions_and_answers(relative, path.read_text(encoding="utf-8", errors="replace")))
    return pairs
