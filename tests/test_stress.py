"""Shared state under real concurrency: 8 processes x 4 threads on one database, both backends."""

from __future__ import annotations

from .stress import run_stress


def test_many_processes_and_threads_share_state_correctly(db_url: str) -> None:
    summary = run_stress(db_url, processes=8, threads=4, calls=25)

    assert summary.errors == []
    assert summary.operations >= 8 * 4 * 25 * 2  # every call of both phases ran
    # Circuits tripped and probed many times, so the budget was actually contended.
    assert summary.episodes >= 3
    assert summary.most_probes_in_an_episode <= summary.budget
    assert summary.unaudited_episodes == []
    assert summary.failures_made == summary.failures_stored
    assert sum(summary.failures_made.values()) == 8 * 4 * 25
    assert summary.broken_chains == []
