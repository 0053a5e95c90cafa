"""pytest plugin for ``make sanitize`` (tests/sanitize/run.sh loads it with ``-p``).

Under AddressSanitizer and UBSan every kernel compiles and runs several times slower, so
the property suites run with few examples: this registers the hypothesis profile
``sanitize`` (selected by $CONVGEN_HYPOTHESIS_PROFILE, which tests/conftest.py loads) and
caps the tests that set their own ``@settings(max_examples=...)``, which a profile alone
would not reach. $CONVGEN_SANITIZE_EXAMPLES sets the cap (default 3).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

MAX_EXAMPLES = int(os.environ.get("CONVGEN_SANITIZE_EXAMPLES", "3"))

settings.register_profile(
    "sanitize", deadline=None, max_examples=MAX_EXAMPLES, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def pytest_collection_modifyitems(items) -> None:
    """Cap every @given test's own max_examples at MAX_EXAMPLES.

    Hypothesis keeps a test's @settings on the wrapped function and reads them when the
    test runs, so replacing them here (derived from the test's own, only max_examples
    lowered) bounds the run without editing the suites.
    """
    for item in items:
        function = getattr(item, "obj", None)
        own = getattr(function, "_hypothesis_internal_use_settings", None)
        if own is not None and own.max_examples > MAX_EXAMPLES:
            function._hypothesis_internal_use_settings = settings(own, max_examples=MAX_EXAMPLES)
