"""The Table 2 report from hand-written results.json files in a misleading folder tree."""

import csv
import importlib.util
import json
import math
import statistics
from pathlib import Path

import pytest

from rewire_lobes.analysis.report import collect, write_report
from rewire_lobes.downstream.results import results_record

BASE, OTHER = "b" * 64, "c" * 64  # the two families' baseline encoders
TWIN, MIXED_1, MIXED_2, NEUTRAL, HUBERT_TWIN = "a" * 64, "1" * 64, "2" * 64, "d" * 64, "e" * 64
METRICS = {"KS": "accuracy", "ASR": "wer", "QbE": "mtwv"}


def encoder(content_hash, source):
    return {"source": source, "content_hash": content_hash, "model_type": "wavlm",
            "num_states": 4, "hidden_size": 8}


BASELINE = encoder(BASE, "/models/wavlm-base")


def rewiring(folder, strategy, content_hash, source="/models/wavlm-base", source_hash=BASE):
    """Writes ``folder/rewiring.json``; returns the encoder and provenance of a run on it."""
    record = {"strategy": strategy, "source": source, "source_content_hash": source_hash,
              "content_hash": content_hash, "updates": 30, "profile": "embedded",
              "loss_curve": [[step, 5.0 - step / 10] for step in range(1, 31)],
              "hyperparameters": {"lr": 1e-6}}
    path = Path(folder) / "rewiring.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    provenance = {"record": str(path), "record_sha256": "0" * 64, "strategy": strategy,
                  "source": source, "source_content_hash": source_hash,
                  "content_hash": content_hash, "updates": 30, "profile": "embedded"}
    return encoder(content_hash, str(Path(folder) / "upstream")), provenance


def write_run(path, task, encoder_info, test, *, strategy="baseline", provenance=None,
              fraction=0.01, seed=1, lr=1e-4, best_dev=None, best_step=100, profile="embedded",
              upstream_mode="frozen", max_steps=400):
    metric = METRICS[task]
    best_dev = test if best_dev is None else best_dev
    zero_shot = task == "QbE"
    training = dict(fraction=None, seed=None, best_step=None, steps=None, max_steps=None,
                    eval_every_steps=None) if zero_shot else dict(
        fraction=fraction, seed=seed, best_step=best_step, steps=max_steps, max_steps=max_steps,
        eval_every_steps=50)
    curve = [] if zero_shot else [[50, best_dev - 5], [best_step, best_dev], [400, best_dev - 1]]
    record = results_record(
        task=task, encoder=encoder_info, metric=metric, dev_metric=metric,
        test_scores={metric: test}, dev_curve=curve, best_dev=best_dev, strategy=strategy,
        profile=profile, provenance=provenance,
        settings={} if zero_shot else {"lr": lr, "batch_size": 32, "max_steps": max_steps},
        zero_shot=zero_shot,
        layer_weights=None if zero_shot else [0.1, 0.2, 0.3, 0.4],
        manifest_folder="/prepared/x", chosen_layer=2 if zero_shot else None,
        **({} if zero_shot else {"upstream_mode": upstream_mode}), **training)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """A tree whose folder names say the opposite of the records, and its report."""
    root = tmp_path_factory.mktemp("runs")
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    twin = rewiring(root / "mixed" / "rewire", "twin", TWIN)
    neutral = rewiring(root / "twin_enc", "neutral", NEUTRAL)
    mixed_1 = rewiring(root / "enc_x", "mixed", MIXED_1)
    mixed_2 = rewiring(elsewhere / "enc_y", "mixed", MIXED_2)  # found through provenance only
    hubert = rewiring(elsewhere / "hub", "twin", HUBERT_TWIN, "/models/hubert-base", OTHER)
    # KS at 1 %: baseline with two seeds, twin one seed; at 100 %: baseline only.
    write_run(root / "twin" / "s1" / "results.json", "KS", BASELINE, 90.0, best_step=1200)
    write_run(root / "zzz" / "results.json", "KS", BASELINE, 93.0, seed=2, best_step=1400)
    write_run(root / "baseline" / "a" / "results.json", "KS", twin[0], 95.0, strategy="twin",
              provenance=twin[1], best_step=800)
    write_run(root / "k" / "results.json", "KS", BASELINE, 97.0, fraction=1.0, best_step=3000)
    # neutral: an lr sweep; 1e-3 has the better dev (and, on purpose, the worse test).
    for seed, (dev_low, test_low, dev_high, test_high) in enumerate(
            [(80.0, 85.0, 90.0, 70.0), (82.0, 86.0, 88.0, 71.0)], start=1):
        write_run(root / f"lr_low_{seed}" / "results.json", "KS", neutral[0], test_low,
                  strategy="neutral", provenance=neutral[1], seed=seed, lr=1e-4,
                  best_dev=dev_low)
        write_run(root / f"lr_high_{seed}" / "results.json", "KS", neutral[0], test_high,
                  strategy="neutral", provenance=neutral[1], seed=seed, lr=1e-3,
                  best_dev=dev_high)
    # ASR (WER: lower is better): two mixed encoders of one family, kept apart.
    write_run(root / "asr" / "1" / "results.json", "ASR", BASELINE, 40.0)
    write_run(root / "asr" / "2" / "results.json", "ASR", mixed_1[0], 35.0, strategy="mixed",
              provenance=mixed_1[1])
    write_run(root / "asr" / "3" / "results.json", "ASR", mixed_2[0], 38.0, strategy="mixed",
              provenance=mixed_2[1])
    # QbE, zero-shot; a second family whose baseline was never run.
    write_run(root / "q" / "1" / "results.json", "QbE", BASELINE, 0.05)
    write_run(root / "q" / "2" / "results.json", "QbE", twin[0], 0.07, strategy="twin",
              provenance=twin[1])
    write_run(root / "h" / "results.json", "KS", hubert[0], 60.0, strategy="baseline",
              provenance=hubert[1], profile="paper")  # the record's strategy wins
    (root / "broken").mkdir()
    (root / "broken" / "results.json").write_text("{not json")
    (root / "old").mkdir()
    (root / "old" / "results.json").write_text(json.dumps({"schema": 99, "task": "KS"}))
    out = tmp_path_factory.mktemp("report") / "out"
    return root, out, write_report(root, out)


