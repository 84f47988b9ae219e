"""SQuAD v1.1 (Rajpurkar et al. 2016) -> extractive QA task records, split by article.

Splitting by article keeps every paragraph of an article in one split, so no context seen in
training reappears at validation or test time.
"""

import json
import pathlib
from typing import Any

from ptlearn.data.prepare import (
    DEFAULT_SEED,
    SPLIT_NAMES,
    Conversion,
    locate_raw_dir,
    split_by_fraction,
)
from ptlearn.errors import DataError

FOLDER = "squad"
FILENAME = "dev-v1.1.json"
TASKNAME = "squad"


def _expect(value: Any, kind: type, where: str, key: str) -> Any:
    """Returns ``value`` if it has the expected JSON type, else raises a DataError naming it."""
    if not isinstance(value, kind):
        raise DataError(
            f"{where}: {key!r} should be a {kind.__name__}, got {type(value).__name__}; "
            "is this a SQuAD v1.1 file?"
        )
    return value


def _field(obj: dict, key: str, kind: type, where: str) -> Any:
    """Reads ``obj[key]`` with a DataError naming ``where`` when it is missing or mistyped."""
    if key not in obj:
        raise DataError(f"{where}: missing {key!r}; is this a SQuAD v1.1 file?")
    return _expect(obj[key], kind, where, key)


def read_articles(path: str | pathlib.Path) -> list[tuple[str, list[dict]]]:
    """Reads a SQuAD v1.1 file as (article title, question records) pairs, in file order.

    Each question record is ``{"context", "question", "answers": [gold texts]}``. Articles that
    share a title are merged, since the title is the unit of the split.

    Raises:
      DataError: the file is missing, not JSON, or not in the SQuAD v1.1 layout.
    """
    path = pathlib.Path(path)
    try:
        with path.open(encoding="utf-8") as handle:
            document = json.load(handle)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}: invalid JSON ({err.msg})") from None
    _expect(document, dict, str(path), "the top level")
    articles: dict[str, list[dict]] = {}
    for article_index, article in enumerate(_field(document, "data", list, str(path))):
        where = f"{path}: data[{article_index}]"
        _expect(article, dict, where, "article")
        title = _field(article, "title", str, where)
        questions = articles.setdefault(title, [])
        for paragraph_index, paragraph in enumerate(_field(article, "paragraphs", list, where)):
            where_p = f"{where} ({title!r}) paragraphs[{paragraph_index}]"
            _expect(paragraph, dict, where_p, "paragraph")
            context = _field(paragraph, "context", str, where_p)
            for qa in _field(paragraph, "qas", list, where_p):
                _expect(qa, dict, where_p, "question")
                where_q = f"{where_p} question {qa.get('id', '?')!r}"
                answers = [
                    _field(_expect(answer, dict, where_q, "answer"), "text", str, where_q)
                    for answer in _field(qa, "answers", list, where_q)
                ]
                question = _field(qa, "question", str, where_q)
                questions.append({"context": context, "question": question, "answers": answers})
    return list(articles.items())


def convert(raw_dir: str | pathlib.Path, *, seed: int = DEFAULT_SEED) -> Conversion:
    """Converts ``dev-v1.1.json`` into train / val / test records, 80/10/10 of its articles.

    A question asked twice about the same context is kept once, its gold answers merged (counted
    as ``duplicates_merged``); a question without gold answers cannot be scored and is skipped
    (counted as ``unanswerable_skipped``).

    Returns:
      Conversion: records ``{"taskname": "squad", "context", "question", "answer": first gold
      answer, "answers": all gold answers}``, articles in seeded order, questions in file order.
    """
    path = locate_raw_dir(raw_dir, FOLDER, FILENAME) / FILENAME
    articles = read_articles(path)
    questions_read = duplicates = unanswerable = 0
    records_of: dict[str, list[dict]] = {}
    for title, questions in articles:
        by_key: dict[tuple[str, str], dict] = {}
        for item in questions:
            questions_read += 1
            if not item["answers"]:
                unanswerable += 1
                continue
            key = (item["context"], item["question"])
            if key in by_key:
                duplicates += 1
                seen = by_key[key]["answers"]
                seen.extend(text for text in item["answers"] if text not in seen)
                continue
            by_key[key] = {
                "taskname": TASKNAME,
                "context": item["context"],
                "question": item["question"],
                "answer": item["answers"][0],
                "answers": list(item["answers"]),
            }
        records_of[title] = list(by_key.values())

    titles = [title for title, _ in articles]
    title_splits = split_by_fraction(titles, titles, seed)
    splits = {
        name: [record for title in title_splits[name] for record in records_of[title]]
        for name in SPLIT_NAMES
    }
    stats = {
        "raw_file": str(path),
        "articles": {name: len(title_splits[name]) for name in SPLIT_NAMES},
        "questions_read": questions_read,
        "duplicates_merged": duplicates,
        "unanswerable_skipped": unanswerable,
    }
    return Conversion(splits=splits, stats=stats)
