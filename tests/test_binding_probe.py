"""examples/binding_probe.py: the probe behind weights/nano/README.md's "Binding learned in the text" —
its rows must ask what they say, with the answer predicted where the layout says."""
import random

from examples.binding_probe import ID, IGNORE, KINDS, batch, main, row, scene


def test_rows_put_each_answer_where_the_layout_says_and_nothing_else_is_learned():
    rng = random.Random(0)
    objects = scene(rng, 3)
    one, _ = row(objects, "one", "noun", "attr-first", random.Random(1))
    assert [len(t) for t in one[:6]] == [4, 1] * 3                        # one position per object: 4 words summed
    assert sorted(one[0]) == sorted(ID[objects[0][k]] for k in ("colour", "place", "motion", "shape"))
    words, _ = row(objects, "words", "noun", "noun-first", random.Random(1))
    assert [t[0] for t in words[:5]] == [ID[objects[0][k]] for k in ("shape", "colour", "place", "motion")] + [ID[";"]]
    kind_of = {ID[k]: k for k in KINDS}
    for ask, noun_at in (("noun", 0), ("sep", -2), ("line", 0)):        # where the asked noun is, from the answer's
        pos, labels = row(objects, "words", ask, "attr-first", random.Random(2))
        answers = [(i, v) for i, v in enumerate(labels) if v != IGNORE]
        assert len(answers) == len(objects) * len(KINDS)                  # every fact asked once
        for i, value in answers:
            assert pos[i + 1] == (value,)                                 # the next position is the answer itself
            assert ask != "sep" or pos[i] == (ID["<a>"],)
            asked = next(o for o in objects if (ID[o["shape"]],) == pos[i + noun_at])
            kind = next(kind_of[pos[j][0]] for j in range(i, -1, -1) if pos[j][0] in kind_of)
            assert value == ID[asked[kind]]                        # the named object's value, not another's
    ids, weights, labels = batch([row(objects, "one", "sep", "attr-first", rng)])
    assert ids.shape[-1] == 4 and weights[0, 0].tolist() == [1, 1, 1, 1] and weights[0, 1].tolist() == [1, 0, 0, 0]


def test_the_probe_runs_its_phases_in_order(capsys):
    main(["one:noun:3,words:sep:2", "--batch", "4", "--threads", "1"])
    out = capsys.readouterr().out.strip().split("\n")
    assert len(out) == 1 and out[0].startswith("step 5 (words:sep)")
    assert all(f"{k} " in out[0] for k in ("one:noun", "words:noun", "words:sep"))
