"""Reading practice for the stage-0 LLaMA: the toy language over a wider world, asked in wider words.

A pretrained LLM has read about every colour of every shape, and it has heard every question asked in
many ways. The toy corpus pairs only a few dozen colours and shapes and asks each question in three or
four fixed phrasings, and a small LLaMA trained on it alone learns exactly that: asked to show "an
orange triangle" (a held-out pair) it wrote "an orange heart" into the `<video>` prompt, and asked
"What is the number of objects shown?" (a held-out phrasing) it answered with a shape. So every epoch
of `stage0.pretrain_llama` also reads `reading_documents`: fresh scenes that exist only as words,

- drawn from a **wider vocabulary** (`reading_scene`: a "teal hexagon" on a "gold" background; never a
  held-out colour–shape pair of the world), so that reading the caption is the only way to the answer;
- asked in **wider words** (`PARAPHRASES`): for every intent a dozen more ways to ask — other verbs
  ("Say …", "Give …", "State …"), other nouns ("hue", "movement", "location") and other orders ("The
  colour of the star is what?") — so that the model learns which *words* carry the question, not
  which sentences. They are general English, as a real pretraining corpus holds them, with one rule:
  none is a held-out phrasing of the world, nor one with only its nouns swapped (`frame`; a test checks
  every template); `MORE_PARAPHRASES` adds fifteen (`Stage0Settings.llama_more_paraphrases`);
- with harmless **words around** half of the questions (`loosen`: "Okay, …", "… Thanks.");
- as the world's own document kinds: a description, a QA record with the clip written in the video
  slot as words (`with_caption`), a drill that asks every object's colour, motion and place, and a
  request to show a scene answered with its `<video>` caption — half the time after the drill's
  questions about the clip, as chat.py's users ask (a model that never saw that order answered "Show
  me a red circle moving left." about a clip with "red").

With `edits` (`Stage0Settings.llama_edits`), a shown video is then changed or asked about (`shown_then`), or
two are asked for at once, and `edit_documents` are such dialogues alone, without a clip: show a scene,
then change its colour, motion or background (`EDIT_PARAPHRASES`: nine more ways to ask for each
change) or ask about one of its objects; with `chat`, some of them also hold chit-chat (`chit_chat`,
phrases.CHAT in its train phrasings and `CHAT_PARAPHRASES`), so that a second human turn is not always a
change.

`drill_documents` are drills alone (every object's colour, shape, motion and place, of two- or
three-object scenes only), for `Stage0Settings.llama_drills`.

What it gained: weights/nano/README.md ("Experiments behind the recipe"). Only train phrasings and the
paraphrases are used; the world's held-out phrasings and pairs never appear.
"""
from __future__ import annotations

import random
import re

from ..data import Part, layout
from ..readers import videochat_turns
from .datasets import chat_slots, leave_unsaid, refer, request_phrase, stage1_records, tag, vary
from .phrases import CHAT, NUMBERS, PHRASINGS, SHOW, SHOW_MORE, SHOW_TWO
from .stage0_objects import ObjectsPart, list_turns
from .world import BACKGROUNDS, COLOURS, MOTIONS, POSITION_PHRASES, POSITIONS, SHAPES, SIZES, Scene, Thing, caption

EXTRA_COLOURS = ("pink", "teal", "gold", "silver", "cyan", "lime", "maroon", "beige")
EXTRA_SHAPES = ("oval", "diamond", "hexagon", "moon", "arrow", "ring")
LEAD_INS = ("Okay,", "So,", "Quick question:", "Look at the video.", "Now tell me:", "Hmm,", "One more:",
            "I wonder,", "Please,", "Next question.")
TAGS_ON = ("Thanks.", "Please answer briefly.", "Be precise.", "Just the answer, please.")

