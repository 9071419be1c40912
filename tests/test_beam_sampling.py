"""Beam's state sampler on a shorter period (pipeline/beam/sampling.py): a bundle's end joins
the sampler's thread, which sleeps up to the period between samples."""

from __future__ import annotations

import inspect
import multiprocessing

from apache_beam.runners.worker import statesampler
from apache_beam.utils.counters import CounterFactory

import pipeline.beam.transforms  # noqa: F401 — shortens the period on import
from pipeline.beam import sampling


def _default_period() -> int:
    """The period of a sampler made as Beam's ``BundleProcessor`` makes it (no period given)."""
    return statesampler.StateSampler("fnapi-step-test", CounterFactory()).sampling_period_ms


def test_importing_the_beam_shell_shortens_the_samplers_period():
    assert _default_period() == sampling.SAMPLING_PERIOD_MS < sampling.BEAM_SAMPLING_PERIOD_MS


def test_shortening_twice_is_harmless_and_an_explicit_period_still_wins():
    assert sampling.shorten_state_sampling()
    assert _default_period() == sampling.SAMPLING_PERIOD_MS
    sampler = statesampler.StateSampler("fnapi-step-test", CounterFactory(), sampling_period_ms=50)
    assert sampler.sampling_period_ms == 50


def test_a_sampler_it_does_not_know_is_left_alone(monkeypatch):
    """Another Beam's sampler (other default, other parameter): not patched, and it says so."""
    class Other:
        def __init__(self, prefix, counter_factory, period_ms=500):
            self.period_ms = period_ms

    monkeypatch.setattr(statesampler, "StateSampler", Other)
    assert not sampling.shorten_state_sampling()
    assert Other.__init__.__defaults__ == (500,)

    class OtherDefault:
        def __init__(self, prefix, counter_factory, sampling_period_ms=1000):
            pass

    monkeypatch.setattr(statesampler, "StateSampler", OtherDefault)
    assert not sampling.shorten_state_sampling()
    assert inspect.signature(OtherDefault.__init__).parameters["sampling_period_ms"].default == 1000


def _report_period(conn) -> None:
    conn.send(_default_period())
    conn.close()


def test_warm_workers_sample_on_the_shorter_period_too():
    """The warm workers' bundles run in processes forked from the preloading forkserver."""
    from pipeline.beam.preload import start_forkserver

    start_forkserver()
    context = multiprocessing.get_context("forkserver")
    parent, child = context.Pipe()
    process = context.Process(target=_report_period, args=(child,))
    process.start()
    child.close()
    assert parent.recv() == sampling.SAMPLING_PERIOD_MS
    process.join()
