"""Every example in README.md and docs/*.md runs, and the generated docs are current.

Each fenced ```python, ```bash / ```sh or ```console block is its own test case (id
``FILE:LINE``). Python blocks run in a fresh interpreter (the venv's), shell blocks with
``bash -e -o pipefail``; both in an empty temporary folder with ``configs/`` and
``benchmarks/`` linked in, the venv's ``bin`` first on ``PATH`` and one thread.

Blocks that name ``runs/rfcn_digits`` or ``data/digits`` get a tiny FP32 R-FCN run and its
devkit there (symlinks to one run trained per session, in the test process, with ``lowbit
train configs/rfcn_digits.yaml`` and small ``--set`` overrides: 8 train / 4 test images at
64 px, width 0.125, 2 iterations).

A block preceded by ``<!-- docs-test: syntax-only (REASON) -->`` (GPU, VOC devkit, training
for minutes) is only checked: ``bash -n`` / ``compile()``, and ``lowbit VERB [SUB] --help``
exits 0 for every ``lowbit VERB`` it invokes, so a renamed verb or subcommand still fails.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DOC_FILES: list[Path] = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LANGS = {"python": "python", "py": "python", "bash": "shell", "sh": "shell",
         "shell": "shell", "console": "console"}
MARK = re.compile(r"<!--\s*docs-test:\s*(?P<mode>[a-z-]+)\s*(?:\((?P<why>.*)\))?\s*-->")
FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>[A-Za-z0-9_+-]*)\s*$")
#: ``lowbit VERB`` / ``.venv/bin/lowbit VERB`` / ``-m lowbit.cli VERB`` in shell text
VERB = re.compile(r"(?:^|[\s;&|(/])lowbit(?:\.cli)?[ \t]+(?P<verb>[a-z][a-z0-9-]*)"
                  r"(?:[ \t]+(?P<sub>[a-z][a-z0-9-]*))?", re.M)
TIMEOUT_S = 300


@dataclass(frozen=True)
class Block:
    """One fenced example: where it is, its kind and its text."""

    path: Path
    line: int  # 1-based line of the opening fence
    kind: str  # "python" | "shell" | "console"
    code: str
    mode: str  # "run" | "syntax-only"
    why: str

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    def shell_text(self) -> str:
        """The block as a bash script (``console``: the ``$ `` lines, continuations kept)."""
        if self.kind != "console":
            return self.code
        out: list[str] = []
        cont = False
        for line in self.code.splitlines():
            if line.startswith("$ ") or cont:
                out.append(line[2:] if line.startswith("$ ") and not cont else line)
                cont = line.rstrip().endswith("\\")
        return "\n".join(out) + "\n"


def collect(path: Path) -> list[Block]:
    """The executable fenced blocks of one markdown file, with their docs-test marks."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, lang, indent = i, m.group("lang").lower(), m.group("indent")
        j = i + 1
        while j < len(lines) and lines[j].strip() != "```":
            j += 1
        if lang in LANGS:
            body = [ln[len(indent):] if ln.startswith(indent) else ln for ln in lines[i + 1:j]]
            k = start - 1
            while k >= 0 and not lines[k].strip():
                k -= 1
            mark = MARK.search(lines[k]) if k >= 0 else None
            mode, why = "run", ""
            if mark:
                mode, why = mark.group("mode"), mark.group("why") or ""
                if mode != "syntax-only":
                    raise ValueError(f"{path}:{k + 1}: unknown docs-test mode {mode!r}")
                if not why.strip():
                    raise ValueError(f"{path}:{k + 1}: syntax-only needs a (reason)")
            blocks.append(Block(path, start + 1, LANGS[lang], "\n".join(body) + "\n", mode, why))
        i = j + 1
    return blocks


BLOCKS: list[Block] = [b for p in DOC_FILES for b in collect(p)]


def _env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(BIN.parent)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = "1"
    env["MPLBACKEND"] = "Agg"
    env["LOWBIT_CACHE_DIR"] = str(tmp / ".cache")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.pop("PYTHONPATH", None)
    return env


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT_S, check=False)


def _fail(what: str, res: subprocess.CompletedProcess[str]) -> str:
    return (f"{what} exited {res.returncode}\n--- stdout (tail)\n{res.stdout[-3000:]}"
            f"\n--- stderr (tail)\n{res.stderr[-3000:]}")


# ----------------------------------------------------------------------------- fixture run