# More ways to ask, per intent of phrases.PHRASINGS (same {slots}). "describe" also takes the ways of
# asking about a clip ("about_clip": answered with the same description in the safety data).
PARAPHRASES = {
    "describe": ["Tell me everything that happens in the clip.", "What does the video show? Be detailed.",
                 "Give me a full description of the video.", "Say in detail what you see in the clip.",
                 "Describe what you see in this clip.", "What is going on in the video?",
                 "What do you see in this video?", "Please describe the clip for me.",
                 "Could you describe the video?", "Tell me what the clip shows.", "Explain what you see in the video.",
                 "Report what happens in the video.", "Give a detailed account of the clip."],
    "caption": ["Give the clip a one-line caption.", "Describe the video in one short sentence.",
                "In one sentence, what does the clip show?", "Write a short caption for this video."],
    "colour": ["What is the {ref}'s colour?", "Which colour does the {ref} have?", "What colour does the {ref} have?",
               "Say the colour of the {ref}.", "Give me the colour of the {ref}.", "State the colour of the {ref}.",
               "Do you know the colour of the {ref}?", "The colour of the {ref} is what?", "What hue is the {ref}?",
               "Tell me which colour the {ref} is.", "What colour is the {ref} painted?",
               "Look at the {ref}. What colour is it?", "Could you tell me the colour of the {ref}?",
               "I'd like to know the colour of the {ref}."],
    "shape": ["What is the shape of the {ref}?", "What shape does the {ref} have?", "Say the shape of the {ref}.",
              "Give me the shape of the {ref}.", "State the shape of the {ref}.", "What form does the {ref} have?",
              "Do you know the shape of the {ref}?", "The shape of the {ref} is what?",
              "Tell me which shape the {ref} is.", "Look at the {ref}. What shape is it?",
              "Could you tell me the shape of the {ref}?", "What sort of shape is the {ref}?",
              "I'd like to know the shape of the {ref}."],
    "count": ["How many objects do you see?", "How many things are in the clip?", "How many objects are shown?",
              "Tell me how many objects there are.", "Say how many objects the video has.",
              "Give the number of objects in the video.", "What is the object count?",
              "How many objects does the clip show?", "Do you know how many objects there are?",
              "How many items are on screen?", "Count how many shapes the video shows.",
              "Tell me the total number of objects."],
    "count_shape": ["How many {shapes} do you see?", "How many {shapes} are in the clip?",
                    "Tell me how many {shapes} there are.", "Say how many {shapes} the video has.",
                    "Give the number of {shapes} in the video.", "How many {shapes} does the clip show?",
                    "Do you know how many {shapes} there are?", "Count how many {shapes} the video shows.",
                    "How many {shapes} are on screen?", "Tell me the total number of {shapes}."],
    "motion": ["How is the {ref} moving?", "What is the {ref} doing in the video?", "Tell me how the {ref} moves.",
               "Say what the {ref} does.", "What movement does the {ref} make?", "What is the motion of the {ref}?",
               "Describe how the {ref} moves.", "Tell me what the {ref} is doing.", "How does the {ref} behave?",
               "What kind of motion does the {ref} show?", "Look at the {ref}. How does it move?",
               "Could you tell me how the {ref} moves?", "What does the {ref} do during the clip?"],
    "position": ["Where is the {ref} located?", "Tell me where the {ref} is.", "Say where the {ref} is.",
                 "Where in the frame is the {ref}?", "In what part of the picture is the {ref}?",
                 "What is the position of the {ref}?", "Where does the {ref} appear?", "Where would I find the {ref}?",
                 "Which part of the frame has the {ref}?", "Look at the {ref}. Where is it?",
                 "Could you tell me where the {ref} is?", "What is the location of the {ref}?"],
    "background": ["What colour is the background of the clip?", "Tell me the background colour.",
                   "Say the colour of the background.", "What colour is behind the shapes?",
                   "Give me the colour of the background.", "Which colour does the background have?",
                   "What is the colour of the backdrop?", "The background is what colour?",
                   "Could you tell me the background colour?", "What colour fills the background?"],
    "show": ["Make me a video of {d}.", "Please show {d}.", "Can I see {d}?", "Let me see {d}.",
             "Create a clip showing {d}.", "I would love a video of {d}.", "Produce a short video of {d}.",
             "Could you make a video of {d}?", "Draw {d} for me.", "Show a clip of {d}, please.",
             "Give me a video with {d}.", "Make a clip with {d}."],
}
PARAPHRASES["describe"] += PHRASINGS["about_clip"][0]
WIDER = {intent: (train + PARAPHRASES.get(intent, []), held) for intent, (train, held) in PHRASINGS.items()}