def rows(path):
    with open(path, newline="", encoding="utf-8") as fin:
        return list(csv.DictReader(fin))


def row_of(report_rows, task, strategy, fraction, family="wavlm-base"):
    found = [r for r in report_rows if (r["family"], r["task"], r["strategy"], r["fraction"])
             == (family, task, strategy, fraction)]
    assert len(found) == 1, found
    return found[0]


def blocks(markdown):
    """``{block title: text}`` of table2.md."""
    parts = markdown.split("\n### ")[1:]
    return {part.splitlines()[0]: part for part in parts}


def line_of(block, strategy):
    return next(line for line in block.splitlines() if line.startswith(f"| {strategy} |"))


def test_two_seeds_mean_std_and_updates(report):
    _, out, _ = report
    row = row_of(rows(out / "table2.csv"), "KS", "baseline", "0.01")
    assert float(row["mean_test"]) == pytest.approx(91.5)
    assert float(row["std_test"]) == pytest.approx(math.sqrt(4.5))  # (1.5² + 1.5²) / (2 - 1)
    assert float(row["mean_updates_to_best"]) == pytest.approx(1300)
    assert row["seeds"] == "2" and row["best_step_resolution"] == "50"
    cell = line_of(blocks((out / "table2.md").read_text())["wavlm-base · KS (accuracy)"],
                   "baseline")
    assert "91.50 ± 2.12 ⌚1.3k" in cell


def test_csv_columns_and_one_row_per_cell(report):
    _, out, _ = report
    table = rows(out / "table2.csv")
    assert list(table[0]) == ["family", "task", "fraction", "strategy", "encoder_content_hash",
                              "metric", "unit", "direction", "mean_test", "std_test",
                              "mean_updates_to_best", "seeds", "lr", "best_step_resolution",
                              "profile", "upstream_mode"]
    keys = {(r["family"], r["task"], r["fraction"], r["strategy"]) for r in table}
    assert len(keys) == len(table) == 10
    twin = row_of(table, "KS", "twin", "0.01")
    assert twin["encoder_content_hash"] == TWIN and twin["std_test"] == ""


