"""Experiments: one `dvc exp run` is one MLflow run, queued grids land in the user's store,
concurrent writers keep every run, and an interrupted `dvc exp run` leaves everything consistent.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import mlflow
import pytest
import yaml

from contracts import temp_leftovers
from httpserver import FileServer
from workspace import env as user_env
from workspace import run, served_workspace

# --- concurrent writers on one SQLite store (no DVC) --------------------------------------------------

WORKERS, STEPS = 4, 30

WRITER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    import mlflow
    from crackclf import evaluate, tracking

    i, root = int(sys.argv[1]), Path(sys.argv[2])
    (root / f"ready-{i}").touch()
    while not (root / "go").exists():  # all writers start together
        time.sleep(0.005)
    uri = tracking.configure()
    with mlflow.start_run(experiment_id=tracking.experiment_id("grid"), run_name=f"writer-{i}",
                          tags={"writer": str(i)}) as run:
        mlflow.log_params({f"train.p{k}": k * (i + 1) for k in range(40)})
        for step in range(1, {STEPS} + 1):  # as train's per-epoch callback does
            mlflow.log_metrics({"loss": 1 / step + i, "accuracy": step / 100, "val_loss": i - step}, step=step)
        mlflow.log_text(f"writer {i}", "model/MLmodel")
        version = mlflow.register_model(f"runs:/{run.info.run_id}/model", "grid-model").version
        run_file = root / f"run-{i}.json"
        tracking.write_run_file(run_file, {"run_id": run.info.run_id, "experiment_id": run.info.experiment_id,
                                           "tracking_uri": uri, "registered_model": "grid-model",
                                           "model_version": int(version)})
        (root / f"trained-{i}").touch()
        deadline = time.monotonic() + 30  # bounded: a writer that failed never comes
        while len(list(root.glob("trained-*"))) < {WORKERS} and time.monotonic() < deadline:
            time.sleep(0.005)  # all evaluations at once, too
        f1 = 0.5 + 0.1 * i  # what evaluate does after train: metrics into the same run, champion alias
        print(evaluate.log_to_mlflow(run_file, {"f1": f1, "accuracy": f1}, {"chosen_by": "test"}, "grid", []))
""").replace("{STEPS}", str(STEPS)).replace("{WORKERS}", str(WORKERS))


