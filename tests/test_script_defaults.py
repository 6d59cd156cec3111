"""search/script/defaults.py: a script copy whose literal defaults are a trial's values, every other byte kept."""

import os
import subprocess
import sys
import textwrap

import pytest

from search.script import ScriptError
from search.script.defaults import rewrite_defaults
from search.script.logs import parse_log

SCRIPTS = os.path.join(os.path.dirname(__file__), "scripts")


def source_of(name):
    with open(os.path.join(SCRIPTS, name), encoding="utf-8") as f:
        return f.read()


def changed_lines(before, after):
    return [(a, b) for a, b in zip(before.splitlines(), after.splitlines()) if a != b]


def test_each_literal_is_replaced_in_its_own_type_and_nothing_else_changes(tmp_path):
    before = source_of("official_style.py")
    after, launch = rewrite_defaults(before, {"ITERATIONS": 12, "MATRIX_LR": 0.02, "TIE_EMBEDDINGS": False,
                                              "RUN_ID": "abc", "MAX_WALLCLOCK_SECONDS": 30})
    assert launch == {} and len(after.splitlines()) == len(before.splitlines())
    assert changed_lines(before, after) == [
        ('    run_id = os.environ.get("RUN_ID", "toy")', '    run_id = os.environ.get("RUN_ID", "abc")'),
        ('    iterations = int(os.environ.get("ITERATIONS", 40))', '    iterations = int(os.environ.get("ITERATIONS", 12))'),
        ('    max_wallclock_seconds = float(os.environ.get("MAX_WALLCLOCK_SECONDS", 600.0))',
         '    max_wallclock_seconds = float(os.environ.get("MAX_WALLCLOCK_SECONDS", 30.0))'),
        ('    matrix_lr = float(os.environ.get("MATRIX_LR", 0.04))', '    matrix_lr = float(os.environ.get("MATRIX_LR", 0.02))'),
        ('    tie_embeddings = bool(int(os.environ.get("TIE_EMBEDDINGS", "1")))',
         '    tie_embeddings = bool(int(os.environ.get("TIE_EMBEDDINGS", "0")))')]
    # the copy, run with no environment, trains the trial's 12 iterations
    (tmp_path / "train_gpt.py").write_text(after)
    env = {k: v for k, v in os.environ.items() if k not in ("ITERATIONS", "MATRIX_LR")}
    done = subprocess.run([sys.executable, "train_gpt.py"], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=60)
    assert parse_log(done.stdout).progress[-1].step == 12


def test_variables_without_a_literal_default_go_to_the_launch_command():
    before = source_of("records_style.py")
    after, launch = rewrite_defaults(before, {"SEED": 7, "DATA_DIR": "/d", "MAX_WALLCLOCK_SECONDS": 300.5, "TTT_ENABLED": 0})
    assert launch == {"SEED": "7", "DATA_DIR": "/d"}
    assert [b for _, b in changed_lines(before, after)] == [
        'MAX_WALLCLOCK_SECONDS = float(os.getenv("MAX_WALLCLOCK_SECONDS", "300.5"))',  # a string literal stays a string
        'TTT_ENABLED = bool(int(environ.get("TTT_ENABLED", "0")))']


def test_offsets_are_bytes_and_every_read_is_rewritten():
    before = textwrap.dedent("""\
        import os
        label = "données"; A = int(os.environ.get("A", -3))  # é before the literal on the same line
        B = float(os.environ.get("B", 1)) + float(os.environ.get("B", 2))
        C = os.environ.get("C", 'quote')
        D = int(os.environ.get("D", 5)) if "D" in os.environ else int(os.environ.get("D", 5))
        """)
    after, launch = rewrite_defaults(before, {"A": 10, "B": 0.5, "C": 'it"s', "D": 6})
    assert launch == {}
    assert after == textwrap.dedent("""\
        import os
        label = "données"; A = int(os.environ.get("A", 10))  # é before the literal on the same line
        B = float(os.environ.get("B", 0.5)) + float(os.environ.get("B", 0.5))
        C = os.environ.get("C", 'it"s')
        D = int(os.environ.get("D", 6)) if "D" in os.environ else int(os.environ.get("D", 6))
        """)
    # a variable read once with a literal and once without: the literal changes and the launch command carries it
    mixed, launch = rewrite_defaults('import os\nE = os.environ.get("E", "x")\nF = os.environ["E"]\n', {"E": "y"})
    assert launch == {"E": "y"} and mixed.splitlines()[1] == 'E = os.environ.get("E", "y")'


def test_bad_values_are_refused_in_one_line():
    before = source_of("official_style.py")
    with pytest.raises(ScriptError, match=r"^variable MATRIX_LRX: .* never reads"):
        rewrite_defaults(before, {"MATRIX_LRX": 0.1})
    with pytest.raises(ScriptError, match=r"^value 1.5 for ITERATIONS: not an integer"):
        rewrite_defaults(before, {"ITERATIONS": 1.5})
    assert rewrite_defaults(before, {}) == (before, {})
