"""Hypothesis profiles: 'ci' (default) has no deadline, since a first Numba compile takes
longer than hypothesis' 200 ms, and derandomises so that every run tests the same cases."""
import os

from hypothesis import HealthCheck, settings

settings.register_profile("ci", deadline=None, derandomize=True, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
