"""Reports: runs are seeds of one setting only when their whole configurations differ in seed fields;
set-aside, hidden and damaged run folders never reach a table."""

import dataclasses
import statistics
from pathlib import Path

import pytest

from kernel_reg.app.config import preset_config
from kernel_reg.app.report import (
    collect_runs,
    markdown_table,
    paired_comparisons,
    paired_table,
    selection_table,
    studies,
    write_report,
)
from kernel_reg.app.rundir import (
    MetricsRow,
    Robustness,
    read_metrics,
    run_path,
    write_config,
    write_divergence,
    write_metrics,
    write_robustness,
)
from kernel_reg.app.suite import EvalSettings


def make_run(root, name, test_acc, val_acc=0.5, experiment="fmnist1000_vgg5", **changes):
    """A finished run folder with one evaluation, written through the run-folder module (no training)."""
    config = preset_config(experiment, **{"root": str(root), "name": name, "num_epochs": 1, **changes})
    row = MetricsRow(
        epoch=config.num_epochs - 1, lr=0.05, train_loss=1.0, train_acc=0.5, val_acc=val_acc, test_acc=test_acc,
        rkhs_lower_grad=1.0, rkhs_lower_delta=1.0, rkhs_upper_spectral=10.0, seconds_per_epoch=0.1, eval_seconds=0.1,
    )  # fmt: skip
    write_config(run_path(config), config)
    write_metrics(run_path(config), [row])
    return config


def test_the_issues_example_is_two_studies_not_two_seeds(tmp_path):
    make_run(tmp_path, "pgd", 0.90, regs=("pgd-l2",), epsilon=1.0)
    make_run(tmp_path, "pgd", 0.02, experiment="fmnist300_vgg5", regs=("pgd-l2",), epsilon=1.0)
    groups = studies(collect_runs(tmp_path))
    assert [g.experiment for g in groups] == ["fmnist1000_vgg5", "fmnist300_vgg5"]
    assert all(len(g.runs) == 1 for g in groups)
    table, _ = write_report(tmp_path)
    assert "| pgd-l2 | epsilon=1 | 1 | - | 1 | 50.0 | 90.0 (1 seed) | fmnist1000_vgg5/pgd |" in table
    assert "| pgd-l2 | epsilon=1 | 1 | - | 1 | 50.0 | 2.0 (1 seed) | fmnist300_vgg5/pgd |" in table
    assert "+- 43" not in table  # the issue's 45.0 +- 43.7 pooled the two


@pytest.mark.parametrize(
    "changes", [{"n_train": 300}, {"num_epochs": 2}, {"width": 16}, {"lr": 0.01}, {"sched_step": 10}, {"aug": True}]
)
def test_runs_differing_in_anything_but_seeds_are_never_pooled(tmp_path, changes):
    make_run(tmp_path, "a", 0.8, regs=("gradient-penalty",))
    make_run(tmp_path, "b", 0.6, regs=("gradient-penalty",), **changes)
    groups = studies(collect_runs(tmp_path))
    assert len(groups) == 2
    a, b = (g.differs for g in groups)
    assert {k for k in {*a, *b} if a.get(k) != b.get(k)} == set(changes)  # the study titles tell them apart
    for group in groups:
        assert "| 1 | - | 1 |" in selection_table(group.runs)  # one setting tried, one seed


def test_seeds_of_one_setting_are_pooled_and_named(tmp_path):
    tests = [0.8, 0.7, 0.75]
    for seed, acc in enumerate(tests):
        make_run(tmp_path, f"gp_s{seed}", acc, regs=("gradient-penalty",), lmbda=0.1, shuf_seed=seed, seed=seed)
    make_run(tmp_path, "gp_other", 0.1, val_acc=0.1, regs=("gradient-penalty",), lmbda=1.0)
    (group,) = studies(collect_runs(tmp_path))
    table = selection_table(group.runs)
    mean, std = 100 * statistics.mean(tests), 100 * statistics.stdev(tests)
    pooled = "fmnist1000_vgg5/gp_s0, fmnist1000_vgg5/gp_s1, fmnist1000_vgg5/gp_s2"
    assert (
        f"| gradient-penalty | lmbda=0.1 | 2 | EDGE: lmbda lowest | 3 | 50.0 | {mean:.1f} +- {std:.1f} | {pooled} |"
        in table
    )


def test_set_aside_hidden_and_damaged_runs_are_left_out(tmp_path):
    kept = make_run(tmp_path, "kept", 0.8)
    aside = make_run(tmp_path, "aside", 0.1)
    run_path(aside).rename(run_path(kept).with_name("kept.old-20261125-120000"))  # as --fresh does
    (run_path(kept).parent / ".hidden").mkdir()
    (run_path(kept).parent / ".hidden" / "config.json").write_text(kept.to_json())
    broken_config = make_run(tmp_path, "broken_config", 0.1)
    (run_path(broken_config) / "config.json").write_text("{truncated")
    broken_metrics = make_run(tmp_path, "broken_metrics", 0.1)
    (run_path(broken_metrics) / "metrics.jsonl").write_text('{"epoch": 0, "lr"')
    warnings = []
    runs = collect_runs(tmp_path, warn=warnings.append)
    assert [r.name for r in runs] == ["fmnist1000_vgg5/kept"]
    assert len(warnings) == 2 and all(w.startswith("kernel-reg report: skipping ") for w in warnings)
    assert "broken_config/config.json is not valid JSON" in warnings[0]
    assert "broken_metrics/metrics.jsonl, line 1, is not a metrics row" in warnings[1]
    assert run_path(kept).with_name("kept.old-20261125-120000").is_dir()
    table, files = write_report(tmp_path, tmp_path / "out", warn=warnings.append)
    assert "kept.old" not in table and files[0].read_text() == table
    left_out = table.split("## Left out\n")[1]  # the report itself says which runs it misses, and why
    assert "fmnist1000_vgg5/broken_config/config.json is not valid JSON" in left_out
    assert "broken_metrics/metrics.jsonl, line 1" in left_out and str(tmp_path) not in table
    assert "broken" not in table.split("## Left out")[0]


