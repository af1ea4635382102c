"""What a sweep's analysis may compare: runs of one protocol, whose probe a fresh network could fit.

A plasticity loss P(theta_0) - P(theta_T) is a measurement only where the probe works: Sec 3.1 sets its budget so
that "networks starting from random initializations [can] solve the task". A run whose fresh network fits little
of the probe's variance (``probe/initial_fit`` = P(theta_0) / b small) measures only how far its learned function
spreads, so analyses exclude it and say so. At the other end, where both fits are within noise of b, the probe is
saturated: a loss of zero there says the probe is too easy, not that nothing was lost.

Tables are ``common.analysis.results.read_runs`` tables: ``run_dir``, ``status``, ``args.<field>``, final metrics, ``probes``.
"""
import hashlib
import json
import math
import os
from dataclasses import dataclass, field

from common.analysis.results import read_runs
from common.runtime.rundir import split_seed_run_dir

# Args fields that say where, how fast or with which outputs a run ran, not what it measured: runs differing only
# in them are comparable. Every other field is the protocol (both sweeps' analyses and the Atari aggregate).
NOT_PROTOCOL = ("seed", "run_dir", "resume", "exp_name", "data_dir", "cuda", "track", "num_seeds", "probe_seed_batch",
                "checkpoint_every", "log_every", "capture_video", "save_model", "env_threads", "compile",
                "channels_last")
MIN_INITIAL_FIT = 0.4
"""the default of the sweeps' --min-initial-fit: the P(theta_0) / b a fresh network must reach for a run's
plasticity loss to count. Measured at the cpu presets' probe (2,000 steps, 512 MNIST inputs, width 64;
benchmarks/RESULTS.md): the grids' optimizers fit 0.63 to 0.98 (MLP and CNN) and a fresh width-16 MLP 0.45 to
0.56, while the settings whose probe fits nothing reach at most 0.36 (DQN Zoo's RMSProp rate 2.5e-4; SGD at
A.1's 1e-3 fits 0.002, C51's two-hot Adam 0.08). 0.4 lies between the two groups."""
SATURATION = 0.02
"""fits within this of b (P / b >= 0.98) are saturated: about twice the seed-to-seed spread of the best fresh
fits (Adam 1e-3, MLP: 0.972 and 0.983)"""


def cell_name(run_dir):
    """A run's cell without its seed: ``mnist__true_label__mlp__adam`` for ``...__adam__seed1``."""
    name = os.path.basename(os.path.normpath(run_dir))
    return split_seed_run_dir(name)[0]


def number(value):
    """A float, NaN for what is not a number (summary.json writes non-finite values as strings)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def probe_fits(row, prefix="probe"):
    """``(initial fit, final fit, initial b)`` of one run: ``probe/initial_fit`` and ``probe/final_fit`` where the
    run recorded them, else P / b of its first and last probe rows; b from the first probe row (NaN without it).
    ``prefix`` names the probe (``common.science.probe.PROBES``: ``probe_ref`` for the reference probe)."""
    probes = row.get("probes")
    probes = [p for p in probes if isinstance(p, dict)] if isinstance(probes, list) else []  # a corrupt entry: none
    probes = probes or [{}]

    def fit(probe):
        p, b = number(probe.get(f"{prefix}/plasticity")), number(probe.get(f"{prefix}/baseline"))
        return p / b if b > 0 else math.nan

    initial, final = number(row.get(f"{prefix}/initial_fit")), number(row.get(f"{prefix}/final_fit"))
    initial = initial if not math.isnan(initial) else fit(probes[0])
    final = final if not math.isnan(final) else fit(probes[-1])
    return initial, final, number(probes[0].get(f"{prefix}/baseline"))


def invalid_reason(initial, final, baseline, min_initial_fit):
    """Why a run's probe measures nothing (None when it does)."""
    if not math.isnan(baseline) and not baseline > 0:
        return f"probe baseline b = {baseline:g} is not positive"
    if not (math.isfinite(initial) and math.isfinite(final)):
        return "probe fit is missing or not finite"
    if initial > 1 + 1e-6 or final > 1 + 1e-6:
        return "probe fit P/b above 1 (impossible: P = b - a mean squared error)"
    if initial < min_initial_fit:
        return f"initial probe fit below --min-initial-fit {min_initial_fit:g}"
    return None


def add_fits(table, prefix="probe"):
    """The table with ``initial_fit``, ``final_fit`` and ``initial_baseline`` columns (see ``probe_fits``)."""
    fits = [probe_fits(row, prefix) for row in table.to_dict("records")]
    return table.assign(initial_fit=[f[0] for f in fits], final_fit=[f[1] for f in fits],
                        initial_baseline=[f[2] for f in fits])


def invalid_runs(table, min_initial_fit):
    """``{run_dir: reason}`` for every run of ``add_fits(table)`` whose probe measures nothing."""
    reasons = {}
    for row in table.itertuples():
        reason = invalid_reason(row.initial_fit, row.final_fit, row.initial_baseline, min_initial_fit)
        if reason is not None:
            reasons[row.run_dir] = reason
    return reasons


def describe_by_cell(run_dirs, what):
    """One line: how many runs, and how many in each cell."""
    if not run_dirs:
        return f"0 runs {what}"
    counts = {}
    for run_dir in run_dirs:
        counts[cell_name(run_dir)] = counts.get(cell_name(run_dir), 0) + 1
    return f"{len(run_dirs)} runs {what}: " + ", ".join(f"{cell} ({n})" for cell, n in sorted(counts.items()))