@pytest.mark.slow
def test_concurrent_writers_keep_every_run(tmp_path):
    """WORKERS processes create one new store and log runs, metrics, model versions and the champion at once."""
    db = tmp_path / "store" / "mlflow.db"
    uri = f"sqlite:///{db}"
    env = user_env(MLFLOW_TRACKING_URI=uri)
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(i), str(tmp_path)], env=env, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(WORKERS)]
    try:
        deadline = time.monotonic() + 120
        while sum((tmp_path / f"ready-{i}").exists() for i in range(WORKERS)) < WORKERS:
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs if p.poll() is not None]
            assert time.monotonic() < deadline, "writers did not start"
            time.sleep(0.05)
        (tmp_path / "go").touch()
        outs = [p.communicate(timeout=180) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
        assert "database is locked" not in err and "MLflow not updated" not in err, err[-3000:]

    client = mlflow.MlflowClient(uri, uri)
    runs = client.search_runs([client.get_experiment_by_name("grid").experiment_id])
    assert sorted(r.info.run_name for r in runs) == [f"writer-{i}" for i in range(WORKERS)]
    for r in runs:
        i = int(r.data.tags["writer"])
        assert r.info.status == "FINISHED"
        assert r.data.params == {f"train.p{k}": str(k * (i + 1)) for k in range(40)}
        for key in ("loss", "accuracy", "val_loss"):
            assert [m.step for m in client.get_metric_history(r.info.run_id, key)] == list(range(1, STEPS + 1))
        assert r.data.metrics["test_f1"] == pytest.approx(0.5 + 0.1 * i)
    versions = client.search_model_versions("name='grid-model'")
    assert sorted(int(v.version) for v in versions) == list(range(1, WORKERS + 1))
    assert {v.run_id for v in versions} == {r.info.run_id for r in runs}
    # The champion is the best F1, and every promotion beat the champion it replaced.
    champion = client.get_model_version_by_alias("grid-model", "champion")
    best = max(runs, key=lambda r: r.data.metrics["test_f1"])
    assert champion.run_id == best.info.run_id
    assert [v.tags["champion_previous_version"] for v in versions].count("none") == 1  # one first champion
    for v in versions:
        if v.tags["promoted"] == "true" and v.tags["champion_previous_version"] not in ("none", v.version):
            assert float(v.tags["test_f1"]) > float(v.tags["champion_previous_f1"])


# --- dvc exp run in a user's workspace ----------------------------------------------------------------


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A user's workspace after `dvc repro` of the tiny pipeline, committed as the experiments' baseline."""
    with FileServer() as server:
        ws = served_workspace(tmp_path_factory, server, seed=5)
        run(ws, "dvc", "repro")
    run(ws, "git", "add", "-A")
    run(ws, "git", "commit", "-qm", "baseline: tiny pipeline reproduced")
    assert run(ws, "git", "status", "--porcelain").stdout == ""  # mlflow.db and its lock are ignored
    return ws


def store(ws: Path) -> mlflow.MlflowClient:
    uri = f"sqlite:///{ws / 'mlflow.db'}"
    return mlflow.MlflowClient(uri, uri)


def all_runs(ws: Path) -> list:
    client = store(ws)
    return client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=1000)


def exp_show(ws: Path) -> dict[str, dict]:
    """`dvc exp show --json` as {experiment name: {"rev", "data", "executor"}}.

    DVC 3.67 reads queue workers' files while the workers rewrite or delete them (seen in CI:
    "unexpected error - [Errno 2] No such file ... .run", "directory '.dvc/tmp/exps/tmp.../.dvc'
    does not exist"): a failure is tried again, for up to 20 s. Or it hangs: pygit2 waited for ever on
    a blob of a worker's temporary repository deleted under it (seen in CI, py-spy: ``_BlobIO.readinto``
    in ``collect_active_data``), so a call that takes over 90 s is killed and tried again too.
    """
    shown = None
    for _ in range(10):
        try:
            shown = run(ws, "dvc", "exp", "show", "--json", check=False, timeout=90)
        except subprocess.TimeoutExpired:
            continue
        if shown.returncode == 0:
            break
        time.sleep(2)
    assert shown is not None and shown.returncode == 0, "hung at every try" if shown is None else shown.stderr[-3000:]
    out = {}
    for baseline in json.loads(shown.stdout):
        for exp in baseline.get("experiments") or []:
            for rev in exp["revs"]:
                out[rev["name"]] = {"rev": rev["rev"], "data": rev["data"], "executor": exp.get("executor")}
    return out


def params_of(exp: dict) -> dict:
    return exp["data"]["params"]["params.yaml"]["data"]


def metrics_of(exp: dict) -> dict:
    return {path: m["data"] for path, m in exp["data"]["metrics"].items()}


def head(ws: Path) -> str:
    return run(ws, "git", "rev-parse", "HEAD").stdout.strip()


def run_file_of(ws: Path, exp: dict) -> dict:
    """models/mlflow_run.json as the experiment's commit holds it."""
    return json.loads(run(ws, "git", "show", f"{exp['rev']}:models/mlflow_run.json").stdout)