@pytest.fixture(scope="session")
def tiny_rfcn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder holding ``runs/rfcn_digits`` (tiny FP32 R-FCN) and ``digits`` (its devkit)."""
    from lowbit.cli import main

    root = tmp_path_factory.mktemp("docs_fixture")
    data = root / "digits"
    argv = ["train", str(ROOT / "configs" / "rfcn_digits.yaml"),
            "--out", str(root / "runs" / "rfcn_digits"), "--json",
           "--set", f"data.root={data}",
            "--set", "data.kwargs={hflip: false, train: 8, test: 4, size: 64, seed: 0}",
            "--set", "model.kwargs={width: 0.125, k: 3}",
            "--set", "optim.lr=0.02", "--set", "optim.warmup_iters=2",
            "--set", "train.epochs=1", "--set", "train.batch_size=4",
            "--set", "train.eval_batch_size=4", "--set", "train.device=cpu"]
    # in this process (the examples themselves run in fresh ones): no seconds of imports
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOWBIT_CACHE_DIR", str(root / ".cache"))
        mp.chdir(root)
        assert main(argv) == 0, "fixture run (lowbit train) failed: see the captured stderr"
    assert (root / "runs" / "rfcn_digits" / "result.json").is_file()
    return root


def _workdir(block: Block, tmp: Path, request: pytest.FixtureRequest) -> Path:
    for name in ("configs", "benchmarks"):
        (tmp / name).symlink_to(ROOT / name, target_is_directory=True)
    text = block.code
    if "runs/rfcn_digits" in text or "data/digits" in text:
        fx: Path = request.getfixturevalue("tiny_rfcn")
        (tmp / "runs").mkdir()
        (tmp / "runs" / "rfcn_digits").symlink_to(fx / "runs" / "rfcn_digits")
        (tmp / "data").mkdir()
        (tmp / "data" / "digits").symlink_to(fx / "digits")
    return tmp


# ----------------------------------------------------------------------------------- tests


def test_examples_were_found() -> None:
    """The collector sees the README's snippets and both kinds of blocks."""
    readme = [b for b in BLOCKS if b.path.name == "README.md"]
    assert sum(b.kind == "python" and b.mode == "run" for b in readme) >= 2
    assert any(b.kind == "shell" and b.mode == "run" and "lowbit compare" in b.code
               for b in readme)
    assert any(b.mode == "syntax-only" for b in BLOCKS)


