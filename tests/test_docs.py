"""The documentation's links and quoted commands resolve (README.md and docs/**/*.md).

* Every relative Markdown link ``[text](path)`` / ``[text](path#anchor)`` (images included) points
  to a file or folder inside the repository, and its anchor, if any, to a heading of the target
  (GitHub's slug rule). ``http(s)://`` and ``mailto:`` links are skipped; a link leaving the
  repository fails.
* Every command in a fenced code block that runs ``python``/``python3``/``$PY``/a venv python,
  ``make``, ``bash`` or ``pip``: the script exists, a ``make`` target is a target of the Makefile,
  ``--config-file`` and arguments that look like repository paths exist, and every ``--flag``
  given to a Python script is defined by that script (read statically from its source and the
  local modules it imports; detectron2's ``default_argument_parser`` flags when it uses it).
  Config ``KEY VALUE`` pairs after the flags are not checked.

Pure text processing: no torch, no detectron2, well under a second (tests/conftest.py imports
torch for the rest of the suite; ``pytest --noconftest tests/test_docs.py`` runs this file with
only pytest installed).
"""
import glob
import os
import re
import shlex
from typing import Dict, Iterator, List, Optional, Set, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# detectron2.engine.default_argument_parser (v0.6 and main)
D2_DEFAULT_FLAGS = {"--config-file", "--resume", "--eval-only", "--num-gpus", "--num-machines",
                    "--machine-rank", "--dist-url"}
SKIPPED_SCHEMES = ("http://", "https://", "mailto:")
# top-level folders whose paths in commands must exist (datasets/ and output/ are generated)
REPO_PATH_ROOTS = ("configs/", "tools/", "docs/", "d2_anchorfree/", "projects/", "tests/")
CONFIG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Za-z0-9_]+)+$")
FENCE = re.compile(r"^\s*(```|~~~)")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+[\"'][^\"']*[\"'])?\s*\)")
REF_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+[\"'(].*)?$")  # [ref]: path
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")


def doc_files(repo: str = REPO) -> List[str]:
    files = [os.path.join(repo, "README.md")]
    files += sorted(glob.glob(os.path.join(repo, "docs", "**", "*.md"), recursive=True))
    return [f for f in files if os.path.isfile(f)]


def rel(path: str, repo: str) -> str:
    return os.path.relpath(path, repo)


def read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


# ----------------------------------------------------------------------------------------- text
def split_fences(text: str) -> Tuple[List[Tuple[int, str]], List[List[Tuple[int, str]]]]:
    """(prose lines, fenced blocks), each line with its 1-based line number."""
    prose, blocks, block, fence = [], [], None, None
    for i, line in enumerate(text.split("\n"), 1):
        m = FENCE.match(line)
        if block is None:
            if m:
                block, fence = [], m.group(1)
            else:
                prose.append((i, line))
        elif m and line.strip().startswith(fence) and line.strip().strip(fence[0]) == "":
            blocks.append(block)
            block = None
        else:
            block.append((i, line))
    if block is not None:
        blocks.append(block)
    return prose, blocks


