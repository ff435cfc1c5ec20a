"""search: BM25 keyword search over the user's local documents, read with care (no FIFOs, no escaping the folder)."""

from __future__ import annotations

import math
import os
import re
import stat
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from xtune.chat.tools.registry import ToolError
from xtune.errors import XtuneError


class SearchProvider(Protocol):
    """Where `search` looks. xtune ships only LocalDocumentSearch: it works offline and sends nothing anywhere. A web
    provider exists only when a user writes one (with their own API key) and passes it to default_registry."""

    def search(self, query: str, k: int) -> list[tuple[str, str]]:
        """Up to k (title, snippet) pairs, best first."""
        ...


_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af"
_TOKEN = re.compile(rf"[{_CJK}]|[^\W_{_CJK}]+")  # words; CJK characters one by one, as they have no spaces


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


MAX_DOCUMENT_BYTES = 2**20  # one file; a longer one is rarely a document
MAX_INDEX_BYTES = 2**26  # all files together: the index lives in memory


class _Skipped(Exception):
    """A file the search index leaves out; args[0] is the reason, a key of LocalDocumentSearch.skipped."""


class LocalDocumentSearch:
    """BM25 keyword search over the .txt and .md files under a folder, split into passages of about
    `passage_chars` characters. The index is built once, when the provider is created; `summary` says what it holds
    and what it left out, `skipped` counts the files left out by reason.

    Only regular files that lie inside the folder are read. A document folder can come from elsewhere, and what the
    index holds the model can quote: a link to ~/.ssh/id_rsa or /proc/self/environ must not become a document, and
    a FIFO must not be opened at all (opening one blocks until something writes to it)."""

    suffixes = (".txt", ".md")

    def __init__(
        self,
        folder: str | Path,
        passage_chars: int = 800,
        max_files: int = 5000,
        max_file_bytes: int = MAX_DOCUMENT_BYTES,
        max_total_bytes: int = MAX_INDEX_BYTES,
    ):
        self.folder = Path(folder).expanduser()
        if not self.folder.is_dir():
            raise XtuneError(f"search documents: {self.folder} is not a folder")
        root = self.folder.resolve()
        self.passages: list[tuple[str, str]] = []  # (title, text)
        self.skipped: Counter[str] = Counter()
        paths = self._documents(root)
        self.skipped["file count cap"] += len(paths[max_files:])
        files = total = 0
        for path in paths[:max_files]:
            try:
                data = _read_inside(path, root, max_file_bytes, max_total_bytes - total)
            except _Skipped as skipped:
                self.skipped[skipped.args[0]] += 1
                continue
            files, total = files + 1, total + len(data)
            title = path.relative_to(self.folder).as_posix()
            text = data.decode("utf-8", errors="replace")
            self.passages.extend((title, passage) for passage in _passages(text, passage_chars))
        self.skipped = +self.skipped  # drop the zero counts
        why = {
            "outside": "link(s) leading out of the folder",
            "special": "special file(s) (FIFO, device, socket)",
            "unreadable": "unreadable file(s)",
            "file size cap": f"file(s) over the {_size(max_file_bytes)} cap per file",
            "total size cap": f"file(s) past the {_size(max_total_bytes)} cap on all files",
            "file count cap": f"file(s) past the {max_files}-file cap",
        }
        skipped = ", ".join(f"{self.skipped[reason]} {text}" for reason, text in why.items() if self.skipped[reason])
        self.summary = (
            f"search: indexed {files} file(s) ({_size(total)}, {len(self.passages)} passage(s)) in "
            f"{self.folder}" + (f"; skipped {skipped}" if skipped else "")
        )
        self._counts = [Counter(_tokens(f"{title} {text}")) for title, text in self.passages]
        self._lengths = [sum(c.values()) for c in self._counts]
        self._average = sum(self._lengths) / len(self._lengths) if self._lengths else 0.0
        self._frequency: Counter[str] = Counter()
        for counts in self._counts:
            self._frequency.update(counts.keys())

    def _documents(self, root: Path) -> list[Path]:
        """The candidate documents under the folder, sorted: names with a document suffix, outside hidden folders.
        Linked folders are not entered (a link back up would loop); one that leads out of the folder is counted."""
        paths = []
        for dirpath, dirnames, filenames in os.walk(self.folder):
            here = Path(dirpath)
            dirnames[:] = [name for name in dirnames if not name.startswith(".")]
            for name in dirnames:
                if (here / name).is_symlink() and not _real_path(here / name).is_relative_to(root):
                    self.skipped["outside"] += 1
            documents = (name for name in filenames if Path(name).suffix.lower() in self.suffixes)
            paths += [here / name for name in documents if not name.startswith(".")]
        return sorted(paths)

    def search(self, query: str, k: int = 5) -> list[tuple[str, str]]:
        terms = set(_tokens(query))
        if not terms or not self.passages:
            return []
        n = len(self.passages)
        k1, b = 1.5, 0.75
        scores = []
        for i, counts in enumerate(self._counts):
            score = 0.0
            for term in terms:
                tf = counts.get(term, 0)
                if tf:
                    df = self._frequency[term]
                    idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
                    score += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * self._lengths[i] / self._average))
            if score > 0:
                scores.append((score, i))
        scores.sort(key=lambda s: (-s[0], s[1]))
        return [(self.passages[i][0], _snippet(self.passages[i][1], terms)) for _, i in scores[:k]]


