"""lib/runio.py: how a run's files are written and read, so that a crash, a torn line or a full disk loses nothing a
resume would trust. Stdlib only: report.py and plot.py read runs without torch.

- append / append_jsonl: a write that fails half-way (a full disk) is cut back to where it began; before appending
  to a JSONL file, a last line without its newline or one that does not parse (a crash mid-append) is moved to
  <name>.torn.jsonl, kept, so the new line is not glued onto it.
- atomic / write_text: a whole file or folder is written under a temporary name, fsynced, then renamed.
- read_jsonl: the rows, and each unreadable line named by its number (never skipped in silence).
- WriteFailed: any write that did not complete, naming the path and the free space (steer_heal.py exits 4).
- lock / unlock: one writer per run folder (<run>/.lock); readers (report, plot, export) take none.
- made_by / load_config / load_script: which experiment file made a run, its config as that file's Config, and
  the file itself loaded by path (a companion's --script).
"""
import atexit, contextlib, dataclasses, errno, hashlib, importlib.util, json, math, os, shutil, socket, sys, time
from pathlib import Path

from lib import track  # samples.md is mirrored to --track (track imports nothing of the project)

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


class Stop(Exception):
    """A planned exit with a message a researcher can act on. code 2 = bad input, 3 = starved (4: a write failed,
    WriteFailed). It lives here, in the leaf every file imports, so a copy of steer_heal.py catches the same class."""
    def __init__(self, msg, code=2):
        super().__init__(msg)
        self.code = code


# ---- one writer per run folder: two processes appending to one rounds.jsonl interleave their lines and overwrite
# each other's round_<k>/ (a cluster that requeues a preempted job while the first still drains does exactly this).
# The lock is a file made with O_CREAT|O_EXCL, so of two processes only one makes it; it names its holder, so a lock
# left by a process that died (SIGKILL, power) is recognised: on this host by its pid, elsewhere by its SLURM job.
LOCK_NAME = ".lock"
LOCKS = {}  # run folder -> (the lock file this process holds, whether taking it made the folder)


