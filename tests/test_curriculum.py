"""The curriculum scheduler as plain Python: stages, edges, freezing, replay, plateaus, errors."""

from __future__ import annotations

import pytest

from bindspace.curriculum import Curriculum, CurriculumState, Plateau
from bindspace.graph import build_edges
from bindspace.modalities import ConfigError

ALL = ["image", "text", "audio", "depth", "thermal", "imu"]
STAR = build_edges(ALL, ["image"])
PROGRESSIVE = {"start": ["image", "text"], "order": ["audio", ["depth", "thermal"], "imu"], "stage": {"steps": 10}}


def run_steps(curriculum: Curriculum, steps: int, steps_per_epoch: int = 100) -> list[int]:
    """The stage index in force at each step, advancing as the callback does after each step."""
    state, seen = CurriculumState(), []
    for step in range(1, steps + 1):
        seen.append(state.index)
        if state.stage_done(curriculum, step, steps_per_epoch):
            state.advance(step)
    return seen


def test_progressive_stages_add_edges_in_order():
    c = Curriculum.from_config(PROGRESSIVE, STAR, ["image"])
    assert [s.name for s in c.stages] == ["image-text", "+audio", "+depth+thermal", "+imu"]
    assert c.edges(0) == [("image", "text")]
    assert c.edges(2) == [("image", "text"), ("image", "audio"), ("image", "depth"), ("image", "thermal")]
    assert c.edges(3) == STAR
    # Stage i is in force during steps 10i+1 .. 10(i+1); the last stage never ends.
    seen = run_steps(c, 45)
    assert seen[:10] == [0] * 10 and seen[10:20] == [1] * 10 and seen[30:] == [3] * 15


def test_order_override_is_one_line_of_data():
    c = Curriculum.from_config({**PROGRESSIVE, "order": ["imu", "audio", "depth", "thermal"]}, STAR, ["image"])
    assert [s.new_edges for s in c.stages[1:]] == [[("image", m)] for m in ["imu", "audio", "depth", "thermal"]]


def test_text_anchor_progressive_joins_each_modality_to_text():
    edges = build_edges(ALL, ["text"])
    c = Curriculum.from_config(PROGRESSIVE, edges, ["text"])
    assert c.edges(0) == [("text", "image")] and c.stages[1].new_edges == [("text", "audio")]


def test_frozen_sets_per_stage():
    cfg = {**PROGRESSIVE, "stage": {"steps": 5, "freeze": ["anchor", "aligned"]}}
    c = Curriculum.from_config(cfg, STAR, ["image"])
    assert c.frozen(0) == {"image"}  # nothing aligned yet
    assert c.frozen(1) == {"image", "text"}
    assert c.frozen(3) == {"image", "text", "audio", "depth", "thermal"}


def test_replay_weights_earlier_edges():
    c = Curriculum.from_config({**PROGRESSIVE, "stage": {"steps": 5, "replay": 0.25}}, STAR, ["image"])
    assert c.edge_weights(0) == {"image|text": 1.0}
    assert c.edge_weights(2) == {"image|text": 0.25, "image|audio": 0.25, "image|depth": 1.0, "image|thermal": 1.0}
    no_replay = Curriculum.from_config({**PROGRESSIVE, "stage": {"steps": 5, "replay": 0.0}}, STAR, ["image"])
    assert no_replay.edge_weights(1) == {"image|audio": 1.0}
    assert no_replay.edges(1) == [("image", "audio")]


def test_epoch_lengths_use_steps_per_epoch():
    c = Curriculum.from_config({**PROGRESSIVE, "stage": {"epochs": 0.5}}, STAR, ["image"])
    seen = run_steps(c, 30, steps_per_epoch=8)  # 4 steps per stage
    assert seen[:4] == [0] * 4 and seen[4:8] == [1] * 4 and seen[12] == 3