def test_a_run_copied_into_two_folders_is_one_sample(tmp_path):
    for name in ("a", "b"):  # e.g. two sweeps spelling the same configuration differently
        make_run(tmp_path, name, 0.7, regs=("gradient-penalty",))
    make_run(tmp_path, "c", 0.5, regs=("gradient-penalty",), shuf_seed=1)
    (group,) = studies(collect_runs(tmp_path))
    table = selection_table(group.runs)
    assert (
        "| gradient-penalty | lmbda=0.1 | 1 | - | 2 | 50.0 | 60.0 +- 14.1 | fmnist1000_vgg5/a, fmnist1000_vgg5/c |"
        in table
    )
    assert "Counted once: fmnist1000_vgg5/b repeats fmnist1000_vgg5/a" in table


def robustness(n, attack, trained_to=0, clean=0.5, settings=None):
    return Robustness(
        clean=clean, n=n, l2={"0.5": 0.25}, linf={}, lipschitz_bound=2.0, certified_l2={"0.5": 0.0},
        attacks={"l2": attack}, settings=settings or EvalSettings(), epoch=0, weights="last", trained_to=trained_to,
    )  # fmt: skip


def test_robust_columns_are_titled_by_the_attacks_that_gave_them(tmp_path):
    strong = EvalSettings(attacks=("strong",))
    for name, settings in (("a", strong), ("b", strong), ("c", EvalSettings())):
        config = make_run(tmp_path, name, 0.7, shuf_seed=len(name))
        write_robustness(run_path(config), robustness(64, "-", settings=settings))
        table = markdown_table(collect_runs(tmp_path))
        header = table.splitlines()[0]
        if name != "c":
            assert "| APGD-CE+APGD-T-l2 0.5 |" in header and "PGD" not in header.replace("APGD", "")
        else:  # evaluations under other attacks: a neutral title, each row's note says which
            assert "| robust-l2 0.5 |" in header and "PGD-l2" not in header


def test_each_row_says_which_evaluation_its_numbers_come_from(tmp_path):
    a, b = make_run(tmp_path, "a", 0.7), make_run(tmp_path, "b", 0.6, shuf_seed=1)
    write_robustness(run_path(a), robustness(64, "-", settings=EvalSettings(steps=3)))
    write_robustness(run_path(b), robustness(32, "-", settings=EvalSettings(attacks=("apgd-ce",), steps=10)))
    table = markdown_table(collect_runs(tmp_path))
    row = {line.split(" | ")[0][2:]: line for line in table.splitlines() if line.startswith("| fmnist")}
    assert " | [1] | 50.0 | 25.0 |" in row["fmnist1000_vgg5/a"] and " | [2] | 50.0 |" in row["fmnist1000_vgg5/b"]
    assert "- [1] 64 test images, last weights of epoch 0; l2: PGD-l2 (3 steps of 0.5, 1 restart(s))" in table
    assert "- [2] 32 test images, last weights of epoch 0; l2: APGD-CE-l2 (10 steps, 1 restart(s))" in table


@pytest.mark.parametrize("targets", [3, 9])
def test_an_evaluations_note_names_apgd_ts_target_classes_even_where_its_record_did_not(tmp_path, targets):
    config = make_run(tmp_path, "a", 0.7)
    settings = EvalSettings(attacks=("strong",), n_target_classes=targets)
    old_wording = "worst case of APGD-CE-l2 (100 steps, 1 restart(s)) + APGD-T-l2 (100 steps, 1 restart(s))"
    write_robustness(run_path(config), robustness(64, old_wording, settings=settings))  # as 0.2.1 wrote it
    table = markdown_table(collect_runs(tmp_path))
    assert f"+ APGD-T-l2 (100 steps, 1 restart(s), {targets} target classes)" in table


def test_an_evaluation_of_weights_trained_since_is_left_out(tmp_path):
    config = make_run(tmp_path, "a", 0.7, num_epochs=5)  # one row, at epoch 4
    write_robustness(run_path(config), robustness(64, "PGD", trained_to=1, clean=0.123))
    warnings = []
    (run,) = collect_runs(tmp_path, warn=warnings.append)
    assert run.robustness is None and "evaluated the run trained to epoch 1" in warnings[0]
    assert "12.3" not in markdown_table([run])
    write_robustness(run_path(config), robustness(64, "PGD", trained_to=4, clean=0.123))
    assert collect_runs(tmp_path)[0].robustness.clean == 0.123


def test_a_checkpoint_without_metrics_is_reported(tmp_path):
    config = make_run(tmp_path, "a", 0.7)
    (run_path(config) / "metrics.jsonl").write_text("")
    (run_path(config) / "checkpoint.pt").write_bytes(b"weights")
    warnings = []
    assert collect_runs(tmp_path, warn=warnings.append) == []
    assert "it has a checkpoint.pt but no metrics rows" in warnings[0]


def test_the_paired_table_calls_a_gain_by_the_holm_adjusted_t_test(tmp_path):
    from kernel_reg.app.statistics import family

    baseline = [0.70, 0.72, 0.74]
    for seed, acc in enumerate(baseline):
        make_run(tmp_path, f"none_s{seed}", acc, shuf_seed=seed)
    steady = [0.03, 0.031, 0.029]  # + 3 points every time: a gain
    noisy = [0.05, -0.04, 0.0]  # + 0.33 points on average, +- 2.6: no evidence
    for seed in range(3):
        make_run(tmp_path, f"gp_s{seed}", baseline[seed] + steady[seed], regs=("gradient-penalty",), shuf_seed=seed)
        make_run(tmp_path, f"vat_s{seed}", baseline[seed] + noisy[seed], regs=("vat",), shuf_seed=seed)
    table = paired_table(collect_runs(tmp_path))
    expected = family({"gp": [100 * d for d in steady], "vat": [100 * d for d in noisy]})  # one family of two
    gp, vat = expected["gp"], expected["vat"]
    assert (f"| gradient-penalty | lmbda=0.1 | 3 | +3.00 [{gp.low:+.2f}, {gp.high:+.2f}] | {gp.p_holm:.3g} | gain "
            "| +3.00 +- 0.06 |") in table  # fmt: skip
    assert (f"| vat | lmbda=1, epsilon=0.1 | 3 | {vat.mean:+.2f} [{vat.low:+.2f}, {vat.high:+.2f}] | "
            f"{vat.p_holm:.3g} | no evidence | {vat.mean:+.2f} +- {vat.se:.2f} |") in table  # fmt: skip
    assert "over the 2 comparisons of this table" in table
    one = paired_table([r for r in collect_runs(tmp_path) if r.config.shuf_seed < 1])
    assert "needs 2 paired subsets" in one and "No comparison of this table has 2 paired subsets yet" in one