def slugify(heading: str) -> str:
    """GitHub's heading anchor: link text only, lowercase, drop punctuation but - and _, spaces -> -."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # [text](url) -> text
    text = re.sub(r"<[^>]+>", "", text)                          # inline HTML
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(text: str) -> Set[str]:
    """Anchors of the headings of a Markdown text (repeated headings get -1, -2, ...)."""
    prose, _ = split_fences(text)
    seen: Dict[str, int] = {}
    out = set()
    for _, line in prose:
        m = HEADING.match(line)
        if not m:
            continue
        slug = slugify(m.group(2))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def strip_inline_code(line: str) -> str:
    return re.sub(r"(`+)(.+?)\1", lambda m: " " * len(m.group(0)), line)


# ---------------------------------------------------------------------------------------- links
def check_links(text: str, md_path: str, repo: str = REPO) -> Tuple[int, List[str]]:
    """Return (number of relative links checked, failure messages)."""
    prose, _ = split_fences(text)
    repo = os.path.realpath(repo)
    checked, failures = 0, []
    for lineno, line in prose:
        plain = strip_inline_code(line)
        targets = [m.group(1) for m in LINK.finditer(plain)] + [m.group(1) for m in REF_DEF.finditer(plain)]
        for target in targets:
            if target.lower().startswith(SKIPPED_SCHEMES):
                continue
            checked += 1
            where = f"{rel(md_path, repo)}:{lineno}: link ({target})"
            path_part, _, anchor = target.partition("#")
            if path_part.startswith("/") or re.match(r"^[a-z][a-z0-9+.-]*:", path_part):
                failures.append(f"{where}: absolute path or unknown scheme; use a path relative to the file")
                continue
            if not path_part:  # #anchor: this file
                if anchor not in anchors(text):
                    failures.append(f"{where}: no heading with anchor #{anchor} in this file")
                continue
            dest = os.path.realpath(os.path.join(os.path.dirname(md_path), path_part))
            if os.path.commonpath([repo, dest]) != repo:
                failures.append(f"{where}: leaves the repository")
                continue
            if not os.path.exists(dest):
                failures.append(f"{where}: {rel(dest, repo)} does not exist")
                continue
            if anchor:
                if os.path.isdir(dest) or not dest.endswith(".md"):
                    failures.append(f"{where}: anchor on a file that is not Markdown")
                elif anchor not in anchors(text if dest == md_path else read(dest)):
                    failures.append(f"{where}: no heading with anchor #{anchor} in {rel(dest, repo)}")
    return checked, failures


# ------------------------------------------------------------------------------------- commands
def makefile_targets(repo: str) -> Set[str]:
    path = os.path.join(repo, "Makefile")
    targets: Set[str] = set()
    if not os.path.isfile(path):
        return targets
    with open(path, encoding="utf-8") as f:
        for line in f:
            m = re.match(r"^([A-Za-z0-9_.%/-][A-Za-z0-9_.%/ -]*?)\s*::?(?!=)", line)
            if m and not line.startswith("\t"):
                targets.update(t for t in m.group(1).split() if not t.startswith("."))
    return targets


def module_file(name: str, level: int, base_dir: str, repo: str) -> Optional[str]:
    """The repository file of an imported module (tools/ scripts import their siblings)."""
    parts = name.split(".") if name else []
    roots = [base_dir] if level else [base_dir, repo]
    for root in roots:
        if level > 1:
            root = os.path.normpath(os.path.join(root, *[".."] * (level - 1)))
        stem = os.path.join(root, *parts) if parts else root
        for cand in (stem + ".py", os.path.join(stem, "__init__.py")):
            if os.path.isfile(cand) and os.path.realpath(cand).startswith(os.path.realpath(repo)):
                return cand
    return None


IMPORT = re.compile(r"^[ \t]*(?:from[ \t]+(\.*)([\w.]*)[ \t]+import[ \t]+(\([\w\s,]+\)|[\w \t,]+)|import[ \t]+([\w.]+))",
                    re.M)


def script_flags(path: str, repo: str = REPO, _seen: Optional[Set[str]] = None) -> Set[str]:
    """Flags a script accepts, read statically: every "--flag" string literal of the script and of
    the local modules it imports that build argument parsers; detectron2's default flags if it
    calls ``default_argument_parser``."""
    seen = _seen if _seen is not None else set()
    path = os.path.realpath(path)
    if path in seen:
        return set()
    seen.add(path)
    with open(path, encoding="utf-8") as f:
        src = f.read()
    flags = set(re.findall(r"""["'](--?[A-Za-z][\w-]*)["']""", src)) | {"-h", "--help"}
    if "default_argument_parser" in src:
        flags |= D2_DEFAULT_FLAGS
    base = os.path.dirname(path)
    for m in IMPORT.finditer(src):
        dots, mod, names, plain = m.groups()
        cands = []
        if plain:
            cands.append(module_file(plain, 0, base, repo))
        else:
            level = len(dots)
            cands.append(module_file(mod, level, base, repo))
            for n in re.split(r"[\s,()]+", names):  # from pkg import submodule
                if n:
                    cands.append(module_file(f"{mod}.{n}" if mod else n, level, base, repo))
        for cand in cands:
            if not cand:
                continue
            with open(cand, encoding="utf-8") as f:
                csrc = f.read()
            if any(s in csrc for s in ("add_argument", "ArgumentParser", "default_argument_parser")):
                flags |= script_flags(cand, repo, seen)
    return flags


def logical_lines(block: List[Tuple[int, str]]) -> Iterator[Tuple[int, str]]:
    """Join backslash continuations; yield (first line number, command line)."""
    buf, start = "", None
    for lineno, line in block:
        if start is None:
            start = lineno
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        yield start, buf + line
        buf, start = "", None
    if buf:
        yield start, buf


def tokenize(line: str) -> List[List[str]]:
    """Shell words of each simple command on the line (split at ; && || |, redirections dropped,
    $(...) substitutions returned as commands of their own)."""
    commands: List[List[str]] = []
    subs = re.findall(r"\$\(([^()]*)\)", line)
    line = re.sub(r"\$\(([^()]*)\)", "SUBST", line)
    for sub in subs:
        commands += tokenize(sub)
    lex = shlex.shlex(line, posix=True, punctuation_chars=";&|<>")
    lex.whitespace_split = True
    lex.commenters = "#"
    words = list(lex)
    current: List[str] = []
    skip_next = False
    for w in words:
        if skip_next:
            skip_next = False
            continue
        if w and set(w) <= set(";&|"):
            commands.append(current)
            current = []
        elif w and set(w) <= set("<>"):
            skip_next = True
        else:
            current.append(w)
    commands.append(current)
    return [c for c in commands if c]


def is_python(word: str) -> bool:
    return word in ("python", "python3", "$PY", "${PY}") or re.search(r"/python3?$", word) is not None


def looks_like_repo_path(word: str) -> bool:
    return (word.startswith(REPO_PATH_ROOTS) and not re.search(r"[*?{}$~]|://", word))


def check_script_args(script: str, args: List[str], where: str, repo: str) -> List[str]:
    """Failures of ``args`` given to ``script`` (a repository path): unknown flags, missing config
    files and repository paths; stops at the first config KEY (the VALUE pairs are not checked)."""
    fails: List[str] = []

    def need(path: str, what: str):
        if not os.path.exists(os.path.join(repo, path)):
            fails.append(f"{where}: {what} {path} does not exist")

    flags = script_flags(os.path.join(repo, script), repo)
    i = 0
    while i < len(args):
        word = args[i].strip("[]")
        if CONFIG_KEY.match(word):
            break  # config KEY VALUE pairs from here on
        if word.startswith("--"):
            name, eq, value = word.partition("=")
            if name not in flags:
                fails.append(f"{where}: {script} has no option {name}")
            if name == "--config-file":
                value = value if eq else (args[i + 1] if i + 1 < len(args) else "")
                if value:
                    need(value, "config file")
                i += 0 if eq else 1
            elif eq and looks_like_repo_path(value):
                need(value, "path")
        elif re.match(r"^-[A-Za-z]$", word):
            if word not in flags:
                fails.append(f"{where}: {script} has no option {word}")
        elif looks_like_repo_path(word):
            for part in word.split(","):  # a comma-separated list (benchmarks' --configs A.yaml,B.yaml)
                need(part, "path")
        i += 1
    return fails


def check_command(words: List[str], where: str, repo: str) -> Tuple[bool, List[str]]:
    """Return (was this a checked command, failures)."""
    while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):  # VAR=value prefixes
        words = words[1:]
    if not words:
        return False, []
    cmd, args = words[0], words[1:]
    fails: List[str] = []

    def need(path: str, what: str):
        if not os.path.exists(os.path.join(repo, path)):
            fails.append(f"{where}: {what} {path} does not exist")

    if is_python(cmd):
        while args and args[0].startswith("-") and args[0] not in ("-m", "-c"):
            args = args[1:]  # interpreter options (-u, -B, ...)
        if not args or args[0] == "-c":
            return False, []
        if args[0] == "-m":
            if len(args) < 2:
                return False, []
            if args[1] in ("pip", "pip3"):
                return check_command(["pip"] + args[2:], where, repo)
            script = module_file(args[1], 0, repo, repo)
            if script is None:
                return False, []  # an installed module (pytest, ...)
            script, args = os.path.relpath(script, repo), args[2:]
        else:
            script, args = args[0], args[1:]
            need(script, "script")
            if fails:
                return True, fails
        fails += check_script_args(script, args, where, repo)
        return True, fails
    if cmd == "d2af":
        return True, check_d2af(args, where, repo)
    if cmd == "make":
        targets = makefile_targets(repo)
        named = [a for a in args if not a.startswith("-") and "=" not in a]
        for t in named:
            if t not in targets:
                fails.append(f"{where}: make target {t} is not in the Makefile")
        return True, fails
    if cmd == "bash":
        rest = [a for a in args if not a.startswith("-")]
        if not rest:
            return False, []
        need(rest[0], "script")
        for a in rest[1:]:
            if looks_like_repo_path(a):
                need(a, "path")
        return True, fails
    if cmd in ("pip", "pip3"):
        i = 0
        while i < len(args):
            a = args[i]
            if a in ("-r", "--requirement", "-c", "--constraint", "-e", "--editable") and i + 1 < len(args):
                target = re.sub(r"\[[^\]]*\]$", "", args[i + 1])
                if "://" not in target and not target.startswith("git+"):
                    need(target, "pip argument")
                i += 2
                continue
            if not a.startswith("-") and (a.startswith(".") or looks_like_repo_path(a)):
                need(re.sub(r"\[[^\]]*\]$", "", a), "pip argument")
            i += 1
        return True, fails
    return False, []


