"""The grid's cost on paper (rewire_lobes.grid.cost, utils/grid_cost.py): FLOP counting on a
tiny encoder, the cost arithmetic on hand-computed numbers, --hours and manifest durations."""

import csv
import importlib.util
from pathlib import Path

import pytest
import torch

from rewire_lobes.errors import DataFileError, DataFolderError, OptionError
from rewire_lobes.grid import cost
from rewire_lobes.upstream.encoder import random_encoder_config

REPO = Path(__file__).resolve().parents[1]
TINY = random_encoder_config("tiny", feat_extract_norm="layer")
TEN_PER_SECOND = cost.Quadratic(0.0, 10.0, 0.0)  # an encoder of 10 FLOPs per second of audio
FRAME_HEAD = cost.HeadFlops(forward_per_second=1.0, train_per_second=3.0)


@pytest.fixture(scope="module")
def tiny_cpu():
    return cost.encoder_model(TINY, device="cpu")


# ---------------------------------------------------------------------------- counting


@pytest.mark.parametrize("mode", cost.ENCODER_MODES)
def test_encoder_flops_scale_linearly_with_the_batch(tiny_cpu, mode):
    one = cost.encoder_flops(tiny_cpu, 1.0, mode, batch=1)
    three = cost.encoder_flops(tiny_cpu, 1.0, mode, batch=3)
    assert one > 0
    assert three == 3 * one


def test_backward_adds_to_the_forward_and_a_trained_cnn_adds_more(tiny_cpu):
    forward, frozen, trained = (cost.encoder_flops(tiny_cpu, 2.0, mode)
                                for mode in cost.ENCODER_MODES)
    assert forward < frozen < trained


def test_the_meta_device_counts_what_the_cpu_counts(tiny_cpu):
    meta = cost.encoder_model(TINY, device="meta")
    for mode in cost.ENCODER_MODES:
        assert cost.encoder_flops(meta, 2.0, mode) == cost.encoder_flops(tiny_cpu, 2.0, mode)


def test_cpu_check_refuses_counts_that_disagree():
    meta = cost.meta_counts_at(TINY, {"forward": (1.0,)})
    counted = cost.cpu_check(TINY, meta, seconds=(1.0,), train_seconds=1.0)
    assert counted["forward"] == meta["forward"]
    wrong = {"forward": {1.0: meta["forward"][1.0] + 1}}
    with pytest.raises(RuntimeError, match="meta device"):
        cost.cpu_check(TINY, wrong, seconds=(1.0,), train_seconds=1.0)


def test_the_fitted_quadratic_term_is_the_attention_products():
    encoder = cost.fit_encoder(TINY, modes=("forward",))
    assert encoder.residuals["forward"] < 1e-9
    assert encoder.fits["forward"].c == pytest.approx(encoder.attention_coefficient(), rel=1e-6)


def test_lstms_are_counted_as_their_matrix_products():
    lstm = torch.nn.LSTM(16, 8, batch_first=True)
    counted = cost.count_flops(lambda: lstm(torch.zeros(2, 5, 16)))
    assert counted == 2 * 5 * 2 * (4 * 8) * (16 + 8)  # batch x steps x 2 x gates x (in + hidden)


@pytest.mark.parametrize("task", ["KS", "ASR", "SD"])
def test_head_flops_scale_linearly_with_the_batch(task):
    hparams = cost.read_hparams(task)
    one = cost.head_flops(task, hparams, num_states=3, hidden_size=32, seconds=0.2, batch=1)
    two = cost.head_flops(task, hparams, num_states=3, hidden_size=32, seconds=0.2, batch=2)
    assert one == two
    assert one.train_per_item + one.train_per_second > 0


# ---------------------------------------------------------------------------- arithmetic


def task_audio(train=(1000, 10.0), dev=(100, 5.0), test=(50, 4.0)):
    return {name: cost.Audio.of_mean(*size)
            for name, size in (("train", train), ("dev", dev), ("test", test))}


