"""The one-line-per-round progress display."""

import datetime
from collections.abc import Mapping


def _find(metrics: Mapping[str, float], prefix: str, word: str) -> float | None:
    for key, value in metrics.items():
        if key.startswith(prefix) and word in key.rsplit("/", 1)[-1]:
            return value
    return None


_CENTURY_SEC = 100 * 365 * 86400


def format_eta(seconds: float) -> str:
    """`0:01:00`, `3 days, 2:00:00`; `over 100 years` past that (timedelta overflows near 2.7 million years)."""
    if not seconds < _CENTURY_SEC:  # NaN too
        return "over 100 years"
    return str(datetime.timedelta(seconds=int(round(max(seconds, 0.0)))))


def round_line(
    round_num: int,
    total_rounds: int,
    metrics: Mapping[str, float],
    round_seconds: float,
    eta_seconds: float,
) -> str:
    """`round 3/50  loss 1.2345  accuracy 0.6789  1.23s  ETA 0:01:00`, plus eval."""
    width = len(str(total_rounds))
    parts = [f"round {round_num:>{width}}/{total_rounds}"]
    for prefix, label in (("train/", ""), ("eval/", "eval ")):
        loss = _find(metrics, prefix, "loss")
        accuracy = _find(metrics, prefix, "accuracy")
        if loss is not None:
            parts.append(f"{label}loss {loss:.4f}")
        if accuracy is not None:
            parts.append(f"{label}accuracy {accuracy:.4f}")
    parts.append(f"{round_seconds:.2f}s")
    parts.append(f"ETA {format_eta(eta_seconds)}")
    return "  ".join(parts)


def summary_line(result) -> str:
    """The run's closing line: `done: ...`, or which rounds diverged (never `done` then)."""
    summary = ", ".join(f"{k} {v:.4f}" for k, v in sorted(result.final_eval.items()) if "/num_" not in k)
    diverged = getattr(result, "diverged_rounds", ())
    if diverged:
        rounds = ", ".join(map(str, diverged))
        return (
            f"finished with diverged rounds ({rounds}; --on_divergence=warn): {result.rounds_done} rounds; "
            f"held-out {summary}"
        )
    return f"done: {result.rounds_done} rounds; held-out {summary}"