D2AF_COMMAND = re.compile(r'"([\w-]+)":\s*Command\(\s*"([\w.]+):\w+"')


def d2af_commands(repo: str) -> Dict[str, str]:
    """``d2af`` subcommand -> the module that runs it, read from ``d2_anchorfree/cli/main.py``."""
    path = os.path.join(repo, "d2_anchorfree", "cli", "main.py")
    if not os.path.isfile(path):
        return {}
    return dict(D2AF_COMMAND.findall(read(path)))


def check_d2af(args: List[str], where: str, repo: str) -> List[str]:
    """Failures of a quoted ``d2af SUBCOMMAND [SUITE] ARGS`` command: an unknown subcommand (or
    benchmark suite), or arguments that its module does not take (:func:`check_script_args`)."""
    commands = d2af_commands(repo)
    if not args or args[0].startswith("-"):
        return [f"{where}: d2af has no option {a}" for a in args[:1] if a not in ("-h", "--help", "--version")]
    sub, args = args[0], args[1:]
    if sub not in commands:
        return [f"{where}: d2af has no command {sub} (commands: {', '.join(sorted(commands))})"]
    module = module_file(commands[sub], 0, repo, repo)
    if module is None:
        return [f"{where}: the module {commands[sub]} of d2af {sub} is not in the repository"]
    if sub == "benchmark":  # d2af benchmark [SUITE] ...: the suite's module in benchmarks/
        suite = args[0] if args and not args[0].startswith("-") else "detectors"
        args = args[1:] if args and args[0] == suite else args
        module = module_file(f"benchmarks.{suite}", 0, repo, repo)
        if module is None:
            return [f"{where}: d2af benchmark has no suite {suite} (benchmarks/{suite}.py)"]
    return check_script_args(os.path.relpath(module, repo), args, where, repo)