def test_plateau_ends_a_stage_after_patience_and_respects_the_cap():
    plateau = Plateau(metric="val/mean_R@1", patience=2, min_delta=0.5, max_steps=100)
    c = Curriculum.from_config(
        {
            "stages": [
                {"name": "a", "edges": [["image", "text"]], "plateau": vars(plateau)},
                {"name": "b", "edges": "all"},
            ]
        },
        STAR,
        ["image"],
    )
    state = CurriculumState()
    for value in [10.0, 20.0, 20.3, 19.0]:  # +10, +0.3 (< min_delta: no improvement), worse
        assert not state.stage_done(c, 5, 100)
        state.observe(value, c.stages[0].plateau)
    assert state.bad_validations == 2 and state.stage_done(c, 5, 100)
    capped = CurriculumState()
    assert capped.stage_done(c, 100, 100) and not capped.stage_done(c, 99, 100)


def test_the_validation_at_a_stage_start_scores_the_previous_stage_and_counts_for_neither():
    """A stage starts after the step that ended the previous one, and Lightning validates after that step:
    that validation scores weights no step of the new stage has trained. It counted as the new stage's first
    plateau observation, and as early stopping's first in the last stage, whose best checkpoint could then
    be weights that never trained the pairs metrics.json flags as trained."""
    from types import SimpleNamespace

    from bindspace.training.callbacks import CurriculumCallback

    plateau = {"metric": "val/mean_R@1", "patience": 1, "min_delta": 100.0, "max_steps": 50}
    stages = [
        {"name": "a", "edges": [["image", "text"]], "steps": 4},
        {"name": "b", "edges": "all", "plateau": plateau},
    ]
    callback = CurriculumCallback(Curriculum.from_config({"stages": stages}, STAR, ["image"]))
    callback.state.advance(4)  # stage b starts after step 4
    for step, (best, bad) in [(4, (None, 0)), (6, (1.0, 0)), (8, (1.0, 1))]:
        trainer = SimpleNamespace(sanity_checking=False, global_step=step, callback_metrics={"val/mean_R@1": 1.0})
        assert callback.in_last_stage(trainer) is (step > 4)
        callback.on_validation_end(trainer, SimpleNamespace())
        assert (callback.state.best, callback.state.bad_validations) == (best, bad), step


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({**PROGRESSIVE, "order": ["audio", "depth", "imu"]}, r"leaves out \['thermal'\]"),
        ({**PROGRESSIVE, "order": ["audio", "smell", "depth", "thermal", "imu"]}, "'smell' is not a modality"),
        ({"stages": [{"edges": [["audio", "depth"]]}]}, r"\['audio', 'depth'\] is not an edge"),
        ({"stages": [{"edges": [["image", "text"]], "steps": 3}]}, r"never trains graph edges \['image\|audio'"),
        ({"stages": [{"edges": "all", "steps": 3}, {"edges": "all"}]}, "adds no new edge"),
        ({"stages": [{"edges": [["image", "text"]]}, {"edges": "all"}]}, "only the last stage may omit its length"),
        ({"stages": [{"edges": "all", "steps": 2, "epochs": 1}]}, "give one of steps, epochs or plateau"),
        ({"stages": [{"name": "x"}]}, "needs `edges`"),
    ],
)
def test_bad_curricula_are_named(cfg, message):
    with pytest.raises(ConfigError, match=message):
        Curriculum.from_config(cfg, STAR, ["image"])


# ---- freezing, schedules and continual options (plain Python) ----------------------------------------
def test_whole_encoder_freezing_drops_replay_edges_with_nothing_left_to_train():
    cfg = {**PROGRESSIVE, "stage": {"steps": 5, "freeze": ["anchor", "aligned"]}}
    c = Curriculum.from_config(cfg, STAR, ["image"])
    assert c.wholly_frozen(1) == {"image", "text"}
    assert c.edge_weights(1) == {"image|audio": 1.0}  # image|text: both encoders frozen whole
    heads = Curriculum.from_config(
        {**PROGRESSIVE, "stage": {"steps": 5, "freeze": ["anchor", "aligned"], "freeze_parts": ["trunk"]}},
        STAR,
        ["image"],
    )
    assert heads.wholly_frozen(1) == set() and "image|text" in heads.edge_weights(1)
    assert heads.frozen_parts(1) == {"image": ("trunk",), "text": ("trunk",)}


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (
            {"stages": [{"name": "a", "edges": [["image", "text"]], "freeze": ["image", "text"], "steps": 2},
                        {"edges": "all"}]},
            r"stages\[0\] \(a\).freeze=\['image', 'text'\] freezes both encoders of its own edge image\|text",
        ),
        ({**PROGRESSIVE, "stage": {"steps": 5, "freeze_parts": ["tail"]}}, r"freeze_parts: \['tail'\]"),
        ({**PROGRESSIVE, "schedule": "cosine"}, "curriculum.schedule must be one of"),
        ({**PROGRESSIVE, "continual": {"method": "ewc"}}, "curriculum.continual.method must be one of"),
        ({**PROGRESSIVE, "continual": {"weight": -1}}, "curriculum.continual.weight must be a number >= 0"),
        ({**PROGRESSIVE, "continual": {"wieght": 1}}, r"curriculum.continual: unknown key\(s\) \['wieght'\]"),
    ],
)  # fmt: skip
def test_bad_freezing_schedules_and_continual_options_are_named(cfg, message):
    with pytest.raises(ConfigError, match=message):
        Curriculum.from_config(cfg, STAR, ["image"])


