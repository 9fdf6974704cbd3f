"""capsim/checks.py at its edges: what `capsim simulate` refuses before simulating, and what it lets through.

A request of exactly max_model_len tokens is served (vLLM refuses only prompt + max_tokens past it); a
closed loop of exactly the request cap runs, warmups counted; a closed loop is refused only when its
every shape is; an open random load is refused when its smallest request, template and prefix
included, is.
"""
import click
import pytest

from capsim.checks import MAX_REQUESTS, check_closed, check_open, check_range, refusal
from simulator.load import ClosedLoop
from simulator.profile import load_profile
from simulator.workload import FixedWorkload, PromptFormat, RandomWorkload, RequestSpec, random_length_bounds


def profile(max_model_len: int):
    p = load_profile()
    p.engine.max_model_len = max_model_len
    return p


def test_check_range_includes_both_bounds():
    check_range(None, "--n", hi=5)
    check_range(1, "--n", hi=5)
    check_range(5, "--n", hi=5)
    with pytest.raises(click.BadParameter, match="must be >= 1, got 0"):
        check_range(0, "--n", hi=5)
    with pytest.raises(click.BadParameter, match=r"6 is more than capsim simulates in one run \(at most 5\)"):
        check_range(6, "--n", hi=5, what=" in one run")


def test_a_request_of_exactly_max_model_len_is_served():
    p = profile(1000)
    assert refusal(p, RequestSpec(prompt_tokens=600, max_tokens=400, output_tokens=400)) is None
    assert refusal(p, RequestSpec(prompt_tokens=600, max_tokens=401, output_tokens=401)) == (
        "exceeds max_model_len of 1000 tokens (the smallest has 600 prompt + 401 output tokens)")


def test_the_request_cap_counts_every_run_and_warmup():
    p = profile(100000)
    half = MAX_REQUESTS // 2
    check_closed(p, ClosedLoop(pp=(10,), tg=(1,), concurrency=(half,), runs=1, warmup=1))  # exactly the cap
    check_closed(p, ClosedLoop(pp=(10,), tg=(1,), concurrency=(half,), runs=2, warmup=0))
    for runs, warmup in ((2, 1), (1, 2)):
        with pytest.raises(click.ClickException, match=f"{3 * half:,} requests"):
            check_closed(p, ClosedLoop(pp=(10,), tg=(1,), concurrency=(half,), runs=runs, warmup=warmup))
    with pytest.raises(click.ClickException, match=f"{2 * half + 2:,} requests"):
        check_closed(p, ClosedLoop(pp=(10,), tg=(1,), concurrency=(half, 1), runs=1, warmup=1))


def test_a_closed_loop_is_refused_only_when_every_shape_is():
    p = profile(1000)
    check_closed(p, ClosedLoop(pp=(5000, 100), tg=(10,)))  # the 100-token prompt is served
    with pytest.raises(click.ClickException) as e:
        check_closed(p, ClosedLoop(pp=(3000, 2000), tg=(10, 500)))
    smallest = FixedWorkload(2000, 10, 0, 1.0).sample(1)[0]  # the fewest tokens in all: the one the message names
    assert e.value.message == (f"every request exceeds max_model_len of 1000 tokens (the smallest has "
                               f"{smallest.prompt_tokens} prompt + 10 output tokens)")


@pytest.mark.parametrize("prefix", [0, 7])
def test_an_open_load_is_refused_when_its_smallest_request_is(prefix):
    fmt = PromptFormat(special_tokens=1, chat_template_tokens=13)
    wl = RandomWorkload(input_len=400, output_len=50, range_ratio=0.5, prefix_len=prefix, fmt=fmt)
    in_lo, _, out_lo, _ = random_length_bounds(400, 50, 0.5, 1)
    smallest = in_lo + 1 + 13 + prefix + out_lo
    check_open(profile(smallest), wl)
    with pytest.raises(click.ClickException, match="every request exceeds max_model_len"):
        check_open(profile(smallest - 1), wl)