def check_commands(text: str, md_path: str, repo: str = REPO) -> Tuple[int, List[str]]:
    """Return (number of commands checked, failure messages)."""
    _, blocks = split_fences(text)
    checked, failures = 0, []
    for block in blocks:
        for lineno, line in logical_lines(block):
            where = f"{rel(md_path, repo)}:{lineno}: command `{line.strip()}`"
            try:
                commands = tokenize(line)
            except ValueError as e:  # unbalanced quotes: not shell (YAML, Python, output)
                if re.match(r"^\s*(python3?|\$PY|make|bash|pip3?)\s", line):
                    failures.append(f"{where}: cannot be parsed as a shell command ({e})")
                continue
            for words in commands:
                was_command, fails = check_command(words, where, repo)
                checked += was_command
                failures += fails
    return checked, failures


# ---------------------------------------------------------------------------------------- tests
def test_there_are_docs():
    files = [rel(f, REPO) for f in doc_files()]
    assert "README.md" in files and len(files) > 1, files


def test_links_resolve():
    total, failures = 0, []
    for path in doc_files():
        n, fails = check_links(read(path), path)
        total += n
        failures += fails
    assert not failures, "broken links:\n" + "\n".join(failures)
    assert total > 0, "no relative link was checked"


def test_commands_resolve():
    total, failures = 0, []
    for path in doc_files():
        n, fails = check_commands(read(path), path)
        total += n
        failures += fails
    assert not failures, "broken commands:\n" + "\n".join(failures)
    assert total > 0, "no command was checked"