def proc_start(pid):
    """When process `pid` started (clock ticks since boot, from /proc), or None where /proc has no such field: a pid
    that is alive but started at another time is a new process that reused a dead holder's number."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def holder_gone(h):
    """Why the process that wrote lock contents `h` is known to have ended, or "" (alive, or not knowable here)."""
    job = os.environ.get("SLURM_JOB_ID")
    if h.get("host") != socket.gethostname():  # a pid on another host cannot be checked from here...
        return (f"it was an earlier attempt of this SLURM job ({job}), requeued since" if job and h.get("job") == job
                else "")  # ...except SLURM's: a requeued job keeps its id and runs only once the old attempt ended
    try:
        os.kill(h["pid"], 0)
    except ProcessLookupError:
        return "that process is no longer running"
    except PermissionError:  # alive, under another user
        return ""
    start = proc_start(h["pid"])
    return "its pid now belongs to another process" if start and h.get("proc_start") not in (None, start) else ""


def lock(run_dir, log=print):
    """Take <run_dir>/.lock before anything of the run is written (made with the folder if need be). A lock whose
    holder has ended is taken over with one log line; a live holder, or one on another host, is Stop (exit 2)
    naming it and the way out. Released by unlock() and at exit."""
    run_dir = Path(os.path.abspath(run_dir))
    if run_dir in LOCKS:
        return
    made = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    me = dict(pid=os.getpid(), host=socket.gethostname(), started=time.strftime("%Y-%m-%dT%H:%M:%S"),
              argv=[Path(sys.argv[0]).name, *sys.argv[1:]], job=os.environ.get("SLURM_JOB_ID", ""),
              proc_start=proc_start(os.getpid()))
    for _ in range(3):  # a stale lock removed, then made again: at most a couple of tries
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            raw = read_lock(path)
            if raw is None:
                continue  # released between the two calls: try again
            h = parse(raw) if raw.strip() else {}
            h = h if isinstance(h, dict) and isinstance(h.get("pid"), int) else {}  # a holder killed mid-write
            gone = "its holder died before naming itself" if not h else (
                "it is this process's own" if h["pid"] == me["pid"] and h.get("host") == me["host"] else holder_gone(h))
            if not gone:
                cmd = " ".join(h.get("argv") or ["?"])
                where = "this host" if h.get("host") == me["host"] else f"another host, {h.get('host')}"
                raise Stop(f"{run_dir} is being written by another process: pid {h['pid']} on {where}, started "
                           f"{h.get('started')}, running `{cmd}` (two writers would interleave rounds.jsonl and "
                           "overwrite each other's rounds). Wait for it to end" + (
                               f" (or stop it: kill {h['pid']}), then run again." if where == "this host" else
                               f", then run again; if it has ended (ssh {h.get('host')} ps -p {h['pid']}), delete "
                               f"{path} and run again."))
            if read_lock(path) != raw:  # taken over by another process since it was read: look again
                continue
            path.unlink(missing_ok=True)
            if h and gone != "it is this process's own":
                log(f"  {path}: taken over from pid {h['pid']} on {h.get('host')} (started {h.get('started')}, "
                    f"`{' '.join(h.get('argv') or [])}`): {gone}")
            continue
        with os.fdopen(fd, "wb", buffering=0) as f:
            write_all(f, (json.dumps(me) + "\n").encode())
        if not LOCKS:
            atexit.register(unlock)
        LOCKS[run_dir] = (path, made)
        return
    raise Stop(f"{path}: could not be taken (other processes keep taking it). Run again once they have ended.")


def read_lock(path):
    """A lock file's bytes (None if there is none). Empty: its maker is between making and writing it, or died
    there; a tenth of a second tells which."""
    for wait in (0.1, 0):
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        if raw.strip() or not wait:
            return raw
        time.sleep(wait)


def unlock(run_dir=None):
    """Release this process's lock on run_dir (all its locks if None): the lock file goes (only if still ours), and
    the folder too if taking the lock made it and nothing else was written there (a run refused before it began)."""
    for d in [Path(os.path.abspath(run_dir))] if run_dir is not None else list(LOCKS):
        path, made = LOCKS.pop(d, (None, False))
        if path is None:
            continue
        with contextlib.suppress(OSError):
            if (parse(path.read_bytes()) or {}).get("pid") == os.getpid():
                path.unlink()
            if made and not any(d.iterdir()):
                d.rmdir()


def clear_run_dir(run_dir):
    """Empty a run folder for a new run (--overwrite), keeping this process's lock."""
    for p in Path(run_dir).iterdir():
        if p.name != LOCK_NAME:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


# ---- the run's own files: its log, its rounds.jsonl lines, its config, the rounds a resume or load trusts
LOG = {"file": None, "run_dir": None, "argv": [], "command": ""}  # command: the script main() runs as (config.json's argv)


def log(msg=""):
    print(msg, flush=True)
    if LOG["file"]:
        try:
            LOG["file"].write(msg + "\n")
            LOG["file"].flush()
        except OSError as e:  # a full disk: stop writing log.txt (the terminal still has it), then exit 4
            f, LOG["file"] = LOG["file"], None
            raise WriteFailed(f.name, e) from e


