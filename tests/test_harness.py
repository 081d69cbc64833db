"""pyrunq4.harness (lm-evaluation-harness model) and `pyrunq4.eval tasks`.

No dataset hub is reachable: the tasks are built here from Debian's license
text as local JSON files read through task YAML files (dataset_path: json).
The numbers lm_eval reports are checked against the engine's own logits."""

import json
import re
import sys
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("lm_eval")

from pyrunq4 import harness
from pyrunq4.eval import main
from pyrunq4.model import Model
from pyrunq4.scoring import log_softmax

LICENSE = "/usr/share/common-licenses/GPL-3"


def _requests(*args):
    return [SimpleNamespace(args=a) for a in args]


def _direct(path, ctx, cont):
    """(sum log p(cont | ctx), greedy) from one logits call of the whole sequence."""
    with Model(path) as m:
        ids = ctx + cont
        lp = log_softmax(m.logits(ids[:-1]))
    rows = np.arange(len(ctx) - 1, len(ids) - 1)
    target = np.asarray(ids[len(ctx):])
    return float(lp[rows, target].astype(np.float64).sum()), bool((lp[rows].argmax(1) == target).all())


@pytest.fixture(scope="module")
def lm(tiny_hf_rq4):
    m = harness.Rq4LM(tiny_hf_rq4, progress=False)
    yield m
    m.close()


def test_loglikelihood_matches_the_engines_logits(lm, tiny_hf_rq4):
    pairs = [("The quick brown", " fox"), ("The quick brown", " dog jumps"), ("abc ", "def"),
             ("", "hello there"), ("The quick", " brown fox")]
    got = lm.loglikelihood(_requests(*pairs))
    for (context, continuation), (ll, greedy) in zip(pairs, got):
        ctx, cont = lm._split(context, continuation)
        want_ll, want_greedy = _direct(tiny_hf_rq4, ctx, cont)
        assert ll == pytest.approx(want_ll, rel=1e-4, abs=1e-4)
        assert greedy == want_greedy
    # the context's trailing space belongs to the continuation, and BOS leads
    ctx, cont = lm._split("abc ", "def")
    assert ctx == lm.model.tokenize("abc", add_bos=True)
    assert ctx + cont == lm.model.tokenize("abc def", add_bos=True)
    # order of the requests (and so what the cache held before) changes nothing
    again = lm.loglikelihood(_requests(*pairs[::-1]))[::-1]
    assert np.allclose([g[0] for g in got], [a[0] for a in again], rtol=1e-5, atol=1e-5)


def test_loglikelihood_rolling_is_the_texts_log_likelihood(lm, tiny_hf_rq4):
    text = "It is the quick brown fox that jumps over the lazy dog."
    (ll,) = lm.loglikelihood_rolling(_requests((text,)))
    ids = lm.model.tokenize(text, add_bos=False)
    want, _ = _direct(tiny_hf_rq4, [lm.prefix_id], ids)
    assert ll == pytest.approx(want, rel=1e-4)
    # a context shorter than the text: disjoint windows, every token scored once
    short = harness.Rq4LM(tiny_hf_rq4, n_ctx=8, progress=False)
    try:
        (ll8,) = short.loglikelihood_rolling(_requests((text,)))
    finally:
        short.close()
    assert np.isfinite(ll8) and ll8 < 0 and len(ids) > 8


def test_generate_until_is_greedy_generation_cut_at_the_stop(lm):
    context = "The quick brown"
    (free,) = lm.generate_until(_requests((context, {"max_gen_toks": 12})))
    want = lm.model.generate(lm.model.tokenize(context, add_bos=True), max_new_tokens=12)
    assert free == want
    if len(free) > 2:
        stop = free[1:3]
        (cut,) = lm.generate_until(_requests((context, {"until": [stop], "max_gen_toks": 12})))
        assert cut == free[:free.index(stop)]