def test_readme_names_the_two_commands():
    _, blocks = split_fences(read(os.path.join(REPO, "README.md")))
    commands = {" ".join(w) for b in blocks for _, line in logical_lines(b) for w in tokenize(line)}
    assert {"make demo", "make test"} <= commands


# ---------------------------------------------------------------- the check itself (controls)
def test_slug_rule():
    assert slugify("Export speed on the CPU (`tools/benchmark_export.py`)") == \
        "export-speed-on-the-cpu-toolsbenchmark_exportpy"
    assert slugify("Set-up: two commands") == "set-up-two-commands"
    assert slugify("[Model zoo](x.md): COCO checkpoints") == "model-zoo-coco-checkpoints"


def test_broken_links_are_reported(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text("# A page\n\n## Second part: `x`\n")
    (tmp_path / "outside.md").write_text("x")
    md = tmp_path / "docs" / "index.md"
    text = "\n".join([
        "# Index",
        "[ok](page.md) [ok anchor](page.md#second-part-x) [self](#index) [web](https://example.com)",
        "[missing](nothere.md)",
        "[bad anchor](page.md#third-part)",
        "![missing image](img.png)",
        "[ref]: ../../elsewhere/DESIGN.md",
        "[leaves](../../elsewhere/DESIGN.md)",
        "`[in code](nothere.md)`",
        "```",
        "[in a fence](nothere.md)",
        "```",
    ])
    n, fails = check_links(text, str(md), str(tmp_path))
    assert n == 8, (n, fails)
    assert len(fails) == 5, fails
    assert "docs/index.md:3: link (nothere.md): docs/nothere.md does not exist" in fails[0]
    assert "no heading with anchor #third-part" in fails[1] and ":4:" in fails[1]
    assert "img.png does not exist" in fails[2]
    assert "leaves the repository" in fails[3] and ":6:" in fails[3]
    assert "leaves the repository" in fails[4] and ":7:" in fails[4]


def test_broken_commands_are_reported(tmp_path):
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "helpers.py").write_text(
        "def add_common(p):\n    p.add_argument('--threads', type=int)\n")
    (tmp_path / "tools" / "run.py").write_text(
        "import argparse\nfrom helpers import add_common\np = argparse.ArgumentParser()\n"
        "p.add_argument(\"--input\")\nadd_common(p)\n")
    (tmp_path / "train_net.py").write_text(
        "from detectron2.engine import default_argument_parser\n"
        "p = default_argument_parser()\np.add_argument('--allow-untrained', action='store_true')\n")
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "a.yaml").write_text("")
    (tmp_path / "Makefile").write_text(".PHONY: demo\ndemo: data\n\techo\ntest:\n\techo\n")
    (tmp_path / "docs").mkdir()
    md = tmp_path / "docs" / "page.md"
    good = [
        "```bash",
        "PY=~/.cache/d2af/venv/bin/python",
        "make demo   # a comment",
        "$PY tools/run.py --input 'x/*.jpg' --threads 2",
        "python train_net.py --config-file configs/a.yaml --num-gpus 2 --allow-untrained \\",
        "    MODEL.WEIGHTS datasets/x.pth --not-checked-after-opts",
        "python -m pytest -q",
        "```",
    ]
    n, fails = check_commands("\n".join(good), str(md), str(tmp_path))
    assert (n, fails) == (3, []), (n, fails)
    bad = [
        "```bash",
        "python tools/missing.py --input x",          # 2: missing script
        "$PY tools/run.py --inptu x",                 # 3: unknown flag
        "python train_net.py --config-file configs/nothere.yaml",  # 4: missing config
        "make tset",                                  # 5: unknown target
        "bash tools/setup.sh && pip install -r nothere.txt",  # 6: missing script, missing file
        "python3 tools/run.py --input configs/gone.yaml",     # 7: missing repo path
        "```",
    ]
    n, fails = check_commands("\n".join(bad), str(md), str(tmp_path))
    assert n == 7, (n, fails)
    expected = [
        ":2: command `python tools/missing.py --input x`: script tools/missing.py does not exist",
        ":3: command `$PY tools/run.py --inptu x`: tools/run.py has no option --inptu",
        ":4: command `python train_net.py --config-file configs/nothere.yaml`: config file",
        ":5: command `make tset`: make target tset is not in the Makefile",
        ":6: command `bash tools/setup.sh && pip install -r nothere.txt`: script tools/setup.sh",
        ":6: command `bash tools/setup.sh && pip install -r nothere.txt`: pip argument nothere.txt",
        ":7: command `python3 tools/run.py --input configs/gone.yaml`: path configs/gone.yaml",
    ]
    assert len(fails) == len(expected), fails
    for want, got in zip(expected, fails):
        assert got.startswith("docs/page.md") and want in got, (want, got)


