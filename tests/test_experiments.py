"""Every experiment runs end to end in its --quick mode and writes what it promises."""

import csv
import sys
from pathlib import Path

import pytest
import torch
from scripts import ROOT, load_script, run_quick

EXPERIMENTS = ROOT / "experiments"
# Every script with --quick: the studies, and the extending examples (through common.py).
SCRIPTS = sorted([*EXPERIMENTS.glob("*.py"),
                  *(p for p in (EXPERIMENTS / "extending").glob("*.py") if p.stem != "common")])


def _load(name: str):
    return load_script(EXPERIMENTS / f"{name}.py")


def _run_quick(name: str, tmp_path, *options: str):
    return run_quick(EXPERIMENTS / f"{name}.py", tmp_path / name, *options)


class _Parsed(Exception):
    """Raised in place of the study itself, once its arguments are parsed."""

    def __init__(self, args):
        super().__init__()
        self.namespace = args


def _out_of(path: Path, monkeypatch, *argv: str) -> Path:
    """The folder the script at ``path`` would write, run with ``argv``: its main runs as far
    as its ``arguments()`` (parsing, defaults resolved) and stops there."""
    module = load_script(path)
    parse = module.arguments

    def parsed(*a, **k):
        raise _Parsed(parse(*a, **k))

    monkeypatch.setattr(module, "arguments", parsed)
    monkeypatch.setattr(sys, "argv", [str(path), *argv])
    with pytest.raises(_Parsed) as stop:
        module.main()
    return stop.value.namespace.out


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.relative_to(EXPERIMENTS).as_posix())
def test_quick_never_writes_results(path, monkeypatch, tmp_path):
    # --quick without --out: runs/quick/<study>/ (git-ignored), never the committed results/;
    # the full run keeps results/<study>/; an explicit --out is honoured in both modes.
    assert len(SCRIPTS) >= 14  # the nine studies and five extending examples
    quick, full = _out_of(path, monkeypatch, "--quick"), _out_of(path, monkeypatch)
    assert "results" not in quick.parts and quick.parts[:2] == ("runs", "quick")
    assert not (ROOT / quick).resolve().is_relative_to((ROOT / "results").resolve())
    assert full.parts[0] == "results" and quick.parts[2:] == full.parts[1:]
    for mode in ([], ["--quick"]):
        assert _out_of(path, monkeypatch, *mode, "--out", str(tmp_path / "x")) == tmp_path / "x"


@pytest.mark.usefixtures("mnist_binary")  # the data is fetched and verified before the run
def test_likelihood_study_quick(tmp_path):
    out = _run_quick("likelihoods", tmp_path)
    LIKELIHOODS = _load("likelihoods").LIKELIHOODS  # noqa: N806
    readme = (out / "README.md").read_text()
    for name in LIKELIHOODS:
        assert f"| {name} | 1 |" in readme  # a row per likelihood in the comparison table
        trained = (out / "runs" / name / "checkpoint.pt").is_file()
        assert trained or f"| {name} | stopped |" in readme
    assert "| 148.437 | 148.437 |" in readme and "| 27.051 | 747.499 |" in readme
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert {row["likelihood"] for row in rows} <= set(LIKELIHOODS)
    assert len({row["likelihood"] for row in rows}) >= 5  # the ill-posed gaussian may stop
    for png in ("reconstructions.png", "samples.png"):
        assert (out / png).read_bytes().startswith(b"\x89PNG")


@pytest.mark.usefixtures("mnist_binary")
def test_latent2d_study_quick(tmp_path):
    out = _run_quick("latent2d", tmp_path)
    readme = (out / "README.md").read_text()
    assert "| 152.1370 |" in readme and "| 151.3254 |" in readme  # the reference beside ours
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert {(row["run"], row["epoch"]) for row in rows} == {
        (run, epoch) for run in ("sgd", "adam") for epoch in ("1", "2")}
    assert all(100 < float(row["test_loss"]) < 400 for row in rows)
    figures = ["reconstructions", "samples", "latent_manifold", "latent_embedding"]
    for png in ["learning_curves.png"] + [f"{r}-{f}.png" for r in ("sgd", "adam") for f in figures]:
        assert (out / png).read_bytes().startswith(b"\x89PNG")
        assert f"]({png})" in readme  # every figure is embedded