# Fifteen more (`Stage0Settings.llama_more_paraphrases`): place asked with "area" and "region", motion with
# "explain", counts and shapes with "give" and "identify". They were written after reading which held-out
# phrasings the models misread ("Which area holds the …?" answered with a colour); each passes the same
# `frame` rule as the rest, so none is a held-out phrasing, nor one with only its nouns swapped.
MORE_PARAPHRASES = {
    "position": ["In which area of the frame is the {ref}?", "What area of the picture is the {ref} in?",
                 "Which region of the clip contains the {ref}?", "Can you point to the location of the {ref}?",
                 "The {ref} is in which area?", "Which area is the {ref} in?"],
    "motion": ["Explain how the {ref} moves.", "Explain the movement of the {ref}.", "What goes on with the {ref}?",
               "What is the {ref} up to in the clip?", "Explain the motion of the {ref}, please."],
    "count_shape": ["Give the count of {shapes} in the clip.", "Tell me what number of {shapes} the clip has."],
    "shape": ["Identify what shape the {ref} is.", "Which shape does the {ref} have?"],
}
WIDEST = {intent: (train + MORE_PARAPHRASES.get(intent, []), held) for intent, (train, held) in WIDER.items()}

# Ways to change the video just shown and to ask for two at once (`Stage0Settings.llama_edits`), beside
# the world's three train phrasings of each; same {slots} as phrases.PHRASINGS, the same `frame` rule.
EDIT_PARAPHRASES = {
    "vary_colour": ["Make the {ref} {colour} now.", "Paint the {ref} {colour}.", "Change the colour of the {ref} to {colour}.",
                    "Could the {ref} be {colour} instead?", "Turn the {ref} {colour}, please.",
                    "I'd like the {ref} in {colour}.", "Let's have the {ref} {colour} this time.",
                    "Redo it with the {ref} in {colour}.", "This time the {ref} should be {colour}."],
    "vary_motion": ["Make the {ref} {verb} now.", "Have the {ref} {verb} instead.", "Could the {ref} {verb} this time?",
                    "Let the {ref} {verb}, please.", "Change it so that the {ref} will {verb}.",
                    "Redo it with the {ref} {gerund}.", "I'd like the {ref} {gerund} instead.",
                    "Again, but with the {ref} {gerund}.", "This time the {ref} should {verb}."],
    "vary_background": ["Make the background {background}.", "Change the background to {background}, please.",
                        "Use a {background} background now.", "Could the background be {background}?",
                        "Switch to a {background} background.", "Redo it on a {background} background.",
                        "Again, but with a {background} background.", "This time the background should be {background}.",
                        "Put the same thing on a {background} background."],
    "show_two": ["Make two clips: {d1}, and {d2}.", "I want two videos: {d1}, and {d2}.",
                 "Two videos, please: one of {d1}, one of {d2}.", "First show me {d1}, then show me {d2}.",
                 "Can I see two clips? One of {d1}, the other of {d2}.", "Show two videos, {d1} and then {d2}.",
                 "Could you make a clip of {d1} and a second one of {d2}?"],
}
EDITS = {intent: (PHRASINGS[intent][0] + ps, PHRASINGS[intent][1]) for intent, ps in EDIT_PARAPHRASES.items()}

# More ways to say each chit-chat line of phrases.CHAT (same order, same {slots}), for the chit-chat that
# `Stage0Settings.llama_chat` mixes into the edit dialogues; the same `frame` rule.
CHAT_PARAPHRASES = [
    ["Good evening!", "Hi, assistant.", "Hello, nice to meet you.", "Hey there!", "Good afternoon."],
    ["What are your skills?", "Tell me what you can do.", "What kind of help can you give?", "What are you good at?"],
    ["Thanks a lot.", "Thank you, that helps.", "Cheers!", "That was helpful, thanks.", "Nice, thank you."],
    ["Name the shapes you can draw.", "What shapes can you make?", "Which shapes are you able to draw?"],
    ["Name your colours.", "Which colours do you have?", "What colours can you paint with?"],
    ["How many sides are on a {polygon}?", "Tell me how many sides a {polygon} has."],
    ["If I mix {c1} and {c2}, what do I get?", "Which colour do {c1} and {c2} make?"],
    ["Give me the opposite of {w1}.", "What word is the opposite of {w1}?"],
    ["Describe what a shape does when it {motion}.", "Explain the phrase: a shape {motion}."],
    ["Do you enjoy {plural}?", "What do you think of {plural}?"],
]

NOUNS = {"colour": "N", "color": "N", "hue": "N", "shape": "N", "form": "N", "number": "N", "count": "N",
         "total": "N", "motion": "N", "movement": "N", "position": "N", "location": "N", "place": "N",
         "video": "V", "clip": "V", "picture": "V", "frame": "V"}


