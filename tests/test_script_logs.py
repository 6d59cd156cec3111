"""search/script/logs.py: a script's output as reports, final score, times and its own size figure."""

import os
import subprocess
import sys
import textwrap

import pytest

from search.script import ScriptError
from search.script.logs import ScriptLog, parse_log

SCRIPTS = os.path.join(os.path.dirname(__file__), "scripts")


def output_of(script: str, tmp_path, **env) -> str:
    done = subprocess.run([sys.executable, os.path.join(SCRIPTS, script)], cwd=tmp_path, capture_output=True, text=True,
                          env=dict(os.environ, **env), timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_official_format_as_it_streams(tmp_path):
    log = ScriptLog()
    reports = [r for line in output_of("official_style.py", tmp_path).splitlines() if (r := log.feed(line))]
    assert [r.step for r in reports] == [10, 20, 30, 40]
    assert all(r.train_seconds is not None and r.val_bpb > 2 for r in reports)
    s = log.summary()
    assert s.final.tag == "final_int8_zlib_roundtrip_exact"
    assert s.score() == float(s.final.text.split("val_bpb:")[1])  # the exact line's eight digits
    assert s.eval_seconds is not None                             # from the non-exact sibling's eval_time
    assert s.train_seconds == reports[-1].train_seconds and not s.stopped_early
    assert s.reported_total_bytes > 4000


def test_records_format(tmp_path):
    s = parse_log(output_of("records_style.py", tmp_path))
    assert s.final.tag == "quantized_ttt_phased" and s.score() == pytest.approx(s.final.val_bpb)
    assert [p.step for p in s.progress] == [10, 20, 30]
    assert s.stopped_early and s.eval_seconds == 0.1  # total_eval_time wins over the final line's eval_time
    assert s.reported_total_bytes is not None
    # a space may name the final line's tag
    named = parse_log(output_of("records_style.py", tmp_path), final_tag=r"diagnostic quantized")
    assert named.final.tag == "diagnostic quantized" and named.final.eval_seconds == pytest.approx(0.005)
    # without TTT the default falls back to the last score line there is
    assert parse_log(output_of("records_style.py", tmp_path, TTT_ENABLED="0")).final.tag == "diagnostic quantized"


LINES = textwrap.dedent("""\
    val_bpb:enabled tokenizer_kind=sentencepiece
        log0(f"final_int8_zlib_roundtrip val_loss:{q_val_loss:.4f} val_bpb:{q_val_bpb:.4f} eval_time:{t:.0f}ms")
    step:1/200 train_loss:6.9297 train_time:719ms step_avg:718.73ms
    mid-training diagnostic val_loss:3.0 val_bpb:2.0
    step:2/200 val_loss:3.9 val_bpb:2.3877 train_time:1466ms step_avg:733.00ms
    4000/20000 train_loss: 2.4016 train_time: 7.8m tok/s: 6741955
    4945/20000 val_loss: 2.3539 val_bpb: 1.0756
    stopping_early: wallclock_cap train_time: 599592ms step: 4945/20000
    final_int6_sliding_window_exact val_loss:2.1 val_bpb:1.11111111
    final_int6_sliding_window val_loss:2.1 val_bpb:1.1111 stride:64 eval_time:74000ms
    ttt_sliding:done val_loss=2.0 val_bpb=1.0999 elapsed=300.0s
    Total submission size int8+zlib: 15863489 bytes
    legal_ttt val_loss:2.0 val_bpb:1.0988 eval_time:350000ms
    [rank0]:legal_ttt_exact val_loss:2.00000000 val_bpb:1.09876543
    """)


def test_lines_in_the_field_formats():
    s = parse_log(LINES)
    assert [(p.step, p.train_seconds, p.val_bpb) for p in s.progress] == [(2, 1.466, 2.3877), (4945, 7.8 * 60, 1.0756)]
    assert (s.final.tag, s.final.val_bpb, s.final.eval_seconds) == ("legal_ttt_exact", 1.09876543, 350.0)
    assert s.train_seconds == 599.592 and s.stopped_early and s.reported_total_bytes == 15863489
    # an _exact line is preferred even where it comes first; `=` fields parse too
    assert parse_log(LINES, final_tag="final_int6_sliding_window").final.val_bpb == 1.11111111
    assert parse_log(LINES, final_tag="final_int6_sliding_window").final.eval_seconds == 74.0
    assert parse_log(LINES, final_tag=r"ttt_sliding:\w+").final.val_bpb == 1.0999
    # a score line followed by more training is not final
    assert parse_log(LINES.split("stopping_early")[0]).final is None


def test_missing_and_non_finite_scores_are_one_line():
    with pytest.raises(ScriptError, match=r"^the script printed no final score"):
        parse_log("step:1/2 val_loss:1 val_bpb:1.5 train_time:5ms\n").score()
    with pytest.raises(ScriptError, match=r"^the script's final score is nan \(log line 2: final_int8_zlib_roundtrip_exact"):
        parse_log("step:2/2 val_loss:1 val_bpb:1.5 train_time:5ms\nfinal_int8_zlib_roundtrip_exact val_loss:nan val_bpb:nan\n").score()
    with pytest.raises(ScriptError, match="inf"):
        parse_log("final val_bpb:inf\n").score()
    with pytest.raises(ScriptError, match=r"^final-line tag 'quantized\(' is not a valid regular expression"):
        ScriptLog(final_tag="quantized(")
    with pytest.raises(ScriptError, match="no final score"):
        parse_log(LINES, final_tag="no_such_tag").score()