def test_a_stage_shorter_than_its_warmup_is_refused_under_per_stage_schedules():
    c = Curriculum.from_config({**PROGRESSIVE, "stage": {"steps": 10, "warmup_steps": 20}}, STAR, ["image"])
    with pytest.raises(ConfigError, match=r"stages\[0\] \(image-text\): 10 steps is shorter than its warmup"):
        c.check_schedule(max_steps=100, default_warmup=50)
    Curriculum.from_config({**PROGRESSIVE, "schedule": "global", "stage": {"steps": 10, "warmup_steps": 20}},
                           STAR, ["image"]).check_schedule(100, 50)  # fmt: skip
    # The last stage runs to max_steps (100 - 10 = 90 steps) and, giving no warmup, takes the run's.
    stages = [
        {"name": "a", "edges": [["image", "text"]], "steps": 10, "warmup_steps": 5},
        {"name": "b", "edges": "all"},
    ]
    last = Curriculum.from_config({"stages": stages}, STAR, ["image"])
    last.check_schedule(max_steps=100, default_warmup=90)
    with pytest.raises(ConfigError, match=r"stages\[1\] \(b\): 90 steps .*optim.warmup_steps=95"):
        last.check_schedule(max_steps=100, default_warmup=95)


def test_progressive_reverse_fits_any_graph():
    """``curriculum=progressive_reverse`` listed the six built-ins: a graph without one of them, or with a plugin
    modality (the synthetic benchmark's default graph once a plugin is installed), was refused."""
    from conftest import compose_config
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(compose_config(["curriculum=progressive_reverse"])["curriculum"])
    star = Curriculum.from_config(cfg, STAR, ["image"])
    assert [s.name for s in star.stages] == ["image-text", "+imu", "+thermal", "+depth", "+audio"]  # as it was
    fewer = Curriculum.from_config(cfg, build_edges(["image", "text", "audio", "imu"], ["image"]), ["image"])
    assert [s.name for s in fewer.stages] == ["image-text", "+imu", "+audio"]
    seventh = Curriculum.from_config(cfg, [*STAR, ("image", "tactile")], ["image"])
    assert [s.name for s in seventh.stages] == ["image-text", "+tactile", "+imu", "+thermal", "+depth", "+audio"]


def test_progressive_defaults_fit_any_graph():
    auto = {"start": None, "order": None, "stage": {"steps": 5}}
    star = Curriculum.from_config(auto, STAR, ["image"])
    assert [s.name for s in star.stages] == ["image-text", "+audio", "+depth", "+thermal", "+imu"]
    chain = build_edges(["image", "text", "audio"], ["text"], [["text", "image"], ["image", "audio"]])
    digits = Curriculum.from_config(auto, chain, ["text"])
    assert [(s.name, s.new_edges) for s in digits.stages] == [("text-image", [("text", "image")]),
                                                               ("+audio", [("image", "audio")])]  # fmt: skip
    with pytest.raises(ConfigError, match="give either `stages` or `start`/`order`"):
        Curriculum.from_config({**auto, "stages": [{"edges": "all"}]}, STAR, ["image"])
