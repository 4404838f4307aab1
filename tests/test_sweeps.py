"""Hyperparameter searches and cluster launchers: Optuna sweeps of a tiny FusionDigits model through train.py with
the basic and the submitit launchers, the search spaces of every model family, and the SLURM launcher's submission
(with a stand-in ``sbatch``, no SLURM needed)."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import fusion.runs  # noqa: F401  (registers the resolver of the run folders)

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
TRAIN = str(ROOT / "train.py")
#: No SLURM or submitit variables of the machine running the tests leak into the runs.
ENV = {
    **{k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SUBMITIT_"))},
    "WANDB_MODE": "offline",
    "WANDB_SILENT": "true",
    "PYTHONWARNINGS": "ignore",
    "OMP_NUM_THREADS": "1",
}
#: A FusionDigits model small enough for a few steps on one CPU core.
TINY = [
    "experiment=fusionvae_digits",
    "trainer=cpu",
    "logger=csv",
    "trainer.max_steps=2",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "data.batch_size=8",
    "data.num_workers=0",
    "model.val_samples=1",
    "model.num_val_images=2",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]
SEARCHES = {  # each search with an experiment of its family
    "fusionvae_optuna": ["experiment=fusionvae_digits"],
    "cvae_optuna": ["experiment=cvae_s_digits"],
    "fcn_optuna": ["experiment=fcn_digits"],
    "gpgan_optuna": ["experiment=gpgan_transient", "data.root=X"],
}


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=overrides, return_hydra_config=True)


def _sweep(sweep_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    args = [TRAIN, "-m", "hparams_search=fusionvae_optuna", *TINY, f"hydra.sweep.dir={sweep_dir}"]
    args += ["hydra.sweeper.n_trials=3", *extra]
    return subprocess.run(
        [sys.executable, *args], cwd=sweep_dir.parent, env=ENV, capture_output=True, text=True, timeout=300
    )


def _last_logged(run_dir: Path, key: str) -> float:
    (metrics,) = run_dir.glob("csv/version_*/metrics.csv")
    with open(metrics) as handle:
        values = [float(row[key]) for row in csv.DictReader(handle) if row.get(key)]
    assert values, f"{key} not logged in {metrics}"
    return values[-1]


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory) -> dict[str, Path]:
    """The same seeded 3-trial search with the basic launcher (one process) and with submitit_local (3 at once)."""
    basic = tmp_path_factory.mktemp("basic") / "sweep"
    local = tmp_path_factory.mktemp("local") / "sweep"
    storage = f"hydra.sweeper.storage=sqlite:///{basic.parent / 'study.db'}"  # the study kept in a database
    for sweep_dir, extra in ((basic, [storage]), (local, ["hydra/launcher=local", "hydra.sweeper.n_jobs=3"])):
        proc = _sweep(sweep_dir, *extra)
        assert proc.returncode == 0, proc.stderr[-4000:]
    return {"basic": basic, "local": local}


@pytest.mark.parametrize("launcher", ["basic", "local"])
def test_sweep_writes_the_best_parameters_and_a_folder_per_trial(sweeps, launcher: str) -> None:
    sweep_dir = sweeps[launcher]
    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    space = OmegaConf.load(CONF / "hparams_search" / "fusionvae_optuna.yaml").hydra.sweeper.params
    assert set(results["best_params"]) == set(space)
    assert 1e-3 <= results["best_params"]["model.optimizer.lr"] <= 3e-2
    assert results["best_params"]["model.network.latent_channels"] in (4, 8, 10, 16, 20)
    values, lrs = [], []
    for trial in range(3):
        run = sweep_dir / str(trial)
        last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
        assert last["global_step"] == 2
        config = OmegaConf.load(run / ".hydra" / "config.yaml")
        assert config.optimized_metric == "val/mse_min"
        lrs.append(config.model.optimizer.lr)
        values.append(_last_logged(run, "val/mse_min"))
    assert len(set(lrs)) == 3  # three different trials, each in its own folder
    # train() returned the monitored metric to the sweeper: the best value is the smallest one the trials logged
    assert results["best_value"] == pytest.approx(min(values), rel=1e-5)
    best = values.index(min(values))
    assert results["best_params"]["model.optimizer.lr"] == pytest.approx(lrs[best])


def test_the_study_is_kept_in_its_database(sweeps) -> None:
    import optuna

    study = optuna.load_study(study_name="fusionvae_digits", storage=f"sqlite:///{sweeps['basic'].parent / 'study.db'}")
    assert len(study.trials) == 3 and all(t.state.name == "COMPLETE" for t in study.trials)
    results = yaml.safe_load((sweeps["basic"] / "optimization_results.yaml").read_text())
    assert study.best_value == pytest.approx(results["best_value"])


def test_submitit_local_ran_each_trial_in_its_own_process(sweeps) -> None:
    logs = sorted((sweeps["local"] / ".submitit").glob("*/*_log.out"))
    assert len(logs) == 3
    assert not (sweeps["basic"] / ".submitit").exists()


def test_the_seeded_sampler_repeats_the_search(sweeps) -> None:
    """Same seed, same trials: the first trial (a random start of TPE) is the same under both launchers."""
    first = [OmegaConf.load(sweeps[k] / "0" / ".hydra" / "config.yaml").model for k in ("basic", "local")]
    assert first[0].optimizer.lr == first[1].optimizer.lr and first[0].kl_min == first[1].kl_min


@pytest.mark.parametrize("search", sorted(SEARCHES))
def test_every_search_names_real_parameters(search: str) -> None:
    cfg = _compose([f"hparams_search={search}", *SEARCHES[search]])
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.sampler.seed is not None
    assert sweeper.direction == "minimize"
    # the metric the search optimises is the one the checkpoint callback keeps the best of
    assert cfg.optimized_metric == cfg.callbacks.model_checkpoint.monitor
    for key, space in sweeper.params.items():
        assert OmegaConf.select(cfg, key) is not None, f"{search}: {key} is not a key of the composed config"
        if "interval" in space:  # the model's default lies inside the searched range
            low, high = (float(v) for v in space.split("interval(")[1].rstrip(")").split(","))
            assert low <= float(OmegaConf.select(cfg, key)) <= high, (key, space)
    assert "tag(log" in sweeper.params[next(k for k in sweeper.params if k.endswith("lr"))]
    assert (CONF / "hparams_search" / f"{search}.yaml").is_file()
    assert len(SEARCHES) == len(list((CONF / "hparams_search").glob("*.yaml")))


def test_search_settings_are_settable() -> None:
    cfg = _compose(["hparams_search=fusionvae_optuna", "experiment=fusionvae_digits", "hydra.sweeper.n_trials=7"])
    cfg = _compose(["hparams_search=gpgan_optuna", "experiment=gpgan_smoke", "hydra.sweeper.n_jobs=4",
                    "hydra.sweeper.sampler.seed=3", "hydra.sweeper.n_trials=7"])  # fmt: skip
    assert (cfg.hydra.sweeper.n_jobs, cfg.hydra.sweeper.sampler.seed, cfg.hydra.sweeper.n_trials) == (4, 3, 7)
    assert cfg.optimized_metric == "val/mse"


# ----------------------------------------------------------------------------------------------------
# Cluster launchers
# ----------------------------------------------------------------------------------------------------
SLURM = [
    "hydra/launcher=slurm",
    "hydra.launcher.partition=gpu",
    "hydra.launcher.gpus_per_node=4",
    "hydra.launcher.nodes=2",
    "hydra.launcher.timeout_min=600",
    "hydra.launcher.array_parallelism=2",
]


def test_slurm_launcher_config_composes() -> None:
    launcher = _compose(["experiment=fusionvae_digits", *SLURM]).hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.partition, launcher.gpus_per_node, launcher.nodes) == ("gpu", 4, 2)
    assert (launcher.timeout_min, launcher.array_parallelism) == (600, 2)
    assert launcher.tasks_per_node == 4  # one task per GPU, as Lightning's SLURM environment expects
    assert launcher.max_num_timeout > 0 and launcher.signal_delay_s > 0  # requeued at the time limit
    local = _compose(["experiment=fusionvae_digits", "hydra/launcher=local"]).hydra.launcher
    assert local._target_.endswith("submitit_launcher.LocalLauncher")


def test_runs_have_deterministic_folders_when_named() -> None:
    named = _compose(["experiment=fusionvae_digits", "run_name=abc"]).hydra
    assert named.run.dir == "outputs/fusionvae_digits/abc"
    assert named.sweep.dir == "multirun/fusionvae_digits/abc"
    assert OmegaConf.to_container(named.sweep)["subdir"] == "${hydra.job.num}"  # a folder per job number
    unnamed = _compose(["experiment=fusionvae_digits"]).hydra
    assert unnamed.run.dir.startswith("outputs/fusionvae_digits/20")  # a timestamp
    with pytest.raises(Exception, match="plain folder name"):
        print(_compose(["experiment=fusionvae_digits", "run_name=a/b"]).hydra.run.dir)


def test_slurm_launcher_submits_the_expected_job_array(tmp_path: Path) -> None:
    """The real launcher and submitit, up to sbatch: a stand-in sbatch keeps the script it is given."""
    bin_dir, script = tmp_path / "bin", tmp_path / "submitted.sh"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\ncp "$1" {script}\necho "Submitted batch job 4242"\n')
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit looks for it; never run here
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).chmod(0o755)
    env = {**ENV, "PATH": f"{bin_dir}{os.pathsep}{ENV['PATH']}"}
    args = [TRAIN, "-m", *SLURM, "experiment=fusionvae_digits", "run_name=search", "model.optimizer.lr=0.01,0.02,0.03"]
    proc = subprocess.Popen(
        [sys.executable, *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 120
        while not script.is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert script.is_file(), proc.stdout.read()[-3000:] if proc.poll() is not None else "no sbatch call"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    text = script.read_text()
    sbatch = {line.split()[1] for line in text.splitlines() if line.startswith("#SBATCH ")}
    expected = {"--partition=gpu", "--gpus-per-node=4", "--nodes=2", "--ntasks-per-node=4", "--time=600"}
    assert expected <= sbatch, sorted(sbatch)
    assert "--array=0-2%2" in sbatch  # three runs, at most two at once
    assert "--signal=USR2@120" in sbatch  # submitit's requeue signal, two minutes before the limit
    sweep_dir = tmp_path / "multirun" / "fusionvae_digits" / "search"
    assert f"--output={sweep_dir}/.submitit/%A_%a/%A_%a_0_log.out" in sbatch
    assert "srun" in text and "submitit.core._submit" in text


# ----------------------------------------------------------------------------------------------------
# Atomic checkpoints, automatic resumption, SLURM's requeue
# ----------------------------------------------------------------------------------------------------
def test_checkpoints_are_written_atomically(tmp_path: Path) -> None:
    from fusion.models.callbacks import AtomicCheckpointIO

    target = tmp_path / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 1, "state_dict": {}}, target)
    assert torch.load(target, weights_only=True)["global_step"] == 1
    with pytest.raises(Exception):  # a write that fails half-way (an object torch.save cannot pickle)
        io.save_checkpoint({"global_step": 2, "state_dict": {}, "bad": lambda: None}, target)
    assert torch.load(target, weights_only=True)["global_step"] == 1  # the old checkpoint is intact
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]  # and no temporary file is left


def test_trainer_plugins_under_slurm_and_submitit(monkeypatch) -> None:
    from lightning.fabric.plugins.environments import SLURMEnvironment

    from fusion.models.callbacks import AtomicCheckpointIO
    from fusion.pipeline import _trainer_plugins

    cfg = _compose(["experiment=fusionvae_digits"])
    for key in [k for k in os.environ if k.startswith(("SLURM_", "SUBMITIT_"))]:
        monkeypatch.delenv(key)
    (plugin,) = _trainer_plugins(cfg)
    assert isinstance(plugin, AtomicCheckpointIO)
    for key, value in {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "train", "SLURM_JOB_ID": "7"}.items():
        monkeypatch.setenv(key, value)
    environment = _trainer_plugins(cfg)[-1]
    assert isinstance(environment, SLURMEnvironment) and environment.auto_requeue
    assert environment.requeue_signal == signal.SIGUSR1
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")  # submitit requeues its jobs itself
    assert not _trainer_plugins(cfg)[-1].auto_requeue
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "1")  # torchrun inside a SLURM allocation: Lightning's torchelastic
    assert [type(p) for p in _trainer_plugins(cfg)] == [AtomicCheckpointIO]


def test_multi_node_ddp_under_slurm(monkeypatch, tmp_path: Path) -> None:
    """``srun python train.py trainer=ddp trainer.num_nodes=2 trainer.devices=4``: task 5 of 8 is rank 5 on node 1,
    and its DDP strategy writes checkpoints atomically (no processes are started: the trainer is only built)."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    from fusion.models.callbacks import AtomicCheckpointIO
    from fusion.pipeline import _trainer_plugins
    from fusion.runs import instantiate

    # building the trainer makes this process "rank 5" for Lightning's rank-zero-only logging: undone at teardown,
    # or the later trainings of this test session would log (and write their image grids) as a non-zero rank
    monkeypatch.setattr(rank_zero_only, "rank", rank_zero_only.rank)
    slurm = {"SLURM_NTASKS": "8", "SLURM_NTASKS_PER_NODE": "4", "SLURM_PROCID": "5", "SLURM_LOCALID": "1"}
    slurm |= {"SLURM_NODEID": "1", "SLURM_NODELIST": "node[1-2]", "SLURM_JOB_NAME": "train", "SLURM_JOB_ID": "9"}
    for key, value in slurm.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("SUBMITIT_EXECUTOR", raising=False)
    cfg = _compose(["experiment=fusionvae_digits", "trainer=ddp", "trainer.num_nodes=2", "trainer.devices=4",
                    "trainer.accelerator=cpu", "trainer.precision=32-true", "trainer.sync_batchnorm=false",
                    f"paths.output_dir={tmp_path}"])  # fmt: skip
    trainer = instantiate(cfg.trainer, "trainer", plugins=_trainer_plugins(cfg), logger=False)
    assert (trainer.world_size, trainer.global_rank, trainer.node_rank, trainer.local_rank) == (8, 5, 1, 1)
    assert type(trainer.strategy).__name__ == "DDPStrategy"
    assert trainer.strategy.cluster_environment.main_address == "node1"
    assert trainer.strategy.cluster_environment.auto_requeue
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    assert rank_zero_only.rank == 5