def test_two_initialisations_of_one_subset_count_as_one_paired_subset(tmp_path):
    baseline, method = {0: 0.70, 1: 0.72, 2: 0.74}, {0: 0.73, 1: 0.74, 2: 0.77}
    for subset in range(3):
        make_run(tmp_path, f"none_s{subset}", baseline[subset], shuf_seed=subset, seed=42)
        make_run(tmp_path, f"vat_s{subset}", method[subset], regs=("vat",), shuf_seed=subset, seed=42)
    make_run(tmp_path, "none_s1_again", 0.71, shuf_seed=1, seed=43)  # subset 1 trained again from another start
    make_run(tmp_path, "vat_s1_again", 0.78, regs=("vat",), shuf_seed=1, seed=43)
    (row,) = [r for r in paired_comparisons(collect_runs(tmp_path)) if r[1] == "vat"]
    by_hand = [3.0, (2.0 + 7.0) / 2, 3.0]  # subset 1: its two pairs averaged, not two more subsets
    assert row[3] == pytest.approx(by_hand)
    assert "| vat | lmbda=1, epsilon=0.1 | 3 |" in paired_table(collect_runs(tmp_path))


def test_the_projection_is_paired_with_the_method_alone_on_the_same_subsets(tmp_path):
    alone, with_projection = [0.80, 0.70, 0.75], [0.81, 0.712, 0.759]  # + 1.0, 1.2, 0.9 points
    for seed in range(3):
        make_run(tmp_path, f"none_s{seed}", 0.6, shuf_seed=seed)
        make_run(tmp_path, f"gp_s{seed}", alone[seed], regs=("gradient-penalty",), shuf_seed=seed)
        make_run(tmp_path, f"gpsn_s{seed}", with_projection[seed], regs=("gradient-penalty", "project-sn"),
                 shuf_seed=seed)  # fmt: skip
    make_run(tmp_path, "pgdsn_s0", 0.9, regs=("pgd-l2", "project-sn"))  # no PGD-l2 alone: not paired
    table = paired_table(collect_runs(tmp_path))
    differences = [100 * (b - a) for a, b in zip(alone, with_projection)]
    mean, error = statistics.mean(differences), statistics.stdev(differences) / 3**0.5
    section = table.split("Adding the projection")[1]
    assert f"| gradient-penalty+project-sn | lmbda=0.1, tau=0.5 | 3 | {mean:+.2f} [" in section
    assert f"| {mean:+.2f} +- {error:.2f} |" in section
    assert "pgd-l2+project-sn" not in section


def test_settings_are_compared_on_the_training_subsets_they_share(tmp_path):
    """Selected on subset 0, the chosen strength then runs on subsets 1 and 2: its lower validation
    accuracy there must not hand the selection to a strength that ran on subset 0 only."""
    make_run(tmp_path, "gp_a_s0", 0.80, val_acc=0.84, regs=("gradient-penalty",), lmbda=0.01)
    make_run(tmp_path, "gp_a_s1", 0.76, val_acc=0.79, regs=("gradient-penalty",), lmbda=0.01, shuf_seed=1)
    make_run(tmp_path, "gp_b_s0", 0.79, val_acc=0.83, regs=("gradient-penalty",), lmbda=0.1)
    table = selection_table(collect_runs(tmp_path))
    assert (
        "| gradient-penalty | lmbda=0.01 | 2 | EDGE: lmbda lowest | 2 |" in table
    )  # 0.84 > 0.83 on subset 0 (mean 0.815 < 0.83)
    make_run(tmp_path, "gp_c_s5", 0.90, val_acc=0.95, regs=("gradient-penalty",), lmbda=1.0, shuf_seed=5)
    table = selection_table(collect_runs(tmp_path))  # no subset shared by all three: each on its own
    assert "| gradient-penalty | lmbda=1 | 3 | EDGE: lmbda highest | 1 |" in table


def test_settings_are_labelled_by_what_sets_them_apart_and_ordered_by_value(tmp_path):
    """A figure's labels name only the hyperparameters in which a method's settings differ (what they share
    goes to the legend or title once), a single setting its strengths; settings in numeric order."""
    from kernel_reg.app.plots import setting_labels
    from kernel_reg.app.studies import select

    taus = [1.0, 1.5, 10.0, 2.0]
    configs = [make_run(tmp_path, f"pp{tau}", 0.8, regs=("pgd-l2", "project-sn"), epsilon=1.0, tau=tau) for tau in taus]
    configs.append(make_run(tmp_path, "pp_const", 0.8, regs=("pgd-l2", "project-sn"), epsilon=1.0, tau=1.0, kappa=0.0))
    shared, texts = setting_labels(configs)
    assert shared == "epsilon=1"
    assert texts == ["tau=1", "tau=1.5", "tau=10", "tau=2", "tau=1 kappa=0"]
    assert setting_labels(configs[:1]) == ("", ["epsilon=1 tau=1"])
    exact, difference = (
        make_run(tmp_path, f"gl_{method}", 0.8, regs=("loss-gradl2",), lmbda=1.0, **{"loss-gradl2.method": method})
        for method in ("exact", "finite-difference")
    )
    assert setting_labels([exact, difference]) == ("lmbda=1", ["method=exact", "method=finite-difference"])
    family = select(collect_runs(tmp_path)).family("pgd-l2+project-sn")
    order = [(r[0].config.regs[1]["tau"], r[0].config.regs[1]["kappa"]) for r in family]
    assert [tau for tau, _ in order] == [1.0, 1.0, 1.5, 2.0, 10.0]  # 10 after 2, not between 1.5 and 2