def frame(template: str) -> tuple[str, ...]:
    """A phrasing with its nouns made one ("Name the colour of the {ref}." = "Name the shape of the
    {ref}."): no paraphrase may have the frame of a held-out phrasing."""
    return tuple(NOUNS.get(w, w) for w in re.findall(r"[a-z{}']+", template.lower()))


def reading_caption(scene: Scene) -> str:
    """The clip as the stage-0 LLaMA reads it in the video slot: per object its place, motion, size and
    colour, and its *noun last* ("on the left moves right a large red circle ; at the top grows a small
    blue heart"), after the count and background.

    Causal attention is why the noun goes last. Asked "what colour is the circle?", a model must find the
    circle and read what belongs to it. When every attribute comes before the noun, the noun's own
    position can gather them (its attention sees only what came earlier), and the question's "circle"
    then finds it by the word itself: one look-up. In English order, "a red circle on the left moves up",
    the place and motion come after the noun, where the noun's position cannot see them; answering needs
    an induction circuit (find the word that *follows* an earlier "circle"), which a small LLaMA learns
    slowly (Olsson et al. 2022). On a synthetic recall task this order is the one a nano LLaMA learns
    (99 / 94 % right with 2 / 3 objects after 1,400 steps, against a 78 / 62 % plateau for "noun, then
    value"); in the full stage-0 text it is no better than English yet (weights/nano/README.md, "What
    limits it"), so it is an option, `Stage0Settings.llama_slot = "noun-last"`, not the default."""
    n = len(scene.objects)
    head = f"{NUMBERS[n]} object{'s' * (n != 1)} on {'an' if scene.background[0] in 'aeiou' else 'a'} {scene.background} background:"
    things = [" ".join(w for w in (POSITION_PHRASES.get(t.position), t.motion, "a", t.size, t.colour, t.shape) if w)
              for t in scene.objects]
    return f"{head} {' ; '.join(things)}"


def with_caption(record: dict, caption_text: str | Scene, for_reply: bool = False) -> list[Part]:
    """A stage-1 record's template parts with its video slot written as the clip's caption, or, given the
    scene itself (the "objects" slot), holding the scene as slot tokens (stage0_objects)."""
    if isinstance(caption_text, Scene):
        return [ObjectsPart("objects", turn=p.turn, scene=caption_text) if p.kind == "slot" else p
                for p in layout(record, for_reply)]
    return [Part("text", f" {caption_text} ", p.turn) if p.kind == "slot" else p for p in layout(record, for_reply)]


def loosen(question: str, rng: random.Random) -> str:
    """Half the time, words around a question that do not change what it asks ("Okay, where is …?")."""
    if rng.random() < 0.25:
        lead = rng.choice(LEAD_INS)
        return f"{lead} {question[0].lower() if lead.endswith(',') else question[0]}{question[1:]}"
    if rng.random() < 1 / 3:
        return f"{question} {rng.choice(TAGS_ON)}"
    return question


def reading_scene(rng: random.Random, held: set, one_object: bool = True) -> Scene:
    """A scene that exists only as words: colours, shapes and backgrounds from a wider vocabulary than
    the videos show (never a held-out pair of the world); two or three objects unless `one_object`."""
    colours, shapes = (*COLOURS, *EXTRA_COLOURS), (*SHAPES, *EXTRA_SHAPES)
    n = rng.choices((1, 2, 3), weights=(4 * one_object, 4, 3))[0]
    pairs: list[tuple[str, str]] = []
    while len(pairs) < n:
        pair = (rng.choice(colours), rng.choice(shapes))
        if pair not in held and pair not in pairs:
            pairs.append(pair)
    positions = sorted(rng.sample(list(POSITIONS), n), key=list(POSITIONS).index)
    things = tuple(Thing(shape, colour, rng.choice(list(SIZES)), position, rng.choice(MOTIONS))
                   for (colour, shape), position in zip(pairs, positions))
    return Scene(things, rng.choice((*BACKGROUNDS, *EXTRA_COLOURS)))


def object_questions(scene: Scene, i: int) -> list[tuple[str, str, str | None]]:
    """(intent, the words that single out object i, its answer) for its colour, motion and place; a ref of
    "" (the words cannot single it out) or an answer of None (a field the scene leaves unsaid) is unaskable."""
    thing = scene.objects[i]
    return [("colour", refer(scene, i, "colour"), thing.colour), ("motion", refer(scene, i), thing.motion),
            ("position", refer(scene, i, "position"), POSITION_PHRASES.get(thing.position))]


