"""pytest plugin: run POT's own Sinkhorn tests with otsolve's functions swapped in.

Loaded by ``tests/pot_suite/run_pot_suite.py`` (``-p pot_swap``); it replaces ``ot.sinkhorn``,
``ot.sinkhorn2`` and the ``ot.bregman`` entry points of the methods (``sinkhorn_knopp``,
``sinkhorn_log``, ``greenkhorn``, ``sinkhorn_stabilized``, ``sinkhorn_epsilon_scaling``) by
:func:`otsolve.sinkhorn` / :func:`otsolve.sinkhorn2`, and the entropic unbalanced solvers
(``ot.sinkhorn_unbalanced``, ``ot.sinkhorn_unbalanced2`` and ``ot.unbalanced``'s
``sinkhorn_unbalanced``, ``sinkhorn_unbalanced2``, ``sinkhorn_knopp_unbalanced``,
``sinkhorn_stabilized_unbalanced``, ``sinkhorn_unbalanced_translation_invariant``) by
:mod:`otsolve.pot_compat`'s. POT's test file itself is not part of this repository (it is read
from a POT checkout at run time).
"""
from __future__ import annotations

import functools
import importlib
import os

import ot
import ot.bregman
import ot.bregman._empirical as pot_empirical
import ot.bregman._sinkhorn as pot_sinkhorn
import ot.unbalanced
import ot.unbalanced._sinkhorn as pot_unbalanced

import otsolve
from otsolve import pot_compat

SWAPPED = []


def _method_entry(method: str):
    @functools.wraps(getattr(pot_sinkhorn, {"sinkhorn": "sinkhorn_knopp"}.get(method, method)))
    def entry(a, b, M, reg, *args, **kwargs):
        return otsolve.sinkhorn(a, b, M, reg, method, *args, **kwargs)

    return entry


def _unbalanced_entry(name: str, method: str):
    # POT's method functions: (a, b, M, reg, reg_m, reg_type="kl", c=None, warmstart=None, ...)
    @functools.wraps(getattr(pot_unbalanced, name))
    def entry(a, b, M, reg, reg_m, reg_type="kl", c=None, warmstart=None, *args, **kwargs):
        return pot_compat.sinkhorn_unbalanced(a, b, M, reg, reg_m, method, reg_type, c, warmstart, *args, **kwargs)

    return entry


def _unbalanced_patches() -> dict:
    patches = {"sinkhorn_unbalanced": pot_compat.sinkhorn_unbalanced,
               "sinkhorn_unbalanced2": pot_compat.sinkhorn_unbalanced2}
    for name, method in (("sinkhorn_knopp_unbalanced", "sinkhorn"),
                         ("sinkhorn_stabilized_unbalanced", "sinkhorn_stabilized"),
                         ("sinkhorn_unbalanced_translation_invariant", "sinkhorn_translation_invariant")):
        patches[name] = _unbalanced_entry(name, method)
    return patches


def pytest_configure(config):
    patches = {"sinkhorn": otsolve.sinkhorn, "sinkhorn2": otsolve.sinkhorn2}
    for name in ("sinkhorn_log", "greenkhorn", "sinkhorn_stabilized", "sinkhorn_epsilon_scaling"):
        patches[name] = _method_entry(name)
    patches["sinkhorn_knopp"] = _method_entry("sinkhorn")
    patches.update(_unbalanced_patches())
    mods = [ot, ot.bregman, pot_sinkhorn, pot_empirical, ot.unbalanced, pot_unbalanced]
    if os.environ.get("OTSOLVE_POT_SWAP") == "all":  # also ot.solve, ot.solve_sample, ot.emd, ot.emd2
        opot = importlib.import_module("otsolve.pot")

        patches.update(solve=opot.solve, solve_sample=opot.solve_sample, emd=opot.emd, emd2=opot.emd2)
        mods += [importlib.import_module("ot.lp"), importlib.import_module("ot.solvers")]
    for mod in mods:
        for name, fn in patches.items():
            if name in vars(mod):
                setattr(mod, name, fn)
                SWAPPED.append(f"{mod.__name__}.{name}")


def pytest_report_header(config):
    return f"otsolve swapped in for: {', '.join(SWAPPED)}"
