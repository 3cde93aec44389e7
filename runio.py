"""runio.py: how a run's files are written and read, so that a crash, a torn line or a full disk loses nothing a
resume would trust. Stdlib only: report.py and plot.py read runs without torch.

- append / append_jsonl: a write that fails half-way (a full disk) is cut back to where it began; before appending
  to a JSONL file, a last line without its newline or one that does not parse (a crash mid-append) is moved to
  <name>.torn.jsonl, kept, so the new line is not glued onto it.
- atomic / write_text: a whole file or folder is written under a temporary name, fsynced, then renamed.
- read_jsonl: the rows, and each unreadable line named by its number (never skipped in silence).
- WriteFailed: any write that did not complete, naming the path and the free space (steer_heal.py exits 4).
"""
import contextlib, errno, hashlib, json, os, shutil
from pathlib import Path

WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO}  # a write, not a bad argument
TAIL = 1 << 20  # bytes read from the end of a JSONL file to find its last line (a line is a few kB)


class WriteFailed(Exception):
    """A write that did not complete. Nothing half-written is left under the final name."""
    def __init__(self, path, err):
        self.path = Path(path)
        super().__init__(f"could not write {path} ({type(err).__name__}: {err}); {free_space(path)}")


def free_space(path):
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return f"{shutil.disk_usage(p).free / 2 ** 20:.1f} MiB free on the disk of {p}"
    except OSError:
        return f"free space on the disk of {p} unknown"


def write_all(f, data):
    """The one place bytes go to disk (tests replace it to fill the disk). f is unbuffered: a failed write
    leaves nothing in a buffer that a later flush could still put there."""
    view = memoryview(data)
    while view:
        view = view[f.write(view):]
    os.fsync(f.fileno())


def append(path, data):
    """Append bytes; on failure cut the file back to its old length, so no half line stays behind."""
    try:
        with open(path, "ab", buffering=0) as f:
            start = f.seek(0, os.SEEK_END)
            try:
                write_all(f, data)
            except BaseException:
                f.truncate(start)  # frees what was written: works on a full disk
                raise
    except OSError as e:
        raise WriteFailed(path, e) from e


def mend_tail(path, log=print):
    """A last line without its newline, or one that does not parse, is moved to <name>.torn.jsonl (appended there,
    kept) and cut off, with one log line. Returns whether it did."""
    path = Path(path)
    if not path.exists():
        return False
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - TAIL))
        tail = f.read()
    start = tail.rstrip(b"\n").rfind(b"\n") + 1  # where the last line begins
    last = tail[start:]
    whole = last.endswith(b"\n")
    if not last.strip() or whole and isinstance(parse(last), dict):
        return False
    torn = path.with_name(path.name.removesuffix(".jsonl") + ".torn.jsonl")
    append(torn, last.rstrip(b"\n") + b"\n")
    try:
        with open(path, "r+b", buffering=0) as f:
            f.truncate(size - len(tail) + start)
            os.fsync(f.fileno())
    except OSError as e:
        raise WriteFailed(path, e) from e
    log(f"  {path.name}: its last line ({len(last)} bytes, {'does not parse' if whole else 'no newline'}: a write cut "
        f"short) is moved to {torn.name}")
    return True


def append_jsonl(path, rows, log=print):
    mend_tail(path, log)
    append(path, "".join(json.dumps(r) + "\n" for r in rows).encode())


def parse(raw):
    try:
        return json.loads(raw)
    except ValueError:  # includes bad UTF-8
        return None


def read_jsonl(path, numbered=False):
    """(rows, problems): the JSON objects of a JSONL file ((line number, object) pairs if numbered), and one
    sentence per line that is not one. A missing file is ([], [])."""
    rows, bad = [], []
    if not os.path.exists(path):
        return rows, bad
    with open(path, "rb") as f:
        for i, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            x = parse(raw)
            if not isinstance(x, dict):
                text = raw.decode("utf-8", "replace").strip()
                why = "not JSON" if x is None and text != "null" else f"a JSON {type(x).__name__}, not an object"
                bad.append(f"line {i}: {why} ({text[:60]!r}{'…' * (len(text) > 60)})")
                continue
            rows.append((i, x) if numbered else x)
    return rows, bad


def count_lines(path):
    """Non-empty lines of a file (0 if absent): what a .torn.jsonl holds."""
    if not os.path.exists(path):
        return 0
    with open(path, "rb") as f:
        return sum(1 for raw in f if raw.strip())


def fsync(p):
    fd = os.open(p, os.O_RDONLY)  # a folder too: that makes a rename in it durable
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic(path):
    """with atomic(path) as tmp: write the file or folder tmp; on success it is fsynced and renamed to path, on any
    failure removed (WriteFailed names path). Whatever wrote it (torch, safetensors) may raise its own error type
    for a full disk, so every error inside counts as a failed write."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield tmp
        for q in [tmp] if tmp.is_file() else [*sorted(x for x in tmp.rglob("*") if x.is_file()), tmp]:
            fsync(q)
        if path.is_dir():
            shutil.rmtree(path)  # a crash here leaves no folder: never a half-written one
        os.replace(tmp, path)
        fsync(path.parent)
    except Exception as e:
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        if isinstance(e, WriteFailed):
            raise
        raise WriteFailed(path, e) from e


def write_text(path, text):
    with atomic(path) as tmp:
        with open(tmp, "wb", buffering=0) as f:
            write_all(f, text.encode())


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