def test_a_frame_level_cell_on_hand_computed_numbers():
    plan = cost.TaskPlan("ASR", batch=16, eval_every=1000, cached_splits=("train",),
                         head=FRAME_HEAD)
    cell = cost.downstream_cell(plan, 0.01, task_audio(), TEN_PER_SECOND)
    # The paper's ASR budget at 1 %: 50k updates, so 50 dev evaluations + 1 at the best.
    assert cell.encoder["train features"] == pytest.approx(0.01 * 1000 * 10.0 * 10)
    assert cell.encoder["dev/test on the fly"] == pytest.approx(51 * 100 * 5.0 * 10 + 50 * 4.0 * 10)
    assert cell.head["training"] == pytest.approx(50_000 * 16 * 10.0 * 3)
    assert cell.head["evaluation"] == pytest.approx(51 * 100 * 5.0 * 1 + 50 * 4.0 * 1)


def test_a_ks_cell_encodes_its_silence_crops():
    head = cost.HeadFlops(forward_per_item=2.0, train_per_item=6.0)
    plan = cost.TaskPlan("KS", batch=32, eval_every=100, cached_splits=("train", "dev", "test"),
                         head=head, num_classes=12)
    cell = cost.downstream_cell(plan, 0.01, task_audio(train=(1000, 1.0)), TEN_PER_SECOND)
    # 20k updates at 1 %, 200 evaluations; 1/12 of the draws and 6 dev crops per evaluation.
    assert "dev/test on the fly" not in cell.encoder
    assert cell.encoder["_silence_ crops"] == pytest.approx((20_000 * 32 / 12 + 200 * 6) * 10)
    assert cell.head["training"] == pytest.approx(20_000 * 32 * 6.0)


def test_task_plan_halves_like_s3prl_and_counts_accumulation():
    asr = cost.task_plan("ASR", cost.read_hparams("ASR"), FRAME_HEAD, train_mean_seconds=12.0)
    sf = cost.task_plan("SF", cost.read_hparams("SF"), FRAME_HEAD, train_mean_seconds=3.0)
    sd = cost.task_plan("SD", cost.read_hparams("SD"), FRAME_HEAD, train_mean_seconds=15.0)
    assert (asr.batch, sf.batch, sd.batch) == (16, 32, 32)
    assert asr.cached_splits == ("train",)


def test_a_rewiring_cell_on_hand_computed_numbers():
    fits = {"train": cost.Quadratic(0.0, 100.0, 1.0),
            "train_frozen_cnn": cost.Quadratic(0.0, 50.0, 0.0)}
    encoder = cost.EncoderFlops(fits, {}, {}, num_layers=2, hidden_size=8)
    hparams = {"max_steps": 1700, "batch_size": 4, "split_samples": 90_000,
               "freeze_feature_encoder": False}
    view = 90_000 / 16_000
    assert cost.rewiring_cell(hparams, encoder).total == pytest.approx(
        1700 * 8 * (100.0 * view + view**2))
    frozen = dict(hparams, freeze_feature_encoder=True)
    assert cost.rewiring_cell(frozen, encoder, view_seconds=2.0, pairs=8).total == pytest.approx(
        1700 * 16 * 50.0 * 2.0)


def test_gpu_hours_split_the_encoder_and_head_mfus():
    cell = cost.CellFlops({"features": 3.6e15}, {"training": 3.6e15})
    assert cell.gpu_hours(0.5, 0.25, peak=1e12) == pytest.approx(2.0 + 4.0)


