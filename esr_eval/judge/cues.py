"""Restart cues: the words with which an answer says that it is starting over, went wrong or went
off topic (the rubric's three reasons for a new attempt). The offline grader opens an attempt at a
unit that holds such a cue when its classifier and context checks agree; a unit without one (a
list item, a new paragraph, an odd sentence in drifting text) needs a sure classifier, text before
it that had drifted and a clear return to the prompt after it.

Written by hand because no library names these phrases; kept to families of meaning rather than
to the phrasings of any labelled set, so that a new phrasing of the same thing still matches.
"""

from __future__ import annotations

import re

_FLAGS = re.IGNORECASE

# 1. Starting over, trying again, coming back to the question.
_START_OVER = (
    r"\b(?:start|starting|started|begin|beginning|began)\b[^.!?]{0,30}\b(?:again|over|afresh|anew|from scratch|from the (?:start|beginning|top))\b",
    r"\b(?:try|trying|tried|attempt|go|have)\b[^.!?]{0,25}\b(?:again|once more|one more time|another (?:go|try|attempt|shot))\b",
    r"\b(?:redo|rewrite|rephrase|restart|rethink|reconsider|retry|reset|refocus|regroup)\w*\b",
    r"\bscratch (?:that|this|all|what)\b",
    r"\b(?:forget|ignore|disregard)\b[^.!?]{0,12}\b(?:that|this|what i|the (?:part|bit|last)|my|everything|all)\b",
    r"\bon second thoughts?\b",
    r"\b(?:back|return|returning|get|getting|come|coming|go|going)\b[^.!?]{0,20}\b(?:to (?:the|your|my|our|what|you)\b[^.!?]{0,20}\b(?:question|point|topic|subject|task|request|asked|answer)|on track|on topic)\b",
    r"\bback to (?:the|your) (?:question|point|topic|subject|task|request)\b",
    r"^(?:ok(?:ay)?|right|so|anyway|alright)?[,.]?\s*back to\b",
    r"\b(?:focus|focusing|concentrate|concentrating|stick|sticking)\b[^.!?]{0,25}\b(?:now|question|asked|topic|point|task|request)\b",
    r"\b(?:(?:let me|let's|i'll|i will|i should|i need to|i must|i ought to)|now)\b[^.!?]{0,40}\b(?:properly|correctly|again|instead|this time|for real|clearer|clearly|better|proper|actual|actually|real)\b",
    r"\b(?:actual|actually|real|really|proper|properly|correct)\b[^.!?]{0,20}\b(?:answer|question|asked|asking|request)\b",
    r"\b(?:here is|here's|here are)\b[^.!?]{0,30}\b(?:proper|better|correct|clearer|real|actual|right)\b",
    r"\b(?:correct|correcting) myself\b",
    r"\b(?:answer|address)\b[^.!?]{0,25}\b(?:properly|correctly|for real|this time|instead)\b",
    r"\b(?:another go|take two|once more|new answer|never mind|erase that|correction:)|\b(?:fix|correct|amend) (?:my answer|that|this|it)\b",
    r"\b(?:should have said|meant to say|supposed to be (?:explaining|answering|talking|writing|describing))\b",
    r"\b(?:should|must|need to|will|i'll|let me|let's)\s+(?:\w+\s+)?(?:focus|concentrate|stay on topic|stick to)\b|^focus\b",
    r"\benough (?:about|of) \w+",
    r"\b(?:back up|backing up|rewind|step back|stepping back|walk (?:that|it) back|take (?:that|it) back|strike that|delete that|start afresh|reset)\b",
    r"\b(?:restate|reframe|reorient|recollect|gather my thoughts|think (?:again|twice|this through)|be (?:clearer|more careful|serious))\b",
    r"\b(?:now|so|okay|ok|alright|all right|anyway|seriously)\b[^.!?]{0,12}\b(?:to|for|about|on) (?:your|the) (?:actual |real |original |main )?(?:question|point|topic|request)\b",
    r"\b(?:as for|regarding|about|concerning|to return to|returning to|coming back to|moving back to) (?:your|the) (?:actual|real|original|main)\b",
    r"\b(?:joking|kidding) aside\b|\bseriously (?:now|though)\b|^now,? seriously\b",
    r"\b(?:another|a second|a fresh|a new|one more) (?:run|crack|shot|stab|pass|attempt|approach|start|go|try)\b|\bfresh start\b|\bfrom the top\b|\bround two\b|\b(?:attempt|take|try) (?:two|2|number two)\b|\bsecond attempt\b",
    r"\b(?:set|setting|put|putting|leave|leaving) (?:that|this|all that|all this|it) aside\b|\bback to basics\b",
    r"\b(?:retract|stand corrected)\b|\b(?:ignore|disregard|forget) (?:the|my) (?:previous|above|last|earlier)\b",
    r"\b(?:stay|keep (?:this|it|things)|get) (?:on point|on track|to the point)\b|^to the point\b",
    r"\b(?:haven't|have not|still haven't|didn't|did not|never) (?:actually |really )?(?:answered|addressed|answer|address)\b",
)
# 2. Saying that it went wrong.
_WENT_WRONG = (
    r"\b(?:that|this|it|which|what i said|my answer|the (?:last|previous) (?:part|bit|sentence|answer))(?:'s| is| was| were)?\s+(?:all\s+|completely\s+|totally\s+|just\s+)?(?:wrong|incorrect|nonsense|gibberish|rubbish|garbage|not right|not correct|not true|not it|not helpful|no good|not what (?:you|i meant|was asked|the question))\b",
    r"\b(?:that|this|my|the) (?:answer|part|bit|sentence|paragraph|attempt|explanation) (?:is|was) (?:all |completely |totally )?(?:wrong|incorrect|nonsense|off)\b",
    r"\b(?:isn't|wasn't|aren't|doesn't|didn't) (?:right|correct|true|it|help|make sense|answer)\b",
    r"\b(?:my|i made an?|i've made an?|i have made an?|that was an?|this was an?|that's an?)\s+(?:\w+\s+)?(?:mistake|error|slip)\b",
    r"\b(?:i|i've|i have|i must have|i seem to have)\s+(?:\w+\s+)?(?:misunderstood|misread|misspoke|misspoken|mixed up|muddled|confused)\b",
    r"\b(?:i'm|i am)\s+(?:\w+\s+)?(?:confused|confusing|mixing|muddling|mistaken)\b",
    r"\b(?:i|i've|i have)\s+(?:\w+\s+)?(?:messed|mucked|screwed|botched|fumbled|goofed|blew|bungled|misfired|conflated|overcomplicated)\b",
    r"\b(?:made|makes|making) no sense\b|\bnon sequitur\b|\bneither here nor there\b|\bred herring\b|\b(?:wrong|different) (?:track|path|tree|recipe|story|answer|place|idea|concept)\b",
    r"\b(?:that|this|it)(?:'s| is| was) (?:a mess|no use|no help|useless|unhelpful|a muddle)\b|\b(?:nonsense|no use to you)\b",
    r"\b(?:i|i'm|i am)\s+(?:\w+\s+)?(?:misinterpreted|misheard|misjudged|being unclear|unclear)\b|\banswered (?:a|the) (?:different|wrong|another) question\b",
    r"\b(?:ahead of myself|around in circles|repeating myself|lost the plot|off base|barking up)\b",
    r"\bmy bad\b|\bwrong (?:topic|thing|subject|question|answer|direction|turn)\b|\bcame out wrong\b|\bgot (?:it|that|this) wrong\b",
    r"\b(?:i|i'm|i am|i've|i was)\b[^.!?]{0,20}\b(?:wrong|talking nonsense|making no sense|not making sense)\b",
)
# 3. Saying that it went off topic.
_OFF_TOPIC = (
    r"\boff[- ]?(?:topic|track|course|subject|point|the (?:point|subject|topic|track|rails|mark))\b",
    r"\b(?:tangent|tangents|digress|digressed|digressing|digression|detour|sidetrack|sidetracked|distracted|distraction)\b",
    r"\b(?:drift|drifts|drifting|drifted|stray|strayed|straying|wander|wandered|wandering|veer|veered|veering|ramble|rambled|rambling|rambles)\b",
    r"\b(?:unrelated|irrelevant|beside the point|nothing to do with|has no bearing)\b",
    r"\bnot (?:your|the) question\b|\bnot an answer\b|\b(?:wasn't|was not|isn't|is not) helpful\b|\bgoing nowhere\b|\bway off\b|\brabbit hole\b",
    r"\bwhy did i (?:bring up|mention|start|say|write|talk)\b|\bwhat does (?:this|that|any of this) have to do with\b|\bhow did i end up\b|\bi don't know why i (?:said|wrote|mentioned)\b",
    r"\byou asked (?:about|for|how)\b[^.!?]{0,40}\bnot\b|\b(?:lost|losing) my way\b|\ball over the place\b|\bgot (?:that|it|this|things) (?:confused|mixed up|muddled)\b",
    r"\b(?:instead of|rather than) (?:answering|explaining|addressing|telling you|describing what|your question|what you asked)\b",
    r"\b(?:ended up|been|was|am|i'm) (?:talking|writing|going on|rambling) about\b",
    r"\byour question (?:was|is) (?:about|how)\b|\byou (?:didn't|did not) ask\b|\byou (?:wanted|asked|need) to know\b",
    r"\b(?:lost|losing) (?:my|the) (?:thread|way|train of thought)\b|\blost in the weeds\b|\bwhy i went there\b|\bwhere (?:that|this) came from\b|\bout of nowhere\b",
    r"\b(?:that's|that is|this is|that was) (?:not|beside) the point\b|\banother story\b|\bnot (?:going|heading) where\b|\bnot what you (?:were|are) looking for\b|\b(?:didn't|did not|doesn't|does not) address\b",
    r"\bwhere am i going with\b|\bwhat was i (?:saying|talking about|doing)\b|\b(?:how|why) is (?:this|that|any of this) (?:relevant|related)\b|\bis (?:this|that) (?:even )?relevant\b",
    r"\b(?:not|isn't|wasn't|no longer) (?:relevant|on topic|related)\b",
    r"\bnone of (?:that|this|it|what i)\b|\b(?:doesn't|does not|don't|do not) belong\b",
    r"\bnot (?:what|about what) you (?:asked|wanted|were asking|are asking|need)\b|\bnot (?:answering|addressing) (?:your|the|what)\b",
    r"\b(?:lost|lose|losing) (?:the thread|track|my train|the plot|the point|focus)\b",
    r"\bwhere (?:was i|were we)\b|\bwhy am i (?:talking|writing|describing|going on|telling)\b|\bwhat am i (?:saying|doing|talking about|on about)\b",
    r"\b(?:carried|got carried|pulled|slipped|went|gone|going) (?:away|astray|into a different|somewhere|elsewhere|off)\b",
    r"\bsomething else(?: entirely)?\b|\b(?:talking|writing) about (?:the wrong|something|a different)\b",
    r"\b(?:keep|kept) (?:drifting|slipping|wandering|doing (?:it|that))\b|\bdid it again\b|\bslipped again\b",
    r"\b(?:(?:that|this)(?:'s| is| was)) off\b",
)
# 4. An interjection that stops the answer short ("Wait, pancakes.", "Hold on.", "Oops."), not a
# verb ("wait until", "hold the blade").
_INTERJECTION = (
    r"^(?:wait|hold on|hang on)(?: a (?:second|moment|minute|sec))?\s*(?:[,.!:;]|-|$)",
    r"^(?:oops|whoops|woops|ugh|argh|oh no|uh oh|oh dear|oh wait|whoa|yikes|oh boy|no,? no|nope)\b",
    r"^(?:hmm+|hm+|um+|erm|er|uh|well|oh|ah|okay|ok)[,.!]?\s*(?:no|nope|wait|hang on|hold on)\b",
    r"^(?:no|not quite|not helpful)[.,!]",
)
_CUE = re.compile("|".join(f"(?:{p})" for p in (*_START_OVER, *_WENT_WRONG, *_OFF_TOPIC, *_INTERJECTION)), _FLAGS)