def finite(x):  # strict JSON: NaN / inf become null
    if isinstance(x, dict):
        return {k: finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [finite(v) for v in x]
    return None if isinstance(x, float) and not math.isfinite(x) else x


def append_line(run_dir, obj):
    """One rounds.jsonl line, fsynced; a torn last line is moved aside first, a failed write cut back. Mirrored
    to --track."""
    obj.setdefault("time", time.strftime("%Y-%m-%dT%H:%M:%S"))
    append_jsonl(Path(run_dir) / "rounds.jsonl", [finite(obj)], log)
    track.line(obj)


def read_lines(run_dir, problems=None):
    """rounds.jsonl's lines; each unreadable one (a line torn by a crash: that stage did not complete) is left out
    and, if a list is given, named in `problems`."""
    rows, bad = read_jsonl(Path(run_dir) / "rounds.jsonl")
    if problems is not None:
        problems += bad
    return rows


def live_lines(lines):
    """The lines a resume has not superseded: a `resume` line discards the `stop` lines before it (the resume runs
    the stopped round again, and writes its own if it stops again), and with redo_from j every line of a round
    >= j before it."""
    out = []
    for x in lines:
        if x.get("kind") == "resume":
            j = x["redo_from"] if isinstance(x.get("redo_from"), int) else math.inf
            out = [y for y in out if y.get("kind") != "stop" and not (isinstance(y.get("round"), int) and y["round"] >= j)]
        out.append(x)
    return out


def round_lines(lines):
    """{k: round k's latest line} among the live lines."""
    return {x["round"]: x for x in live_lines(lines) if x.get("kind") == "round" and isinstance(x.get("round"), int)}


def completed_rounds(run_dir):
    """Rounds 0, 1, ... up to the first whose line is not "ok" (over the ppl ceiling, or never finished)."""
    lines, done = round_lines(read_lines(run_dir)), []
    while lines.get(len(done), {}).get("status") == "ok":
        done.append(len(done))
    return done


def made_by(run_dir):
    """(the experiment file that made a run, the command that continues it): config.json's script, and its argv's
    head (rivals.py [--script FILE]). Older runs recorded no script: argv[0]'s, rivals.py's being steer_heal.py."""
    meta = json.loads((Path(run_dir) / "config.json").read_text())
    argv = [str(a) for a in meta.get("argv") or ["steer_heal.py"]]
    made = meta.get("script") or (argv[0] if argv[0] != "rivals.py" else "steer_heal.py")
    return made, " ".join(argv[:3] if argv[1:2] == ["--script"] else argv[:1])


def load_config(run_dir, Config):
    """config.json as the running script's Config (a copy of steer_heal.py passes its own). A field it does not
    know is refused, naming the script that made the run (whose Config had it): dropped, the run would go on
    without a knob it ran with. Only Config.RETIRED's are dropped: knobs the script no longer has, which never
    changed what its runs computed (a Config that extends it with one of them, rivals.py's, reads it)."""
    meta = json.loads((Path(run_dir) / "config.json").read_text())
    types = {f.name: f.type for f in dataclasses.fields(Config)}
    retired = set(getattr(Config, "RETIRED", ())) - set(types)  # knobs it dropped that changed nothing its runs computed
    saved = {k: v for k, v in meta["config"].items() if k not in retired}
    unknown = [k for k in saved if k not in types]
    if unknown:
        made, command = made_by(run_dir)
        mine = Path(getattr(sys.modules.get(Config.__module__), "__file__", "?")).name
        them, it = ", ".join("--" + k.replace("_", "-") for k in unknown), "it" if len(unknown) == 1 else "them"
        raise Stop(f"{run_dir}/config.json has {them}, which {mine}'s Config does not know: " + (
            f"the run was made by {made}, whose Config had {it}. Read it with that script: python {command} --resume "
            f"{run_dir}; export.py and rivals.py take --script {made}." if made != mine else
            f"the run was made by an earlier {made} (started {meta.get('started', '?')}) that had {it}. Read it with "
            f"that version (git log -- {made}), or delete {it} from config.json if the run did not depend on {it}."))
    return Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()})  # JSON lists: tuple fields


