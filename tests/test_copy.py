"""Copy it, change it, run it: a researcher's `cp steer_heal.py my_idea.py` must run THEIR copy (its Config, its
stages), and so must every companion given --script my_idea.py (rivals, export); and the project's files must import
one way (companions -> core -> leaves), with no circle. The copy's runs use the love persona and no shared data
(--statements none --vignettes none), so these run on a bare clone."""
import ast
import json
import os
import subprocess
import sys

import pytest

from lib import runio
import steer_heal as sh
from test_smoke import TINY_FLAGS

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository root


SCRIPTS = {f[:-3] for f in os.listdir(HERE) if f.endswith(".py") and f != "conftest.py"}  # what one runs
LIB = {"lib." + f[:-3] for f in os.listdir(os.path.join(HERE, "lib")) if f.endswith(".py") and f != "__init__.py"}


def path_of(mod):
    return os.path.join(HERE, *mod.split(".")) + ".py"


def project_imports(mod):
    """The project's own modules (scripts by name, lib's as lib.x) that `mod` imports, anywhere in it (top level or
    inside a function)."""
    out = set()
    for node in ast.walk(ast.parse(open(path_of(mod)).read())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module == "lib":
            out |= {"lib." + a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out & (SCRIPTS | LIB) - {mod}


def test_imports_point_one_way():
    """No file imports one that (directly or through others) imports it back, and none imports itself."""
    files = sorted(SCRIPTS - {f for f in SCRIPTS if f.startswith("test_")} | LIB)
    graph = {f: project_imports(f) for f in files}

    def reach(f, seen):
        for g in graph.get(f, ()):
            if g not in seen:
                seen.add(g)
                reach(g, seen)
        return seen
    circles = sorted(f for f in files if f in reach(f, set()))
    assert not circles, {f: sorted(graph[f]) for f in circles}
    assert len(LIB) >= 9 and "lib.runio" in LIB, sorted(LIB)  # the walk saw the package


def test_lib_leans_on_no_script_but_two():
    """lib/ is what the scripts lean on: its modules import each other and, of the scripts, only eval_mfv (vignettes,
    statements) and report (the --seeds group's report); never steer_heal, a rival, a driver or a plot."""
    up = {m: project_imports(m) & SCRIPTS for m in LIB}
    assert all(s <= {"eval_mfv", "report"} for s in up.values()), up


def test_evidence_imports_only_runio_and_readers():
    """lib/evidence.py (reading a run's files, noise, chance, the direction rule) is a leaf: report.py,
    report_methods.py, sweep.py and plot.py import it, and it imports nothing of the project but runio and readers."""
    assert project_imports("lib.evidence") <= {"lib.runio", "lib.readers"}


def test_each_file_imports_alone():
    for mod in sorted(SCRIPTS - {f for f in SCRIPTS if f.startswith("test_")} | LIB):
        p = subprocess.run([sys.executable, "-c", f"import {mod}"], cwd=HERE, capture_output=True, text=True)
        assert p.returncode == 0, (mod, p.stderr[-500:])


# --- a copy and its companions ----------------------------------------------------------------------------------

def add_line(src, func, line):
    """src with `line` as the first statement of top-level function `func`, after its docstring."""
    fn = next(n for n in ast.parse(src).body if isinstance(n, ast.FunctionDef) and n.name == func)
    at = fn.body[1] if ast.get_docstring(fn) else fn.body[0]
    lines = src.splitlines(keepends=True)
    lines.insert(at.lineno - 1, " " * at.col_offset + line + "\n")
    return "".join(lines)


def add_field(src, line):
    """src with `line` as the last field of class Config."""
    cls = next(n for n in ast.parse(src).body if isinstance(n, ast.ClassDef) and n.name == "Config")
    lines = src.splitlines(keepends=True)
    lines.insert(cls.body[-1].end_lineno, "    " + line + "\n")
    return "".join(lines)


def add_before(src, anchor, text):
    """src with `text` (whole lines) inserted before the line that starts with `anchor`, which must be there once."""
    at = [i for i, line in enumerate(src.splitlines(keepends=True)) if line.startswith(anchor)]
    assert len(at) == 1, anchor
    lines = src.splitlines(keepends=True)
    return "".join(lines[:at[0]] + [text] + lines[at[0]:])


VECTOR_RAN, HEAL_RAN = "my_idea: vector stage ran with my_knob=", "my_idea: heal ran with my_knob="
# a reader and a filter of the copy's own: one table row and one function each (docs/COPYING.md)
SHOUTING = '''def shouting(cfg, users, texts, probe):
    """the share of an answer's words in capitals"""
    return [sum(w.isupper() for w in t.split()) / max(1, len(t.split())) for t in texts]


'''
EXCLAIMS = '''def exclaims(text, persona):
    """the share of the characters that are '!'"""
    return text.count("!") / max(1, len(text))


'''


@pytest.fixture(scope="module")
def copy(tmp_path_factory):
    """my_idea.py: steer_heal.py with knobs of its own (an int, a tuple of strings, a choice, a range), two stages
    changed (each logs that it ran): the vector stage (steer-heal's own) and heal() (which prompt-bake's heal stage, in
    rivals.py, calls), a text reader (shouting) and a filter (exclaim, whose limit is a knob of its own)."""
    src = open(os.path.join(HERE, "steer_heal.py")).read()
    src = add_field(src, "my_knob: int = 7  # my idea's knob")
    src = add_field(src, "my_words: tuple[str, ...] = ('calm',)  # my idea's words")
    src = add_field(src, "my_mode: Literal['soft', 'loud'] = 'soft'  # my idea's mode")
    src = add_field(src, "my_rate: float = 0.5  # my idea's rate (0, 1]")
    src = add_field(src, "exclaim_max: float = 1.0  # drop when '!' is more than this share of the characters [0, 1]")
    src = add_line(src, "vector_stage", f'log(f"{VECTOR_RAN}{{cfg.my_knob}}")')
    src = add_line(src, "heal", f'log(f"{HEAL_RAN}{{cfg.my_knob}}")')
    src = add_before(src, "TEXT_READERS = {", SHOUTING)
    src = src.replace("TEXT_READERS = {\n", "TEXT_READERS = {\n    \"shouting\": shouting,\n")
    src = add_before(src, "FILTERS = [", EXCLAIMS)
    src = src.replace("FILTERS = [\n", 'FILTERS = [\n    ("exclaim", "exclaim", exclaims, "exclaim_max", '
                                     'lambda x, cfg, g, tg: x["exclaim"] > cfg.exclaim_max),\n')
    path = tmp_path_factory.mktemp("copy") / "my_idea.py"
    path.write_text(src)
    return path


def python(copy, *args):
    """A command run as a researcher would, in the copy's folder (the copy imports the project's leaves)."""
    env = dict(os.environ, PYTHONPATH=HERE)
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, env=env, cwd=copy.parent,
                          timeout=600)


def flags(tiny_dir, name, *more):
    return ["--model", tiny_dir, "--out", "runs", "--name", name, *TINY_FLAGS, "--no-baselines", "--persona", "love",
            "--statements", "none", "--vignettes", "none", *more]


def ok(p):
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p


@pytest.fixture(scope="module")
def copy_run(copy, tiny_dir):
    """One round of the copy, run as `python my_idea.py --my-knob 3 ...`, its other knobs given too."""
    ok(python(copy, copy, *flags(tiny_dir, "mine", "--my-knob", "3", "--my-words", "warm", "kind", "--my-mode", "loud",
                                 "--my-rate", "1")))
    return copy.parent / "runs" / "mine"


def test_a_copy_runs_its_own_config_and_stages(copy, copy_run):
    helped = ok(python(copy, copy, "--help"))
    assert "--my-knob" in helped.stdout and "my idea's knob" in helped.stdout
    log = (copy_run / "log.txt").read_text()
    assert f"{VECTOR_RAN}3" in log and f"{HEAL_RAN}3" in log
    meta = json.loads((copy_run / "config.json").read_text())
    assert meta["script"] == "my_idea.py" and meta["argv"][0] == "my_idea.py"  # the command beside the results
    assert meta["config"]["my_knob"] == 3


def test_a_copy_s_knobs_of_any_type_parse_and_are_checked(copy, copy_run):
    """A copy's tuple of strings, choice and range are parsed by their types and checked by their rules, as the
    script's own are: a bad value is exit 2 before any model loads, naming the flag and the copy's --help."""
    cfg = json.loads((copy_run / "config.json").read_text())["config"]
    assert (cfg["my_words"], cfg["my_mode"], cfg["my_rate"]) == (["warm", "kind"], "loud", 1.0)
    helped = python(copy, copy, "--help").stdout
    assert "{soft,loud}" in helped and "my idea's rate (0, 1]" in helped
    for bad, said in ((["--my-mode", "shout"], "--my-mode: invalid choice: 'shout' (choose from 'soft', 'loud') "
                                               "(python my_idea.py --help lists every flag)"),
                      (["--my-words"], "--my-words: expected at least one argument (python my_idea.py --help"),
                      (["--my-rate", "0"], "--my-rate 0.0: must be in (0, 1]")):
        p = python(copy, copy, *bad)
        assert p.returncode == 2 and p.stdout.strip().startswith("my_idea: ") and said in p.stdout, (bad, p.stdout)


def test_a_copy_s_reader_and_filter_are_one_row_and_one_function_each(copy_run):
    """The copy's text reader reads every measured line's answers (mean, per-prompt items, a paired CI against the
    base line); its filter scores every completion (kept in the completions file) and names its knob in the rows
    that --resume may change."""
    lines = runio.read_lines(copy_run)
    measured = [x for x in lines if "items" in x]
    assert measured and all(0 <= x["shouting"] <= 1 and len(x["items"]["shouting"]) == len(x["answers"]) for x in measured)
    assert all("shouting_ci" in x for x in measured if x["kind"] != "base")
    comps = [json.loads(x) for x in (copy_run / "completions_r0.jsonl").read_text().splitlines()]
    assert comps and all(isinstance(c["exclaim"], float) for c in comps)


def test_a_copy_s_rival_runs_the_copy_s_stages(copy, tiny_dir):
    """rivals.py --script my_idea.py: the rival's stages call the copy's functions (its heal() logs), with the
    copy's flags; without --script the copy's flag is unknown (the original runs), and the copy alone names the
    command that runs its rival."""
    ok(python(copy, os.path.join(HERE, "rivals.py"), "--script", copy.name,
              *flags(tiny_dir, "rival", "--method", "prompt-bake", "--my-knob", "5")))
    run = copy.parent / "runs" / "rival"
    log = (run / "log.txt").read_text()
    assert f"{HEAL_RAN}5" in log and VECTOR_RAN not in log  # prompt-bake has no vector stage: the copy's heal ran
    assert {x["method"] for x in runio.read_lines(run)} == {"prompt-bake"}
    meta = json.loads((run / "config.json").read_text())
    assert meta["script"] == "my_idea.py" and meta["argv"][:3] == ["rivals.py", "--script", "my_idea.py"]
    original = python(copy, os.path.join(HERE, "rivals.py"), *flags(tiny_dir, "r2", "--method", "prompt-bake",
                                                                     "--my-knob", "5"))
    assert original.returncode == 2 and "--my-knob" in original.stdout
    alone = python(copy, copy, *flags(tiny_dir, "r3", "--method", "prompt-bake"))
    assert alone.returncode == 2 and "python rivals.py --script my_idea.py --method prompt-bake" in alone.stdout


def test_a_copy_s_run_resumes_with_the_copy_only(copy, copy_run):
    """--resume with another script than the one that made the run is refused before any model loads, naming the
    command that continues it; with the copy it continues, with the copy's knob as saved."""
    for other in ("steer_heal.py", "rivals.py"):
        p = python(copy, os.path.join(HERE, other), "--resume", copy_run, "--rounds", "2")
        assert p.returncode == 2 and "made by my_idea.py" in p.stdout, (other, p.stdout[-2000:])
        assert f"python my_idea.py --resume {copy_run}" in p.stdout
    assert [x["kind"] for x in runio.read_lines(copy_run)] == ["base", "steered", "round"]  # refused: untouched
    ok(python(copy, copy, "--resume", copy_run, "--rounds", "2", "--exclaim-max", "0.9"))  # the copy's filter's knob:
    lines = runio.read_lines(copy_run)  # one a starved round may need, so --resume takes it (on the record)
    assert [x["round"] for x in lines if x["kind"] == "round"] == [0, 1]
    assert next(x for x in lines if x["kind"] == "resume")["changed"] == {"exclaim_max": 0.9}
    assert (copy_run / "log.txt").read_text().count(f"{VECTOR_RAN}3") == 2  # round 1 ran the copy's stage, knob 3


def test_a_copy_s_config_is_not_read_as_the_original_s(copy_run):
    """A field the reading script's Config does not know is refused (not dropped), naming it and the script that
    made the run."""
    with pytest.raises(runio.Stop, match="--my-knob.*made by my_idea.py"):
        runio.load_config(copy_run, sh.Config)


def test_export_of_a_copy_s_run(copy, copy_run, tmp_path):
    ok(python(copy, os.path.join(HERE, "export.py"), copy_run, tmp_path / "out", "--script", copy.name))
    assert (tmp_path / "out" / "config.json").exists() and (tmp_path / "out" / "vectors" / "vector_r0.json").exists()
    original = python(copy, os.path.join(HERE, "export.py"), copy_run, tmp_path / "out2")
    assert original.returncode == 2 and "--my-knob" in original.stdout and "--script my_idea.py" in original.stdout
    assert not (tmp_path / "out2").exists()

# bench.py --script my_idea.py: not run here (its quick mode still times generation, heal, the tinymfv eval and a
# round on ../shared's vignettes: minutes, and not on a bare clone); it loads the script as rivals and export do.


def test_a_grid_of_two_settings_of_a_copy_s_knob(copy, tiny_dir):
    """The grid driver runs the copy named in the grid (two settings of its own knob, one seed): each run logs the
    copy's stage with its setting's value and records my_idea.py as its command. Were the driver to run steer_heal.py,
    --my-knob would be refused (exit 2) and nothing would run."""
    base = ["--model", tiny_dir, *TINY_FLAGS, "--no-baselines", "--persona", "love", "--statements", "none",
            "--vignettes", "none"]
    grid = dict(out="grid", seeds=[0], flags=base,
                settings={"knob1": dict(script=copy.name, flags=["--my-knob", "1"]),
                          "knob2": dict(script=copy.name, flags=["--my-knob", "2"])})
    (copy.parent / "grid.json").write_text(json.dumps(grid))
    ok(python(copy, os.path.join(HERE, "grid.py"), "grid.json"))
    for k in (1, 2):
        run = copy.parent / "grid" / f"knob{k}" / "seed0"
        assert f"{VECTOR_RAN}{k}" in (run / "log.txt").read_text()
        meta = json.loads((run / "config.json").read_text())
        assert meta["script"] == "my_idea.py" and meta["config"]["my_knob"] == k


def test_sweep_over_rounds_runs_the_copy_it_is_given(copy):
    """sweep.py --script my_idea.py builds the crux grid from the copy: every job's command is the copy's file (a
    dry run: the commands, nothing launched)."""
    p = ok(python(copy, os.path.join(HERE, "sweep.py"), "--over-rounds", "--script", copy.name, "--dry-run",
                  "--settings", "lam0", "rmse", "--seeds", "0", "--out", "g"))
    jobs = [line for line in p.stdout.splitlines() if line.startswith("[grid] new")]
    assert len(jobs) == 2 and all("my_idea.py" in j and "steer_heal.py" not in j for j in jobs), p.stdout