def drill_turns(scene: Scene, rng: random.Random, shapes: bool = False, lists: bool = False,
                phrasings: dict = WIDER) -> list[dict]:
    """A video turn, then every object's colour, motion and place asked (objects in random order); with
    `shapes`, its shape too and the questions of each object shuffled. Each question needs the one object
    it names. (Without `shapes` the questions keep that order: the shipped checkpoint's text was drawn so.)
    With `lists`, half the time the three lists of stage0_objects.list_turns follow (after the questions,
    so that no question can copy its answer from a list)."""
    turns = [{"from": "human", "video": 0}]
    for i in rng.sample(range(len(scene.objects)), len(scene.objects)):
        thing = scene.objects[i]
        asks = object_questions(scene, i)
        if shapes:
            asks = rng.sample(asks + [("shape", refer(scene, i, "shape"), thing.shape)], len(asks) + 1)
        for intent, ref, answer in asks:
            if ref:
                question = rng.choice(phrasings[intent][0]).format(ref=ref)
                turns += [{"from": "human", "value": loosen(question, rng)}, {"from": "ai", "value": answer}]
    return turns + (list_turns(scene, rng) if lists and rng.random() < 0.5 else [])


def drill_documents(n: int, held: set, rng: random.Random, slot=caption, lists: bool = False,
                    phrasings: dict = WIDER) -> list[list[Part]]:
    """n short binding drills: a wider-world scene of two or three objects written in the video slot as
    `slot(scene)`, then `drill_turns` (every attribute of every object). One-object scenes are left out:
    there any colour in the slot is the answer, a shortcut that delays learning to look up the object
    the question names."""
    docs = []
    while len(docs) < n:
        scene = reading_scene(rng, held)
        if len(scene.objects) > 1:
            turns = drill_turns(scene, rng, shapes=True, lists=lists, phrasings=phrasings)
            docs.append(with_caption({"videos": ["reading"], "turns": turns}, slot(scene)))
    return docs


def asked_in_wider_words(scene: Scene, name: str, rng: random.Random, slot=caption,
                         phrasings: dict = WIDER) -> list[list[Part]]:
    """A scene's description record and QA record as the world's stage-1 data draws them
    (`datasets.stage1_records`), but in the wider `phrasings` (train ones and `PARAPHRASES`) and `loosen`ed,
    the clip written in the video slot as `slot(scene)`."""
    docs = []
    for record in stage1_records(name, scene, "train", rng, phrasings):
        turns = videochat_turns(record["QA"])
        for turn in turns[1::2]:                                        # the human questions
            turn["value"] = loosen(turn["value"], rng)
        docs.append(with_caption({"videos": ["reading"], "turns": turns}, slot(scene)))
    return docs


def shown_then(request: Scene, rng: random.Random, held: set, phrasings: dict, change: float = 0.5) -> list[dict]:
    """What a user says after seeing `request` as `<video1>` (`Stage0Settings.llama_edits`): with probability
    `change` a change of it, answered with the changed scene as `<video2>` (`datasets.vary`, in the wider
    colours and `EDITS`' phrasings); otherwise, a question about one of its objects answered in words, after
    which a change comes half the time. The world's dialogues ask both after a shown video; a LLaMA that
    had read neither in wider words answered "What happens to the circle?" (a held-out phrasing) by
    showing the video again, and "Try a grey background instead." with no video."""
    turns = []
    if rng.random() >= change:
        asks = [a for a in object_questions(request, rng.randrange(len(request.objects))) if a[1] and a[2]]
        if asks:                                             # (an object the user's words cannot single out: none)
            intent, ref, answer = rng.choice(asks)
            question = rng.choice(phrasings[intent][0]).format(ref=ref)
            turns += [{"from": "human", "value": loosen(question, rng)}, {"from": "ai", "value": answer}]
            if rng.random() < 0.5:
                return turns

    def ask(intent, **slots) -> str:
        return loosen(rng.choice(EDITS[intent][0]).format(**slots), rng)
    new, question = vary(request, rng, held, ask, colours=(*COLOURS, *EXTRA_COLOURS), backgrounds=(*BACKGROUNDS, *EXTRA_COLOURS))
    return turns + [{"from": "human", "value": question}, {"from": "ai", "value": rng.choice(SHOW_MORE).format(v=tag(new, 2))}]


