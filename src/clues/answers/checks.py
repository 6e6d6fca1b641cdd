"""Judge-free checks of one generated answer, each aimed at one way the benchmark damages data.

A model trained on bad records writes bad answers: in another language (``mixed_language``), cut off
mid-sentence (``incomplete_answer``), with words that are not words (``random_noise``), or about
another question (``mismatched_answer``). Test loss and multiple-choice scoring never read what a
model writes; these checks do, with maintained packages and nothing downloaded at run time:

- language: the answer's language by ``py3langid`` (its model ships in the wheel), against the
  reference's (the record's ``language`` field, else the reference identified the same way);
- complete: the answer ends where an answer ends (a sentence end, or a whole option of a
  multiple-choice question) instead of mid-sentence; generation adds "and the model stopped by
  itself" (:mod:`clues.answers.generate`);
- fluent: judged by the base model, in :mod:`clues.answers.quality` (a lexicon of real words was
  tried first and dropped: the benchmark's word noise is made of real words, shuffled or swapped, and
  the lexicon's AUROC against it was 0.54-0.60; docs/results.md, "Answer checks");
- relevant: ROUGE-L F1 against the reference (``rouge-score``, with a tokenizer that keeps CJK
  characters, which its default English tokenizer drops), and for multiple-choice questions whether
  the answer names the right option, and whether it names an option of this question at all.

Each check gives a number per answer and a pass/fail (thresholds below), and an answer passes
overall when it passes every check. A language that a package does not know makes that check
``None`` ("not measured") for the answer, never a silent zero.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

from clues.errors import CluesError

# Sentence ends of the scripts the shipped data uses, and closing quotes/brackets after them.
_SENTENCE_END = re.compile(r"[.!?。！？…][\"'”’)\]）」』]*\s*$")
_OPTION = re.compile(r"^\s*([A-Z])[.)]\s+(.*\S)\s*$", re.S)
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")

# Thresholds of the pass/fail form of each check, chosen by reading the reference answers of seed 0
# (the demo's) and validated on seeds 1 and 4 (docs/results.md, "Answer checks").
MIN_ROUGE_L = 0.1
OTHER_LANGUAGE_CONFIDENCE = 0.9


def install_hint(package: str) -> str:
    return f"the answer checks need the package {package}; install it with: pip install {package}"


# The languages an answer is identified among: the most used ones, plus the reference's own. Over all
# 97 of py3langid's, short answers ("A. Dantrolene", "B. 腺病毒") land on Latin, Galician or Cantonese.
MAJOR_LANGUAGES = ("en", "zh", "es", "fr", "de", "ja", "ru", "pt", "it", "ko", "ar", "hi", "nl", "pl", "tr",
                   "vi", "id", "sv", "cs", "uk", "fa", "el", "he", "hu", "ro", "da", "fi", "no", "th", "bn")


@lru_cache(maxsize=16)
def _identifier(language: str = ""):
    """py3langid over :data:`MAJOR_LANGUAGES` and ``language``, probabilities normalised over them."""
    try:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier
    except ImportError:
        raise CluesError(install_hint("py3langid")) from None
    identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    identifier.set_languages(sorted({*MAJOR_LANGUAGES, *([language] if language in identifier.labels else [])}))
    return identifier


def known_language(language: str) -> bool:
    """Whether the language identifier knows ``language`` (an ISO 639-1 code)."""
    return language in _identifier().labels or language in _identifier(language).labels


def _option_text(text: str) -> str:
    """An option's text without its letter ("B. 腺病毒" -> "腺病毒"): the letter is no language."""
    match = _OPTION.match(text)
    return match.group(2) if match else text


def language_probability(text: str, language: str) -> float | None:
    """Probability that ``text`` is in ``language`` among the major languages (py3langid); None when the
    identifier does not know ``language``."""
    if not known_language(language):
        return None
    text = _option_text(text.strip())
    if not text:
        return 0.0
    return float(dict(_identifier(language).rank(text)).get(language, 0.0))


def in_other_language(text: str, language: str) -> bool | None:
    """Whether ``text`` is confidently in another language than ``language`` (the top language is another
    one, with probability >= :data:`OTHER_LANGUAGE_CONFIDENCE`). A term or a formula too short to
    identify ("A. Dantrolene") is not flagged; None when the identifier does not know ``language``."""
    if not known_language(language):
        return None
    text = _option_text(text.strip())
    if not text:
        return False
    top, probability = _identifier(language).rank(text)[0]
    return top != language and probability >= OTHER_LANGUAGE_CONFIDENCE