def load_script(path="steer_heal.py"):
    """The experiment file a companion runs (its --script: steer_heal.py, or a copy such as my_idea.py), loaded by
    path, so the companion uses that file's Config, stages, METHODS and functions (rivals, export, bench,
    compare_generators, report --reread). A bare name that is not in the working folder is looked for in the
    repository root. Loaded once: a module of that name from the same file is reused (so --script steer_heal.py is the
    `steer_heal` every import names). Loading it imports torch; this file stays stdlib."""
    p = Path(path)
    if not p.exists() and p.name == path:
        p = Path(__file__).resolve().parent.parent / p  # the repository root (this file is lib/runio.py)
    if not p.is_file() or p.suffix != ".py":
        raise Stop(f"--script {path}: no such Python file; give a copy of steer_heal.py (cp steer_heal.py my_idea.py).")
    p, name = p.resolve(), p.stem
    mod = sys.modules.get(name)
    if mod is not None:
        if Path(getattr(mod, "__file__", None) or "").resolve() == p:
            return mod
        raise Stop(f"--script {path}: a module named {name} is already loaded from {mod.__file__}; rename the copy.")
    spec = importlib.util.spec_from_file_location(name, p)
    mod = sys.modules[name] = importlib.util.module_from_spec(spec)  # before it runs: its dataclasses look it up
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        del sys.modules[name]
        raise
    return mod


def check_adapters(run_dir, rounds):
    """Each round's adapter files against the sha256 its round line recorded when they were saved (older runs:
    that they exist). The first bad one is bad input: which file, what is wrong, and the way out."""
    lines = round_lines(read_lines(run_dir))
    for k in rounds:
        folder, want = Path(run_dir) / f"round_{k}" / "adapter", lines[k].get("adapter_sha256") or {}
        for f in [folder / n for n in want or ("adapter_config.json", "adapter_model.safetensors")]:
            why = ("is missing" if not f.exists() else "does not match the sha256 recorded when it was saved (changed "
                   "or cut short since)" if f.name in want and sha256(f) != want[f.name] else None)
            if why:
                raise Stop(f"{f} {why}, so round {k} cannot be baked back in. Way out: python steer_heal.py --resume "
                           f"{run_dir} --redo-from {k} runs round {k} and later again"
                           + (f" on rounds 0-{k - 1}, which verify; or use only those: export.py --round {k - 1}, "
                              f"load_run(run, upto_round={k - 1})" if k else " from the base model") + ".")


def rounds_to_load(run_dir, upto_round=None):
    """(rounds, note) for load_run / export.py: the completed rounds <= upto_round, stopping before a round whose
    greedy answers are over the ppl ceiling unless upto_round names it; note says so ("" when nothing is over)."""
    ceil, lines = json.loads((Path(run_dir) / "config.json").read_text())["config"].get("ppl_ceil", 2.0), read_lines(run_dir)
    done, rl = completed_rounds(run_dir), round_lines(lines)
    base = next((x["ppl_base"] for x in lines if x.get("kind") == "base" and x.get("ppl_base")), None)
    over = lambda x: x.get("status") == "over_ceiling" or base and (x.get("ppl_base") or 0) > ceil * base
    ks = done + [len(done)] * (rl.get(len(done), {}).get("status") == "over_ceiling")
    ks = [k for k in ks if upto_round is None or k <= upto_round]
    bad = next((k for k in ks if over(rl[k])), None)  # older runs marked such a round "ok"
    if bad is None:
        return ks, ""
    why = (f"round {bad} is over the ppl ceiling (its greedy answers' ppl_base {rl[bad].get('ppl_base'):.4g} > "
           f"ppl_ceil {ceil} x base {base:.4g})")
    if upto_round is not None:
        return ks, f"{why}: merged all the same, as rounds <= {upto_round} were asked for"
    return ks[:bad], (f"{why}: merging rounds {ks[:bad] or 'none (the base model)'} only; ask for round {bad} "
                      "(--round / upto_round) to merge it anyway")


SAID = set()  # lines log_once() already printed


def log_once(msg):
    if msg not in SAID:
        SAID.add(msg)
        log(msg)


def write_samples(run_dir, title, answers, users):
    text = "".join(f"**{u}**\n\n> {(a['text'] or '(empty)').replace(chr(10), chr(10) + '> ')}\n\n"
                   for u, a in zip(users, answers))
    append(Path(run_dir) / "samples.md", f"\n## {title}\n\n{text}".encode())
    track.text("samples", f"## {title}\n\n" + "\n\n".join(f"**{u}**\n\n> {a['text']}" for u, a in zip(users, answers)))