def test_missing_cell_and_best_in_bold(report):
    _, out, _ = report
    ks = blocks((out / "table2.md").read_text())["wavlm-base · KS (accuracy)"]
    assert ks.splitlines()[2] == "| strategy | 1 % | 100 % |"
    twin = line_of(ks, "twin")
    assert "**95.00 ± –** ⌚0.8k" in twin and twin.endswith("| – |")  # no twin run at 100 %
    assert "**" not in line_of(ks, "baseline").split("|")[2]
    assert "n=" in twin  # two seeds beside one in the same block


def test_strategy_comes_from_the_record_not_the_folder(report):
    root, out, _ = report
    table = rows(out / "table2.csv")
    # results.json under "baseline/" on the twin encoder; under "twin/" on the baseline.
    assert row_of(table, "KS", "twin", "0.01")["encoder_content_hash"] == TWIN
    assert row_of(table, "KS", "baseline", "0.01")["encoder_content_hash"] == BASE
    # A run whose results.json says baseline but whose rewiring record says twin; its
    # family is named after the source the record names (its baseline was never run).
    hubert = row_of(table, "KS", "twin", "0.01", family="hubert-base")
    assert hubert["encoder_content_hash"] == HUBERT_TWIN and hubert["profile"] == "paper"


def test_lr_sweep_keeps_the_better_dev_lr(report):
    _, out, _ = report
    row = row_of(rows(out / "table2.csv"), "KS", "neutral", "0.01")
    assert float(row["lr"]) == pytest.approx(1e-3)
    assert float(row["mean_test"]) == pytest.approx(statistics.fmean([70.0, 71.0]))
    assert row["seeds"] == "2"
    ks = blocks((out / "table2.md").read_text())["wavlm-base · KS (accuracy)"]
    assert "4 runs of other lrs left out" not in ks and "2 runs of other lrs left out" in ks


def test_wer_lower_is_bold_and_two_mixed_encoders_stay_apart(report):
    _, out, _ = report
    table = rows(out / "table2.csv")
    first = row_of(table, "ASR", f"mixed ({MIXED_1[:8]})", "0.01")
    second = row_of(table, "ASR", f"mixed ({MIXED_2[:8]})", "0.01")
    assert (first["encoder_content_hash"], float(first["mean_test"])) == (MIXED_1, 35.0)
    assert (second["encoder_content_hash"], float(second["mean_test"])) == (MIXED_2, 38.0)
    assert first["direction"] == "min" and first["unit"] == "%"
    asr = blocks((out / "table2.md").read_text())["wavlm-base · ASR (wer)"]
    assert "**35.00 ± –**" in line_of(asr, f"mixed ({MIXED_1[:8]})")
    assert "**" not in line_of(asr, "baseline") + line_of(asr, f"mixed ({MIXED_2[:8]})")
    assert "lower is better" in asr


def test_qbe_is_one_zero_shot_column(report):
    _, out, _ = report
    qbe = blocks((out / "table2.md").read_text())["wavlm-base · QbE (mtwv)"]
    assert qbe.splitlines()[2] == "| strategy | zero-shot |"
    assert line_of(qbe, "twin") == "| twin | **0.0700 ± –** |"  # no ⌚ without training
    row = row_of(rows(out / "table2.csv"), "QbE", "baseline", "")
    assert row["mean_updates_to_best"] == "" and float(row["mean_test"]) == 0.05


def test_bad_files_are_skipped_and_counted(report):
    root, out, written = report
    assert sorted(Path(path).parent.name for path, _ in written.skipped) == ["broken", "old"]
    markdown = (out / "table2.md").read_text()
    assert "Skipped 2 unreadable file(s)" in markdown
    assert "Synthetic embedded default" in markdown
    assert "embedded (13 runs), paper (1 run)" in markdown


