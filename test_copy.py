"""Copy it, change it, run it: a researcher's `cp steer_heal.py my_idea.py` must run THEIR copy (its Config, its
stages), and the project's files must import one way (companions -> core -> leaves), with no circle."""
import ast
import os
import shutil
import subprocess
import sys

from conftest import needs_eval_data
from test_smoke import TINY_FLAGS

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.join(os.path.dirname(HERE), "shared")


def project_imports(path):
    """The project's own modules that a file imports, anywhere in it (top level or inside a function)."""
    mine = {f[:-3] for f in os.listdir(HERE) if f.endswith(".py")}
    out = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module.split(".")[0])
    return out & mine - {os.path.basename(path)[:-3]}


def test_imports_point_one_way():
    """No file imports one that (directly or through others) imports it back, and none imports itself."""
    files = [f[:-3] for f in os.listdir(HERE) if f.endswith(".py") and not f.startswith("test_") and f != "conftest.py"]
    graph = {f: project_imports(os.path.join(HERE, f + ".py")) for f in files}

    def reach(f, seen):
        for g in graph.get(f, ()):
            if g not in seen:
                seen.add(g)
                reach(g, seen)
        return seen
    circles = sorted(f for f in files if f in reach(f, set()))
    assert not circles, {f: sorted(graph[f]) for f in circles}


def test_evidence_imports_only_runio_and_readers():
    """evidence.py (reading a run's files, noise, chance, the direction rule) is a leaf: report.py, report_methods.py,
    sweep.py and plot.py import it, and it imports nothing of the project but runio.py and readers.py."""
    assert project_imports(os.path.join(HERE, "evidence.py")) <= {"runio", "readers"}


def test_each_file_imports_alone():
    for f in sorted(os.listdir(HERE)):
        if f.endswith(".py") and not f.startswith("test_") and f != "conftest.py":
            p = subprocess.run([sys.executable, "-c", f"import {f[:-3]}"], cwd=HERE, capture_output=True, text=True)
            assert p.returncode == 0, (f, p.stderr[-500:])


@needs_eval_data
def test_a_copy_runs_its_own_config_and_stages(tmp_path, tiny_dir):
    src = open(os.path.join(HERE, "steer_heal.py")).read()
    field = "    rounds: int = 2  # steer -> filter -> heal -> bake iterations\n"
    stage = '    """The round\'s steering vector, re-extracted from the current (baked) model; round 0\'s is v0."""\n'
    assert field in src and stage in src  # the anchors this test edits: update them if the script changes
    mine = (src.replace(field, field + "    my_knob: int = 7  # my idea's knob\n")
            .replace(stage, stage + '    log(f"my_idea: vector stage ran with my_knob={cfg.my_knob}")\n'))
    copy = tmp_path / "my_idea.py"
    copy.write_text(mine)
    env = dict(os.environ, PYTHONPATH=HERE)  # the copy still uses the project's companions
    helped = subprocess.run([sys.executable, str(copy), "--help"], capture_output=True, text=True, env=env)
    assert helped.returncode == 0 and "--my-knob" in helped.stdout and "my idea's knob" in helped.stdout
    flags = ["--model", tiny_dir, "--out", str(tmp_path), "--name", "mine", *TINY_FLAGS, "--no-baselines",
             "--my-knob", "3", "--vignettes", os.path.join(SHARED, "tinymfv", "vignettes_classic_other_violate.jsonl"),
             "--statements", os.path.join(SHARED, "persona", "willingness-to-defer-to-authorities.jsonl")]
    ran = subprocess.run([sys.executable, str(copy), *flags], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-2000:]
    log = (tmp_path / "mine" / "log.txt").read_text()
    assert "my_idea: vector stage ran with my_knob=3" in log
    assert "my_idea.py" in (tmp_path / "mine" / "config.json").read_text()  # the command beside the results
