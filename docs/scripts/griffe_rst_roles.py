"""Griffe extension for the API reference: the docstrings use Sphinx roles, which mkdocstrings
does not interpret. ``:class:`~otsolve.X``` becomes ``X`` in code font (``:func:`a.b``` keeps its
path), ``:math:`x``` and ``.. math::`` blocks become arithmatex math (rendered by MathJax).
Loaded by mkdocs.yml (mkdocstrings ``extensions``); the docstrings themselves are unchanged."""
from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|mod|data|obj|exc|const):`(~?)([^`]+)`")
_MATH_ROLE = re.compile(r":math:`([^`]+)`")
_MATH_BLOCK = re.compile(r"^(?P<indent>[ \t]*)\.\. math::[ \t]*(?P<first>.*)\n(?P<body>(?:(?P=indent)[ \t]+.*\n|[ \t]*\n)*)",
                         re.M)


def _role(m: re.Match) -> str:
    tilde, target = m.group(1), m.group(2).strip()
    if "<" in target and target.endswith(">"):  # :func:`text <target>`
        return f"`{target.split('<', 1)[0].strip()}`"
    return f"`{target.rsplit('.', 1)[-1] if tilde else target}`"


def _math_block(m: re.Match) -> str:
    lines = [m.group("first")] + [ln.strip() for ln in m.group("body").splitlines()]
    tex = " ".join(ln for ln in lines if ln)
    return f"{m.group('indent')}$${tex}$$\n\n"


def convert(text: str) -> str:
    text = _MATH_BLOCK.sub(_math_block, text if text.endswith("\n") else text + "\n")
    text = _MATH_ROLE.sub(lambda m: f"${m.group(1)}$", text)
    return _ROLE.sub(_role, text).rstrip("\n")


class RstRoles(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = convert(obj.docstring.value)
