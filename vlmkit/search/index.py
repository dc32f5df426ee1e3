"""A persistent, incremental image index: SQLite holds the truth, a vector store answers queries.

An index is a folder:
    meta.sqlite        one row per image: path, content hash, size, mtime, model id, vector
    vectors.usearch    the ANN graph (or a Qdrant collection): a derived copy of the vectors

Every batch of new vectors is one SQLite transaction, so an interrupted run keeps
what it committed and the next run resumes where it stopped. Each change carries a
sequence number; the store remembers up to which number it has caught up, and
`sync` replays the rest (or rebuilds the store if its count disagrees), so a crash
between SQLite and the store, a deleted graph file, or a switch of backend heals
itself. Vectors of different models never share an index.
"""
from __future__ import annotations

import fnmatch
import glob as globlib
import hashlib
import os
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from ..errors import ImageError, VlmkitError
from .stores import VectorStore, open_store

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
DB_NAME = "meta.sqlite"
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused, so a stale store id cannot point at another file
    path TEXT UNIQUE NOT NULL,
    hash TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    model_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    vector BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS images_seq ON images(seq);
CREATE INDEX IF NOT EXISTS images_hash ON images(hash);
CREATE TABLE IF NOT EXISTS removed (id INTEGER PRIMARY KEY, seq INTEGER NOT NULL);
"""


class SearchIndexError(VlmkitError):
    """The index folder is missing, locked, or holds another model's vectors."""


@dataclass
class Hit:
    path: str
    score: float
    size: int
    hash: str
    id: int


@dataclass
class IndexReport:
    added: int = 0
    changed: int = 0
    unchanged: int = 0
    removed: int = 0
    reused: int = 0  # identical content already embedded elsewhere in the index (a copy or a move)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    total: int = 0
    seconds: float = 0.0

    @property
    def embedded(self) -> int:
        return self.added + self.changed - self.reused