def test_collector_reads_marks(tmp_path: Path) -> None:
    """Marks apply to the next fence only; languages and console prompts are handled."""
    md = tmp_path / "x.md"
    md.write_text("text\n\n<!-- docs-test: syntax-only (needs a GPU) -->\n\n```bash\n"
                  "lowbit train c.yaml --device cuda\n```\n\n```python\nprint(1)\n```\n\n"
                  "```yaml\na: 1\n```\n\n```console\n$ lowbit eval r \\\n  --json\n{}\n```\n")
    blocks = collect(md)
    assert [(b.kind, b.mode, b.line) for b in blocks] == [
        ("shell", "syntax-only", 5), ("python", "run", 9), ("console", "run", 17)]
    assert blocks[0].why == "needs a GPU"
    assert blocks[2].shell_text() == "lowbit eval r \\\n  --json\n"
    bad = tmp_path / "bad.md"
    bad.write_text("<!-- docs-test: syntax-only -->\n```bash\ntrue\n```\n")
    with pytest.raises(ValueError, match="reason"):
        collect(bad)


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_example(block: Block, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Run the block (or, marked syntax-only, check its syntax and every verb's --help)."""
    env = _env(tmp_path)
    if block.mode == "syntax-only":
        _check_syntax(block, tmp_path, env)
        return
    cwd = _workdir(block, tmp_path, request)
    if block.kind == "python":
        script = cwd / "example.py"
        script.write_text(block.code, encoding="utf-8")
        res = _run([sys.executable, str(script)], cwd, env)
    else:
        script = cwd / "example.sh"
        script.write_text(block.shell_text(), encoding="utf-8")
        res = _run(["bash", "-e", "-o", "pipefail", str(script)], cwd, env)
    assert res.returncode == 0, _fail(block.id, res)


def _check_syntax(block: Block, tmp: Path, env: dict[str, str]) -> None:
    if block.kind == "python":
        compile(block.code, block.id, "exec")
        return
    text = block.shell_text()
    script = tmp / "example.sh"
    script.write_text(text, encoding="utf-8")
    res = _run(["bash", "-n", str(script)], tmp, env)
    assert res.returncode == 0, _fail(f"bash -n {block.id}", res)
    for verb, sub in sorted(set(lowbit_verbs(text))):
        _check_help(block, verb, sub, tmp, env)


def lowbit_verbs(text: str) -> list[tuple[str, str | None]]:
    """``(verb, next word)`` for every lowbit invocation in shell text (comments dropped)."""
    code = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    return [(m.group("verb"), m.group("sub")) for m in VERB.finditer(code)]


def _check_help(block: Block, verb: str, sub: str | None, tmp: Path,
                env: dict[str, str]) -> None:
    lowbit = str(BIN / "lowbit")
    res = _run([lowbit, verb, "--help"], tmp, env)
    assert res.returncode == 0, _fail(f"{block.id}: lowbit {verb} --help", res)
    # a verb with subcommands (bench, data) lists them as indented names: check SUB too
    subs = re.findall(r"^ {4}([a-z][a-z0-9-]*)\s", res.stdout, re.M)
    if sub is not None and subs:
        assert sub in subs, f"{block.id}: lowbit {verb} has no subcommand {sub!r} ({subs})"
        res = _run([lowbit, verb, sub, "--help"], tmp, env)
        assert res.returncode == 0, _fail(f"{block.id}: lowbit {verb} {sub} --help", res)


def test_syntax_check_catches_a_renamed_verb(tmp_path: Path) -> None:
    """A syntax-only block naming a verb that does not exist fails."""
    block = Block(ROOT / "README.md", 1, "shell", "lowbit trian c.yaml --device cuda\n",
                  "syntax-only", "test")
    with pytest.raises(AssertionError, match="trian"):
        _check_syntax(block, tmp_path, _env(tmp_path))
    sub = Block(ROOT / "README.md", 1, "shell", "lowbit bench quantiserz\n", "syntax-only", "t")
    with pytest.raises(AssertionError, match="quantiserz"):
        _check_syntax(sub, tmp_path, _env(tmp_path))
    assert lowbit_verbs("x && .venv/bin/lowbit bench qat # lowbit nope\n"
                        "torchrun -m lowbit.cli train cfg.yaml\n") == [("bench", "qat"),
                                                                         ("train", "cfg")]


# --------------------------------------------------------------------------- generated docs


def _gen_methods():  # noqa: ANN202 (a module)
    spec = importlib.util.spec_from_file_location("gen_methods", ROOT / "tools" / "gen_methods.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_methods_page_is_current() -> None:
    """docs/methods.md equals what tools/gen_methods.py generates from the catalogues."""
    gen = _gen_methods()
    committed = (ROOT / "docs" / "methods.md").read_text(encoding="utf-8")
    assert committed == gen.render(), "docs/methods.md is stale: run python tools/gen_methods.py"


def test_methods_page_lists_every_method() -> None:
    """Every compare method and registered quantizer has a row; no paper file ids remain."""
    gen = _gen_methods()
    import lowbit.quant as Q

    page = gen.render()
    for name in gen._catalogue().METHODS:
        assert f"| `{name}` |" in page
    for name in Q.list_quantizers():
        assert f"| `{name}` |" in page
    assert not re.search(r"\b00[0-4]\b", page)


# ------------------------------------------------------------------------------ the README


def test_readme_is_a_front_door() -> None:
    """README stays short, its relative links resolve, and docs/ has no file-id paper names."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" in target:
            continue
        assert (ROOT / target).exists(), f"README links to missing {target}"
    for path in DOC_FILES:
        body = path.read_text(encoding="utf-8")
        assert "../shared" not in body, f"{path.name} links outside the repository"
        assert not re.search(r"(?<![.\d])\b00[1-4]\b[ ’']", body), \
            f"{path.name} names a paper by file id"


def test_shell_commands_quote_cleanly() -> None:
    """Every runnable shell block tokenises (catches unbalanced quotes before running)."""
    for b in BLOCKS:
        if b.kind != "python":
            shlex.split(b.shell_text(), comments=True)


def test_readme_verb_table_matches_the_cli() -> None:
    """The README's verb table lists exactly the verbs `lowbit --help` offers."""
    res = subprocess.run([str(BIN / "lowbit"), "--help"], capture_output=True, text=True,
                         timeout=60, check=True)
    verbs = set(re.findall(r"^ {4}([a-z][a-z0-9-]*)\s", res.stdout, re.M))
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    table = set(re.findall(r"^\| `lowbit ([a-z][a-z0-9-]*)` \|", text, re.M))
    assert verbs and table == verbs, f"README table {sorted(table)} vs CLI {sorted(verbs)}"


def test_every_page_is_in_the_site_nav() -> None:
    """mkdocs.yml's nav names every docs page once, and only pages that exist."""
    import yaml

    cfg = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))

    def pages(nav: object) -> list[str]:
        if isinstance(nav, str):
            return [nav]
        if isinstance(nav, dict):
            return [p for v in nav.values() for p in pages(v)]
        if isinstance(nav, list):
            return [p for v in nav for p in pages(v)]
        return []

    listed = pages(cfg["nav"])
    assert len(listed) == len(set(listed)), f"a page is listed twice: {listed}"
    on_disk = {p.name for p in (ROOT / "docs").glob("*.md")}
    assert set(listed) == on_disk, (set(listed) ^ on_disk)