@pytest.mark.usefixtures("mnist_binary")
def test_estimator_study_quick(tmp_path, capsys):
    # Every estimator by bare name (the study's own configurations), plus one that cannot
    # run: it must be reported with its error while the others go on.
    study = _load("compare_estimators")
    names = sorted({study.parse(c)[0] for c in study.CONFIGURATIONS})
    out = _run_quick("compare_estimators", tmp_path, "--estimators", *names, "tail-adaptive-1")
    readme = (out / "README.md").read_text()
    for configuration in study.CONFIGURATIONS:  # every run of two seeds, mean +- error
        row = next(line for line in readme.splitlines() if line.startswith(f"| {configuration} |"))
        assert row.startswith(f"| {configuration} | 2 | ") and " ± " in row
    assert "| tail-adaptive-1 | 0 | failed: ValueError: tail-adaptive ranks particles" in readme
    assert "iwae-dreg-5 − iwae-5, IS-20, paired by seed (2 seeds): " in readme
    for k in (1, 5):  # sampled KL against analytic KL, the estimators the project is named for
        assert f"- trace-{k} − meanfield-{k}, IS-20, paired by seed (2 seeds): " in readme
    assert "At equal wall-clock time" in readme
    with open(out / "metrics.csv") as f:
        rows = {(row["configuration"], row["seed"]): row for row in csv.DictReader(f)}
    assert set(rows) == {(c, s) for c in [*study.CONFIGURATIONS, "tail-adaptive-1"]
                         for s in ("0", "1")}
    for configuration in study.CONFIGURATIONS:
        row = rows[configuration, "0"]
        assert float(row["test_elbo"]) <= float(row["is20_log_likelihood"]) + 5 < 0
        assert 0 <= int(row["active_units"]) <= 50
        assert float(row["encoder_snr_end"]) > 0 and float(row["decoder_variance_start"]) > 0
    assert rows["tail-adaptive-1", "0"]["test_elbo"] == ""
    with open(out / "curves.csv") as f:
        curves = list(csv.DictReader(f))
    assert {(row["configuration"], row["seed"], row["epoch"]) for row in curves} == {
        (c, s, e) for c in study.CONFIGURATIONS for s in ("0", "1") for e in ("1", "2")}
    for png in ("log_likelihood_vs_time.png", "gradient_snr.png"):
        assert (out / png).read_bytes().startswith(b"\x89PNG")
        assert f"]({png})" in readme
    # A study run again (after a stop) reads the runs it finished and trains nothing anew.
    capsys.readouterr()
    _run_quick("compare_estimators", tmp_path, "--estimators", "iwae-dreg")
    printed = capsys.readouterr().out
    assert "iwae-dreg-5, seed 1: done before" in printed and "epoch" not in printed.replace(
        "epoch(s)", "")


@pytest.mark.usefixtures("mnist_binary")
def test_discrete_latents_study_quick(tmp_path):
    study = _load("discrete_latents")
    out = _run_quick("discrete_latents", tmp_path)
    readme = (out / "README.md").read_text()
    for case, estimators in study.ESTIMATORS.items():  # every run of two seeds, mean +- error
        for configuration in estimators:
            row = next(line for line in readme.splitlines()
                       if line.startswith(f"| {case} | {configuration} |"))
            assert row.startswith(f"| {case} | {configuration} | 2 | ") and " ± " in row
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * sum(map(len, study.ESTIMATORS.values()))
    for row in rows:
        assert row["error"] == ""
        # the discrete ELBO below the IS-20 estimate (up to its noise), both finite
        assert float(row["test_elbo"]) < float(row["is20_log_likelihood"]) + 5 < 0
        assert float(row["encoder_snr"]) > 0
        assert (row["accuracy"] != "") == (row["case"] == "mixture")
        assert row["case"] != "mixture" or 0 < float(row["accuracy"]) <= 1
    assert "Gumbel-S. | 105.0 | 101.5" in readme  # the paper's rows beside ours
    assert (out / "elbo_vs_time.png").read_bytes().startswith(b"\x89PNG")