@pytest.fixture(scope="module")
def grid(project):
    """Two queued experiments run by two queue workers at once: their names, and the MLflow runs before them."""
    before = {r.info.run_id for r in all_runs(project)}
    out = run(project, "dvc", "exp", "run", "--queue", "-S", "train.learning_rate=0.001,0.0025")
    names = re.findall(r"Queued experiment '([^']+)'", out.stdout + out.stderr)
    assert len(names) == 2, out.stdout + out.stderr
    start = time.monotonic()
    log = project.parent / "queue-start.log"
    with open(log, "w") as f:  # a file, not a pipe: the workers it starts keep its output open after it exits
        started = subprocess.run(["dvc", "queue", "start", "-j", "2"], cwd=project, env=user_env(), stdout=f,
                                 stderr=subprocess.STDOUT, timeout=120)
    assert started.returncode == 0, log.read_text()
    try:
        deadline = start + 480
        while True:
            shown = exp_show(project)
            states = {n: (shown[n]["executor"] or {}).get("state", "success") if n in shown else "queued"
                      for n in names}
            failed = [n for n, s in states.items() if s == "failed"]
            assert not failed, run(project, "dvc", "queue", "logs", failed[0], check=False).stdout[-3000:]
            if all(s == "success" for s in states.values()):
                break
            assert time.monotonic() < deadline, f"queue not done after 480 s: {states}"
            time.sleep(3)
    finally:
        run(project, "dvc", "queue", "stop", check=False)
    return names, before


@pytest.mark.slow
def test_queued_grid_gives_each_experiment_its_run_in_the_users_store(project, grid):
    """Each `dvc exp run` is one MLflow run (not one per stage), named after its experiment, in the
    user's store, even with two queue workers writing at once."""
    names, before = grid
    shown = exp_show(project)
    baseline = head(project)
    new = [r for r in all_runs(project) if r.info.run_id not in before]
    assert sorted(r.data.tags.get("dvc.experiment") for r in new) == sorted(names), \
        [(r.info.run_name, r.data.tags.get("dvc.stage")) for r in new]
    for name, lr in zip(names, ("0.001", "0.0025")):
        (mlrun,) = [r for r in new if r.data.tags["dvc.experiment"] == name]
        assert mlrun.info.status == "FINISHED" and mlrun.info.run_name == name
        assert mlrun.data.tags["mlflow.source.git.commit"] == baseline  # the baseline, not DVC's stash commit
        assert mlrun.data.params["train.learning_rate"] == lr
        # dvc exp show: params.yaml values and both stages' metrics files, equal to what MLflow holds
        assert params_of(shown[name])["train"]["learning_rate"] == float(lr)
        metrics = metrics_of(shown[name])
        assert metrics["metrics/train.json"]["best"]["val_loss"] == pytest.approx(mlrun.data.metrics["best_val_loss"])
        assert metrics["metrics/eval.json"]["f1"] == pytest.approx(mlrun.data.metrics["test_f1"])  # evaluate logged
        info = run_file_of(project, shown[name])
        assert info["run_id"] == mlrun.info.run_id
        version = store(project).get_model_version("crackclf", str(info["model_version"]))
        assert version.run_id == mlrun.info.run_id  # registered concurrently, each its own version
        # Artifacts (model, evaluation files) live beside the user's store, not in DVC's deleted temp copy.
        artifacts = Path(mlrun.info.artifact_uri.removeprefix("file://"))
        assert artifacts.is_relative_to(project / "mlruns") and (artifacts / "eval" / "roc.csv").is_file()


@pytest.mark.slow
def test_plots_diff_draws_both_experiments_curves(project, grid, tmp_path):
    a, b = grid[0]
    plots = json.loads(run(project, "dvc", "plots", "diff", a, b, "--json", "-o", str(tmp_path)).stdout)["data"]
    shown = exp_show(project)
    for title in ("Training loss", "ROC"):
        (plot,) = plots[title]
        values = plot["content"]["data"]["values"]
        assert {v["rev"] for v in values} == {a, b}, title
    for name in (a, b):
        epochs = metrics_of(shown[name])["metrics/train.json"]["epochs"]
        loss = [v for v in plots["Training loss"][0]["content"]["data"]["values"] if v["rev"] == name]
        assert len(loss) == 2 * epochs  # loss and val_loss per epoch
        roc = [(float(v["fpr"]), float(v["tpr"])) for v in plots["ROC"][0]["content"]["data"]["values"]
               if v["rev"] == name]
        assert roc[0] == (0.0, 0.0) and roc[-1] == (1.0, 1.0)


# --- an interrupted dvc exp run ---------------------------------------------------------------------