def test_labels_are_placed_inside_the_frame_without_covering_each_other():
    """Crowded points (eight on a line, 4 pixels apart, in a small frame): every label inside the frame
    when it fits, none overlapping another, each within two lines of its point."""
    from kernel_reg.app.plots import _overlap, label_boxes

    frame = (0.0, 0.0, 200.0, 200.0)
    anchors = [(100.0 + 4 * i, 100.0) for i in range(8)]
    sizes = [(30.0, 8.0)] * len(anchors)
    boxes = label_boxes(anchors, sizes, frame, gap=3.0)
    for i, box in enumerate(boxes):
        assert _overlap(box, frame) == pytest.approx(30.0 * 8.0)
        assert box[2] - box[0] == 30.0 and box[3] - box[1] == 8.0
        assert min(abs(box[1] - 100.0), abs(box[3] - 100.0)) <= 3.0 + 2 * 8.0
        for other in boxes[:i]:
            assert _overlap(box, other) == 0.0
    (corner,) = label_boxes([(199.0, 199.0)], [(30.0, 8.0)], frame, gap=3.0)  # at the frame's corner: turned in
    assert corner[2] <= 200.0 and corner[3] <= 200.0


def test_the_length_of_a_segment_inside_a_box_matches_a_fine_sampling_of_the_segment():
    import math
    import random

    from kernel_reg.app.plots import _inside_length

    generator = random.Random(1)
    box = (10.0, 20.0, 60.0, 45.0)
    cases = [((0.0, 30.0), (100.0, 30.0)), ((10.0, 0.0), (10.0, 100.0)), ((70.0, 0.0), (70.0, 99.0)),
             ((30.0, 30.0), (30.0, 30.0))]  # fmt: skip
    cases += [((generator.uniform(-20, 90), generator.uniform(-20, 90)),
               (generator.uniform(-20, 90), generator.uniform(-20, 90))) for _ in range(200)]  # fmt: skip
    steps = 20000
    for (x0, y0), (x1, y1) in cases:
        length = math.hypot(x1 - x0, y1 - y0)
        samples = [(x0 + (x1 - x0) * (k + 0.5) / steps, y0 + (y1 - y0) * (k + 0.5) / steps) for k in range(steps)]
        inside = sum(box[0] <= x <= box[2] and box[1] <= y <= box[3] for x, y in samples)
        assert _inside_length(box, ((x0, y0), (x1, y1))) == pytest.approx(
            length * inside / steps, abs=2 * length / steps
        )
    for far in (math.nan, math.inf, -math.inf):  # matplotlib's pixels for a point it cannot place
        assert _inside_length(box, ((30.0, 30.0), (far, 30.0))) == 0.0


def test_a_label_moves_off_a_line_drawn_through_its_first_choice():
    """The box above right of a point is its first choice; a front's line rising through it sends the
    label to a box the line does not cross (the claim-2 front once had a label written over its line)."""
    from kernel_reg.app.plots import _inside_length, label_boxes

    frame, anchor, size = (0.0, 0.0, 400.0, 300.0), (100.0, 100.0), (60.0, 10.0)
    (free,) = label_boxes([anchor], [size], frame, gap=4.0)
    assert free == (104.0, 104.0, 164.0, 114.0)
    line = ((100.0, 100.0), (300.0, 120.0))  # through that box
    assert _inside_length(free, line) > 0
    (moved,) = label_boxes([anchor], [size], frame, gap=4.0, segments=[line])
    assert _inside_length(moved, line) == 0.0
    assert 0.0 <= moved[0] and moved[2] <= 400.0 and 0.0 <= moved[1] and moved[3] <= 300.0


@pytest.mark.parametrize("study", ["robustness_fit", "robustness"])
def test_the_published_fronts_label_every_point_without_one_label_covering_another(monkeypatch, study):
    """The crowded fronts of the committed robustness studies (48 labels, six methods), drawn: as measured
    by the renderer, no two labels' texts overlap, each stays inside its panel, and every axis is labelled."""
    import itertools

    import matplotlib.text

    from kernel_reg.app import plots

    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig))
    runs = collect_runs(Path(__file__).parents[1] / "results" / study / "fmnist_vgg5")
    assert plots.plot_tradeoff(runs, Path("unused.png"))
    (figure,) = figures
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    for ax in figure.axes:
        assert ax.get_xlabel() and ax.get_ylabel()
        frame = ax.get_window_extent(renderer)
        boxes = [matplotlib.text.Text.get_window_extent(t, renderer) for t in ax.texts]  # the text, not its leader
        assert len(boxes) == 16
        for box in boxes:
            assert frame.x0 - 0.5 <= box.x0 and box.x1 <= frame.x1 + 0.5
            assert frame.y0 - 0.5 <= box.y0 and box.y1 <= frame.y1 + 0.5
        for a, b in itertools.combinations(boxes, 2):
            assert not a.overlaps(b)
    import matplotlib.pyplot as plt

    plt.close(figure)


def test_a_label_with_room_sits_just_above_right_of_its_point_wherever_the_point_is():
    """Nearness decides among the boxes that cover nothing: floating-point noise in the areas (about 1e-13
    pixels) once sent isolated labels three lines up, with a leader line."""
    import random

    from kernel_reg.app.plots import label_boxes

    frame = (62.614366319444464, 58.50325520833333, 632.4444444444445, 405.6666666666667)
    generator = random.Random(0)
    for _ in range(300):
        x, y = generator.uniform(100.0, 560.0), generator.uniform(100.0, 350.0)
        width, height = generator.uniform(5.0, 40.0), generator.uniform(8.0, 14.0)
        (box,) = label_boxes([(x, y)], [(width, height)], frame, gap=4.166666666666666)
        assert box == (x + 4.166666666666666, y + 4.166666666666666, x + 4.166666666666666 + width,
                       y + 4.166666666666666 + height)  # fmt: skip


def test_a_method_with_the_projection_is_drawn_in_the_light_shade_of_the_method_alone():
    import matplotlib

    from kernel_reg.app.plots import method_colour

    tab20 = [matplotlib.colors.to_rgb(c) for c in matplotlib.colormaps["tab20"].colors]

    def place(method):
        return tab20.index(matplotlib.colors.to_rgb(method_colour(method)))

    for method in ("pgd-l2", "loss-gradl2", "adv-perturbation", "gradient-penalty"):
        dark, light = place(method), place(f"{method}+project-sn")
        assert dark % 2 == 0 and light == dark + 1
    assert method_colour("none") != method_colour("wd")
    assert method_colour("some-new+method") == method_colour("some-new+method")  # stable for unknown names