def chit_chat(rng: random.Random) -> list[dict]:
    """One chit-chat exchange (a greeting, thanks, what the assistant can do, …) in a train phrasing of
    phrases.CHAT or one of `CHAT_PARAPHRASES`, answered in words: no video."""
    k = rng.randrange(len(CHAT))
    slots = chat_slots(rng)
    return [{"from": "human", "value": rng.choice(CHAT[k][0] + CHAT_PARAPHRASES[k]).format(**slots)},
            {"from": "ai", "value": rng.choice(CHAT[k][2]).format(**slots)}]


def edit_documents(n: int, held: set, rng: random.Random, phrasings: dict = WIDER, chat: float = 0.0) -> list[list[Part]]:
    """n text dialogues that show a wider-world scene as `<video1>` and then change it or ask about it
    (`shown_then`; `Stage0Settings.llama_edits`). A share `chat` of them (`Stage0Settings.llama_chat`) also
    hold one or two chit-chat exchanges (`chit_chat`) before the request, after the shown video or at the
    end: without them, every second human turn these dialogues hold asks for a change, and a LLaMA that
    read them answered an unseen "Cheers, that helps." after another chit-chat turn with a `<video2>`."""
    docs = []
    for _ in range(n):
        request = leave_unsaid(reading_scene(rng, held), rng)
        ask = rng.choice(phrasings["show"][0]).format(d=request_phrase(request, rng))
        shown = [{"from": "human", "value": ask}, {"from": "ai", "value": rng.choice(SHOW).format(v=tag(request, 1))}]
        turns = [shown, shown_then(request, rng, held, phrasings)]
        if chat and rng.random() < chat:                  # before the request, after the video, or at the end
            turns.insert(rng.randrange(3), [t for _ in range(rng.randint(1, 2)) for t in chit_chat(rng)])
        docs.append(layout({"videos": [], "turns": [t for part in turns for t in part]}))
    return docs


def reading_documents(n: int, held: set, rng: random.Random, slot=caption, lists: bool = False,
                      one_object: bool = True, phrasings: dict = WIDER, edits: bool = False) -> list[list[Part]]:
    """n wider-world scenes (module docstring), each as a description and a QA record with the clip
    written in the video slot as `slot(scene)`, a drill asking every object's colour, motion and place,
    and a request to show a scene answered with its `<video>` caption (alone, or after the drill).
    Phrasings: `phrasings`, by default the world's train ones and `PARAPHRASES`. Without `one_object`,
    every scene asked about has two or three objects. With `edits`, a fifth of the requests ask for two
    videos at once and the rest are followed by `shown_then` (a change of the video, or a question about it)."""
    docs = []
    for k in range(n):
        scene = reading_scene(rng, held, one_object)
        docs += asked_in_wider_words(scene, f"reading{k}", rng, slot, phrasings)
        turns = drill_turns(scene, rng, lists=lists, phrasings=phrasings)
        if rng.random() < 0.5:                                          # a request alone, of this scene
            if len(turns) > 1:
                docs.append(with_caption({"videos": ["reading"], "turns": turns}, slot(scene)))
            turns, request = [], leave_unsaid(scene, rng)
        else:                                   # or, after the questions about the clip, one of another
            request = leave_unsaid(reading_scene(rng, held), rng)
        if edits and rng.random() < 0.2:                                # two at once, the first this request
            other = leave_unsaid(reading_scene(rng, held), rng)
            ask = rng.choice(EDITS["show_two"][0]).format(d1=request_phrase(request, rng), d2=request_phrase(other, rng))
            turns += [{"from": "human", "value": ask},
                      {"from": "ai", "value": rng.choice(SHOW_TWO).format(v1=tag(request, 1), v2=tag(other, 2))}]
        else:                                        # the shown video is <video1> when a changed one follows
            then = shown_then(request, rng, held, phrasings) if edits else []
            number = 1 if any("<video2>" in t["value"] for t in then) else None
            turns += [{"from": "human", "value": rng.choice(phrasings["show"][0]).format(d=request_phrase(request, rng))},
                      {"from": "ai", "value": rng.choice(SHOW).format(v=tag(request, number))}, *then]
        docs.append(with_caption({"videos": ["reading"] if turns[0].get("video") == 0 else [], "turns": turns},
                                 slot(scene)))
    return docs