def saturated_cells(table):
    """The cells of ``add_fits(table)`` whose mean initial and final fits are both within ``SATURATION`` of b."""
    cells = table.assign(cell=table["run_dir"].map(cell_name)).groupby("cell")[["initial_fit", "final_fit"]].mean()
    return sorted(cells.index[(cells["initial_fit"] >= 1 - SATURATION) & (cells["final_fit"] >= 1 - SATURATION)])


# ------------------------------------------------------------------------------------------------------ protocols
def protocol_fields(table, varied):
    """The ``args.`` columns that define a run's protocol: every Args field but the grid's axes (``varied``) and
    ``NOT_PROTOCOL``."""
    return sorted(c for c in table.columns if c.startswith("args.") and c[5:] not in set(varied) | set(NOT_PROTOCOL))


def protocol_id(fields):
    """A short name for one protocol: 8 hex digits of its fields' JSON."""
    return hashlib.sha1(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:8]


def split_protocols(table, varied):
    """``[(id, {field: value}, runs)]``, one per protocol among the runs, largest first. Fields that no run of a
    protocol recorded (older args.json) count as their own value (None)."""
    columns = protocol_fields(table, varied)
    keys = table[columns].map(lambda v: json.dumps(v, sort_keys=True, default=str)) if columns else None
    groups = {}
    for i in range(len(table)):
        key = tuple(keys.iloc[i]) if columns else ()
        groups.setdefault(key, []).append(i)
    out = []
    for key, rows in groups.items():
        fields = {c[5:]: json.loads(v) for c, v in zip(columns, key)}
        out.append((protocol_id(fields), fields, table.iloc[rows].reset_index(drop=True)))
    return sorted(out, key=lambda p: -len(p[2]))


def differing_fields(protocols):
    """The fields whose values differ between the protocols of ``split_protocols``."""
    fields = [p[1] for p in protocols]
    return sorted(k for k in set().union(*fields) if len({json.dumps(f.get(k), default=str) for f in fields}) > 1)


# ----------------------------------------------------------------------------------------------------- loading
@dataclass
class Protocol:
    """The runs of one protocol an analysis may compare, and what it left out of them."""

    id: str
    fields: dict
    """Args field -> value shared by every run (the protocol; see ``protocol_fields``)"""
    runs: object
    """completed runs whose probe measures something: a table with ``initial_fit`` and ``final_fit`` columns"""
    diverged: object
    """the protocol's diverged runs (reported per cell, never analysed as if completed)"""
    excluded: dict = field(default_factory=dict)
    """run_dir -> why its probe measures nothing"""
    out_dir: str = "."

    def tag(self, data):
        """``data`` with a ``protocol`` column: every CSV says which protocol it shows."""
        return data.assign(protocol=self.id)

    def write_fields(self):
        os.makedirs(self.out_dir, exist_ok=True)
        with open(os.path.join(self.out_dir, f"protocol_{self.id}.json"), "w") as f:
            json.dump(self.fields, f, indent=1, sort_keys=True, default=str)


def load_protocols(runs_dir, exp_name, varied, min_initial_fit, out_dir, prefix="probe"):
    """The completed and diverged runs of ``exp_name`` under ``runs_dir``, one ``Protocol`` each set of runs that
    share every field but the grid's axes ``varied``; prints what was read, skipped, excluded, diverged and
    saturated. With more than one protocol, each is analysed on its own into ``<out_dir>/protocol-<id>``."""
    read = read_runs(runs_dir, include=("completed", "diverged"), exp_name=exp_name)
    print(f"{exp_name}: {read.report()}")
    if not len(read.table):
        return []
    protocols = split_protocols(read.table, varied)
    if len(protocols) > 1:
        print(f"warning: {exp_name} holds {len(protocols)} protocols (runs differing in "
              f"{', '.join(differing_fields(protocols))}); each is analysed on its own, into "
              f"{out_dir}/protocol-<id>: " + ", ".join(f"{pid} ({len(runs)} runs)" for pid, _, runs in protocols))
    loaded = []
    for pid, fields, runs in protocols:
        runs = runs.drop(columns=[c for c in runs if c.startswith("args.") and c[5:] in runs])  # args.run_dir
        runs = runs.rename(columns=lambda c: c[5:] if c.startswith("args.") else c)
        completed = add_fits(runs[runs["status"] == "completed"].reset_index(drop=True), prefix)
        excluded = invalid_runs(completed, min_initial_fit)
        kept = completed[~completed["run_dir"].isin(excluded)].reset_index(drop=True)
        diverged = runs[runs["status"] == "diverged"].reset_index(drop=True)
        print(f"protocol {pid}: {len(kept)} completed runs analysed")
        print("  " + describe_by_cell(sorted(excluded), "excluded because a fresh network's probe fit says nothing "
                                      f"(P(theta_0)/b below --min-initial-fit {min_initial_fit:g}, or absurd)"))
        for reason in sorted(set(excluded.values())):
            print(f"    {sum(r == reason for r in excluded.values())}: {reason}")
        print("  " + describe_by_cell(sorted(diverged["run_dir"]), "diverged (counted, not analysed)"))
        saturated = saturated_cells(kept) if len(kept) else []
        if saturated:
            print(f"  saturated (both fits within {SATURATION} of b: the probe cannot show a loss): "
                  + ", ".join(saturated))
        protocol = Protocol(pid, fields, kept, diverged, excluded,
                            out_dir if len(protocols) == 1 else os.path.join(out_dir, f"protocol-{pid}"))
        protocol.write_fields()
        loaded.append(protocol)
    return loaded