def format_line(line, seconds):
    """A measured line's log: every reader of its answers (its mean, and the paired Δ CI against the base line), then
    on_topic's validity, the persona statements' gap and tinymfv's reading where measured."""
    def said(key, fmt=".3f"):
        v, ci = line.get(key), line.get(key + "_ci")
        return f"{key} {v:{fmt}}" + (f" [Δ {ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "") if isinstance(v, (int, float)) else ""
    parts = [said(key, ".4f" if key == "kl_base" else ".3f") for key in line.get("items", {})]
    parts += [f"(on_topic own vs other prompt AUC {line['on_topic_auc']:.3f})" if line.get("on_topic_auc") else "",
              said("rep"), said("trait_self"), "| " + said("persona_gap", ".4f") if "persona_gap" in line else "",
              f"| auth_nats {line['auth_nats']:.3f} top1 {line.get('top1') or 0:.2f} (chance "
              f"{line.get('top1_chance') or 0:.2f})" if "auth_nats" in line else ""]
    return f"[{line['kind']} r{line['round']}] " + " ".join(p for p in parts if p) + f" | {seconds:.0f}s"


def format_direction(dirs, against):
    """A direction check's log: each trait reader's shift under the intervention and under its opposite (`against`),
    and the CI of their difference."""
    return f"  direction check ({against}): " + "; ".join(
        f"{key} {d['persona']:+.3f} vs opposite {d['opposite']:+.3f} (persona - opposite CI [{d['diff_ci'][0]:+.3f}, "
        f"{d['diff_ci'][1]:+.3f}])" for key, d in dirs.items())


def format_heal(stats, seconds, kl_agg, tau, lam):
    """A heal's log: validation NLL before -> after, the barrier's KL and how often it bit, faults, where the
    reference's states came from."""
    return (f"  healed in {seconds:.0f}s: val nll {stats.get('val_nll_before', math.nan):.3f} -> "
            f"{stats.get('val_nll', math.nan):.3f}, kl_{kl_agg} {stats['kl_agg']:.3f} (tau {stats.get('tau', tau):.3g}), "
            f"barrier active {stats['barrier_active']:.0%}, lam_r {lam:.3g}, non-finite steps {stats['nonfinite']}"
            + (f"; reference states from {'the filter' if stats['ref_states'] == 'filter' else 'a pass'} "
               f"({stats['ref_pass_s']:.1f}s)" if "ref_states" in stats else ""))


def dose_table(items):
    """Per dose of a round's scored completions (the unsteered reference at dose 0): how many, kept, their mean tail
    ppl (capped: one inf would hide the rest), repetition and on-topic cosine, and what dropped them."""
    rows = []
    for d in sorted({x["dose"] for x in items}):
        xs = [x for x in items if x["dose"] == d]
        topic = [x["topic"] for x in xs if x.get("topic") is not None]
        rows.append(dict(dose=round(d, 4), n=len(xs), kept=sum(x["kept"] for x in xs),
                         kept_frac=sum(x["kept"] for x in xs) / len(xs),
                         ppl_tail=sum(min(x["ppl_tail"], 1e4) for x in xs) / len(xs),
                         rep=sum(x["rep"] for x in xs) / len(xs), topic=sum(topic) / len(topic) if topic else None,
                         dropped_by=drop_counts(xs)))
    return rows


def drop_counts(items):
    """{filter: completions it dropped} (why_dropped: the first filter each failed)."""
    counts = {}
    for x in items:
        if x["why_dropped"]:
            counts[x["why_dropped"]] = counts.get(x["why_dropped"], 0) + 1
    return counts


def format_dose_table(rows):
    lines = ["   dose    n  kept  kept%  ppl_tail   rep  dropped_by"]
    for r in rows:
        lines.append(f"  {r['dose']:5.2f} {r['n']:4d} {r['kept']:5d} {100 * r['kept_frac']:5.0f}% {r['ppl_tail']:9.2f}"
                     f" {r['rep']:5.2f}  {json.dumps(r['dropped_by'])}")
    return "\n".join(lines)
