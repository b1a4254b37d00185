"""The relay benchmark's report: per-relay tables, the summary and the comparisons with the pipe.

Owns how :class:`~relay_load.RunResult` rows are printed and summarised; computes nothing that
is measured (``relay_load.py``) and starts nothing (``relay.py``). Columns are explained in
bench/README.md, "Reading the output".
"""

from __future__ import annotations

from typing import Any

from relay_load import RunResult


def fmt(x: float | None, spec: str = ".2f") -> str:
    if x is None or x != x:  # None or NaN -> "-"
        return "-"
    if x == float("inf"):
        return "inf"
    return format(x, spec)


def _gc_n(r: RunResult) -> str:
    return "-" if r.gc_pauses is None else str(r.gc_pauses)


def _win_max(ms: float, exact: bool) -> str:
    """The longest GC pause (or loop lag) in the window: exact, or "≤" the edge of its
    histogram bucket."""
    text = fmt(ms, ".1f")
    return text if exact or text == "-" else "≤" + text


def print_table(name: str, describe: str, rows: list[RunResult]) -> None:
    clients = rows[0].clients if rows else "text"
    print(f"\n== {name}: {describe} [{clients} clients]")
    print(
        f"{'N':>5} {'rtt p50':>7} {'rtt p99':>7} {'add p50':>7} {'add p99':>7} {'lost':>5}"
        f" {'cpu%':>5} {'µs/frm':>6} {'gc n':>5} {'gc p99':>6} {'win max':>7} {'gc max':>6}"
        f" {'lag max':>7} {'RSS/sess':>8} {'buf/sess':>8} {'RSS-buf':>7} {'0.8/cpu':>7}"
        f" | {'R busy':>6} {'irq':>3} {'fgn':>3} | {'lg':>3} {'echo':>4} {'L busy':>6} {'fgn':>3}"
        f" {'clean':>5}  pass"
    )
    for r in rows:
        print(
            f"{r.sessions:>5} {fmt(r.rtt_p50_ms):>7} {fmt(r.rtt_p99_ms):>7}"
            f" {fmt(r.added_p50_ms):>7} {fmt(r.added_p99_ms):>7} {r.lost:>5}"
            f" {fmt(r.relay_cpu_pct, '.1f'):>5} {fmt(r.relay_cpu_us_per_frame, '.1f'):>6}"
            f" {_gc_n(r):>5} {fmt(r.gc_p99_ms, '.1f'):>6}"
            f" {_win_max(r.gc_window_max_ms, r.gc_window_max_exact):>7}"
            f" {fmt(r.gc_max_ms, '.1f'):>6}"
            f" {_win_max(r.lag_window_max_ms, r.lag_window_max_exact):>7}"
            f" {fmt(r.rss_per_session_kib, '.1f'):>8} {fmt(r.buffers_per_session_kib, '.1f'):>8}"
            f" {fmt(r.rss_above_buffers_kib, '.1f'):>7} {fmt(r.estimate_sessions, '.0f'):>7}"
            f" | {fmt(r.relay_core_busy_pct, '.0f'):>6} {fmt(r.relay_core_irq_pct, '.0f'):>3}"
            f" {fmt(r.relay_core_foreign_pct, '.0f'):>3}"
            f" | {fmt(r.loadgen_cpu_pct, '.0f'):>3} {fmt(r.echo_cpu_pct, '.0f'):>4}"
            f" {fmt(r.load_core_busy_pct, '.0f'):>6} {fmt(r.load_core_foreign_pct, '.0f'):>3}"
            f" {r.clean_slices:>2}/{r.slices:<2}  {'yes' if r.passed else 'NO'}"
        )
        for note in r.notes:
            print(f"      note: {note}")
    if any(r.binary_sessions for r in rows):
        r = rows[-1]
        print(
            f"      clients at N={r.sessions}: {r.binary_sessions} binary (voxgate.v1),"
            f" {r.connected - r.binary_sessions} text; {r.gateway_events} voxgate.* events"
            f" received, {r.acks_sent} acks sent"
        )