def test_a_figure_the_runs_no_longer_give_is_removed_not_left_beside_the_report(tmp_path):
    config = make_run(tmp_path, "gp", 0.8, regs=("gradient-penalty",))
    _, files = write_report(tmp_path)
    curves = tmp_path / "learning_curves.png"
    assert curves in files and curves.is_file()
    (row,) = read_metrics(run_path(config))
    write_metrics(run_path(config), [dataclasses.replace(row, val_acc=None)])  # no validation set any more
    text, files = write_report(tmp_path)
    assert curves not in files and not curves.exists() and "learning_curves.png" not in text


def test_figures_renamed_when_the_folder_gains_a_second_study_leave_no_stale_copy(tmp_path):
    make_run(tmp_path, "gp", 0.8, regs=("gradient-penalty",))
    _, single = write_report(tmp_path)
    assert tmp_path / "learning_curves.png" in single
    other = make_run(tmp_path, "gp", 0.7, experiment="fmnist300_vgg5", regs=("gradient-penalty",))
    text, files = write_report(tmp_path)
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs == sorted(f.name for f in files if f.suffix == ".png")  # every figure there is linked
    assert "learning_curves.png" not in pngs and any(p.startswith("learning_curves_fmnist300_vgg5") for p in pngs)
    assert all(f"[{name}]({name})" in text for name in pngs)
    keep = tmp_path / "my_notes.png"  # not one of the report's figures: never touched
    keep.write_bytes(b"png")
    (tmp_path / "report.md").write_text(text + "[my_notes.png](my_notes.png)\n")
    for path in run_path(other).iterdir():
        path.unlink()
    run_path(other).rmdir()  # back to one study: its figures lose their suffix again
    _, files = write_report(tmp_path)
    assert sorted(p.name for p in tmp_path.glob("*.png")) == sorted([*(f.name for f in files[1:]), "my_notes.png"])
    assert tmp_path / "learning_curves.png" in files and keep.read_bytes() == b"png"


def test_the_table_gives_each_runs_training_time_from_its_own_timing(tmp_path):
    """Evaluations at epochs 4, 9 and 14 at 2, 3 and 500 s an epoch (a process paused while it trained
    the third stretch), 1 s each: the median, 3 s an epoch, times 15 epochs, plus 3 s, = 48 s."""
    config = make_run(tmp_path, "gp", 0.8, regs=("gradient-penalty",), num_epochs=15)
    (row,) = read_metrics(run_path(config))
    rows = [
        dataclasses.replace(row, epoch=e, seconds_per_epoch=s, eval_seconds=1.0) for e, s in [(4, 2), (9, 3), (14, 500)]
    ]
    write_metrics(run_path(config), rows)
    make_run(tmp_path, "none", 0.8)  # 1 epoch at 0.1 s, evaluated in 0.1 s
    (run, _) = sorted(collect_runs(tmp_path), key=lambda r: r.name)
    assert run.training_seconds == pytest.approx(48.0)
    table = markdown_table(collect_runs(tmp_path))
    assert "| ok | 0.8 |" in table or "| - | 0.8 |" in table  # 48 s = 0.8 min
    assert f"All 2 runs: {48.2 / 3600:.1f} hours of training." in table


def test_the_table_says_whether_each_selection_is_inside_its_grid(tmp_path):
    """Interior, an edge, an edge closed by a diverged run beyond it, a single setting; and a second
    hyperparameter of the method (vat's lmbda, fixed here) not taken for a grid line."""
    for lmbda, val in [(0.01, 0.80), (0.1, 0.85), (1.0, 0.82)]:
        make_run(tmp_path, f"gp{lmbda}", 0.8, val_acc=val, regs=("gradient-penalty",), lmbda=lmbda)
    for lmbda, val in [(0.1, 0.80), (1.0, 0.85)]:
        make_run(tmp_path, f"gl{lmbda}", 0.8, val_acc=val, regs=("loss-gradl2",), lmbda=lmbda)
    for epsilon, val in [(1.0, 0.80), (3.0, 0.84), (10.0, 0.90)]:
        make_run(tmp_path, f"vat{epsilon}", 0.8, val_acc=val, regs=("vat",), epsilon=epsilon, vat_alpha=1.0)
    make_run(tmp_path, "pgd", 0.8, regs=("pgd-l2",), epsilon=1.0)
    table = selection_table(collect_runs(tmp_path))
    assert "| gradient-penalty | lmbda=0.1 | 3 | interior |" in table
    assert "| loss-gradl2 | lmbda=1 | 2 | EDGE: lmbda highest |" in table
    assert "| vat | lmbda=1, epsilon=10 | 3 | EDGE: epsilon highest |" in table
    assert "| pgd-l2 | epsilon=1 | 1 | - |" in table
    for lmbda in (3.0, 10.0):  # stopped after 2 of 5 epochs: the first diverged, the second was interrupted
        config = make_run(tmp_path, f"gl{lmbda}", 0.1, val_acc=0.1, regs=("loss-gradl2",), lmbda=lmbda, num_epochs=5)
        (row,) = read_metrics(run_path(config))
        write_metrics(run_path(config), [dataclasses.replace(row, epoch=1)])
        if lmbda == 3.0:
            write_divergence(run_path(config), "cross-entropy inf at epoch 2")
    table = selection_table(collect_runs(tmp_path))
    assert "| loss-gradl2 | lmbda=1 | 2 | lmbda largest stable (3 diverged) |" in table


