"""The shared analyzer's normalisation rules and the catalogue-vocabulary speller."""

from __future__ import annotations

import doctest

import pytest

from serving.spelling import SpellCorrector, edit_distance
from streamrec import analysis
from streamrec.analysis import analyze, stem


def test_doctests() -> None:
    assert doctest.testmod(analysis).failed == 0


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("1/2 in. copper pipe", "1/2 inch copper pipes"),
        ('3/4" plywood', "3/4 inch plywood"),
        ("5 gal. bucket", "5 gallon buckets"),
        ("2 x 4 x 8", "2x4x8"),
        ("2 by 4", "2x4"),
        ("1,000 watt", "1000 w"),
        ("10 ft. hose", "10' hose"),
        ("40 lb bag", "40 pounds bag"),
        ("12-volt drill", "12 v drill"),
        ("50 sq. ft.", "50 square feet"),
        ("Tom &amp; Jerry", "tom and jerry"),
        ("14 gauge wire", "14-ga wire"),
    ],
)
def test_same_meaning_same_tokens(a: str, b: str) -> None:
    assert analyze(a) == analyze(b)


def test_fractions_and_decimals_are_tokens() -> None:
    assert analyze("1-1/2 in. x 1-1/4 in.") == ["1", "1/2", "inch", "1", "1/4", "inch"]
    assert analyze("2.5 gal") == ["2.5", "gal"]
    assert analyze("4.0 amp") == ["4", "amp"]


def test_stopwords_dropped() -> None:
    assert analyze("the door for a shed") == ["door", "shed"]


@pytest.mark.parametrize(
    ("word", "stemmed"),
    [
        ("batteries", "battery"),
        ("boxes", "box"),
        ("brushes", "brush"),
        ("benches", "bench"),
        ("screws", "screw"),
        ("glass", "glass"),
        ("cactus", "cactus"),
        ("gas", "gas"),
        ("r22s", "r22s"),
    ],
)
def test_light_stemming(word: str, stemmed: str) -> None:
    assert stem(word) == stemmed


def test_edit_distance_counts_transpositions_once() -> None:
    assert edit_distance("pipe", "ppie") == 1
    assert edit_distance("kitten", "sitting") == 3


def _speller(*docs: str) -> SpellCorrector:
    sc = SpellCorrector()
    for d in docs:
        sc.add_document(analyze(d))
    return sc


def test_corrects_only_unknown_long_alphabetic_tokens() -> None:
    sc = _speller("copper pipe", "copper pipe fitting", "pvc pipe", "toilet seat", "toilet seat cover")
    assert sc.correct(["coppr", "pipw"]) == ["copper", "pipe"]  # distance 1 for ≤ 5 characters
    assert sc.correct(["tiolet"]) == ["toilet"]  # transposition
    assert sc.correct(["ppe", "pvx", "r22s"]) == ["ppe", "pvx", "r22s"]  # too short / not alphabetic
    assert sc.correct(["fitting"]) == ["fitting"]  # known (df 1) stays


def test_distance_then_document_frequency() -> None:
    sc = _speller("wall wall", "wall", "wall", "well", "well", "walk", "walk")
    assert sc.correct_token("wallx") == ["wall"]  # distance 1 beats everything at 2
    sc2 = _speller("wall", "wall", "wall", "well", "well")
    assert sc2.correct_token("wrll") == ["wall"]  # same distance: higher df


def test_split_into_two_words() -> None:
    sc = _speller("wood screw", "wood glue", "deck screw")
    assert sc.correct_token("woodscrew") == ["wood", "screw"]


def test_incremental_add_and_remove() -> None:
    sc = _speller("hammer drill", "hammer")
    assert sc.correct_token("hamer") == ["hammer"]
    sc.remove_document(analyze("hammer"))
    assert sc.df("hammer") == 1
    assert sc.correct_token("hamer") == ["hamer"]  # hammer is now in one document: not a target
    sc.add_document(analyze("claw hammer"))
    assert sc.correct_token("hamer") == ["hammer"]
