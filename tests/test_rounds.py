"""The one round loop: phases in order, clean stops before a round, stops after one, checkpoints, records."""

import ast
import pathlib

import pytest

from conftest import REPO_ROOT
from tffpipe.program import rounds


class _Training:
    def __init__(self, examples=10.0):
        self.value = 0
        self.examples = examples

    def state(self):
        return {"value": self.value}

    def train_round(self, round_num):
        self.value += round_num
        return rounds.Round(round_num, {"train/num_examples": self.examples, "train/loss": 1.0 / round_num})


class _Recorder(rounds.Hook):
    def __init__(self, calls, name, stop_before=None, stop_after=None):
        self.calls, self.name = calls, name
        self.stop_before, self.stop_after = stop_before, stop_after

    def before_round(self, loop, round_num):
        self.calls.append((self.name, "before", round_num))
        return f"stopped before {round_num}" if round_num == self.stop_before else None

    def after_round(self, loop, trained):
        self.calls.append((self.name, "after", trained.number))
        trained.metrics[f"{self.name}/seen"] = float(trained.number)
        if trained.number == self.stop_after:
            raise rounds.Stop(RuntimeError(f"stop after {trained.number}"), keep=(trained.number - 1, "previous"))

    def on_evaluation(self, loop, trained):
        self.calls.append((self.name, "evaluation", trained.number))

    def on_round_end(self, loop, trained):
        self.calls.append((self.name, "end of round", trained.number, dict(trained.metrics)))

    def on_stop(self, loop, trained, stop):
        self.calls.append((self.name, "stop", trained.number, str(stop.error)))

    def on_end(self, loop):
        self.calls.append((self.name, "end", loop.rounds_done))


class _Log:
    def __init__(self):
        self.released, self.closed = [], 0

    def release(self, metrics, round_num, histograms=None):
        self.released.append((round_num, dict(metrics)))

    def close(self):
        self.closed += 1


def _loop(hooks, start=0, rounds_total=3, lines=None):
    return rounds.RoundLoop(_Training(), hooks, start, rounds_total, (lines if lines is not None else []).append)


def test_each_phase_runs_for_every_hook_in_order_and_the_loop_times_the_whole_round():
    calls = []
    loop = _loop([_Recorder(calls, "a"), _Recorder(calls, "b")], start=1, rounds_total=3)
    loop.run()
    phases = [c[:3] for c in calls]
    expected = []
    for n in (2, 3):
        expected += [(h, "before", n) for h in "ab"] + [(h, "after", n) for h in "ab"]
        expected += [(h, "evaluation", n) for h in "ab"] + [(h, "end of round", n) for h in "ab"]
    assert phases == expected + [("a", "end", 3), ("b", "end", 3)]
    seen = [c[3] for c in calls if c[1] == "end of round"]
    for metrics in seen:
        assert metrics["a/seen"] == metrics["b/seen"]  # `after_round` adds before the round ends
        assert metrics["round_time_sec"] > 0
        assert metrics["examples_per_sec"] == pytest.approx(10.0 / metrics["round_time_sec"])
    assert loop.rounds_done == 3 and loop.stopped_early is None


def test_a_hook_stops_the_run_cleanly_before_a_round():
    calls, lines, log = [], [], _Log()
    saved = []
    hooks = [
        _Recorder(calls, "a", stop_before=3),
        rounds.Records(log),
        rounds.Checkpoints(lambda n, s: saved.append((n, s)), 5),
    ]
    loop = _loop(hooks, rounds_total=4, lines=lines)
    loop.run()
    assert loop.stopped_early == "stopped before 3" and lines == ["stopped before 3"]
    assert loop.rounds_done == 2 and [r for r, _ in log.released] == [1, 2] and log.closed == 1
    assert saved == [(2, {"value": 3})]  # the rounds since the last checkpoint are kept at the end


def test_a_hook_that_stops_after_a_round_lets_every_hook_handle_it_and_raises_its_error():
    calls, log, saved = [], _Log(), []
    hooks = [
        _Recorder(calls, "a", stop_after=3),
        _Recorder(calls, "b"),
        rounds.Records(log),
        rounds.Checkpoints(lambda n, s: saved.append((n, s)), 1),
    ]
    with pytest.raises(RuntimeError, match="^stop after 3$"):
        _loop(hooks, rounds_total=5).run()
    # Round 3: the second hook's `after_round` and every evaluation are skipped; both hooks see the stop.
    assert [c[:3] for c in calls if c[2] == 3] == [
        ("a", "before", 3),
        ("b", "before", 3),
        ("a", "after", 3),
        ("a", "stop", 3),
        ("b", "stop", 3),
    ]
    assert [r for r, _ in log.released] == [1, 2, 3] and log.closed == 1
    assert saved == [(1, {"value": 1}), (2, {"value": 3})]  # round 2 was saved: "previous" is not written again


def test_a_stop_keeps_the_last_good_state_when_no_checkpoint_holds_it():
    saved = []
    hooks = [_Recorder([], "a", stop_after=4), rounds.Checkpoints(lambda n, s: saved.append((n, s)), 10)]
    with pytest.raises(RuntimeError):
        _loop(hooks, rounds_total=5).run()
    assert saved == [(3, "previous")]


def test_checkpoints_every_n_rounds_and_after_the_last():
    saved = []
    _loop([rounds.Checkpoints(lambda n, s: saved.append(n), 3)], rounds_total=7).run()
    assert saved == [3, 6, 7]
    saved.clear()
    _loop([rounds.Checkpoints(lambda n, s: saved.append(n), 3)], start=7, rounds_total=7).run()
    assert saved == []  # resumed at the end: nothing to train, nothing to save


def test_the_three_programs_run_the_one_loop():
    for module in ("tffpipe/program/loop.py", "tffpipe/program/fedbuff.py", "tffpipe/vertical/program.py"):
        tree = ast.parse(pathlib.Path(REPO_ROOT, module).read_text())
        uses = [
            n
            for n in ast.walk(tree)
            if isinstance(n, ast.Attribute) and n.attr == "RoundLoop" and n.value.id == "rounds"
        ]
        own_loops = [
            n
            for n in ast.walk(tree)
            if isinstance(n, ast.For) and isinstance(n.target, ast.Name) and n.target.id in ("round_num", "epoch")
        ]
        assert uses and not own_loops, module
