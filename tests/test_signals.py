"""The next-review measures that `generate --like` fits (pipeline/data/signals.py), on worlds small enough to check
by hand."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.data.signals import last_of_each_user, signal_measures
from pipeline.io import DataError

FILLER = "good fine nice okay"


def measures(reviews: list[tuple[str, str, str, int]], seed: int = 0) -> dict:
    users, items, texts, times = zip(*reviews)
    return signal_measures(np.array(users), np.array(items), list(texts), np.array(times), seed=seed)


def test_each_users_last_review_by_time_is_held_out_and_single_review_users_are_not():
    users = np.array([0, 0, 0, 1, 2, 2])
    times = np.array([5, 9, 1, 3, 7, 2])
    held = last_of_each_user(users, times, np.random.default_rng(0))
    assert held.tolist() == [False, True, False, False, True, False]


def test_equal_last_times_are_ordered_by_the_seed_alone():
    users, times = np.zeros(6, dtype=int), np.array([1, 4, 4, 4, 4, 2])
    chosen = {int(np.flatnonzero(last_of_each_user(users, times, np.random.default_rng(s)))[0]) for s in range(20)}
    assert chosen <= {1, 2, 3, 4} and len(chosen) > 1
    again = last_of_each_user(users, times, np.random.default_rng(7))
    assert (again == last_of_each_user(users, times, np.random.default_rng(7))).all()


def test_a_target_tied_with_others_counts_the_share_of_tied_places_inside_the_top_ten():
    # 24 items each reviewed once, each by its own user; u0 also reviews x last, and v reviews x once. By
    # popularity x ties with u0's 23 other unseen items (count 1 each): 24 tied places, 10 of them in the top ten.
    reviews = [(f"u{k}", f"i{k}", f"{FILLER} word{k}", 1) for k in range(24)]
    reviews += [("u0", "x", FILLER, 2), ("v", "x", FILLER, 1)]
    assert measures(reviews)["popularity_hit_rate"] == pytest.approx(10 / 24, abs=1e-4)


def small_world(seed: int = 0) -> list[tuple[str, str, str, int]]:
    """40 users reviewing 4 of 15 items each, every review naming its item's topic; distinct times."""
    rng = np.random.default_rng(seed)
    return [(f"u{user}", f"i{item}", f"{FILLER} topic{item % 5} topic{item % 5} shade{item}", k)
            for user in range(40) for k, item in enumerate(rng.choice(15, size=4, replace=False))]


def test_the_held_out_reviews_words_never_reach_any_measure():
    world = small_world()
    held = {(u, max(t for v, _, _, t in world if v == u)) for u, _, _, _ in world}
    rewritten = [(u, i, "quasar nebula comet " * 3 if (u, t) in held else text, t) for u, i, text, t in world]
    assert measures(rewritten) == measures(world)
    changed_history = [(u, i, "quasar nebula comet " * 3 if (u, t) not in held and i == "i3" else text, t)
                       for u, i, text, t in world]
    assert measures(changed_history)["text_hit_rate"] != measures(world)["text_hit_rate"]


def test_a_held_out_repeat_of_a_history_item_is_not_a_target():
    reviews = [("u0", "a", FILLER, 1), ("u0", "a", FILLER, 2), ("u1", "a", FILLER, 1), ("u1", "b", FILLER, 2)]
    assert measures(reviews)["held_out_users"] == 1


def test_no_shared_words_and_no_reviews_are_clear_errors():
    with pytest.raises(DataError, match="no word appears in two or more history reviews"):
        measures([("u0", "a", "alpha", 1), ("u0", "b", "beta", 2), ("u1", "c", "gamma", 1), ("u1", "a", "delta", 2)])
    with pytest.raises(DataError, match="empty"):
        signal_measures(np.array([]), np.array([]), [], np.array([]))


LETTERS = "abcdefghij"  # a topic's name is letters: TF-IDF here reads no digits


def sparse_topic_world(named: bool) -> list[tuple[str, str, str, int]]:
    """90 users in 30 topics of 10 items, each user reviewing 4 items of their topic: three users a topic, too few for
    co-occurrence to find the topic's other items; each review names its item's topic when `named`."""
    rng = np.random.default_rng(0)
    return [(f"u{user}", f"i{10 * (user % 30) + item}",
             f"{FILLER} topic{LETTERS[user % 30 // 10]}{LETTERS[user % 10]}" if named else FILLER, k)
            for user in range(90) for k, item in enumerate(rng.choice(10, size=4, replace=False))]


def test_text_that_says_what_sparse_cooccurrence_cannot_lifts_the_two_together_and_wordless_text_does_not():
    named, wordless = measures(sparse_topic_world(True)), measures(sparse_topic_world(False))
    assert named["cooccurrence_text_hit_rate"] > named["cooccurrence_hit_rate"]
    assert named["text_over_cooccurrence_lift"] > 1.5
    assert wordless["text_over_cooccurrence_lift"] == 1.0  # every item reads alike: the co-occurrence order stands