def test_rewiring_records_found_through_provenance(report):
    root, _, _ = report
    found = collect(root)
    assert {item.content_hash for item in found.rewirings} == {
        TWIN, NEUTRAL, MIXED_1, MIXED_2, HUBERT_TWIN}


def test_figures_written(report):
    _, out, written = report
    expected = {"curves_KS_0.01.png", "curves_KS_1.png", "curves_ASR_0.01.png",
                "layer_weights_KS.png", "layer_weights_ASR.png", "rewiring_loss.png"}
    figures = {name for name in written if name.endswith(".png")}
    assert figures == expected  # no curves for zero-shot QbE, no t-SNE without records
    for name in expected:
        assert (out / name).stat().st_size > 0
    assert "isotropy.csv" not in written and not (out / "isotropy.csv").exists()


def test_representations_give_isotropy_rows_and_tsne(tmp_path):
    root = tmp_path / "runs"
    write_run(root / "r" / "results.json", "KS", BASELINE, 90.0)
    twin_encoder, twin_provenance = rewiring(root / "x", "twin", TWIN)
    common = {"kind": "representations", "schema": 1, "task": "KS", "items": 40, "layer": 3}
    records = [
        {**common, "encoder": BASELINE, "strategy": "baseline", "provenance": None,
         "log10_isotropy": -2.5,
         "class_separation": {"silhouette": 0.1, "knn_accuracy": 0.6, "knn_k": 5,
                              "chance": 0.25, "classes": 4},
         "tsne": {"points": [[i, i % 4] for i in range(40)],
                  "labels": [str(i % 4) for i in range(40)], "perplexity": 5, "seed": 0}},
        {**common, "encoder": twin_encoder, "strategy": "twin", "provenance": twin_provenance,
         "log10_isotropy": -1.0, "class_separation": None, "tsne": None},
    ]
    for name, record in zip(["a", "b"], records):
        (root / name).mkdir()
        (root / name / "representations.json").write_text(json.dumps(record))
    written = write_report(root, tmp_path / "out")
    table = rows(written["isotropy.csv"])
    assert list(table[0]) == ["encoder", "strategy", "dataset", "log10_is", "items", "layer",
                              "silhouette", "knn_accuracy", "chance"]
    baseline, twin = table
    assert (baseline["encoder"], baseline["strategy"], baseline["dataset"]) == (
        "wavlm-base", "baseline", "KS")
    assert float(baseline["log10_is"]) == -2.5 and float(baseline["knn_accuracy"]) == 0.6
    assert float(baseline["chance"]) == 0.25 and baseline["items"] == "40"
    assert (twin["encoder"], twin["strategy"], twin["silhouette"], twin["chance"]) == (
        "wavlm-base", "twin", "", "")
    assert written["tsne_KS.png"].stat().st_size > 0
    assert "## Isotropy and class separation" in written["table2.md"].read_text()