class ImageIndex:
    """Open (or create) the index folder `root`. Writers hold a lock; readers sync in memory only."""

    def __init__(self, root: str | os.PathLike, backend: str | None = None, store_options: dict | None = None, readonly: bool = False):
        self.root = Path(root)
        self.readonly = readonly
        db = self.root / DB_NAME
        if readonly:
            if not db.is_file():
                raise SearchIndexError(f"no index at {self.root} (run: vlmkit index DIR --db {self.root})")
            self.conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        else:
            if self.root.exists() and not self.root.is_dir():
                raise SearchIndexError(f"--db must be a folder (the index keeps several files): {self.root} is a file")
            self.root.mkdir(parents=True, exist_ok=True)
            self._lock = _acquire_lock(self.root / ".lock")
            self.conn = sqlite3.connect(db)
            self.conn.execute("PRAGMA journal_mode=WAL")  # readers can search while an index run commits
            self.conn.executescript(SCHEMA)
        self.backend = backend or self.get_meta("backend") or "usearch"
        self.store_options = store_options or {}
        self.store: VectorStore | None = None
        if self.dim:
            self._open_store()

    # ---- metadata ----
    def get_meta(self, key: str) -> str | None:
        try:
            row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        except sqlite3.OperationalError:
            return None
        return row[0] if row else None

    def _set_meta(self, key: str, value) -> None:
        self.conn.execute("INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, str(value)))

    @property
    def model_id(self) -> str | None:
        return self.get_meta("model_id")

    @property
    def dim(self) -> int:
        return int(self.get_meta("dim") or 0)

    @property
    def seq(self) -> int:
        return int(self.get_meta("seq") or 0)

    def __len__(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM images").fetchone()[0]

    def bind_model(self, model_id: str, dim: int, model_path: str | None = None, rebuild: bool = False) -> None:
        """Tie the index to one model; a different model is refused unless `rebuild` wipes the vectors."""
        if self.model_id and self.model_id != model_id:
            if not rebuild:
                raise SearchIndexError(
                    f"{self.root} holds vectors from model {self.model_id}, not {model_id}; "
                    "vectors of different models cannot be compared: use another --db, or --rebuild to re-embed everything"
                )
            self._wipe()
        with self.conn:
            self._set_meta("model_id", model_id)
            self._set_meta("dim", dim)
            self._set_meta("backend", self.backend)
            if model_path:
                self._set_meta("model_path", model_path)
        if self.store is None or self.store.dim != dim:
            self._open_store()

    def _wipe(self) -> None:
        with self.conn:
            self.conn.execute("DELETE FROM images")
            self.conn.execute("DELETE FROM removed")
            self.conn.execute("DELETE FROM meta WHERE key LIKE 'store_seq:%'")
        if self.store is not None:
            self.store.reset()

    # ---- the store, kept in step with SQLite ----
    def _open_store(self) -> None:
        self.store = open_store(self.backend, self.root, self.dim, self.store_options)
        self.sync()

    def sync(self) -> None:
        """Replay changes the store has not seen; rebuild it from SQLite if its count disagrees."""
        store, key = self.store, f"store_seq:{self.store.key}"
        done = int(self.get_meta(key) or 0)
        seq = self.seq
        if done < seq and len(store):  # an empty store skips the replay: the count check below rebuilds it whole
            for ids, vecs in self._vectors_since(done):
                store.upsert(ids, vecs)
            gone = np.array([r[0] for r in self.conn.execute("SELECT id FROM removed WHERE seq > ?", (done,))], dtype=np.int64)
            store.remove(gone)
        if len(store) != len(self):
            store.reset()
            for ids, vecs in self._vectors_since(0):
                store.upsert(ids, vecs)
        if not self.readonly and (done != seq or len(store) != len(self)):
            self._mark_synced(seq)

    def _mark_synced(self, seq: int) -> None:
        self.store.save()  # the store first: a stamp must never run ahead of what is on disk
        with self.conn:
            self._set_meta(f"store_seq:{self.store.key}", seq)
            # removals every backend has seen are no longer needed; a lagging one rebuilds by count
            self.conn.execute("DELETE FROM removed WHERE seq <= ?", (seq,))

    def _vectors_since(self, seq: int, chunk: int = 8192) -> Iterable[tuple[np.ndarray, np.ndarray]]:
        cur = self.conn.execute("SELECT id, vector FROM images WHERE seq > ? ORDER BY id", (seq,))
        while rows := cur.fetchmany(chunk):
            ids = np.array([r[0] for r in rows], dtype=np.int64)
            yield ids, np.stack([np.frombuffer(r[1], dtype=np.float32) for r in rows])

    # ---- writes: one transaction per batch ----
    def _next_seq(self) -> int:
        s = self.seq + 1
        self._set_meta("seq", s)
        return s

    def commit_batch(self, rows: list[tuple[str, str, int, int, np.ndarray]], touched: list[tuple[str, int, int]] = ()) -> None:
        """rows: (path, hash, size, mtime_ns, vector [D]) to insert or replace; touched: (path, size, mtime_ns)
        whose content is unchanged. One transaction, then the store."""
        model_id = self.model_id
        with self.conn:
            seq = self._next_seq()
            for path, h, size, mtime, vec in rows:
                blob = np.ascontiguousarray(vec, dtype=np.float32).tobytes()
                self.conn.execute(
                    "INSERT INTO images(path, hash, size, mtime_ns, model_id, seq, vector) VALUES(?,?,?,?,?,?,?) "
                    "ON CONFLICT(path) DO UPDATE SET hash=excluded.hash, size=excluded.size, mtime_ns=excluded.mtime_ns, "
                    "model_id=excluded.model_id, seq=excluded.seq, vector=excluded.vector",
                    (path, h, size, mtime, model_id, seq, blob),
                )
            for path, size, mtime in touched:
                self.conn.execute("UPDATE images SET size=?, mtime_ns=? WHERE path=?", (size, mtime, path))
        if rows:
            ids = np.array([self.conn.execute("SELECT id FROM images WHERE path=?", (r[0],)).fetchone()[0] for r in rows], dtype=np.int64)
            self.store.upsert(ids, np.stack([r[4] for r in rows]).astype(np.float32))
        self._store_seq = seq

    def remove_paths(self, paths: list[str]) -> int:
        if not paths:
            return 0
        with self.conn:
            seq = self._next_seq()
            ids = []
            for p in paths:
                row = self.conn.execute("SELECT id FROM images WHERE path=?", (p,)).fetchone()
                if row:
                    ids.append(row[0])
                    self.conn.execute("DELETE FROM images WHERE id=?", (row[0],))
                    self.conn.execute("INSERT OR REPLACE INTO removed(id, seq) VALUES(?, ?)", (row[0], seq))
        self.store.remove(np.array(ids, dtype=np.int64))
        self._store_seq = seq
        return len(ids)

    def flush(self) -> None:
        """Save the store and record how far it has caught up (only as far as it really has)."""
        if self.readonly or self.store is None:
            return
        seq = getattr(self, "_store_seq", None)
        if seq is not None:
            self._mark_synced(seq)

    # ---- reads ----
    def rows(self) -> dict[str, tuple[int, str, int, int]]:
        """path -> (id, hash, size, mtime_ns)."""
        return {r[0]: r[1:] for r in self.conn.execute("SELECT path, id, hash, size, mtime_ns FROM images")}

    def hashes(self) -> dict[str, int]:
        return {h: i for h, i in self.conn.execute("SELECT hash, id FROM images")}

    def vector(self, id_: int) -> np.ndarray:
        return np.frombuffer(self.conn.execute("SELECT vector FROM images WHERE id=?", (id_,)).fetchone()[0], dtype=np.float32)

    def search(self, queries: np.ndarray, k: int = 10) -> list[list[Hit]]:
        """queries [Q, D] unit vectors -> for each, up to k hits, best first."""
        if self.store is None or not len(self):
            return [[] for _ in range(len(queries))]
        queries = np.asarray(queries, dtype=np.float32).reshape(-1, self.dim)
        ids, scores = self.store.search(queries, k)
        meta = {r[0]: r[1:] for r in self.conn.execute(
            f"SELECT id, path, size, hash FROM images WHERE id IN ({','.join(str(int(i)) for i in set(ids.ravel().tolist()) if i >= 0) or 'NULL'})")}
        out = []
        for q in range(len(queries)):
            hits = [Hit(meta[i][0], float(s), meta[i][1], meta[i][2], int(i)) for i, s in zip(ids[q].tolist(), scores[q].tolist()) if i in meta]
            out.append(hits)
        return out

    def close(self) -> None:
        try:
            self.flush()
        finally:
            if self.store is not None:
                self.store.close()
            self.conn.close()
            lock = getattr(self, "_lock", None)
            if lock is not None:
                lock.close()

    def __enter__(self) -> "ImageIndex":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _acquire_lock(path: Path):
    import fcntl

    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise SearchIndexError(f"another vlmkit process is writing to the index {path.parent}") from None
    return f


# ---------------------------------------------------------------- scanning and indexing
@dataclass
class Scan:
    files: dict[str, tuple[int, int]]  # absolute path -> (size, mtime_ns)
    in_scope: callable  # path -> bool: may a missing file under this scan be removed from the index?


def scan(targets: list[str], exclude: Path | None = None) -> Scan:
    """Image files under folders, glob patterns or single files (hidden files and folders skipped)."""
    files: dict[str, tuple[int, int]] = {}
    prefixes, patterns, singles = [], [], set()
    for t in targets:
        if globlib.has_magic(t):
            pattern = os.path.abspath(os.path.expanduser(t))
            patterns.append(pattern)
            found = [Path(p) for p in globlib.glob(pattern, recursive=True)]
        else:
            p = Path(t).expanduser().resolve()
            if p.is_dir():
                prefixes.append(str(p) + os.sep)
                found = (Path(d) / f for d, dirs, fs in os.walk(p) if not _hidden_under(Path(d), p) for f in fs)
            elif p.is_file():
                singles.add(str(p))
                found = [p]
            else:
                raise VlmkitError(f"{t}: no such file or folder")
        for f in found:
            if f.name.startswith(".") or f.suffix.lower() not in IMAGE_EXTENSIONS or not f.is_file():
                continue
            f = f.resolve()
            if exclude is not None and exclude in f.parents:
                continue
            st = f.stat()
            files[str(f)] = (st.st_size, st.st_mtime_ns)

    def in_scope(path: str) -> bool:
        return path in singles or any(path.startswith(pre) for pre in prefixes) or any(fnmatch.fnmatch(path, pat) for pat in patterns)

    return Scan(files, in_scope)


def _hidden_under(d: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in d.relative_to(root).parts)


def file_hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


@dataclass
class _Prepared:
    path: str
    size: int
    mtime: int
    hash: str = ""
    pixels: object = None  # [3, S, S] tensor, when it needs embedding
    reuse_id: int | None = None  # same content already embedded under another path
    unchanged: bool = False
    error: str | None = None


def index_images(
    targets: list[str],
    db: str | os.PathLike,
    encoder,
    batch_size: int = 32,
    backend: str | None = None,
    store_options: dict | None = None,
    rehash: bool = False,
    rebuild: bool = False,
    model_path: str | None = None,
    progress: bool = True,
    workers: int = 2,
) -> IndexReport:
    """Embed new and changed images under `targets` into the index at `db`; drop deleted ones.

    `encoder` needs .model_id, .embed_dim, .image_processor (list -> [N, 3, S, S]) and
    .encode_image ([N, 3, S, S] -> [N, D]). A file whose size and mtime are unchanged is
    skipped without reading it (`rehash` reads and hashes every file anyway); otherwise
    its content hash decides.
    """
    import torch
    from tqdm import tqdm

    t0 = time.perf_counter()
    report = IndexReport()
    with ImageIndex(db, backend=backend, store_options=store_options) as index:
        index.bind_model(encoder.model_id, int(encoder.embed_dim), model_path, rebuild=rebuild)
        found = scan(targets, exclude=index.root.resolve())
        known = index.rows()
        todo = [(p, s, m) for p, (s, m) in sorted(found.files.items()) if rehash or p not in known or known[p][2:] != (s, m)]
        report.unchanged = len(found.files) - len(todo)
        hashes = index.hashes()
        prep = _Preparer(encoder.image_processor, known, hashes)
        device = next((p.device for p in getattr(encoder, "parameters", lambda: iter(()))()), torch.device("cpu"))
        with ThreadPoolExecutor(max(1, workers)) as pool, tqdm(total=len(todo), unit="img", desc="indexing", disable=not progress) as bar:
            batches = [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]
            pending = pool.map(prep, batches[0]) if batches else None
            for bi in range(len(batches)):
                items = list(pending)
                # decode the next batch in threads while this one runs through the model
                pending = pool.map(prep, batches[bi + 1]) if bi + 1 < len(batches) else None
                _commit(index, encoder, items, known, report, device)
                bar.update(len(items))
        # Deletions last: a file that moved is then found by its hash and its vector reused.
        gone = [p for p in known if p not in found.files and found.in_scope(p)]
        # A file that became unreadable no longer has the content its old vector describes.
        gone += [p for p, _ in report.failed if p in known]
        report.removed = index.remove_paths(gone)
        report.total = len(index)
    report.seconds = time.perf_counter() - t0
    return report


class _Preparer:
    def __init__(self, image_processor, known: dict, hashes: dict):
        self.image_processor, self.known, self.hashes = image_processor, known, hashes

    def __call__(self, item: tuple[str, int, int]) -> _Prepared:
        path, size, mtime = item
        out = _Prepared(path, size, mtime)
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            out.error = f"cannot read: {e.strerror or e}"
            return out
        out.hash = file_hash(data)
        old = self.known.get(path)
        if old is not None and old[1] == out.hash:
            out.unchanged = True
            return out
        if out.hash in self.hashes:
            out.reuse_id = self.hashes[out.hash]
            return out
        try:
            out.pixels = self.image_processor([data])[0]
        except ImageError as e:
            out.error = str(e).removeprefix("image: ").removeprefix("image ")
        return out


def _commit(index: ImageIndex, encoder, items: list[_Prepared], known: dict, report: IndexReport, device) -> None:
    import torch

    to_embed = [it for it in items if it.pixels is not None]
    vecs = {}
    if to_embed:
        with torch.no_grad():
            emb = encoder.encode_image(torch.stack([it.pixels for it in to_embed]).to(device))  # [B, D]
        vecs = {it.path: v for it, v in zip(to_embed, emb.float().cpu().numpy())}
    rows, touched = [], []
    for it in items:
        if it.error is not None:
            report.failed.append((it.path, it.error))
        elif it.unchanged:
            touched.append((it.path, it.size, it.mtime))
            report.unchanged += 1
        else:
            vec = vecs[it.path] if it.reuse_id is None else index.vector(it.reuse_id)
            report.reused += it.reuse_id is not None
            rows.append((it.path, it.hash, it.size, it.mtime, vec))
            if it.path in known:
                report.changed += 1
            else:
                report.added += 1
    index.commit_batch(rows, touched)