LONG = ("-S", "train.learning_rate=0.0017", "-S", "train.epochs=30", "-S", "train.batch_size=8",
        "-S", "train.early_stopping_patience=30")  # every try trains all its epochs: none ends before its signal


def _stat(pid: int | str) -> list[str]:
    """/proc/PID/stat after "pid (comm)": state, ppid, pgrp, session, ... (OSError once it is gone)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _session_procs(session: int, *words: str) -> dict[int, tuple[int, str]]:
    """Processes of ``session`` whose command line holds all ``words``: pid -> (parent pid, executable)."""
    procs = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = _stat(proc.name)
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            exe = os.readlink(proc / "exe")
        except OSError:
            continue
        if int(fields[3]) == session and fields[0] != "Z" and all(w in cmd for w in words):
            procs[int(proc.name)] = (int(fields[1]), exe)
    return procs


def _training_pid(session: int) -> int | None:
    """The Python process that runs `crackclf train`: not a shell that wraps it, nor a child it
    forked on its way to exec'ing something else (git, say), which briefly shares its command line."""
    procs = {pid: parent for pid, (parent, exe) in _session_procs(session, "crackclf", "train").items()
             if "python" in Path(exe).name}
    roots = [pid for pid, parent in procs.items() if parent not in procs]
    return roots[0] if len(roots) == 1 else None


def _alive(pid: int) -> bool:
    try:
        return _stat(pid)[0] != "Z"
    except OSError:
        return False


