"""The protocol of the oracles that run in the vLLM venv (vllm_oracle.py, benchy_oracle.py): a JSON
list of jobs on stdin, the list of answers as JSON on stdout, and whatever the library under test
prints sent to stderr so that it cannot corrupt the answer."""
import json
import sys


def serve(answer) -> None:
    jobs = json.load(sys.stdin)
    real_stdout, sys.stdout = sys.stdout, sys.stderr
    try:
        answers = [answer(j) for j in jobs]
    finally:
        sys.stdout = real_stdout
    json.dump(answers, sys.stdout)