def summarize(rows: list[RunResult], ref_n: int) -> dict[str, Any]:
    passing = [r.sessions for r in rows if r.passed]
    ref = next((r for r in rows if r.sessions == ref_n), None)
    if ref is None:
        ref = next((r for r in reversed(rows) if r.passed), rows[0] if rows else None)
    nan = float("nan")
    return {
        "sessions_per_core": max(passing) if passing else 0,
        "estimate_sessions_per_core": ref.estimate_sessions if ref else nan,
        "ref_sessions": ref.sessions if ref else 0,
        "clients": ref.clients if ref else "text",
        "added_p50_ms": ref.added_p50_ms if ref else nan,
        "added_p99_ms": ref.added_p99_ms if ref else nan,
        "cpu_us_per_frame": ref.relay_cpu_us_per_frame if ref else nan,
        "gc_pauses": ref.gc_pauses if ref else None,
        "gc_p99_ms": ref.gc_p99_ms if ref else nan,
        "gc_max_ms": ref.gc_max_ms if ref else nan,
        "gc_window_max_ms": ref.gc_window_max_ms if ref else nan,
        "gc_window_max_exact": ref.gc_window_max_exact if ref else False,
        "loop_lag_window_max_ms": ref.lag_window_max_ms if ref else nan,
        "loop_lag_window_max_exact": ref.lag_window_max_exact if ref else False,
        "loop_lag_over_5ms": ref.lag_over_5ms if ref else None,
        "rss_per_session_kib": ref.rss_per_session_kib if ref else nan,
        "buffers_per_session_kib": ref.buffers_per_session_kib if ref else nan,
        "rss_above_buffers_kib": ref.rss_above_buffers_kib if ref else nan,
    }


def print_summary(summary: dict[str, dict[str, Any]], ref_n: int) -> None:
    print(
        "\n== summary: sessions per core = largest N with added p99 <= 20 ms and nothing lost;"
        f"\n   latency, CPU, GC and memory at {ref_n} sessions (else the largest passing N)"
    )
    print(
        f"{'relay':<17} {'sess/core':>9} {'0.8/cpu':>8} {'add p50 ms':>10} {'add p99 ms':>10}"
        f" {'µs/frame':>8} {'gc p99 ms':>9} {'win max':>7} {'gc max ms':>9} {'RSS/sess KiB':>12}"
        f" {'buf/sess KiB':>12} {'RSS-buf KiB':>11}"
    )
    for name, s in summary.items():
        print(
            f"{name:<17} {s['sessions_per_core']:>9}"
            f" {fmt(s['estimate_sessions_per_core'], '.0f'):>8}"
            f" {fmt(s['added_p50_ms'], '.3f'):>10} {fmt(s['added_p99_ms'], '.3f'):>10}"
            f" {fmt(s['cpu_us_per_frame'], '.1f'):>8} {fmt(s['gc_p99_ms'], '.1f'):>9}"
            f" {_win_max(s['gc_window_max_ms'], s['gc_window_max_exact']):>7}"
            f" {fmt(s['gc_max_ms'], '.1f'):>9} {fmt(s['rss_per_session_kib'], '.1f'):>12}"
            f" {fmt(s['buffers_per_session_kib'], '.1f'):>12}"
            f" {fmt(s['rss_above_buffers_kib'], '.1f'):>11}"
        )
    if "pipe" not in summary:
        return
    base = summary["pipe"]
    for name, s in summary.items():
        if name == "pipe":
            continue
        print(f"\n== {name} vs pipe (same run, same echo upstream)")
        for key, label, better in (
            ("sessions_per_core", "sessions per core", "higher"),
            ("estimate_sessions_per_core", "0.8/cpu estimate", "higher"),
            ("cpu_us_per_frame", "CPU µs per frame", "lower"),
            ("rss_per_session_kib", "RSS KiB per session", "lower"),
        ):
            a, b = float(s[key]), float(base[key])
            ratio = a / b if b and b == b and a == a else float("nan")
            print(
                f"   {label:<20} {fmt(a, '.1f'):>7} / {fmt(b, '.1f'):<7} = {fmt(ratio)}"
                f" ({better} is better)"
            )
        # Added latencies are near zero and may be negative, so compare them as differences.
        for key, label in (("added_p50_ms", "added p50"), ("added_p99_ms", "added p99")):
            a, b = float(s[key]), float(base[key])
            print(
                f"   {label:<20} {fmt(a, '.3f'):>7} - {fmt(b, '.3f'):<7} = {fmt(a - b, '+.3f')} ms"
            )
        if s["rss_above_buffers_kib"] == s["rss_above_buffers_kib"]:
            print(
                f"   {'RSS above buffers':<20} {fmt(s['rss_above_buffers_kib'], '.1f'):>7} KiB"
                f" per session ({fmt(s['buffers_per_session_kib'], '.1f')} KiB in buffers)"
            )