def test_grid_totals_and_wall_time_on_hand_computed_numbers():
    hour = 3600 * 1e12  # FLOPs of one hour at MFU 1 and a 1e12 peak
    grid = cost.GridCost(
        tasks=("A", "B"), strategies=("baseline", "twin"), fractions=(0.1, 1.0), seeds=3,
        cells={("A", 0.1): cost.CellFlops({"e": 1 * hour}),
               ("A", 1.0): cost.CellFlops({"e": 2 * hour}),
               ("B", 0.1): cost.CellFlops({"e": 3 * hour}),
               ("B", 1.0): cost.CellFlops({"e": 4 * hour})},
        shared={"A": cost.CellFlops({"e": 0.5 * hour})},
        rewiring={"twin": cost.CellFlops({"e": 5 * hour})},
    )
    assert grid.downstream_runs() == 2 * 3 * 4
    total = 5 + 2 * 0.5 + 2 * 3 * (1 + 2 + 3 + 4)  # rewiring + shared + runs
    assert grid.total_hours(1.0, 1.0, peak=1e12) == pytest.approx(total)
    assert grid.wall_hours(1, 1.0, 1.0, peak=1e12) == pytest.approx(total)
    # 10 GPUs: the rewiring (5 h) and the shared features spread (1 h / 10) gate the 60 h of runs.
    assert grid.wall_hours(10, 1.0, 1.0, peak=1e12) == pytest.approx(5 + 0.1 + 60 / 10)
    # 100 GPUs: no faster than the longest run (4 h).
    assert grid.wall_hours(100, 1.0, 1.0, peak=1e12) == pytest.approx(5 + 0.01 + 4)


def test_grid_cost_counts_the_cells_of_the_grid():
    encoder = cost.EncoderFlops({m: TEN_PER_SECOND for m in cost.ENCODER_MODES}, {}, {},
                                num_layers=2, hidden_size=8)
    audio = {"ASR": task_audio()}
    plans = {"ASR": cost.TaskPlan("ASR", 16, 1000, ("train",), FRAME_HEAD)}
    rewire = {"twin": {"max_steps": 10, "batch_size": 4, "split_samples": 16_000}}
    grid = cost.grid_cost(encoder, plans, audio, ["ASR"], ["baseline", "twin"], [0.01, 1.0],
                          seeds=2, rewire_hparams=rewire)
    assert set(grid.cells) == {("ASR", 0.01), ("ASR", 1.0)}
    assert list(grid.rewiring) == ["twin"]
    assert grid.rewiring["twin"].total == pytest.approx(10 * 8 * 1.0 * 10)
    assert grid.downstream_runs() == 2 * 2 * 2


def test_a_fraction_without_a_paper_budget_is_refused():
    with pytest.raises(OptionError, match="no update budget"):
        cost.check_grid_options(["KS"], ["baseline"], [0.5], 1, [0.1], 0.05, [1])
    with pytest.raises(OptionError, match="--strategies"):
        cost.check_grid_options(["KS"], ["twins"], [0.1], 1, [0.1], 0.05, [1])


# ---------------------------------------------------------------------------- audio


def test_hours_override_a_task_total_or_one_split():
    audio = cost.default_audio(("KS", "ASR"))
    changed = cost.apply_hours(audio, cost.parse_hours(["KS=28.4", "ASR.train=50"]))
    ks_before = sum(a.hours for a in audio["KS"].values())
    assert sum(a.hours for a in changed["KS"].values()) == pytest.approx(28.4)
    for split in ("train", "dev", "test"):
        expected = audio["KS"][split].hours * 28.4 / ks_before
        assert changed["KS"][split].hours == pytest.approx(expected)
        assert changed["KS"][split].items == audio["KS"][split].items
        assert changed["KS"][split].source == "--hours"
    assert changed["ASR"]["train"].hours == pytest.approx(50.0)
    assert changed["ASR"]["dev"] == audio["ASR"]["dev"]


@pytest.mark.parametrize("pair", ["XX=1", "KS", "KS=abc", "KS=-2", "KS=inf", "KS.documents=1"])
def test_a_malformed_hours_pair_is_refused(pair):
    with pytest.raises(OptionError, match="--hours"):
        cost.parse_hours([pair])


