"""--track: a quick run on the tiny Llama mirrors its lines, heal steps and samples into TensorBoard event files
that TensorBoard's own reader reads back. Run: python -m pytest -q test_track.py"""
import pytest

import steer_heal as sh
from conftest import build_tiny, skip_without_eval_data
from test_smoke import TINY_FLAGS


def test_track_tensorboard_writes_what_tensorboard_reads(tmp_path):
    skip_without_eval_data()
    pytest.importorskip("tensorboard", reason="--track tensorboard needs the tensorboard package (requirements.txt)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    model = build_tiny("llama", tmp_path / "tiny")
    sh.main(["--model", model, "--out", str(tmp_path), "--name", "r", *TINY_FLAGS, "--no-baselines",
             "--track", "tensorboard"])
    run = tmp_path / "r"
    assert list((run / "tb").glob("events.out.tfevents.*"))
    ea = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0, "tensors": 0}).Reload()
    tags = set(ea.Tags()["scalars"])
    heal = {f"heal/{k}" for k in ("loss", "nll", "kl_agg", "barrier_active", "lr")}
    readers = {f"{kind}/{k}" for kind in ("base", "steered", "round") for k in ("sentiment", "probe_defer", "ppl_base",
                                                                                 "trait_fixed", "persona_gap")}
    assert heal | readers | {"round/heal/kl_agg", "round/kept"} <= tags, sorted(tags)
    lines = {x["kind"]: x for x in sh.read_lines(run)}
    # the mirror holds the run folder's numbers, at step = the line's round
    for kind in ("base", "round"):
        (ev,) = ea.Scalars(f"{kind}/sentiment")
        assert ev.step == lines[kind]["round"] and ev.value == pytest.approx(lines[kind]["sentiment"], rel=1e-6)
    steps = ea.Scalars("heal/loss")
    assert len(steps) == lines["round"]["heal"]["steps"] and [e.step for e in steps] == list(range(1, len(steps) + 1))
    texts = set(ea.Tags()["tensors"])  # add_text lands as the text plugin's tensor, tag + "/text_summary"
    want = {"run/config", "round/dose_table", "base/samples", "round/samples"}
    assert {t + "/text_summary" for t in want} <= texts, sorted(texts)
    table = ea.Tensors("round/dose_table/text_summary")[0].tensor_proto.string_val[0].decode()
    assert table.startswith("| dose |") and str(lines["round"]["dose_table"][0]["n"]) in table