def print_versus(rows: dict[str, list[RunResult]], relays: list[str]) -> None:
    """Every relay against the pipe at each N both ran (the summary shows one N only)."""
    pipe = {r.sessions: r for r in rows.get("pipe", [])}
    for name in relays:
        if name == "pipe" or not pipe:
            continue
        pairs = [(r, pipe[r.sessions]) for r in rows[name] if r.sessions in pipe]
        if not pairs:
            continue
        print(f"\n== {name} vs pipe at each N (same run; ratio = {name} / pipe)")
        print(
            f"{'N':>5} {'µs/frm':>6} {'pipe':>6} {'ratio':>5} | {'add p99':>7} {'pipe':>6}"
            f" {'diff':>6} | {'RSS/sess':>8} {'pipe':>6} {'buf/sess':>8} {'RSS-buf':>7}"
            f" | {'gc n':>5} {'gc2':>4} {'p99 ms':>6} {'win max':>7} {'max ms':>6}"
            f" | {'lag max':>7} {'>5ms':>4} | clean"
        )
        for r, p in pairs:
            a, b = r.relay_cpu_us_per_frame, p.relay_cpu_us_per_frame
            ratio = a / b if b and b == b and a == a else float("nan")
            gc2 = "-" if r.gc_full_pauses is None else str(r.gc_full_pauses)
            print(
                f"{r.sessions:>5} {fmt(a, '.1f'):>6} {fmt(b, '.1f'):>6} {fmt(ratio):>5}"
                f" | {fmt(r.added_p99_ms):>7} {fmt(p.added_p99_ms):>6}"
                f" {fmt(r.added_p99_ms - p.added_p99_ms, '+.2f'):>6}"
                f" | {fmt(r.rss_per_session_kib, '.1f'):>8} {fmt(p.rss_per_session_kib, '.1f'):>6}"
                f" {fmt(r.buffers_per_session_kib, '.1f'):>8}"
                f" {fmt(r.rss_above_buffers_kib, '.1f'):>7}"
                f" | {_gc_n(r):>5} {gc2:>4} {fmt(r.gc_p99_ms, '.1f'):>6}"
                f" {_win_max(r.gc_window_max_ms, r.gc_window_max_exact):>7}"
                f" {fmt(r.gc_max_ms, '.1f'):>6}"
                f" | {_win_max(r.lag_window_max_ms, r.lag_window_max_exact):>7}"
                f" {'-' if r.lag_over_5ms is None else r.lag_over_5ms:>4}"
                f" | {r.clean_slices}/{r.slices} vs {p.clean_slices}/{p.slices}"
            )


def nan_to_none(obj: Any) -> Any:
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, float) and obj in (float("inf"), float("-inf")):
        return str(obj)  # JSON has no infinity: "inf"
    if isinstance(obj, dict):
        return {k: nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [nan_to_none(v) for v in obj]
    return obj