def write_csv(path, rows, fields=("ID", "duration", "wav", "random_crop")):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fout:
        writer = csv.DictWriter(fout, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def ks_tree(root, folder="03139490b854"):
    base = root / "KS" / folder
    write_csv(base / "train.csv", [
        {"ID": "a", "duration": "1.0", "wav": "a.wav", "random_crop": ""},
        {"ID": "b", "duration": "0.5", "wav": "b.wav", "random_crop": ""},
        {"ID": "noise", "duration": "60.0", "wav": "n.wav", "random_crop": "16000"},
    ])
    write_csv(base / "dev.csv", [{"ID": "c", "duration": "3.0", "wav": "c.wav", "random_crop": ""}])
    write_csv(base / "test.csv", [{"ID": "d", "duration": "2.0", "wav": "d.wav",
                                   "random_crop": ""}])
    return base


def test_manifest_durations_are_summed_per_split(tmp_path):
    ks_tree(tmp_path)
    audio = cost.audio_from_manifests(cost.default_audio(("KS", "IC")), tmp_path)
    train = audio["KS"]["train"]
    assert (train.items, train.seconds) == (3, pytest.approx(1.0 + 0.5 + 1.0))  # the crop: 1 s
    assert train.square_seconds == pytest.approx(1.0 + 0.25 + 1.0)
    assert audio["KS"]["dev"].seconds == pytest.approx(3.0)
    assert train.source.startswith("manifest ")
    assert audio["IC"] == cost.default_audio(("IC",))["IC"]  # no IC manifests: assumed


def test_the_squared_seconds_make_the_attention_term_exact(tmp_path):
    write_csv(tmp_path / "x.csv", [{"ID": "a", "duration": "1", "wav": "", "random_crop": ""},
                                   {"ID": "b", "duration": "3", "wav": "", "random_crop": ""}])
    exact = cost.manifest_audio(tmp_path / "x.csv")
    attention = cost.Quadratic(0.0, 0.0, 1.0)
    assert attention.over(exact) == pytest.approx(1 + 9)
    assert attention.over(cost.Audio.of_mean(2, 2.0)) == pytest.approx(8)


def test_manifest_problems_name_the_file(tmp_path):
    ks_tree(tmp_path, "aaa")
    ks_tree(tmp_path, "bbb")
    with pytest.raises(DataFolderError, match="2 prepared folders"):
        cost.audio_from_manifests(cost.default_audio(("KS",)), tmp_path)
    with pytest.raises(DataFolderError, match="no such folder"):
        cost.audio_from_manifests(cost.default_audio(("KS",)), tmp_path / "missing")
    write_csv(tmp_path / "bad.csv", [{"ID": "a", "wav": "a.wav"}], fields=("ID", "wav"))
    with pytest.raises(DataFileError, match="bad.csv: no 'duration'"):
        cost.manifest_audio(tmp_path / "bad.csv")


def test_a_manifest_folder_without_its_dev_split_is_refused(tmp_path):
    (ks_tree(tmp_path) / "dev.csv").unlink()
    with pytest.raises(DataFolderError, match="no dev.csv"):
        cost.audio_from_manifests(cost.default_audio(("KS",)), tmp_path)


# ---------------------------------------------------------------------------- command line


def load_cli():
    spec = importlib.util.spec_from_file_location("grid_cost_cli", REPO / "utils" / "grid_cost.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_command_line_prints_the_cells_and_totals(capsys):
    load_cli().main(["--encoder_size", "tiny", "--no_cpu_check", "--tasks", "KS", "SD",
                     "--strategies", "baseline", "twin", "--fractions", "0.01", "1",
                     "--hours", "KS=2", "--gpus", "1", "4", "--mfu", "0.2"])
    printed = capsys.readouterr().out
    assert "| KS | 0.01 | 20,000 | 32 |" in printed
    assert "| SD | 1 | 200,000 | 32 | 2000 |" in printed
    assert "rewire twin (1,700 updates)" in printed
    assert "| KS | train | 51,094 |" in printed and "--hours" in printed
    assert "GPU throughput is ASSUMED" in printed and "encoder at 20 %" in printed


def test_the_command_line_reports_a_user_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_cli().main(["--encoder_size", "tiny", "--fractions", "0.3"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("error: --fractions 0.3")
