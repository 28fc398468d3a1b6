"""Corpora for `lsbench extrapolate`, all offline: the Python standard library's own source
(default), English prose from the same place (`stdlib-docs`: every docstring, read with `ast`,
plus the language reference topics of `pydoc_data/topics.py`), or a user's text file /
directory of text files.

A corpus is split train / valid / test *by file* (a file's bucket comes from a hash of its
relative path, so adding a file never moves the others); a single file, or a directory too small
for every split to get a file, is split by bytes (90 / 5 / 5). The file list and contents are
hashed, and byte counts recorded, so a run says exactly what it was trained and scored on.
"""

from __future__ import annotations

import ast
import hashlib
import os
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lsbench.errors import LsbenchError
from lsbench.extrapolate.tokenizer import ByteTokenizer

SPLITS = ("train", "valid", "test")
VALID_PCT, TEST_PCT = 5, 5  # by-file buckets: hash % 100 < 5 -> valid, < 10 -> test
EXCLUDED_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}

BUILTIN = {
    "stdlib": "the Python standard library's .py sources (found via sysconfig), tests excluded",
    "stdlib-docs": "English prose: the standard library's docstrings (via ast) and the "
                   "pydoc_data/topics.py reference topics, tests excluded",
}
TOPICS = "pydoc_data/topics.py"


@dataclass
class Corpus:
    name: str
    root: str
    split_method: str  # "by-file" | "by-bytes"
    files_sha256: str
    n_files: dict[str, int]
    n_bytes: dict[str, int]
    streams: dict[str, torch.Tensor] = field(repr=False)  # split -> int16 token stream

    def info(self) -> dict:
        """What run.json records about the corpus."""
        return {
            "name": self.name,
            "root": self.root,
            "split_method": self.split_method,
            "files_sha256": self.files_sha256,
            "n_files": self.n_files,
            "n_bytes": self.n_bytes,
            "n_tokens": {k: len(v) for k, v in self.streams.items()},
        }


def list_rows() -> list[dict]:
    """Rows for `lsbench list corpora` (stdlib-docs is parsed to be sized: a few seconds)."""
    rows = []
    root = stdlib_root()
    for name, what in BUILTIN.items():
        if name == "stdlib":
            files = stdlib_files(root)
            n, size = len(files), sum(f.stat().st_size for f in files)
        else:
            docs = stdlib_docs(root)
            n, size = len(docs), sum(len(d) for d in docs.values())
        rows.append({
            "name": name,
            "source": what,
            "root": str(root),
            "files": n,
            "size_mib": round(size / 2**20, 2),
        })
    rows.append({
        "name": "PATH",
        "source": "a UTF-8 text file, or a directory of UTF-8 text files (hidden files skipped)",
        "root": "-",
        "files": "-",
        "size_mib": "-",
    })
    return rows


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _walk(root: Path, keep) -> list[Path]:
    """Files under root in a fixed (sorted) order, skipping excluded and hidden directories."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDED_DIRS and d[0] != ".")
        out += [Path(dirpath) / f for f in sorted(filenames) if keep(f)]
    return sorted(out, key=lambda p: p.relative_to(root).as_posix())


def stdlib_files(root: Path) -> list[Path]:
    return _walk(root, lambda f: f.endswith(".py"))


def docstrings(source: bytes) -> list[str]:
    """The module, class and function docstrings of one source file, in source order."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):  # a file this Python cannot parse has no docs to give
        return []
    nodes = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    found = [(getattr(n, "lineno", 0), ast.get_docstring(n)) for n in ast.walk(tree)
             if isinstance(n, nodes)]
    return [doc for _, doc in sorted(found, key=lambda t: t[0]) if doc]


def topics(source: bytes) -> dict[str, str]:
    """The `topics = {...}` dict of pydoc_data/topics.py, read without importing it."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "topics" for t in node.targets):
            return ast.literal_eval(node.value)
    return {}


def stdlib_docs(root: Path) -> dict[str, bytes]:
    """rel name -> UTF-8 prose: one document per source file (its docstrings, blank-line
    separated) and one per reference topic (`pydoc_data/topics.py#name`), so the by-file split
    puts each topic in its own bucket."""
    docs: dict[str, bytes] = {}
    for f in stdlib_files(root):
        rel = f.relative_to(root).as_posix()
        if rel == TOPICS:
            for name, text in sorted(topics(f.read_bytes()).items()):
                docs[f"{rel}#{name}"] = text.encode("utf-8")
            continue
        found = docstrings(f.read_bytes())
        if found:
            docs[rel] = "\n\n".join(found).encode("utf-8")
    return docs


def _bucket(rel: str) -> str:
    h = int(hashlib.sha1(rel.encode()).hexdigest(), 16) % 100
    return "valid" if h < VALID_PCT else "test" if h < VALID_PCT + TEST_PCT else "train"


def _read_utf8(path: Path) -> bytes:
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise LsbenchError(
            f"corpus file {path} is not UTF-8 text (byte {e.start}); convert it "
            "(e.g. `iconv -t utf-8`) or remove it from the corpus."
        ) from None
    return data


def load_corpus(spec: str = "stdlib") -> Corpus:
    """Load a built-in corpus by name or a user path; raises LsbenchError with the fix."""
    docs: dict[str, bytes] | None = None
    if spec in BUILTIN:
        root = stdlib_root()
        if not root.is_dir():
            raise LsbenchError(
                f"the Python standard library was not found at {root}; pass --corpus PATH."
            )
        files, name = stdlib_files(root), spec
        if spec == "stdlib-docs":
            docs = stdlib_docs(root)
    else:
        root = Path(spec).expanduser()
        if not root.exists():
            raise LsbenchError(
                f"corpus {spec!r} is neither a built-in corpus ({', '.join(BUILTIN)}) nor an "
                "existing path; pass --corpus stdlib or a text file / directory."
            )
        name = str(root)
        if root.is_file():
            files, root = [root], root.parent
        else:
            files = _walk(root, lambda f: f[0] != ".")
    if docs is None:
        docs = {f.relative_to(root).as_posix(): _read_utf8(f) for f in files}
    docs = {rel: data for rel, data in docs.items() if data}
    if not docs:
        raise LsbenchError(f"corpus {spec!r} has no non-empty text files; point at text.")
    digest = hashlib.sha256()
    for rel, data in docs.items():
        digest.update(f"{rel}\0{hashlib.sha256(data).hexdigest()}\n".encode())
    return _split(name, str(root), docs, digest.hexdigest())


def _split(name: str, root: str, docs: dict[str, bytes], sha: str) -> Corpus:
    tok = ByteTokenizer()
    by_split: dict[str, list[bytes]] = {s: [] for s in SPLITS}
    for rel, data in docs.items():
        by_split[_bucket(rel)].append(data)
    if all(by_split.values()):
        method = "by-file"
        streams = {s: tok.encode_documents(by_split[s]) for s in SPLITS}
    else:  # too few files for every split to get one: cut the concatenated stream
        method = "by-bytes"
        stream = tok.encode_documents(list(docs.values()))
        n = len(stream)
        a, b = n * 90 // 100, n * 95 // 100
        streams = {"train": stream[:a], "valid": stream[a:b], "test": stream[b:]}
        by_split = {s: [] for s in SPLITS}
    return Corpus(
        name=name,
        root=root,
        split_method=method,
        files_sha256=sha,
        n_files={s: len(v) for s, v in by_split.items()} if method == "by-file"
        else {"all": len(docs)},
        n_bytes={s: int((streams[s] < 256).sum()) for s in SPLITS},
        streams=streams,
    )
