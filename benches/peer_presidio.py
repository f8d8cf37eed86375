"""The peer for `keel bench pii`: presidio-analyzer (PyPI, MIT) on the same labelled sentences.
spaCy's trained English models are not on PyPI, so Presidio runs on a blank English pipeline:
its pattern recognizers (with their checksums and context words) run, its NER-based ones
(names, places) have nothing to work with. Reads the data set, prints one JSON object: the
findings per sentence and the seconds the analysis took."""

import json
import logging
import sys
import time

import spacy
from presidio_analyzer import AnalyzerEngine
from presidio_analyzer.nlp_engine import SpacyNlpEngine

logging.disable(logging.CRITICAL)


class BlankEnglish(SpacyNlpEngine):
    def __init__(self):
        super().__init__(models=[{"lang_code": "en", "model_name": "blank"}])

    def load(self):
        self.nlp = {"en": spacy.blank("en")}


engine = BlankEnglish()
engine.load()
analyzer = AnalyzerEngine(nlp_engine=engine, supported_languages=["en"])
texts = [item["full_text"] for item in json.load(open(sys.argv[1]))]
analyzer.analyze(texts[0], language="en")  # warm up
started = time.perf_counter()
found = [[{"entity": r.entity_type, "start": r.start, "end": r.end, "score": r.score} for r in analyzer.analyze(t, language="en")] for t in texts]
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "found": found}))