def _license_tasks(folder):
    """A 4-way multiple-choice task (which 4 words continue a sentence of the
    GPL) and a rolling log-likelihood task, as local JSON files + task YAML."""
    text = open(LICENSE, encoding="utf-8").read()
    sents = [re.sub(r"\s+", " ", s).strip() for s in re.split(r"(?<=[.;:])\s+", text)]
    sents = [s for s in sents if len(s.split()) >= 12][:24]
    rows = []
    for i, s in enumerate(sents):
        words = s.split()
        others = [" " + " ".join(sents[(i + k) % len(sents)].split()[8:12]) for k in (5, 9, 13)]
        gold = i % 4
        rows.append({"context": " ".join(words[:8]), "gold": gold,
                     "choices": others[:gold] + [" " + " ".join(words[8:12])] + others[gold:]})
    (folder / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "roll.jsonl").write_text("".join(json.dumps({"text": s}) + "\n" for s in sents))
    head = "dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {}\ntest_split: test\n"
    (folder / "mc.yaml").write_text(
        "task: rq4test_mc\n" + head.format(folder / "mc.jsonl") +
        'output_type: multiple_choice\ndoc_to_text: "{{context}}"\ndoc_to_choice: "{{choices}}"\n'
        'doc_to_target: "{{gold}}"\nmetric_list:\n  - metric: acc\n')
    (folder / "roll.yaml").write_text(
        "task: rq4test_roll\n" + head.format(folder / "roll.jsonl") +
        'output_type: loglikelihood_rolling\ndoc_to_text: ""\ndoc_to_target: "{{text}}"\n'
        "metric_list:\n  - metric: word_perplexity\n")
    return rows, sents


def test_tasks_command_on_local_task_files(tiny_hf_rq4, tmp_path, capsys):
    rows, sents = _license_tasks(tmp_path)
    out = tmp_path / "results.json"
    rc = main(["tasks", tiny_hf_rq4, "--tasks", "rq4test_mc,rq4test_roll", "--include", str(tmp_path),
               "--limit", "12", "--threads", "1", "--output", str(out)])
    assert rc == 0
    table = capsys.readouterr().out
    assert "rq4test_mc" in table and "acc" in table and "word_perplexity" in table
    res = json.loads(out.read_text())["results"]
    # the accuracy lm_eval reports is the one the engine's logits give, choice by choice
    lm = harness.Rq4LM(tiny_hf_rq4, progress=False)
    try:
        right = 0
        for r in rows[:12]:
            scores = [_direct(tiny_hf_rq4, *lm._split(r["context"], c))[0] for c in r["choices"]]
            right += int(np.argmax(scores) == r["gold"])
        # word perplexity: exp(-sum log-likelihood / words)
        lls = lm.loglikelihood_rolling(_requests(*[(s,) for s in sents[:12]]))
    finally:
        lm.close()
    assert res["rq4test_mc"]["acc,none"] == pytest.approx(right / 12)
    words = sum(len(re.split(r"\s+", s)) for s in sents[:12])
    assert res["rq4test_roll"]["word_perplexity,none"] == pytest.approx(np.exp(-sum(lls) / words), rel=1e-6)


def test_tasks_command_errors(tiny_hf_rq4, tmp_path, capsys, monkeypatch):
    assert main(["tasks", tiny_hf_rq4, "--tasks", " , "]) != 0
    assert "names no task" in capsys.readouterr().err
    for name in [n for n in sys.modules if n == "lm_eval" or n.startswith("lm_eval.")]:
        monkeypatch.setitem(sys.modules, name, None)          # as if lm-eval were not installed
    monkeypatch.delitem(sys.modules, "pyrunq4.harness")
    monkeypatch.delattr(sys.modules["pyrunq4"], "harness")
    assert main(["tasks", tiny_hf_rq4, "--tasks", "x"]) != 0
    err = capsys.readouterr().err
    assert "pip install 'pyrunq4[lmeval]'" in err and "Traceback" not in err
