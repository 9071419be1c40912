"""A shorter period for Beam's state sampler, so that a bundle's end does not wait for it.

Every bundle a Beam SDK worker runs (``BundleProcessor``, local runners included) starts a
``StateSampler`` thread that sleeps in ``usleep`` between samples, the sleep growing by 1.2×
from 2 ms to the sampler's period (``DEFAULT_SAMPLING_PERIOD_MS``: 200 ms), and the bundle's
end joins that thread (``StateSampler.stop``): a bundle that ran for more than about a
second waits 0-200 ms, 100 ms on average, after its last element with nothing to do.  A
stage of units is one long bundle per worker, so that wait ended a stage: traced on the
1.5 mm slices stage at one worker, 2.6-190 ms (median 149 ms, 6 runs) between the last
unit's end and its bundle's, the bundle thread in ``statesampler.stop`` → ``Thread.join``;
now 2.5-14 ms.  (Warm workers' last bundles mostly ended 1-15 ms after their last unit on
main already — one of 14 waited 101 ms — for reasons not found.)

Beam offers no option for the period, so :func:`shorten_state_sampling` sets the default
argument of ``statesampler.StateSampler.__init__`` (the one ``BundleProcessor`` relies on)
to :data:`SAMPLING_PERIOD_MS`, and leaves Beam alone when that signature is not the one it
knows.  What changes is only how often the sampler thread wakes (at most 100 times a second,
a few microseconds each, without the GIL) and the granularity of Beam's own msec counters;
no radvqa output reads them.  :mod:`pipeline.beam.transforms` calls it on import: in the
launcher (the one-worker runner runs bundles there) and in every warm worker (their
forkserver preloads that module).
"""

from __future__ import annotations

import inspect

from apache_beam.runners.worker import statesampler

#: The state sampler's period here (Beam's default is 200 ms): a bundle's end waits at
#: most this long for the sampler thread.
SAMPLING_PERIOD_MS = 10
#: Beam's default that :func:`shorten_state_sampling` replaces (any other value: left as is).
BEAM_SAMPLING_PERIOD_MS = 200


def shorten_state_sampling(period_ms: int = SAMPLING_PERIOD_MS) -> bool:
    """Make ``period_ms`` the default sampling period of Beam's ``StateSampler``; ``True``
    when it is (now or already), ``False`` when Beam's sampler is not the one this knows
    (its ``__init__`` has no ``sampling_period_ms`` default of 200 or ``period_ms``)."""
    init = statesampler.StateSampler.__init__
    params = list(inspect.signature(init).parameters.values())
    if (not params or params[-1].name != "sampling_period_ms" or init.__defaults__ is None
            or init.__defaults__[-1] not in (BEAM_SAMPLING_PERIOD_MS, period_ms)):
        return False
    init.__defaults__ = (*init.__defaults__[:-1], period_ms)
    return True