def test_a_named_run_started_again_gets_its_folder_back(tmp_path: Path, monkeypatch) -> None:
    from fusion.runs import start_run_dir

    for key in ("WORLD_SIZE", "SLURM_NTASKS"):
        monkeypatch.delenv(key, raising=False)
    named = tmp_path / "outputs" / "train" / "job"
    assert start_run_dir(named) == named  # new
    assert start_run_dir(named) == named.with_name("job-2")  # an empty folder of another run is never shared
    (named / "checkpoints").mkdir()
    (named / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert start_run_dir(named) == named  # a run to resume: its own folder
    monkeypatch.setenv("WORLD_SIZE", "8")  # the processes of a torchrun (or srun) launch share one folder
    assert start_run_dir(tmp_path / "fresh") == tmp_path / "fresh" and (tmp_path / "fresh").is_dir()
    assert start_run_dir(tmp_path / "fresh") == tmp_path / "fresh"
    assert sorted(p.name for p in named.parent.iterdir()) == ["job", "job-2"]


def test_resume_path_takes_the_newest_checkpoint(tmp_path: Path) -> None:
    from fusion.runs import resume_path

    checkpoints = tmp_path / "checkpoints"
    assert resume_path("auto", checkpoints, tmp_path) is None  # nothing to resume: start fresh
    with pytest.raises(FileNotFoundError, match="ckpt_path=last"):
        resume_path("last", checkpoints, tmp_path)
    checkpoints.mkdir()
    (checkpoints / "last.ckpt").write_bytes(b"1")
    assert resume_path("auto", checkpoints, tmp_path) == checkpoints / "last.ckpt"
    for n in (1, 2):
        (tmp_path / f"hpc_ckpt_{n}.ckpt").write_bytes(b"2")
        os.utime(tmp_path / f"hpc_ckpt_{n}.ckpt", ns=(time.time_ns() + n * 10**9,) * 2)
    assert resume_path("auto", checkpoints, tmp_path) == tmp_path / "hpc_ckpt_2.ckpt"  # the requeue's, newer
    assert resume_path(None, checkpoints, tmp_path) is None


RESUMABLE = [
    *[o for o in TINY if not o.startswith(("trainer.max_steps", "trainer.limit_train_batches", "data.batch_size"))],
    "trainer.max_steps=40",
    "trainer.limit_train_batches=15",
    "trainer.log_every_n_steps=1",
    "data.batch_size=16",
    "+logger.csv.flush_logs_every_n_steps=1",  # the test watches the log to stop the run mid-way
]


def _logged_steps(run_dir: Path, version: int) -> list[int]:
    path = run_dir / "csv" / f"version_{version}" / "metrics.csv"
    if not path.is_file():
        return []
    with open(path) as handle:
        return [int(row["step"]) for row in csv.DictReader(handle) if row.get("train/loss")]


def _interrupt(
    args: list[str], cwd: Path, run_dir: Path, env: dict, *, send: signal.Signals, after: int, until: Path | None = None
) -> int:
    """Start ``train.py args``, send ``send`` once ``after`` steps are logged, SIGKILL it (for another signal: once
    a requeue checkpoint and ``until`` exist); return its exit code."""
    proc = subprocess.Popen(
        [sys.executable, TRAIN, *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 120
        while len(_logged_steps(run_dir, 0)) < after:
            if proc.poll() is not None:
                pytest.fail(f"training ended before it was interrupted:\n{proc.stdout.read()[-3000:]}")
            assert time.monotonic() < deadline, "training did not start within 120 s"
            time.sleep(0.01)
        proc.send_signal(send)
        if send != signal.SIGKILL:  # the requeue handler runs, then the scheduler's kill follows
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if list(run_dir.glob("hpc_ckpt_*.ckpt")) and (until is None or until.exists()):
                    break
                time.sleep(0.01)
            proc.kill()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    return proc.returncode


def _step(checkpoint: Path) -> int:
    return int(torch.load(checkpoint, map_location="cpu", weights_only=True)["global_step"])


def _check_resumed(
    run_dir: Path, rerun: subprocess.CompletedProcess, checkpoint: Path, stopped: int, *, exact: bool = True
) -> None:
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert 0 < stopped < 40
    assert f"resuming from {checkpoint} at global step {stopped}" in rerun.stdout
    final = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert final["global_step"] == 40  # as many steps as an uninterrupted run
    # the second run trained the remaining steps only, each once: it did not start again from step 0
    steps = _logged_steps(run_dir, 1)
    if exact:
        assert steps == list(range(stopped, 40))
    else:  # a checkpoint taken by a signal handler within a step may count that batch in the log's step already
        assert stopped <= steps[0] <= stopped + 1 and steps == list(range(steps[0], steps[0] + 40 - stopped))


@pytest.mark.parametrize("how", ["run", "sweep"])
def test_a_killed_job_started_again_continues_from_last_ckpt(tmp_path: Path, how: str) -> None:
    """SIGKILL mid-epoch, then the same command again (what a requeue does): same folder, resumed from last.ckpt."""
    args = [*RESUMABLE, "run_name=job", "callbacks.model_checkpoint.every_n_train_steps=1"]
    if how == "sweep":  # a job of a sweep: multirun/<task>/<run_name>/<job number>
        args, run_dir = ["-m", *args], tmp_path / "multirun" / "fusionvae_digits" / "job" / "0"
    else:
        run_dir = tmp_path / "outputs" / "fusionvae_digits" / "job"
    # step checkpoints start once the monitored metric exists (after the first validation, at step 15)
    rc = _interrupt(args, tmp_path, run_dir, ENV, send=signal.SIGKILL, after=20)
    assert rc == -signal.SIGKILL
    last = run_dir / "checkpoints" / "last.ckpt"
    stopped = _step(last)
    rerun = subprocess.run(
        [sys.executable, TRAIN, *args], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300
    )
    _check_resumed(run_dir, rerun, last, stopped)
    assert [p.name for p in run_dir.parent.iterdir() if p.is_dir()] == [run_dir.name]  # no second folder


def test_the_slurm_requeue_signal_saves_requeues_and_resumes(tmp_path: Path) -> None:
    """Under SLURM (its variables, a stand-in scontrol): SIGUSR1 makes Lightning write hpc_ckpt_1.ckpt and requeue
    the job; the requeued job continues from that checkpoint (no last.ckpt was written mid-epoch)."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "scontrol_calls"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (bin_dir / "scontrol").chmod(0o755)
    slurm = {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "train", "SLURM_JOB_ID": "4242", "SLURM_NODELIST": "localhost"}
    env = {**ENV, **slurm, "PATH": f"{bin_dir}{os.pathsep}{ENV['PATH']}"}
    args = [*RESUMABLE, "run_name=job"]  # last.ckpt only at the end of an epoch (15 steps)
    run_dir = tmp_path / "outputs" / "fusionvae_digits" / "job"
    _interrupt(args, tmp_path, run_dir, env, send=signal.SIGUSR1, after=3, until=calls)
    assert calls.read_text().split() == ["requeue", "4242"]
    (hpc,) = run_dir.glob("hpc_ckpt_*.ckpt")
    assert hpc.name == "hpc_ckpt_1.ckpt"
    stopped = _step(hpc)
    if (run_dir / "checkpoints" / "last.ckpt").is_file():  # the epoch ended before the kill: hpc must be older
        assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] >= 15
        pytest.skip("the first epoch ended before the kill")
    rerun = subprocess.run(
        [sys.executable, TRAIN, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    _check_resumed(run_dir, rerun, hpc, stopped, exact=False)


def test_readme_names_the_installed_plugin_versions() -> None:
    """The README's "Sweeps and clusters" states the versions in use; they are the installed ones."""
    import re
    from importlib.metadata import version

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text[text.index("## Sweeps and clusters") : text.index("## Python API")]
    stated = {
        "hydra-optuna-sweeper": r"hydra-optuna-sweeper\s+([\d.]+)",
        "optuna": r"optuna\s+([\d.]+)",
        "SQLAlchemy": r"SQLAlchemy\s+([\d.]+)",
        "hydra-submitit-launcher": r"hydra-submitit-launcher\s+([\d.]+)",
        "submitit": r"with submitit\s+([\d.]+)",
    }
    for package, pattern in stated.items():
        match = re.search(pattern, section)
        assert match, f"README states no version of {package}"
        assert version(package).startswith(match.group(1)), (package, version(package), match.group(1))