@pytest.mark.parametrize("columns", [1, 2, 3])
def test_a_legend_of_several_columns_reads_in_order_across_its_rows(columns):
    """matplotlib fills legend columns one after the other, the first ones taking the extra entries: the
    reordered entries must then read 0, 1, 2, ... row by row."""
    from kernel_reg.app.plots import _row_major

    for count in range(1, 9):
        names = [str(i) for i in range(count)]
        _, ordered = _row_major(names, names, columns)
        rows = -(-count // columns)
        lengths = [rows if c < count % columns or count % columns == 0 else rows - 1 for c in range(columns)]
        cells, start = [], 0
        for length in lengths:  # column-major fill, as matplotlib does
            cells.append(ordered[start : start + length])
            start += length
        across = [column[r] for r in range(rows) for column in cells if r < len(column)]
        assert across == names


def test_a_panel_with_one_setting_names_it_in_its_title(tmp_path, monkeypatch):
    """A method run at one strength has no legend: its panel's title carries the strength; the figure
    says 'selected by validation' only when some method had several settings to select from."""
    from kernel_reg.app import plots

    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig))
    make_run(tmp_path, "none", 0.7)
    make_run(tmp_path, "gp", 0.8, regs=("gradient-penalty",), lmbda=0.01)
    assert plots.plot_learning_curves(collect_runs(tmp_path), tmp_path / "curves.png")
    make_run(tmp_path, "vat1", 0.8, regs=("vat",), epsilon=1.0)
    make_run(tmp_path, "vat3", 0.8, regs=("vat",), epsilon=3.0)
    assert plots.plot_learning_curves(collect_runs(tmp_path), tmp_path / "curves.png")
    one, several = figures
    assert [ax.get_title() for ax in one.axes if ax.get_visible()] == ["none", "gradient-penalty (lmbda=0.01)"]
    assert "one setting per method" in one._suptitle.get_text()
    titles = [ax.get_title() for ax in several.axes if ax.get_visible()]
    assert titles == ["none", "gradient-penalty (lmbda=0.01)", "vat (lmbda=1)"]  # vat's epsilons: in its legend
    assert "bold: selected by validation" in several._suptitle.get_text()


def test_the_paired_gains_figure_shows_each_comparison_and_the_script_draws_the_committed_study(tmp_path):
    import subprocess
    import sys

    from kernel_reg.app.plots import plot_paired_gains
    from kernel_reg.app.statistics import family

    panels = {"1000 examples": family({"vat": [3.0, 3.5, 2.8], "wd": [0.2, -0.4, 0.1]}), "300 examples": {}}
    assert plot_paired_gains(panels, tmp_path / "gains.png")
    assert (tmp_path / "gains.png").read_bytes()[:4] == b"\x89PNG"
    assert not plot_paired_gains({"empty": {}}, tmp_path / "none.png") and not (tmp_path / "none.png").exists()
    root = Path(__file__).resolve().parents[1]
    script, study = root / "scripts" / "paired_gains.py", root / "results" / "small_data_fit"
    done = subprocess.run([sys.executable, str(script), str(study), "--out", str(tmp_path / "study.png")],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "1000 examples: vat:" in done.stdout and (tmp_path / "study.png").is_file()


def test_the_paired_gains_figure_draws_the_main_study_not_a_longer_control(tmp_path):
    import subprocess
    import sys

    main_arm = {"none": [0.70, 0.72, 0.74], "vat": [0.73, 0.76, 0.77]}  # vat: +3, +4, +3 points
    longer = {"none": [0.75, 0.75, 0.75], "vat": [0.70, 0.70, 0.71]}  # the same subsets trained twice as long
    for epochs, accuracies in ((1, main_arm), (2, longer)):
        for method, values in accuracies.items():
            regs = {"regs": ("vat",)} if method == "vat" else {}
            for subset, acc in enumerate(values):
                make_run(tmp_path, f"{method}_{epochs}_{subset}", acc, experiment="fmnist300_vgg5", shuf_seed=subset,
                         num_epochs=epochs, **regs)  # fmt: skip
    script = Path(__file__).resolve().parents[1] / "scripts" / "paired_gains.py"
    done = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "300 examples: vat: +3.33 [" in done.stdout  # the main arm, whichever study is read last
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "nope")], capture_output=True, text=True)
    assert done.returncode != 0 and "no such folder" in done.stderr and "Traceback" not in done.stderr


def test_learning_curves_zoom_to_where_every_curve_has_risen():
    from kernel_reg.app.plots import _zoomed_floor

    curves = [[0.1, 0.55, 0.70, 0.72, 0.71, 0.72, 0.73, 0.72], [0.1, 0.3, 0.64, 0.75, 0.77, 0.78, 0.78, 0.79]]
    floor = _zoomed_floor(curves)  # after the first quarter of evaluations the lowest value is 0.64
    assert floor == 60 and floor % 5 == 0
    assert all(100 * v >= floor + 3 for curve in curves for v in curve[2:])  # 3 points of room below each
    assert _zoomed_floor([[0.02, 0.01, 0.015, 0.02]]) == 0  # never below 0


def test_fronts_average_the_seeds_of_a_setting_with_their_t_intervals(tmp_path):
    from scipy import stats

    from kernel_reg.app.plots import front_points, plot_tradeoff

    clean, robust = (0.80, 0.82, 0.81), (0.50, 0.55, 0.53)
    for subset, (c, r) in enumerate(zip(clean, robust)):
        config = make_run(tmp_path, f"pgd_s{subset}", 0.8, regs=("pgd-l2",), shuf_seed=subset, seed=42 + subset)
        write_robustness(run_path(config), dataclasses.replace(robustness(64, "-", clean=c), l2={"0.5": r}))
    other = make_run(tmp_path, "pgd_e2", 0.8, regs=("pgd-l2",), epsilon=2.0)
    write_robustness(run_path(other), dataclasses.replace(robustness(64, "-", clean=0.7), l2={"0.5": 0.6}))
    runs = collect_runs(tmp_path)
    members = [(r, r.robustness) for r in runs]
    points = front_points(members, ["" for _ in members], "l2", "0.5")
    assert len(points) == 2  # the three seeds are one setting
    (x1, dx1, y1, dy1, _), (x2, dx2, y2, dy2, _) = points
    half = stats.t.ppf(0.975, 2) / 3**0.5  # t at 2 degrees of freedom, times 1/sqrt(n)
    assert (x1, dx1, y1, dy1) == (70.0, 0.0, 60.0, 0.0)  # one seed: no interval
    assert x2 == pytest.approx(81.0) and dx2 == pytest.approx(half * 100 * statistics.stdev(clean))
    assert y2 == pytest.approx(52.666667) and dy2 == pytest.approx(half * 100 * statistics.stdev(robust))
    assert plot_tradeoff(runs, tmp_path / "front.png") and (tmp_path / "front.png").stat().st_size > 0