def identify(text: str) -> str:
    """The most probable language of ``text`` among the major languages (ISO 639-1)."""
    return _identifier().classify(_option_text(text.strip()))[0]


def ends_properly(answer: str, options: tuple[str, ...] = (), sentence_end: bool = True) -> bool:
    """Exactly one whole option as written (a multiple-choice question), else a sentence end; where the
    domain's own references do not end with one (``sentence_end`` False: lists of symptoms), any
    non-empty text."""
    text = answer.strip()
    if not text:
        return False
    if options:
        return named_option(text, options) is not None
    return not sentence_end or bool(_SENTENCE_END.search(text))


def named_option(answer: str, options: tuple[str, ...]) -> int | None:
    """The index of the option ``answer`` names whole (``"B. 12～48小时"`` or just its letter ``"B"``), or None."""
    text = unicodedata.normalize("NFKC", answer).strip().rstrip(".")
    normalised = [unicodedata.normalize("NFKC", o).strip().rstrip(".") for o in options]
    if text in normalised:
        return normalised.index(text)
    option = _OPTION.match(text)
    match = option or re.fullmatch(r"\s*([A-Z])\s*", text)
    if match:
        index = ord(match.group(1)) - ord("A")
        body = option.group(2).strip().rstrip(".") if option else None
        if 0 <= index < len(options) and (body is None or _option_text(normalised[index]).strip() == body):
            return index
    return None


class _Tokenizer:
    """rouge-score's interface; words lowercased, every CJK character its own token (its default drops them)."""

    def tokenize(self, text: str) -> list[str]:
        text = unicodedata.normalize("NFKC", text).lower()
        text = _CJK.sub(lambda m: f" {m.group(0)} ", text)
        return re.findall(r"\w+", text)


@lru_cache(maxsize=1)
def _scorer():
    try:
        from rouge_score.rouge_scorer import RougeScorer
    except ImportError:
        raise CluesError(install_hint("rouge-score")) from None
    return RougeScorer(["rougeL"], tokenizer=_Tokenizer())


def rouge_l(answer: str, reference: str) -> float:
    """ROUGE-L F1 of ``answer`` against ``reference`` (0 when either has no token)."""
    return float(_scorer().score(reference, answer)["rougeL"].fmeasure)


@dataclass(frozen=True)
class Reference:
    """What the checks of one answer compare with: the test record's reference answer, its language,
    its options when it is a multiple-choice question (index of the right one in ``answer``), and
    whether answers of its domain end with a sentence end (:func:`clues.answers.quality.references`)."""

    output: str
    language: str
    options: tuple[str, ...] = ()
    answer: int | None = None
    sentence_end: bool = True


def check_answer(answer: str, reference: Reference, stopped: bool = True, fluent: bool | None = None) -> dict:
    """Every check of one answer: numbers, their pass/fail and ``passed`` (every measured check passed).

    ``stopped``: the model ended the answer itself (end-of-sequence before its token budget); a text
    that is not a generation (a reference answer) passes it. ``fluent``: the base model's verdict
    (:mod:`clues.answers.quality`), None where it was not asked. A check that cannot be measured in
    the reference's language is None and left out of ``passed``.
    """
    probability = language_probability(answer, reference.language)
    ends = ends_properly(answer, reference.options, reference.sentence_end)
    row = {
        "language": probability,
        "complete": stopped and ends,
        "length_ratio": len(answer.strip()) / max(1, len(reference.output.strip())),
        "rouge_l": rouge_l(answer, reference.output),
    }
    other = in_other_language(answer, reference.language)
    passes = {
        "language": None if other is None else not other,
        "complete": row["complete"],
        "fluent": fluent,
    }
    if reference.options:
        chosen = named_option(answer, reference.options)
        row["option"] = chosen
        row["exact_match"] = chosen is not None and chosen == reference.answer
        passes["relevant"] = chosen is not None
    else:
        passes["relevant"] = row["rouge_l"] >= MIN_ROUGE_L
    row["passes"] = passes
    row["passed"] = all(v for v in passes.values() if v is not None)
    return row