def cli_main():
    """``main`` of utils/report.py (a script, not a package module)."""
    path = Path(__file__).resolve().parent.parent / "utils" / "report.py"
    spec = importlib.util.spec_from_file_location("report_cli", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_cli_without_results_is_a_user_error(tmp_path, capsys):
    main = cli_main()
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as stopped:
        main(["--results_root", str(tmp_path / "empty"), "--output_folder", str(tmp_path / "o")])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.startswith("error: --results_root")
    assert not (tmp_path / "o").exists()


def test_cli_prints_the_table_and_the_files(tmp_path, capsys):
    main = cli_main()
    write_run(tmp_path / "runs" / "results.json", "KS", BASELINE, 90.0)
    main(["--results_root", str(tmp_path / "runs"), "--output_folder", str(tmp_path / "o")])
    printed = capsys.readouterr().out
    assert "| baseline | 90.00 ± – ⌚0.1k |" in printed
    assert str(tmp_path / "o" / "table2.csv") in printed


def test_a_tie_is_bold_twice(tmp_path):
    twin_encoder, twin_provenance = rewiring(tmp_path / "runs" / "enc", "twin", TWIN)
    write_run(tmp_path / "runs" / "a" / "results.json", "KS", BASELINE, 90.0)
    write_run(tmp_path / "runs" / "b" / "results.json", "KS", twin_encoder, 90.0,
              strategy="twin", provenance=twin_provenance)
    write_run(tmp_path / "runs" / "c" / "results.json", "KS", BASELINE, 80.0, fraction=0.1)
    write_run(tmp_path / "runs" / "d" / "results.json", "KS", twin_encoder, 85.0,
              strategy="twin", provenance=twin_provenance, fraction=0.1)
    written = write_report(tmp_path / "runs", tmp_path / "out")
    ks = blocks(written["table2.md"].read_text())["wavlm-base · KS (accuracy)"]
    assert line_of(ks, "baseline").startswith("| baseline | **90.00 ± –** ⌚0.1k | 80.00 ± –")
    assert line_of(ks, "twin").startswith("| twin | **90.00 ± –** ⌚0.1k | **85.00 ± –**")


def test_a_trainable_upstream_is_its_own_block(tmp_path):
    """Fine-tuning the encoder is another experiment than probing it frozen: its runs are
    neither averaged with the frozen ones nor taken for repeats of them."""
    runs = tmp_path / "runs"
    write_run(runs / "frozen1" / "results.json", "KS", BASELINE, 90.0, seed=1)
    write_run(runs / "frozen2" / "results.json", "KS", BASELINE, 92.0, seed=2)
    write_run(runs / "tuned1" / "results.json", "KS", BASELINE, 60.0, seed=1,
              upstream_mode="trainable")
    written = write_report(runs, tmp_path / "out")
    table = rows(written["table2.csv"])
    assert sorted((r["upstream_mode"], r["mean_test"], r["seeds"]) for r in table) == [
        ("frozen", "91.0", "2"), ("trainable", "60.0", "1")]
    found = blocks(written["table2.md"].read_text())
    assert "91.00 ± 1.41" in line_of(found["wavlm-base · KS (accuracy)"], "baseline")
    tuned = found["wavlm-base · KS, trainable upstream (accuracy)"]
    assert "60.00 ± –" in line_of(tuned, "baseline") and "fine-tuned" in tuned


def test_runs_with_other_settings_are_rows_of_their_own(tmp_path):
    """A 20-update smoke run beside the full runs of the same cell is neither averaged
    with them nor dropped as a repeat of the same seed."""
    runs = tmp_path / "runs"
    write_run(runs / "full1" / "results.json", "KS", BASELINE, 90.0, seed=1)
    write_run(runs / "full2" / "results.json", "KS", BASELINE, 92.0, seed=2)
    write_run(runs / "smoke" / "results.json", "KS", BASELINE, 40.0, seed=1, max_steps=20)
    written = write_report(runs, tmp_path / "out")
    table = rows(written["table2.csv"])
    assert sorted((r["strategy"], r["mean_test"], r["seeds"]) for r in table) == [
        ("baseline [max_steps=20]", "40.0", "1"), ("baseline [max_steps=400]", "91.0", "2")]
    ks = blocks(written["table2.md"].read_text())["wavlm-base · KS (accuracy)"]
    assert "91.00 ± 1.41" in line_of(ks, "baseline [max_steps=400]")


def test_tsne_legend_names_classes_that_start_with_an_underscore():
    """matplotlib drops legend labels starting with "_": KS's _unknown_ must still show."""
    from types import SimpleNamespace

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rewire_lobes.analysis.report_plots import _tsne_panel

    labels = ["_unknown_", "yes", "_silence_", "no"] * 5
    record = SimpleNamespace(tsne={"points": [[i, i % 3] for i in range(20)], "labels": labels})
    row = {"record": record, "encoder": "e", "strategy": "mixed", "layer": "mean",
           "silhouette": 0.1, "knn_accuracy": 0.5, "chance": 0.25}
    fig, axis = plt.subplots()
    _tsne_panel(axis, row, several_families=False, several_layers=False)
    shown = sorted(text.get_text() for text in axis.get_legend().get_texts())
    plt.close(fig)
    assert shown == ["no", "silence", "unknown", "yes"]