def test_every_panel_of_the_small_multiples_names_its_axes(tmp_path, monkeypatch):
    """Learning curves and the RKHS bracket: 'epoch' under every panel, the y quantity on the first panel of
    each row (the panels of a row share it), over two rows of panels."""
    from kernel_reg.app import plots

    for index, regs in enumerate([(), ("vat",), ("pgd-l2",), ("gradient-penalty",), ("stability",)]):
        make_run(tmp_path, f"run{index}", 0.7, regs=regs)
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig))
    runs = collect_runs(tmp_path)
    assert plots.plot_learning_curves(runs, Path("curves.png")) and plots.plot_rkhs_bracket(runs, Path("b.png"))
    assert plots.plot_training_loss(runs, Path("loss.png"))
    assert len(figures) == 3
    ylabels = ("accuracy (%)", "bound on the RKHS norm (log scale)", "training loss (log scale)")
    for figure, ylabel in zip(figures, ylabels):
        panels = [ax for ax in figure.axes if ax.get_visible()]
        assert len(panels) == 5
        for index, ax in enumerate(panels):
            assert ax.get_xlabel() == "epoch"
            assert ax.get_ylabel() == (ylabel if index % plots.PANEL_COLUMNS == 0 else "")


def test_a_collapsed_setting_does_not_flatten_the_learning_curves_it_is_not_selected_for(tmp_path, monkeypatch):
    """The y axis is set by the selected settings and the baseline: a VAT strength that collapsed to chance
    runs below it (the title says so) instead of stretching the axis down to 10%."""
    from kernel_reg.app import plots
    from kernel_reg.app.rundir import MetricsRow, write_metrics

    def curve(name, test, val, **changes):  # a finished 8-evaluation run rising to ``test``
        config = make_run(tmp_path, name, test, val_acc=val, num_epochs=8, **changes)
        rows = [MetricsRow(epoch=e, lr=0.05, train_loss=1.0, train_acc=0.99, val_acc=val, test_acc=test - (7 - e) / 100,
                           rkhs_lower_grad=1.0, rkhs_lower_delta=1.0, rkhs_upper_spectral=10.0, seconds_per_epoch=0.1,
                           eval_seconds=0.1) for e in range(8)]  # fmt: skip
        write_metrics(run_path(config), rows)

    curve("none", 0.78, 0.78)
    curve("vat_good", 0.82, 0.82, regs=("vat",), epsilon=10.0)
    curve("vat_collapsed", 0.10, 0.10, regs=("vat",), epsilon=100.0)
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig))
    assert plots.plot_learning_curves(collect_runs(tmp_path), Path("curves.png"))
    (figure,) = figures
    low, _ = figure.axes[0].get_ylim()
    assert low == 70  # the lowest selected value after the first quarter, 73%, less 3 points, to a multiple of 5
    assert "settings that stay lower run below it" in figure._suptitle.get_text()


@pytest.mark.parametrize(
    "num_epochs, sched_step, gamma",
    [(90, 30, 0.5), (91, 30, 0.5), (60, 7, 0.1), (5, 10, 0.5), (10, 10, 0.5), (1, 1, 0.5), (30, 10, 1.0)],  # fmt: skip
)
def test_the_last_learning_rate_stage_is_where_steplr_reaches_its_final_rate(tmp_path, num_epochs, sched_step, gamma):
    """``RunSummary.last_stage`` against torch's own StepLR, stepped once per epoch as training does: the first
    epoch (from 0) trained at the rate of the last epoch."""
    import torch

    from kernel_reg.app.studies import RunSummary

    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, sched_step, gamma)
    rates = []
    for _ in range(num_epochs):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    config = preset_config("fmnist1000_vgg5", root=str(tmp_path), num_epochs=num_epochs, sched_step=sched_step,
                           sched_gamma=gamma)  # fmt: skip
    assert RunSummary(tmp_path, config, [], None).last_stage == rates.index(rates[-1])  # gamma 1: one rate, from 0


def test_the_loss_change_over_the_last_stage_is_measured_from_its_first_evaluation(tmp_path):
    from kernel_reg.app.studies import RunSummary

    config = preset_config("fmnist1000_vgg5", root=str(tmp_path), num_epochs=60, sched_step=25)  # last stage: 50-59
    row = MetricsRow(epoch=0, lr=0.05, train_loss=1.0, train_acc=0.5, val_acc=0.5, test_acc=0.5,
                     rkhs_lower_grad=1.0, rkhs_lower_delta=1.0, rkhs_upper_spectral=10.0, seconds_per_epoch=0.1,
                     eval_seconds=0.1)  # fmt: skip
    losses = {0: 2.3, 20: 0.9, 45: 0.5, 50: 0.40, 55: 0.39, 59: 0.38}  # 45: before the stage, its drop not counted
    rows = [dataclasses.replace(row, epoch=e, train_loss=v) for e, v in losses.items()]
    assert RunSummary(tmp_path, config, rows, None).last_stage_loss_change == pytest.approx(100 * (0.38 - 0.40) / 0.40)
    alone = [r for r in rows if r.epoch != 55 and r.epoch != 50]  # one evaluation in the stage: nothing to compare
    assert RunSummary(tmp_path, config, alone, None).last_stage_loss_change is None
    for first, last in [(0.0, 0.0), (0.0, 0.1), (float("nan"), 0.3), (0.4, float("inf"))]:  # no relative change
        ends = [dataclasses.replace(rows[3], train_loss=first), dataclasses.replace(rows[5], train_loss=last)]
        assert RunSummary(tmp_path, config, rows[:3] + ends, None).last_stage_loss_change is None