# Phrases that use restart words without restarting: self-repair inside a sentence ("or rather",
# "I mean"), re-explaining ("let me put it another way"), and apologies to the reader about
# something other than the answer. They are removed before the cues are matched.
_NOT_RESTART = re.compile(
    r"\bor rather\b|\bi mean\b|\bthat is to say\b|\bin other words\b|\bto put it (?:another|differently)\b"
    r"|\blet me (?:put|say|explain|phrase) (?:it|that|this)? ?(?:another way|differently|again|in other words|more simply)\b"
    r"|\blet me explain again\b|\bto clarify\b|\bmore precisely\b"
    r"|\bsorry (?:to hear|for (?:the|your|any) (?:short notice|inconvenience|delay|loss|wait|trouble))\b",
    _FLAGS,
)
# An instruction to the reader ("if it tears, try again later", "wait until it boils") uses the
# same verbs; it has a condition or a time and no speaker ("I", "me", "my", "let's").
_CONDITION = re.compile(r"\b(?:if|when|whenever|until|unless|later|then|after|before)\b", _FLAGS)
_SPEAKER = re.compile(r"\b(?:i|i'm|i've|i'll|i'd|me|my|myself|let's|we|our)\b", _FLAGS)
_SPEAKERLESS_CUE = re.compile("|".join(f"(?:{p})" for p in (*_OFF_TOPIC, *_WENT_WRONG)), _FLAGS)


def _plain(text: str) -> str:
    text = text.replace("\u2019", "'").replace("\u2018", "'").replace("\u2014", " - ").replace("\u2013", " - ")
    return " ".join(text.strip(" \t\n-\u2014\u2013*#>").split())


def restart_cue(unit: str) -> str | None:
    """The words of `unit` that say it starts over, went wrong or went off topic; None if none."""
    text = _NOT_RESTART.sub(" ", _plain(unit))
    match = _CUE.search(text)
    if match is None:
        return None
    if _CONDITION.search(text) and not _SPEAKER.search(text) and not _SPEAKERLESS_CUE.search(text):
        return None  # an instruction to the reader
    return match.group(0)


def has_restart_cue(unit: str) -> bool:
    return restart_cue(unit) is not None
