"""TensorBoard checked for real: a `tensorboard` server on a sweep's run folders, read back through
its HTTP data API (scalars and HParams), compared with the run tables."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

from dlnlab.analysis.runs import load_runs
from dlnlab.experiments.build import compose
from dlnlab.experiments.run import run

TENSORBOARD = Path(sys.executable).parent / "tensorboard"
TINY = ["optim.steps=40", "record.every=10", "record.log_spaced=0", "model.width=3", "record.progress=off"]
JOBS = [["optim.lr=0.005", "model.ensemble=1"], ["optim.lr=0.005", "model.ensemble=2"],
        ["optim.lr=0.01", "model.ensemble=1"], ["optim.lr=0.01", "model.ensemble=2"]]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """The run folders of `dlnlab-train -m optim.lr=0.005,0.01 model.ensemble=1,2 ...`: Hydra's
    multirun.yaml and each job's .hydra/overrides.yaml (written before a job starts), then the runs."""
    root = tmp_path_factory.mktemp("tb_sweep")
    sweep_overrides = [*TINY, "optim.lr=0.005,0.01", "model.ensemble=1,2"]
    (root / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"overrides": {"task": sweep_overrides}}}))
    for k, job in enumerate(JOBS):
        out = root / str(k)
        (out / ".hydra").mkdir(parents=True)
        (out / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([*TINY, *job]))
        run(compose(TINY + job), out_dir=out)
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, port):
        self.base = f"http://127.0.0.1:{port}"

    def get(self, path, **query):
        url = f"{self.base}{path}" + ("?" + urllib.parse.urlencode(query) if query else "")
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.loads(r.read())

    def post(self, path, body):
        req = urllib.request.Request(f"{self.base}{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def session_groups(self):
        return self.post("/data/plugin/hparams/session_groups", {
            "experimentName": "", "colParams": [], "startIndex": 0, "sliceSize": 100,
            "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]})


@pytest.fixture(scope="module")
def server(sweep, tmp_path_factory):
    port = free_port()
    log = open(tmp_path_factory.mktemp("tb_log") / "tensorboard.log", "w+")
    proc = subprocess.Popen([str(TENSORBOARD), "--logdir", str(sweep), "--host", "127.0.0.1", "--port", str(port),
                             "--reload_interval", "1"], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)  # its own process group: the data server goes too
    try:
        srv = Server(port)
        deadline, last = time.monotonic() + 90, None
        while True:
            if proc.poll() is not None:
                log.seek(0)
                pytest.fail(f"tensorboard exited with {proc.returncode}:\n{log.read()[-3000:]}")
            try:
                tags = srv.get("/data/plugin/scalars/tags")
                ready = (set(tags) == {"0", "1", "2", "3"} and all("final/loss" in t for t in tags.values())
                         and len(srv.session_groups()["sessionGroups"]) == 4)
                if ready:
                    break
                last = tags
            except OSError as e:  # not listening yet
                last = e
            if time.monotonic() > deadline:
                pytest.fail(f"tensorboard did not serve the sweep within 90 s (last answer: {str(last)[:500]})")
            time.sleep(0.5)
        yield srv
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()


def test_scalars_read_back_equal_the_run_tables(sweep, server):
    df = load_runs(sweep)
    tags = server.get("/data/plugin/scalars/tags")
    assert {"loss/train", "loss/regularised", "rank/4_1", "rank/2_2", "sv/1", "balance/3", "final/loss"} <= set(tags["0"])
    assert {"m0/loss/train", "m1/rank/4_1", "m1/sv/3", "m0/balance/1"} <= set(tags["1"])
    assert not any(t.startswith("m0/") for t in tags["0"])
    for k, job in enumerate(JOBS):
        table = df[df["run"] == str(sweep / str(k))]
        members = 2 if "model.ensemble=2" in job else 1
        for member in range(members):
            rows = table[table["member"] == member]
            prefix = f"m{member}/" if members > 1 else ""
            for tag, column in (("loss/train", "loss"), ("rank/4_1", "rank"), ("rank/4_1", "rank_4_1"),
                                ("sv/1", "sv_4_1_1"), ("balance/2", "balance_2")):
                points = server.get("/data/plugin/scalars/scalars", run=str(k), tag=prefix + tag)
                steps = [p[1] for p in points]
                values = np.array([p[2] for p in points], dtype=np.float32)
                assert steps == rows["step"].tolist() == [0, 10, 20, 30, 40]
                # TensorBoard keeps float32: equal to the table's float64 rounded to float32
                assert np.array_equal(values, rows[column].to_numpy().astype(np.float32)), (k, tag)


def test_hparams_lists_one_session_per_run_with_the_swept_keys_first(sweep, server):
    df = load_runs(sweep)
    exp = server.post("/data/plugin/hparams/experiment", {"experimentName": ""})
    infos = exp["hparamInfos"]
    # the swept keys are marked as differing, so the dashboard lists (and shows) them first
    assert [h["name"] for h in infos[:2]] == ["model.ensemble", "optim.lr"]
    assert [h["differs"] for h in infos[:3]] == [True, True, False]
    assert {"optim.steps", "model.depth", "task.kind", "status"} <= {h["name"] for h in infos}
    assert [m["name"]["tag"] for m in exp["metricInfos"]] == [
        "final/loss", "final/reg_loss", "final/grad_norm", "final/rank", "final/diverged_members"]
    groups = server.session_groups()["sessionGroups"]
    assert sorted(s["name"] for g in groups for s in g["sessions"]) == ["0", "1", "2", "3"]
    assert all(len(g["sessions"]) == 1 for g in groups)
    for g in groups:
        k = g["sessions"][0]["name"]
        table = df[df["run"] == str(sweep / k)]
        assert g["hparams"]["optim.lr"] == table["optim.lr"].iloc[0]
        assert g["hparams"]["model.ensemble"] == table["model.ensemble"].iloc[0]
        assert g["hparams"]["status"] == "finished"
        metrics = {m["name"]["tag"]: m["value"] for m in g["metricValues"]}
        final = table[table["step"] == table["step"].max()]
        assert np.float32(metrics["final/loss"]) == np.float32(final["loss"].mean())
        assert metrics["final/rank"] == final["rank"].mean()