def _read_inside(path: Path, root: Path, max_bytes: int, budget: int) -> bytes:
    """The bytes of `path` if it resolves to a regular file under `root` of at most `max_bytes`, within the `budget`
    of bytes the index has left; otherwise raises _Skipped with the reason."""
    resolved = _real_path(path)
    if not resolved.is_relative_to(root):
        raise _Skipped("outside")
    try:
        checked = resolved.stat()
        if not stat.S_ISREG(checked.st_mode):  # before opening: a FIFO must never be opened
            raise _Skipped("special")
        _check_size(checked.st_size, max_bytes, budget)
        # Should the path change between the check and the open (a FIFO or a link put in its place), O_NONBLOCK
        # keeps the open from blocking, O_NOFOLLOW refuses a link, and the file opened must be the one checked.
        flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0)
        with open(os.open(resolved, flags), "rb") as file:
            opened = os.fstat(file.fileno())
            if (opened.st_dev, opened.st_ino) != (checked.st_dev, checked.st_ino):
                raise _Skipped("unreadable")
            data = file.read(min(max_bytes, budget) + 1)  # a size can lie (/proc files report 0) or grow
    except OSError:  # permissions, a broken link: search the rest
        raise _Skipped("unreadable") from None
    _check_size(len(data), max_bytes, budget)
    return data


def _size(n: int) -> str:
    for unit, scale in (("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} bytes"


def _real_path(path: Path) -> Path:
    """The path with every link followed; unlike Path.resolve, a link loop does not raise (the stat after it does)."""
    return Path(os.path.realpath(path))


def _check_size(size: int, max_bytes: int, budget: int) -> None:
    if size > max_bytes:
        raise _Skipped("file size cap")
    if size > budget:
        raise _Skipped("total size cap")


def _passages(text: str, size: int) -> Iterator[str]:
    """Paragraphs, merged up to `size` characters and cut where a single one is longer."""
    current = ""
    for paragraph in re.split(r"\n\s*\n", text):
        paragraph = paragraph.strip()
        if not paragraph:
            continue
        if current and len(current) + len(paragraph) + 2 > size:
            yield current
            current = ""
        current = f"{current}\n\n{paragraph}" if current else paragraph
        while len(current) > size:
            yield current[:size]
            current = current[size:]
    if current:
        yield current


def _snippet(text: str, terms: set[str], width: int = 300) -> str:
    flat = " ".join(text.split())
    lowered = flat.lower()
    hits = [pos for term in terms if (pos := lowered.find(term)) >= 0]
    start = max(min(hits, default=0) - width // 4, 0)
    snippet = flat[start : start + width]
    return ("..." if start else "") + snippet + ("..." if start + width < len(flat) else "")


def search_or_raise(query: str, provider: SearchProvider | None = None, k: int = 5) -> str:
    """search as the registry calls it: a ToolError, which the registry turns into an error result."""
    if provider is None:
        raise ToolError("no documents configured; pass --search-docs DIR to search local documents")
    if not query.strip():
        raise ToolError("the query is empty")
    results = provider.search(query, k)
    if not results:
        return f"no documents match {query!r}"
    return "\n\n".join(f"[{i}] {title}\n{snippet}" for i, (title, snippet) in enumerate(results, 1))


def search(query: str, provider: SearchProvider | None = None, k: int = 5) -> str:
    """Search `provider` and list the best passages. Never raises: problems come back as 'error: ...' text."""
    try:
        return search_or_raise(query, provider, k)
    except ToolError as exc:
        return f"error: {exc}"
    except Exception as exc:  # a provider the user wrote (a web search, say) failing
        return f"error: search failed: {type(exc).__name__}: {exc}"
