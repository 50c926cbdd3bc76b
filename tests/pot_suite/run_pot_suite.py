"""Run POT's Sinkhorn tests (test_bregman.py minus barycenters (incl. convolutional and unmix),
screenkhorn and the geomloss wrapper, none of which calls ``ot.sinkhorn``) with otsolve swapped
in, and print the pass count. The empirical-Sinkhorn tests stay: they call ``sinkhorn``.
POT's unbalanced Sinkhorn tests (``test/unbalanced/test_sinkhorn.py``, saved under a name that
contains "unbalanced") run minus the unbalanced barycenters, which otsolve does not replace.

Usage::

    python tests/pot_suite/run_pot_suite.py /path/to/POT/test/test_bregman.py [extra pytest args]
    python tests/pot_suite/run_pot_suite.py /path/to/test_unbalanced_sinkhorn.py

With ``OTSOLVE_POT_SWAP=all`` also ``ot.solve``, ``ot.solve_sample``, ``ot.emd`` and ``ot.emd2``
are replaced by :mod:`otsolve.pot`'s (e.g. to run POT's ``test_solvers.py`` / ``test_ot.py``;
the exclusions above apply to ``test_bregman.py`` and the unbalanced file only, pass ``--all-tests``
to run a whole file).

Get the file from a POT checkout (e.g. ``git show <commit>:test/test_bregman.py``); it is not
copied into this repository. POT's ``test/conftest.py`` must sit next to it (it defines the
``nx`` fixture and ``pytest.skip_backend``).
"""
from __future__ import annotations

import os
import subprocess
import sys

# tests that exercise functions other than ot.sinkhorn / ot.sinkhorn2 (out of scope)
EXCLUDE = ("barycenter", "bary", "unmix", "screenkhorn", "geomloss", "convolutional", "unbalanced")
# in POT's unbalanced Sinkhorn tests: the barycenters (ot.unbalanced.barycenter_unbalanced)
EXCLUDE_UNBALANCED = ("barycenter",)


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    path = argv[0]
    rest = [x for x in argv[1:] if x != "--all-tests"]
    here = os.path.dirname(os.path.abspath(__file__))
    exclude = EXCLUDE_UNBALANCED if "unbalanced" in os.path.basename(path) else EXCLUDE
    kexpr = " and ".join(f"not {w}" for w in exclude)
    select = [] if "--all-tests" in argv else ["-k", kexpr]
    cmd = [sys.executable, "-m", "pytest", path, "-p", "pot_swap", *select, "-q", "-p", "no:cacheprovider", *rest]
    env = dict(os.environ, PYTHONPATH=here + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.call(cmd, env=env, cwd=os.path.dirname(os.path.abspath(path)))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
