"""Rebuild bench/RESULTS.md from the per-topic result files in bench/results/.

Each topic's benchmark writes (by hand, after a run) bench/results/<topic>.md with its table, the
exact command, the machine and the load; this script stitches them under one header:

    python bench/collect_results.py
"""
from __future__ import annotations

from pathlib import Path

ORDER = ["sinkhorn", "sns", "sparse_ot", "lightsb", "krylov", "datagen", "torch", "gpu"]

HEADER = """# Benchmark results

Every figure here comes from a run of the command given with it, with otsolve and its peer in the
same run on the same machine. Unless a section says otherwise the machine is a shared, noisy
2-core VM (AMD EPYC with AVX-512, 24 GiB, no GPU): read medians and same-run ratios, not absolute
times. Each section is kept in `bench/results/<topic>.md` and stitched here by
`python bench/collect_results.py`. Quick modes of every benchmark run in CI:
`python bench/run_all.py --quick`.

| section | what is compared |
|---|---|
| [Sinkhorn](#sinkhorn) | otsolve Sinkhorn vs POT `ot.sinkhorn` (kernel and log domain) |
| [SNS](#sns) | Sinkhorn-Newton-Sparse vs RegOT `sinkhorn_ssns` / `sinkhorn_newton` / `sinkhorn_bcd`, POT |
| [Sparsity-constrained OT](#sparse-ot) | vs POT `ot.smooth` sparsity-constrained dual / semi-dual; MoE routing |
| [LightSB](#lightsb) | cB-W2-UVP table vs published figures and a POT discrete baseline |
| [Krylov](#krylov) | SKR / GCRO-DR vs SciPy GMRES, gcrotmk, splu; datagen pipeline |
| [Datagen](#datagen) | data pipeline: one process vs LocalCluster vs separate scheduler; sort at 100,000 samples |
| [PyTorch layer](#torch) | Sinkhorn divergence vs GeomLoss; implicit vs unrolled gradients |
| [GPU](#gpu) | not yet measured (no GPU lent to the sessions so far) |
"""


def demote(text: str) -> str:
    out = []
    in_code = False
    for line in text.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if not in_code and line.startswith("#"):
            line = "#" + line
        out.append(line)
    return "\n".join(out)


def main() -> None:
    here = Path(__file__).parent
    parts = [HEADER]
    files = {p.stem: p for p in (here / "results").glob("*.md")}
    for name in ORDER + sorted(set(files) - set(ORDER)):
        if name in files:
            anchor = {"sparse_ot": "sparse-ot"}.get(name, name)
            parts.append(f'<a id="{anchor}"></a>\n\n' + demote(files[name].read_text().strip()))
    (here / "RESULTS.md").write_text("\n\n".join(parts) + "\n")
    print(f"wrote {here / 'RESULTS.md'} from {len(files)} result files")


if __name__ == "__main__":
    main()