def test_the_training_loss_figure_shows_runs_without_a_validation_split(tmp_path, monkeypatch):
    """A robustness study trains on every image (no validation split, so no selection): its training losses
    are still drawn, each setting's legend giving its mean change over the last stage, the stage shaded."""
    from kernel_reg.app import plots

    change = {}
    for epsilon in (1.0, 2.0):
        for subset in range(2):
            config = make_run(tmp_path, f"pgd{epsilon:g}_s{subset}", 0.7, val_acc=None, regs=("pgd-l2",),
                              epsilon=epsilon, num_epochs=30, sched_step=10, n_val=0, shuf_seed=subset)  # fmt: skip
            last = 0.5 * epsilon + 0.1 * subset
            row = MetricsRow(epoch=0, lr=0.05, train_loss=2.0, train_acc=0.5, val_acc=None, test_acc=0.5,
                             rkhs_lower_grad=1.0, rkhs_lower_delta=1.0, rkhs_upper_spectral=10.0,
                             seconds_per_epoch=0.1, eval_seconds=0.1)  # fmt: skip
            rows = [row, dataclasses.replace(row, epoch=20, train_loss=1.2 * last),
                    dataclasses.replace(row, epoch=29, train_loss=last)]  # fmt: skip
            write_metrics(run_path(config), rows)
            change.setdefault(epsilon, []).append(100 * (last - 1.2 * last) / (1.2 * last))
    make_run(tmp_path, "none", 0.8, val_acc=None, num_epochs=30, sched_step=10, n_val=0)  # one evaluation: none
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig))
    runs = collect_runs(tmp_path)
    assert not plots.plot_learning_curves(runs, Path("curves.png"))  # nothing selected without validation
    assert plots.plot_training_loss(runs, Path("loss.png"))
    (figure,) = figures
    none, pgd = figure.axes[:2]
    assert [t.get_text() for t in none.get_legend().get_texts()] == ["none: not measured"]
    texts = [t.get_text() for t in pgd.get_legend().get_texts()]
    assert texts == [f"epsilon={e:g}: {statistics.mean(change[e]):+.1f}%" for e in (1.0, 2.0)]
    assert pgd.get_yscale() == "log"
    (stage,) = pgd.patches  # the last learning-rate stage, epochs 20-29
    assert (stage.get_x(), stage.get_x() + stage.get_width()) == pytest.approx((20, 29))


def _loss_run(root, name, losses, **changes):
    """A finished run folder whose evaluations have the training losses ``losses`` ({epoch: loss})."""
    config = make_run(root, name, 0.7, val_acc=None, n_val=0, num_epochs=max(losses) + 1, **changes)
    row = MetricsRow(epoch=0, lr=0.05, train_loss=1.0, train_acc=0.5, val_acc=None, test_acc=0.5,
                     rkhs_lower_grad=1.0, rkhs_lower_delta=1.0, rkhs_upper_spectral=10.0, seconds_per_epoch=0.1,
                     eval_seconds=0.1)  # fmt: skip
    write_metrics(run_path(config), [dataclasses.replace(row, epoch=e, train_loss=v) for e, v in losses.items()])


def _boxes(figure):
    figure.canvas.draw()  # lays the figure out (constrained layout) and places every text
    return figure.canvas.get_renderer()


def test_a_panel_of_twelve_settings_keeps_its_legend_under_its_x_label(tmp_path, monkeypatch):
    from kernel_reg.app import plots

    epsilons = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0)
    for index, epsilon in enumerate(epsilons):
        _loss_run(tmp_path, f"pgd{index}", {0: 2.0, 10: 1.0, 20: 0.5, 29: 0.4 + 0.01 * index}, regs=("pgd-l2",),
                  epsilon=epsilon, sched_step=10)  # fmt: skip
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig))
    assert plots.plot_training_loss(collect_runs(tmp_path), Path("loss.png"))
    (figure,) = figures
    renderer = _boxes(figure)
    (ax,) = [a for a in figure.axes if a.get_visible()]
    legend = ax.get_legend().get_window_extent(renderer)
    label = ax.xaxis.label.get_window_extent(renderer)
    assert legend.y1 < label.y0  # pixels grow upwards: the legend's top is under the x label's bottom
    styles = [(line.get_color(), line.get_linestyle()) for line in ax.get_lines()]
    assert len(set(styles)) == len(epsilons)  # no two settings drawn alike


@pytest.mark.parametrize("lowest, plain", [(0.2, True), (1e-7, False), (1e-4, False)])
def test_the_loss_axis_labels_never_run_into_each_other(tmp_path, monkeypatch, lowest, plain):
    """Losses over 1 decade get plain 1-2-5 labels; losses down to 1e-4 or 1e-7 one label per decade, none
    covering the next."""
    from kernel_reg.app import plots

    _loss_run(tmp_path, "none", {0: 3.0, 10: 1.0, 20: (3 * lowest) ** 0.5, 29: lowest}, sched_step=10)
    _loss_run(tmp_path, "pgd", {0: 3.0, 10: 1.0, 20: 0.5, 29: 0.3}, sched_step=10, regs=("pgd-l2",))
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig))
    assert plots.plot_training_loss(collect_runs(tmp_path), Path("loss.png"))
    (figure,) = figures
    renderer = _boxes(figure)
    ax = figure.axes[0]
    low, high = ax.get_ylim()
    shown = [t for t in ax.yaxis.get_major_ticks() if low <= t.get_loc() <= high and t.label1.get_text()]
    assert len(shown) >= 2
    boxes = sorted((t.label1.get_window_extent(renderer) for t in shown), key=lambda b: b.y0)
    assert all(below.y1 <= above.y0 for below, above in zip(boxes, boxes[1:]))
    texts = [t.label1.get_text() for t in shown]
    assert all(text.replace(".", "").isdigit() for text in texts) == plain, texts


def test_runs_of_two_schedules_in_one_panel_each_shade_their_own_last_stage(tmp_path, monkeypatch):
    """``plot_training_loss`` called with runs a report would keep apart (30 and 60 epochs): each schedule's last
    stage is shaded, not the first run's stretched over both."""
    from kernel_reg.app import plots

    _loss_run(tmp_path, "short", {0: 2.0, 20: 1.0, 29: 0.9}, regs=("pgd-l2",), sched_step=10)
    _loss_run(tmp_path, "long", {0: 2.0, 50: 1.0, 59: 0.9}, regs=("pgd-l2",), epsilon=2.0, sched_step=10)
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig))
    assert plots.plot_training_loss(collect_runs(tmp_path), Path("loss.png"))
    spans = sorted((p.get_x(), p.get_x() + p.get_width()) for p in figures[0].axes[0].patches)
    assert spans == [(20, 29), (50, 59)]