def test_matched_accuracy_is_the_best_one_to_one_matching():
    study = _load("discrete_latents")
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    assert study.matched_accuracy(torch.tensor([2, 2, 0, 0, 1, 1]), labels, 3) == 1.0
    # cluster 0 holds most of label 1, but matching it to label 0 lets cluster 1 take
    # label 1: 2 + 2 agreements beat the greedy 3 + 0
    clusters, labels = torch.tensor([0, 0, 0, 0, 0, 1, 1]), torch.tensor([1, 1, 1, 0, 0, 1, 1])
    assert study.matched_accuracy(clusters, labels, 2) == 4 / 7


@pytest.mark.usefixtures("mnist_binary")
def test_ais_study_quick(tmp_path):
    out = _run_quick("ais", tmp_path)
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    for model in ("base", "longer"):
        mine = [r for r in rows if r["model"] == model]
        assert {r["method"] for r in mine} == {"IS-1", "IS-10", "IS-100", "AIS", "BDMC forward",
                                               "BDMC reverse", "BDMC gap"}
        for steps in ("2", "8"):
            forward, reverse, gap = (next(r for r in mine if r["method"] == f"BDMC {m}"
                                          and r["steps"] == steps)
                                     for m in ("forward", "reverse", "gap"))
            assert float(gap["log_likelihood"]) == pytest.approx(
                float(reverse["log_likelihood"]) - float(forward["log_likelihood"]), abs=1e-3)
        assert all(float(r["seconds"]) >= 0 for r in mine)
    readme = (out / "README.md").read_text()
    assert "| base | test | AIS, 8 steps |" in readme and "BDMC gap" in readme
    assert (out / "bdmc_gap.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.usefixtures("mnist_binary")
def test_gradient_snr_study_quick(tmp_path):
    out = _run_quick("gradient_snr", tmp_path)
    with open(out / "snr.csv") as f:
        rows = list(csv.DictReader(f))
    study = _load("gradient_snr")
    assert {(r["state"], r["estimator"], r["k"]) for r in rows} == {
        (s, e, k) for s in ("initial", "trained") for e in study.ESTIMATORS for k in ("1", "5")}
    assert all(float(r["encoder"]) > 0 and float(r["decoder"]) > 0 for r in rows)
    readme = (out / "README.md").read_text()
    assert "initial, iwae: encoder SNR " in readme and "(slope " in readme
    assert "](snr_vs_k.png)" in readme
    assert (out / "snr_vs_k.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.usefixtures("mnist_binary")
def test_iwae_paper_study_quick(tmp_path, capsys):
    study = _load("iwae_paper")
    # A long schedule runs in chunks: one epoch, then the run resumes for the second.
    _run_quick("iwae_paper", tmp_path, "--estimators", "vae-1", "--layers", "1", "--epochs", "1")
    assert "| 1 (1 of 8) |" in (tmp_path / "iwae_paper" / "README.md").read_text()
    capsys.readouterr()
    out = _run_quick("iwae_paper", tmp_path, "--estimators", "vae-1", "iwae-5")
    printed = capsys.readouterr().out
    assert "1-layer_vae-1_seed-0 epoch    2" in printed
    assert "1-layer_vae-1_seed-0 epoch    1" not in printed  # resumed, not trained again
    readme = (out / "README.md").read_text()
    for layers, row in [(1, "vae-1"), (1, "iwae-5"), (2, "vae-1"), (2, "iwae-5")]:
        line = next(x for x in readme.splitlines() if x.startswith(f"| {layers} | {row} |"))
        paper = study.PAPER.get((layers, row))
        assert line.split(" | ")[2] == ("—" if paper is None else f"{paper:.2f}")
        assert " ± " in line and "(IS-20, 100 images)" in line and "| 2 (2 of 8) |" in line
        assert f"--layers {layers} --estimators {row} --seed 0 --epochs 2 --threads " in line
    assert "h1 " in readme and "h2 " in readme  # active units of both latent layers
    saved = sorted(p.name for p in (out / "results").glob("*.json"))
    assert saved == ["1-layer_iwae-5_seed-0.json", "1-layer_vae-1_seed-0.json",
                     "2-layer_iwae-5_seed-0.json", "2-layer_vae-1_seed-0.json"]
    # Run again: the finished rows are read back, nothing trains.
    capsys.readouterr()
    _run_quick("iwae_paper", tmp_path, "--estimators", "vae-1", "--layers", "2")
    printed = capsys.readouterr().out
    assert "2-layer_vae-1_seed-0: done before" in printed and " epoch " not in printed


@pytest.mark.usefixtures("mnist_binary")
def test_route_to_88_quick(tmp_path, capsys):
    out = _run_quick("route_to_88", tmp_path, "--name", "quick")
    readme = (out / "README.md").read_text()
    row = next(x for x in readme.splitlines() if x.startswith("| quick | 3 | "))
    assert "(IS-20, 200 images)" in row and row.count("not reached") == 5
    assert f"--out {out}`" in readme  # its command writes where this run wrote
    with open(out / "curves.csv") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1", "2", "3"]
    assert (out / "nll_vs_minutes.png").read_bytes().startswith(b"\x89PNG")
    # The same name with other settings is refused, and the finished run is left alone.
    with pytest.raises(SystemExit, match="holds a run with other settings"):
        _run_quick("route_to_88", tmp_path, "--name", "quick", "--lr", "3e-3")
    assert (out / "README.md").read_text() == readme


@pytest.mark.usefixtures("mnist_binary")
def test_semi_supervised_quick(tmp_path):
    import json

    out = _run_quick("semi_supervised", tmp_path)  # a validation run: the test set unread
    [path] = (out / "validation").glob("labels-100*.json")
    result = json.loads(path.read_text())
    assert result["labels"] == 100 and result["epochs"] == 2 and "test_error" not in result
    assert result["training_images"] == 1500  # the quick 2,000 less 500 held out
    assert 0 <= result["validation_error"] < 90  # better than chance after two quick epochs
    assert [c["epoch"] for c in result["curve"]] == [1, 2]
    assert result["validation_bound"] < 0  # a bound on log p(x), y summed out
    assert 0 <= result["generative_error"] <= 100 and result["class_spread"] >= 0
    readme = (out / "README.md").read_text()
    assert "(no final run yet)" in readme and f"| {result['validation_error']:.2f} |" in readme
    assert (out / "validation_error.png").read_bytes().startswith(b"\x89PNG")
    # the final run of the same settings is that run, its test set read once at the end
    _run_quick("semi_supervised", tmp_path, "--test")
    final = json.loads((out / "results" / path.name).read_text())
    assert final["epochs"] == 2 and final["validation_error"] == result["validation_error"]
    assert 0 <= final["test_error"] < 90
    readme = (out / "README.md").read_text()
    assert f"| 100 | 6.81 | 11.97 ± 1.71 | 3.33 ± 0.14 | {final['test_error']:.2f} |" in readme
    assert (out / "style-100.png").read_bytes().startswith(b"\x89PNG")
    assert 1 <= final["chosen_epoch"] <= 2 and final["chosen_validation_error"] == min(
        c["validation_error"] for c in final["curve"])  # tested at its best validation epoch
    # the stacked M1+M2 trains M1 first, then M2 on its code, under a name of its own
    # (2 quick epochs leave M1 without an active dimension: M2 models all of them)
    with pytest.raises(SystemExit, match="has no active dimension after 2 epochs"):
        _run_quick("semi_supervised", tmp_path, "--model", "m1-m2", "--repeat", "1")
    _run_quick("semi_supervised", tmp_path, "--model", "m1-m2", "--repeat", "1",
               "--m1-dims", "all")
    stacked = json.loads(next((out / "validation").glob("*modelm1-m2*")).read_text())
    assert stacked["model"] == "m1-m2" and stacked["m1_epochs"] == 2
    assert stacked["validation_bound"] < 0 and stacked["m1_minutes"] > 0
    assert "model m1-m2" in (out / "README.md").read_text()
    # the run opens like any other: log p(x) of unlabelled validation images, y summed out
    # (exactly, by enumeration), and the classifier's error on their labels
    from pyro_vae.cli import main

    run = out / "runs" / path.stem
    model = f"{EXPERIMENTS / 'semi_supervised.py'}:M2"
    assert main(["evaluate", str(run), "--model", model, "--is-samples", "20"]) == 0
    evaluation = json.loads((run / "evaluation.json").read_text())
    assert evaluation["classification_error"] == pytest.approx(final["validation_error"])
    assert evaluation["classified_examples"] == 500 and evaluation["validation"] == 500
    assert evaluation["elbo_estimator"].startswith("TraceEnum_ELBO")
    assert evaluation["elbo"] == pytest.approx(final["validation_bound"], abs=2.0)  # other z
    assert evaluation["elbo"] <= evaluation["log_likelihood"] + 3 * evaluation[
        "log_likelihood_stderr"]
    assert main(["plot", str(run), "--model", model]) == 0
    assert (run / "figures" / "reconstructions.png").read_bytes().startswith(b"\x89PNG")
    stacked_run = next((out / "runs").glob("*modelm1-m2*"))
    assert main(["evaluate", str(stacked_run), "--model",
                 f"{EXPERIMENTS / 'semi_supervised.py'}:StackedM2", "--is-samples", "20"]) == 0
    evaluation = json.loads((stacked_run / "evaluation.json").read_text())
    assert evaluation["classification_error"] == pytest.approx(stacked["validation_error"])
    assert evaluation["elbo"] <= evaluation["log_likelihood"] + 3 * evaluation[
        "log_likelihood_stderr"]  # a bound on log p(x) of the images, y summed out


@pytest.mark.usefixtures("mnist_binary")
def test_networks_study_quick(tmp_path):
    out = _run_quick("networks", tmp_path)
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["network"] for row in rows] == list(_load("networks").NETWORKS.values())
    for row in rows:
        assert float(row["test_elbo"]) <= float(row["log_likelihood"]) + 3 * float(row["stderr"])
        assert float(row["seconds_per_epoch"]) > 0
    assert int(rows[1]["parameters"]) != int(rows[0]["parameters"])  # two different networks
    readme = (out / "README.md").read_text()
    assert "paired difference" in readme and "](samples.png)" in readme


def test_inference_gap_study_quick(tmp_path):
    out = _run_quick("inference_gap", tmp_path, "--datasets", "mnist-binary")
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    study = _load("inference_gap")
    last = [r for r in rows if r["epochs"] == "2"]
    assert sorted(r["case"] for r in last) == sorted(study.CASES)  # one seed in --quick
    assert {r["epochs"] for r in rows if r["case"] == "ffg"} == {"1", "2"}  # gaps vs epochs
    for r in rows:
        family = "ffg" if study.FAMILY[r["case"]] == "gaussian" else "flow"
        value = lambda key, r=r: float(r[key])  # noqa: E731
        assert value("inference") == pytest.approx(
            value(f"approximation_{family}") + value(f"amortization_{family}"), abs=1e-3)
        assert value("elbo_ffg") > value("elbo_amortized") - 0.5  # never refined downward
        assert (r["bdmc_gap"] != "") == (r["seed"] == "0" and r["epochs"] == "2")
    (semi,) = [r for r in last if r["case"] == "semi"]
    (plain,) = [r for r in last if r["case"] == "ffg"]
    budget = 2 * float(plain["epoch_seconds"])  # equal minutes: the FFG's 2 epochs
    assert float(semi["epoch_seconds"]) * int(semi["trained_epochs"]) >= budget
    readme = (out / "README.md").read_text()
    assert "| data | guide | log p(x) (AIS) |" in readme and "## Semi-amortized training" in readme
    assert "Which gap dominates" in readme
    for png in ("gaps.png", "gaps_vs_epochs.png"):
        assert (out / png).read_bytes().startswith(b"\x89PNG")