def test_d2af_commands_are_checked():
    """``d2af`` commands resolve to the module of their subcommand (benchmark: its suite)."""
    where = "x.md:1"
    assert check_d2af(["train", "--config-file", "configs/FCOS/FCOS_tiny_R_18_cpu.yaml", "--resume",
                       "SOLVER.MAX_ITER", "10"], where, REPO) == []
    assert check_d2af(["benchmark", "export", "--quick"], where, REPO) == []
    assert check_d2af(["predict-onnx", "--model", "m.onnx", "--input", "x.jpg", "--output", "o"], where, REPO) == []
    assert check_d2af(["trian"], where, REPO), "an unknown command is reported"
    assert check_d2af(["train", "--no-such-flag"], where, REPO), "an unknown flag is reported"
    assert check_d2af(["benchmark", "nosuite"], where, REPO), "an unknown benchmark suite is reported"
    assert check_d2af(["train", "--config-file", "configs/nope.yaml"], where, REPO), "a missing config is reported"


def test_real_scripts_flags_are_read():
    """The static flag reader sees the real scripts' options (and only those)."""
    train = script_flags(os.path.join(REPO, "train_net.py"))
    assert {"--config-file", "--eval-only", "--resume", "--num-gpus", "--allow-untrained"} <= train
    assert "--slice" not in train
    predict = script_flags(os.path.join(REPO, "tools", "predict.py"))
    assert {"--input", "--output", "--slice", "--tta"} <= predict
    page = os.path.join(REPO, "docs", "virtual.md")
    n, fails = check_commands("```\npython tools/predict.py --config-file configs/nothere.yaml "
                              "--no-such-flag\n```", page)
    assert n == 1 and len(fails) == 2, fails