def _as_a_terminal_starts_it() -> None:
    """Ctrl-C and quit at their defaults. A job started in the background of a script (`cmd &`)
    inherits them ignored, and so would dvc and the training it starts: Ctrl-C would do nothing."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)


class Try:
    """`dvc exp run` in its own session, as a terminal runs it; its log in ``log``."""

    def __init__(self, ws: Path, log: Path, *args: str, shell: str | None = None):
        self.ws, self.log = ws, log
        env = user_env(**({"SHELL": shell} if shell else {}))  # DVC runs the stage through $SHELL -c
        with open(log, "w") as f:
            self.proc = subprocess.Popen(["dvc", "exp", "run", *args], cwd=ws, env=env, stdout=f,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         preexec_fn=_as_a_terminal_starts_it)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def training(self, epochs_saved: bool = True, timeout: float = 120) -> tuple[str, int]:
        """Wait until this try's training has started its MLflow run (and saved an epoch, if
        ``epochs_saved``); its (MLflow run id, process id)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"dvc exp run ended before training:\n{self.text()[-3000:]}"
            if m := re.search(r"MLflow run (\w+) in", self.text()):
                if not epochs_saved or m.group(1) in saved_by(self.ws):
                    if pid := _training_pid(self.proc.pid):
                        return m.group(1), pid
            time.sleep(0.02)
        procs = _session_procs(self.proc.pid)
        raise AssertionError(f"no training after {timeout} s; processes {procs}:\n{self.text()[-3000:]}")

    def wait(self, timeout: float = 120) -> int:
        """dvc's exit status (a training it orphaned may still be ending its MLflow run)."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        """Whatever of this try still runs, orphans included (they keep the session)."""
        for pid in [self.proc.pid] * (self.proc.poll() is None) + list(_session_procs(self.proc.pid)):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.poll()


def saved_by(ws: Path) -> set[str]:
    """The MLflow runs whose epochs are in the checkpoint."""
    runs = set()
    for state in (ws / "models" / ".model.keras.checkpoint").glob("epoch-*/state.json"):
        try:
            runs.add(json.loads(state.read_text())["run_id"])
        except (OSError, ValueError, KeyError):
            continue
    return runs


def assert_consistent(ws: Path, baseline: str) -> None:
    """git unharmed, no half-written model, DVC answers, the checkpoint ready for a rerun."""
    assert head(ws) == baseline
    run(ws, "git", "fsck", "--no-dangling")
    models = ws / "models"
    assert not (models / "model.keras").exists() and not (models / "mlflow_run.json").exists()
    # No temporary model beside it; inside the checkpoint, a killed epoch save may leave one for the next run.
    assert temp_leftovers(models, recursive=False) == []
    assert "train" in json.loads(run(ws, "dvc", "status", "--json").stdout)  # to be rerun, and DVC can tell
    assert list((models / ".model.keras.checkpoint").glob("epoch-*/state.json"))


@pytest.fixture
def tries(project, tmp_path):
    """Start `dvc exp run` tries with ``tries(*args)``; none outlives the test."""
    started = []

    def start(*args: str, shell: str | None = None) -> Try:
        started.append(Try(project, tmp_path / f"try-{len(started) + 1}.log", *args, shell=shell))
        return started[-1]

    yield start
    for t in started:
        t.kill()


@pytest.mark.slow
def test_interrupted_exp_runs_leave_everything_consistent_and_the_rerun_finishes(project, tries):
    client = store(project)
    baseline = head(project)
    status = lambda run_id: client.get_run(run_id).info.status  # noqa: E731

    # 1. SIGTERM to the training process (a scheduler, `kill`): it unwinds like Ctrl-C.
    try1 = tries(*LONG)
    run1, pid = try1.training()
    os.kill(pid, signal.SIGTERM)
    assert try1.wait() != 0
    assert "interrupted: epochs 1-" in try1.text()
    assert status(run1) == "FAILED"
    assert_consistent(project, baseline)

    # 2. Ctrl-C in the terminal: SIGINT to the whole process group.
    # (A SIGKILLed training leaves its run RUNNING for the next one to end: test_train, test_tracking.)
    try3 = tries(*LONG)
    run3, _ = try3.training()
    os.killpg(try3.proc.pid, signal.SIGINT)  # at once: any MLflow query first may outlast the training
    assert try3.wait() != 0
    assert "resuming after epoch" in try3.text()
    assert client.get_run(run3).data.tags["resumed_from_run"] == run1
    assert status(run3) == "FAILED"
    assert_consistent(project, baseline)

    # 3. SIGTERM to dvc alone: DVC passes it on to nobody, but training stops with it, whether
    # the shell DVC runs the stage through execs the command (bash) or waits for it (dash).
    for shell in ("/bin/bash", "/bin/dash"):
        try4 = tries(*LONG, shell=shell)
        run4, pid = try4.training()
        parent = int(_stat(pid)[1])
        assert (parent == try4.proc.pid) == (shell == "/bin/bash"), shell  # what the case is about
        os.kill(try4.proc.pid, signal.SIGTERM)
        try4.wait()
        deadline = time.monotonic() + 60
        while _alive(pid):
            assert time.monotonic() < deadline, f"training outlived dvc by 60 s ({shell})"
            time.sleep(0.05)
        assert status(run4) == "FAILED", shell
        assert_consistent(project, baseline)

    # 4. The same command again: it resumes from the checkpoint and finishes.
    out = run(project, "dvc", "exp", "run", *LONG)
    text = out.stdout + out.stderr
    assert re.search(r"resuming after epoch \d+", text)
    name = re.search(r"Ran experiment\(s\): (\S+)", out.stdout).group(1)
    run5 = json.loads((project / "models" / "mlflow_run.json").read_text())["run_id"]
    final = client.get_run(run5)
    assert final.info.status == "FINISHED" and final.data.tags["dvc.experiment"] == name
    assert final.data.tags["resumed_from_run"] == run4
    assert [status(r) for r in (run1, run3, run4)] == ["FAILED"] * 3
    assert not [r.info.run_name for r in all_runs(project) if r.info.status == "RUNNING"]
    assert not (project / "models" / ".model.keras.checkpoint").exists()
    # Workspace, dvc.lock and cache agree on the model the rerun made.
    assert json.loads(run(project, "dvc", "status", "--json").stdout) == {}
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    (model,) = [o for o in lock["stages"]["train"]["outs"] if o["path"] == "models/model.keras"]
    data = (project / "models" / "model.keras").read_bytes()
    assert hashlib.md5(data).hexdigest() == model["md5"]
    assert (project / ".dvc" / "cache" / "files" / "md5" / model["md5"][:2] / model["md5"][2:]).read_bytes() == data
